"""Step grids tuned per model: ``ddkit tune-steps`` and ``ddkit sample --steps tuned``.

:func:`tune_steps` places the timesteps of a deterministic (ODE) sampler for one trained model and
one budget of model calls (:func:`ddkit.samplers.tuning.tune_timesteps`) and stores the grid in
the run folder, in ``tuned_steps.json``; :func:`tuned_grid` reads it back for sampling.  That file
is validated like any other file a user hands in: plain JSON of bounded size, each grid strictly
decreasing indices of the model's schedule, for a sampler ddkit knows.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .generation import DRAW_OPTIONS, SampleSpec, check_labels
from .memory import check_memory, sampling_memory
from .paths import atomic_write_bytes
from .progress import Progress
from .resources import check_output_folder
from .samplers import get_sampler
from .samplers.tuning import REFERENCE_STEPS, ode_reference, rms, tune_timesteps

FILE = "tuned_steps.json"
FORMAT = "ddkit-tuned-steps"
TUNABLE = ("adams2", "adams3", "dpmpp_2m", "dpmpp_3m", "heun", "ddim")
"""Samplers whose result is a deterministic function of the initial noise (``ddim`` at eta 0)."""
DEFAULT_SAMPLER, DEFAULT_SPACING = "adams2", "log_snr_window"
_MAX_BYTES = 1 << 20


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint file (``RUN/checkpoints/ckpt-*.safetensors`` or
    ``RUN/ckpt-*``), or the folder itself."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _check_sampler(sampler: str, options: dict) -> None:
    get_sampler(sampler)
    if sampler not in TUNABLE or (sampler == "ddim" and options.get("eta", 0.0) != 0.0):
        raise ValueError(
            f"sampler {sampler!r} with options {options} draws noise as it goes; a grid can be "
            f"tuned only for a deterministic sampler: {', '.join(TUNABLE)} (ddim at eta 0)"
        )


def read_grids(folder: str | Path, T: int) -> list[dict]:
    """The grids stored in ``folder``'s ``tuned_steps.json`` ([] without one), each checked:
    a known sampler and an NFE, strictly decreasing integer timesteps in 0..T-1.  ValueError in
    one line naming the file for anything else."""
    path = Path(folder) / FILE
    if not path.exists():
        return []
    name = repr(str(path))
    if not path.is_file() or path.stat().st_size > _MAX_BYTES:
        raise ValueError(f"{name} is not a regular file of at most {_MAX_BYTES} bytes")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{name} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{name} is not a ddkit tuned-steps file (format {FORMAT!r})")
    grids = data.get("grids")
    if not isinstance(grids, list):
        raise ValueError(f"{name}: 'grids' must be a list")
    for i, g in enumerate(grids):
        ok = isinstance(g, dict) and g.get("sampler") in TUNABLE and isinstance(g.get("nfe"), int)
        ts = g.get("timesteps") if ok else None
        ok = ok and isinstance(ts, list) and bool(ts)
        ok = ok and all(isinstance(t, int) and not isinstance(t, bool) for t in ts)
        ok = ok and all(0 <= t < T for t in ts) and all(a > b for a, b in zip(ts, ts[1:]))
        ok = ok and isinstance(g.get("options", {}), dict)
        if not ok:
            raise ValueError(
                f"{name}: grid {i} is not a sampler of {', '.join(TUNABLE)} with an integer nfe "
                f"and strictly decreasing integer timesteps in 0..{T - 1}"
            )
    return grids


def tuned_grid(checkpoint: str | Path, sampler: str, T: int, nfe: int | None = None) -> dict:
    """The stored grid of ``sampler`` (at ``nfe`` model calls; None: the only one stored for it)
    in the run folder of ``checkpoint``.  ValueError naming what is stored otherwise."""
    folder = run_folder(checkpoint)
    grids = [g for g in read_grids(folder, T) if g["sampler"] == sampler]
    found = [g for g in grids if nfe is None or g["nfe"] == nfe]
    if len(found) == 1:
        return found[0]
    stored = ", ".join(f"tuned:{g['nfe']}" for g in grids) or "none"
    what = f"sampler {sampler!r}" + ("" if nfe is None else f" at NFE {nfe}")
    raise ValueError(
        f"no single tuned grid for {what} in {str(folder)!r} (stored: {stored}); run "
        f"'ddkit tune-steps {folder} --sampler {sampler} --nfe N' or give --steps tuned:N"
    )


def tune_steps(
    trained,
    checkpoint: str | Path,
    *,
    nfe: int,
    sampler: str = DEFAULT_SAMPLER,
    spacing: str = DEFAULT_SPACING,
    options: dict | None = None,
    clip_x0: str = "auto",
    pilot: int = 64,
    check: int = 64,
    reference_steps: int = REFERENCE_STEPS,
    max_evals: int = 60,
    seed: int = 0,
    batch_size: int = 256,
    log=print,
) -> dict:
    """Tune the grid of ``sampler`` at ``nfe`` model calls for the model ``trained`` (loaded from
    ``checkpoint``), starting from ``spacing``, on ``pilot`` initial noises drawn from ``seed``;
    measure start and tuned grids on ``check`` further noises; store the entry in the run folder's
    ``tuned_steps.json`` (replacing one for the same sampler, options and NFE) and return it.
    The grid is tuned with the ODE's own last step; sampling with ``last="posterior"`` uses the
    same timesteps, its last ``tail`` steps draws (2 krylov - 1 model calls more each)."""
    options = {k: v for k, v in (options or {}).items() if k not in DRAW_OPTIONS}  # ODE end
    _check_sampler(sampler, options)
    for name, v in (("pilot", pilot), ("check", check), ("reference_steps", reference_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    info = get_sampler(sampler)
    T = trained.schedule.T
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= info.nfe(T, **options):
        raise ValueError(f"--nfe {nfe!r}: allowed 1..{info.nfe(T, **options)} for this model")
    steps = max((n for n in range(1, nfe + 1) if info.nfe(n, **options) <= nfe), default=0)
    if steps < 2:
        raise ValueError(f"--nfe {nfe}: {sampler!r} needs at least {info.nfe(2, **options)}")
    spec = SampleSpec(sampler, steps, spacing, options, clip_x0)
    start = spec.timesteps(trained.schedule)
    folder = check_output_folder(run_folder(checkpoint), "the run folder")  # writable, first
    grids = read_grids(folder, trained.schedule.T)  # refuse a broken file before any work
    parts = sampling_memory(trained.config.model, pilot + check, batch_size, trained.schedule.T)
    parts["references"] = 2 * 8 * (pilot + check) * math.prod(trained.data_shape)  # float64
    device = next(trained.model.parameters()).device
    what = f"tuning on {pilot} + {check} noises in batches of {batch_size}"
    check_memory(parts, device, what, "lower --pilot, --check or --batch-size")
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((pilot + check, *trained.data_shape), generator=g)
    y = check_labels(trained, spec, pilot + check, None)
    n_p, n_c = math.ceil(pilot / batch_size), math.ceil(check / batch_size)
    total = (n_p + n_c) * min(reference_steps, T) + n_p * max_evals * steps + n_c * 2 * steps
    bar = Progress(total, "tuning steps", unit="step")
    tick = lambda *_: bar.update(1)  # noqa: E731

    @torch.no_grad()
    def run(fn, lo: int, hi: int, **kw) -> torch.Tensor:
        out = []
        for s in range(lo, hi, batch_size):
            e = min(s + batch_size, hi)
            den = trained.denoiser(clip_x0, labels=None if y is None else y[s:e])
            out.append(fn(den, x_T[s:e].to(device), **kw).double().cpu())
        return torch.cat(out)

    t0 = time.perf_counter()
    try:
        ref = run(lambda d, x: ode_reference(d, x, reference_steps, callback=tick), 0, pilot)
        ref_check = run(
            lambda d, x: ode_reference(d, x, reference_steps, callback=tick), pilot, pilot + check
        )
        sample = lambda ts, lo, hi: run(  # noqa: E731
            lambda d, x: info(d, x, ts, callback=tick, **options), lo, hi
        )
        res = tune_timesteps(
            lambda ts: sample(ts, 0, pilot), start, ref, trained.schedule, max_evals=max_evals
        )
        check_start = rms(sample(res.start, pilot, pilot + check), ref_check)
        check_tuned = rms(sample(res.timesteps, pilot, pilot + check), ref_check)
    finally:
        bar.close()
    entry = {
        "sampler": sampler,
        "options": options,
        "nfe": info.nfe(steps, **options),
        "timesteps": res.timesteps,
        "start": {"spacing": spacing, "timesteps": res.start},
        "rms_to_reference": {
            "pilot": {"start": res.start_error, "tuned": res.error},
            "check": {"start": check_start, "tuned": check_tuned},
        },
        "pilot": pilot,
        "check": check,
        "seed": seed,
        "reference_steps": reference_steps,
        "evaluations": res.evaluations,
        "clip_x0": clip_x0,
        "checkpoint_step": trained.step,
        "weights": trained.weights,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    keep = [
        g
        for g in grids
        if (g["sampler"], g.get("options", {}), g["nfe"]) != (sampler, options, entry["nfe"])
    ]
    doc = {"format": FORMAT, "T": trained.schedule.T, "grids": keep + [entry]}
    atomic_write_bytes(folder / FILE, json.dumps(doc, indent=1).encode())
    log(
        f"tuned {sampler} at NFE {entry['nfe']}: RMS to the {reference_steps}-step ODE solution "
        f"{check_start:.4g} -> {check_tuned:.4g} on {check} further noises "
        f"(pilot {res.start_error:.4g} -> {res.error:.4g}); timesteps {res.timesteps}; "
        f"wrote {folder / FILE}"
    )
    return entry
