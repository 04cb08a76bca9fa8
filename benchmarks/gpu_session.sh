#!/usr/bin/env bash
# One lent-GPU session, run from the repository root (BENCHMARKS.md, "On a GPU"):
#   1. bf16 training throughput and MFU of our U-Net vs diffusers' (unet_throughput_gpu.py);
#   2. the ddpm-28 preset trained on Fashion-MNIST (configs/paper/fmnist_gpu.toml) for a fixed
#      wall-clock budget: 300 steps are timed first and train.max_steps is set from their rate, so
#      that the cosine learning-rate decay ends where the budget does;
#   3. that model evaluated like the papers: FID (ddkit-fashion_mnist features) against NFE for
#      every sweep family, eta 0 vs 1 over three more seeds, DDIM inversion and interpolation.
#
#   bash benchmarks/gpu_session.sh OUT [TRAIN_SECONDS] [NUM]
#
# Needs: a CUDA GPU; torch; diffusers (for 1 only); the four Fashion-MNIST IDX .gz files in
# $FMNIST (default /usr/share/datasets/fashion-mnist); the feature network in $DDKIT_CACHE (made by
# `ddkit features --data fashion_mnist`, trained if missing).  Everything lands under OUT/work and
# is packed after each stage into OUT/results.tgz.part-* (15 MiB pieces: cat them | tar xz).
# DEVICE=cpu runs the same steps on CPU (a dry run with small numbers, EXTRA='--set k=v ...').
set -u
OUT=${1:?usage: gpu_session.sh OUT [TRAIN_SECONDS] [NUM]}
TRAIN_S=${2:-240}
NUM=${3:-2000}
NFES=${NFES:-10 20 50 100 1000}  # NFEs of the DDPM/DDIM sweep
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-560}  # seconds: no stage runs past this
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
W="$OUT/work"
mkdir -p "$W"
LOG="$W/session.log"
DD=("$PY" -m ddkit.cli)
RUN="$W/fmnist_gpu"
T0=$SECONDS

say() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$LOG"; }
pack() {
  tar czf "$OUT/.results.tgz" -C "$W" . 2>/dev/null
  rm -f "$OUT"/results.tgz.part-*
  split -b 15m "$OUT/.results.tgz" "$OUT/results.tgz.part-"
  rm -f "$OUT/.results.tgz"
}
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log, pack; never abort the session
  local name=$1 limit=$2 left=$((DEADLINE - (SECONDS - T0)))
  shift 2
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then say "stage $name: skipped, $left s left of DEADLINE=$DEADLINE"; return 1; fi
  say "stage $name (limit $limit s): $*"
  timeout "$limit" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  say "stage $name: exit $rc"
  tail -n 25 "$W/$name.log"
  pack
  return $rc
}

say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"

# 1. throughput (GPU only)
if [ "$DEVICE" = cuda ]; then
  stage throughput 120 "$PY" benchmarks/unet_throughput_gpu.py --reps 20
fi

# 2. training: time 300 steps, then train for TRAIN_S seconds' worth of steps
common=(configs/paper/fmnist_gpu.toml --set "data.path=$FMNIST" --set "train.device=$DEVICE")
# shellcheck disable=SC2206  # EXTRA: more --set overrides, word-split (e.g. for a CPU dry run)
common+=(${EXTRA:-})
stage calibrate 90 "${DD[@]}" train "${common[@]}" --set train.max_steps=300 \
  --set train.log_every=100 --set "train.out_dir=$W/calibrate"
precision=auto
if [ ! -s "$W/calibrate/metrics.jsonl" ]; then  # bf16 autocast failed: fall back to fp32
  precision=fp32
  stage calibrate_fp32 90 "${DD[@]}" train "${common[@]}" --set train.max_steps=300 \
    --set train.log_every=100 --set train.precision=fp32 --set "train.out_dir=$W/calibrate"
fi
rate=$("$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(r[-1]['steps_per_s'])" "$W/calibrate/metrics.jsonl" 2>/dev/null || echo 0)
steps=$("$PY" -c "import sys; print(max(300, int(float(sys.argv[1]) * float(sys.argv[2]) / 100) * 100))" "$rate" "$TRAIN_S")
rm -rf "$W/calibrate/checkpoints"
say "calibrated: $rate steps/s at precision=$precision -> train.max_steps=$steps"
stage train $((TRAIN_S + 60)) "${DD[@]}" train "${common[@]}" --set "train.max_steps=$steps" \
  --set "train.precision=$precision" --set "train.sample_every=$steps" --set "train.out_dir=$RUN"

# 3. evaluation of the newest checkpoint (a run cut short by its limit still has one)
ev=("${DD[@]}" eval "$RUN" --device "$DEVICE" --ref-num 10000 --batch-size "$NUM")
stage sweep 150 "${ev[@]}" --sweep --num "$NUM" --nfe $NFES \
  --families ddpm ddim-eta0 ddim-eta0-quad ddim-eta1 ddim-eta1-quad --out "$W/sweep"
stage inversion 60 "${ev[@]}" --inversion --inversion-num 200 --interpolation --out "$W/inversion"
for s in 1 2 3; do
  stage "seed$s" 40 "${ev[@]}" --sweep --seed "$s" --num "$NUM" --nfe 10 20 50 \
    --families ddim-eta0 ddim-eta1 --out "$W/seed$s"
done
stage solvers 60 "${ev[@]}" --sweep --num "$NUM" --nfe 5 10 20 50 --families dpmpp_2m pf-ode \
  --out "$W/solvers"
say "done"
pack
