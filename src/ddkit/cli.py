"""Command line: the only place that reads argv and turns strings into enums.

Errors in what the user asked for print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP's default spin-waiting makes every parallel op wait a scheduler tick for a descheduled
# worker thread when the machine has more runnable threads than cores (any shared machine): a
# small model then trains 10-50x slower.  Passive waiting costs little otherwise.  It must be set
# before torch loads OpenMP, so torch is imported only inside the commands.  OMP_WAIT_POLICY in
# the environment takes precedence.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _cmd_verify(args) -> int:
    from . import verify
    from .samplers import SAMPLERS

    for name in args.sampler or []:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    configs = [c for c in verify.CONFIGS if not args.sampler or c.sampler in args.sampler]
    if args.quick:
        n_2d, n_64d, nfes, reps = 2000, 1000, (10, 20, 100), 4
    else:
        n_2d, n_64d, nfes, reps = args.n_2d, args.n_64d, tuple(args.nfe), args.floor_reps
    print("ddkit verify: exact Gaussian-mixture denoiser, linear schedule T=1000")
    print("columns: energy distance, within-mode dispersion / true, log-likelihood gap (nats);")
    print("'in floor' marks each metric inside the noise floor of independent true samples (+)")
    results = verify.run(
        configs,
        nfes,
        n_2d=n_2d,
        n_64d=n_64d,
        seed=args.seed,
        floor_reps=reps,
        log=lambda s: print(
            s if not s.startswith("noise") else s + "\n" + verify.HEADER, flush=True
        ),
    )
    verify.write_outputs(results, Path(args.out))
    print(
        f"\nwrote {Path(args.out) / 'verify.json'} and {Path(args.out) / 'verify_error_vs_nfe.png'}"
    )
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .training.trainer import RESUMABLE_TRAIN_KEYS, Trainer

    if args.resume:
        if args.config:
            raise ValueError("--resume takes its config from the checkpoint; give no config files")
        from .config import parse_override

        overrides = {}
        for text in args.set or []:
            (section, key), value = parse_override(text)
            if section != "train" or key not in RESUMABLE_TRAIN_KEYS:
                raise ValueError(
                    f"{section}.{key} cannot change on resume; allowed: "
                    + ", ".join(f"train.{k}" for k in RESUMABLE_TRAIN_KEYS)
                )
            overrides[key] = value
        trainer = Trainer.from_checkpoint(args.resume, train_overrides=overrides)
    else:
        if not args.config and not args.set:
            raise ValueError("give a config file (see configs/) and/or --set section.key=value")
        trainer = Trainer(load_config(args.config, args.set or []))
    if args.dry_run:
        print(f"ddkit train: config valid; {trainer.cfg.train.max_steps} steps to {trainer.out}")
        return 0
    trainer.fit()
    if trainer.dist.is_main:
        print(f"trained to step {trainer.step}; checkpoint {trainer.last_checkpoint}")
    return 0


def _cmd_sample(args) -> int:
    import json
    import time

    import numpy as np

    from . import viz
    from .sampling import SampleSpec, generate, load_trained
    from .training.checkpoint import atomic_write_bytes

    options = {}
    if args.eta is not None:
        options["eta"] = args.eta
    if args.variance is not None:
        options["variance"] = args.variance
    spec = SampleSpec(args.sampler, args.steps, args.spacing, options)
    trained = load_trained(args.checkpoint, args.weights, args.device)
    spec.timesteps(trained.schedule)  # validate steps against the model's T before any work
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    t0 = time.perf_counter()
    x = generate(
        trained, spec, args.num, seed=args.seed, batch_size=args.batch_size, device=args.device
    )
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x.numpy()}
    if trained.is_image:
        arrays["images"] = viz.to_uint8(x)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    viz.save_samples(x[: args.grid], out / "samples.png")
    settings = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        **spec.as_dict(),
        "timesteps": spec.timesteps(trained.schedule),
        "nfe": spec.nfe(),
        "seed": args.seed,
        "num": args.num,
        "batch_size": args.batch_size,
        "device": args.device,
        "wall_seconds": round(wall, 3),
    }
    atomic_write_bytes(out / "sampler.json", json.dumps(settings, indent=2).encode())
    print(f"wrote {args.num} samples to {out} ({wall:.1f} s, {spec.nfe()} model calls each)")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), steps_scale=args.scale, progress=not args.quiet)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddkit", description="Denoising diffusion models, verified.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser(
        "verify", help="run every sampler against an exact Gaussian-mixture denoiser"
    )
    v.add_argument("--quick", action="store_true", help="small sample sizes and NFE 10, 20, 100")
    v.add_argument("--out", default="verify-out", help="folder for verify.json and the PNG plot")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--nfe", type=_positive_int, nargs="+", default=[10, 20, 50, 100, 1000])
    v.add_argument("--n-2d", type=_positive_int, default=10_000, help="samples on the 2-D mixture")
    v.add_argument("--n-64d", type=_positive_int, default=4_000, help="samples on the 64-D mixture")
    v.add_argument("--floor-reps", type=_positive_int, default=8)
    v.add_argument("--sampler", action="append", help="only this sampler (repeatable)")
    v.set_defaults(func=_cmd_verify)

    t = sub.add_parser("train", help="train a diffusion model from TOML config files")
    t.add_argument("config", nargs="*", help="TOML config files, merged in order")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key")
    t.add_argument("--resume", metavar="CHECKPOINT", help="a checkpoint file or run folder")
    t.add_argument("--dry-run", action="store_true", help="validate the config and data, then stop")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint")
    s.add_argument("checkpoint", help="a checkpoint file or a run folder (its newest checkpoint)")
    s.add_argument(
        "--sampler",
        default="ddim",
        help="ddpm, ddim, euler_maruyama, pc, heun, dpmpp_2m, dpmpp_3m, adams3",
    )
    s.add_argument("--steps", type=_positive_int, default=50, help="number of timesteps")
    s.add_argument(
        "--spacing", default="trailing", help="leading, trailing, linspace, quadratic, log_snr"
    )
    s.add_argument("--eta", type=float, help="DDIM eta (>= 0; 0 is deterministic)")
    s.add_argument("--variance", help="DDPM variance: fixed_small, fixed_large, tweedie")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num", type=_positive_int, default=64)
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--grid", type=_positive_int, default=64, help="samples drawn in samples.png")
    s.add_argument("--weights", default="ema", help="ema or online")
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default="samples", help="folder for samples.png, .npz and sampler.json")
    s.set_defaults(func=_cmd_sample)

    d = sub.add_parser("demo", help="train on bundled data (2-D spiral, 8x8 digits) and sample")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--scale", type=float, default=1.0, help="multiply the training steps")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training.trainer import NonFiniteLossError

    try:
        return args.func(args)
    except ValueError as e:  # what the user asked for is not allowed: nothing was written
        print(f"ddkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"ddkit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
