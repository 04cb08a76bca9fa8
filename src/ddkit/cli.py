"""Command line: the only place that reads argv and turns strings into enums.

Errors in what the user asked for print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddkit", description="Denoising diffusion models, verified.")
    sub = p.add_subparsers(dest="command", required=True)
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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"ddkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
