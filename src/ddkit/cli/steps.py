"""``ddkit tune-steps``: a timestep grid tuned for one model and NFE, stored in its run folder;
and the ``--steps`` argument of ``ddkit sample``, which takes such a grid."""

from __future__ import annotations

import argparse

from ..cli_checks import positive_int, random_seed
from .sampling import add_adams_options


def steps_arg(text: str) -> int | str:
    """``--steps``: a number of timesteps, or ``tuned`` / ``tuned:N`` (a grid from
    ``ddkit tune-steps``, at N model calls)."""
    name, _, nfe = text.partition(":")
    if name == "tuned" and (not nfe or nfe.isdigit()):
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; allowed: an integer >= 1, tuned, tuned:N"
        ) from None


def _cmd_tune_steps(args) -> int:
    from ..resources import check_device, check_seed
    from ..trained import load_trained
    from ..tuned_steps import tune_steps

    check_device(args.device, "--device")
    check_seed(args.seed, "--seed")
    options = {} if args.sampler != "ddim" else {"eta": 0.0}
    for name in ("interpolate", "limiter"):
        value = getattr(args, name)
        if value is not None:
            if args.sampler not in ("adams2", "adams3"):
                raise ValueError(f"--{name} {value}: only adams2 and adams3 take it")
            options[name] = value
    trained = load_trained(args.checkpoint, args.weights, args.device)
    tune_steps(
        trained,
        args.checkpoint,
        nfe=args.nfe,
        sampler=args.sampler,
        spacing=args.spacing,
        options=options,
        clip_x0=args.clip_x0,
        pilot=args.pilot,
        check=args.check,
        reference_steps=args.reference_steps,
        max_evals=args.evals,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    return 0


# names only, without importing torch at parse time: ddkit.tuned_steps.TUNABLE and its defaults
TUNABLE_NAMES = ("adams2", "adams3", "dpmpp_2m", "dpmpp_3m", "heun", "ddim")
DEFAULT_SAMPLER, DEFAULT_SPACING = "adams2", "log_snr_window"


def add_tune_steps_command(sub) -> None:
    """``tune-steps`` as a subcommand of the parser's ``sub``."""
    t = sub.add_parser(
        "tune-steps",
        help="tune a sampler's timestep grid for one model and NFE; sample with --steps tuned",
    )
    t.add_argument("checkpoint", help="a run folder (the grid is stored in it) or checkpoint")
    t.add_argument("--nfe", type=positive_int, required=True, help="model calls per sample")
    t.add_argument(
        "--sampler", default=DEFAULT_SAMPLER, choices=TUNABLE_NAMES, help="a deterministic sampler"
    )
    t.add_argument("--spacing", default=DEFAULT_SPACING, help="the grid the search starts from")
    add_adams_options(t, " (as for ddkit sample)")
    t.add_argument("--pilot", type=positive_int, default=64, help="initial noises tuned on")
    t.add_argument("--check", type=positive_int, default=64, help="further noises measured on")
    t.add_argument("--evals", type=positive_int, default=60, help="sampler runs in the search")
    t.add_argument(
        "--reference-steps", type=positive_int, default=200, help="steps of the ODE reference"
    )
    t.add_argument("--clip-x0", default="auto", help="as for ddkit sample")
    t.add_argument("--seed", type=random_seed, default=0)
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.add_argument("--weights", default="ema", help="ema or online")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=_cmd_tune_steps)
