"""``ddkit verify``: every sampler against exact Gaussian-mixture denoisers; with ``--family``,
few-step samplers on the family of test mixtures, per member and in the worst case."""

from __future__ import annotations

from ..cli_checks import positive_int, random_seed


def _cmd_verify(args) -> int:
    from ..cli_checks import check_verify

    check_verify(args)
    if args.family:
        from ..verify.family_report import run_family_to_folder
        from ..verify.runner import select_configs

        run_family_to_folder(
            args.out,
            select_configs(args.sampler, args.config, family=True),
            split=args.family,
            nfes=tuple(args.nfe or (5, 10, 20)),
            n=args.n,
            floor_reps=args.floor_reps,
            seed=args.seed,
        )
        return 0
    from ..verify.runner import run_to_folder

    run_to_folder(
        args.out,
        samplers=args.sampler,
        labels=args.config,
        quick=args.quick,
        nfes=tuple(args.nfe or (10, 20, 50, 100, 1000)),
        n_2d=args.n_2d,
        n_64d=args.n_64d,
        floor_reps=args.floor_reps,
        seed=args.seed,
    )
    return 0


def add_verify_command(sub) -> None:
    """``verify`` as a subcommand of the parser's ``sub``."""
    v = sub.add_parser(
        "verify", help="run every sampler against an exact Gaussian-mixture denoiser"
    )
    v.add_argument("--quick", action="store_true", help="small sample sizes and NFE 10, 20, 100")
    v.add_argument("--out", default="verify-out", help="folder for the JSON results and PNG plot")
    v.add_argument("--seed", type=random_seed, default=0)
    v.add_argument(
        "--nfe", type=positive_int, nargs="+", help="default 10 20 50 100 1000; --family 5 10 20"
    )
    v.add_argument("--n-2d", type=positive_int, default=10_000, help="samples on the 2-D mixture")
    v.add_argument("--n-64d", type=positive_int, default=4_000, help="samples on the 64-D mixture")
    v.add_argument("--floor-reps", type=positive_int, default=8)
    v.add_argument("--sampler", action="append", help="only this sampler (repeatable)")
    v.add_argument(
        "--config", action="append", help="only this configuration, by label (repeatable)"
    )
    v.add_argument(
        "--family",
        choices=("tuning", "held_out"),
        help="the few-step samplers on this split of the family of test mixtures",
    )
    v.add_argument("--n", type=positive_int, default=2000, help="samples per --family mixture")
    v.set_defaults(func=_cmd_verify)
