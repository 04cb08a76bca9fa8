"""The sampler options that ``ddkit sample`` and ``ddkit eval --fid`` share, and the dict of
options they become (checked by :class:`ddkit.generation.SampleSpec` against the sampler)."""

from __future__ import annotations

from ..cli_checks import finite_float, positive_int

# ddkit.samplers.ode.INTERPOLATIONS, named here so parsing does not import torch
INTERPOLATIONS = ("log_snr", "sigma", "sigma^0.5", "sigma^0.25")


def add_adams_options(parser, suffix: str = "") -> None:
    """``--interpolate`` and ``--limiter`` (adams2, adams3) on ``parser``; ``suffix`` ends each
    help text."""
    parser.add_argument(
        "--interpolate",
        choices=INTERPOLATIONS,
        help="adams2/adams3: interpolate x0_hat in log-SNR (default), in sigma/alpha, or in "
        f"(sigma/alpha)^0.5 or ^0.25{suffix}",
    )
    parser.add_argument(
        "--limiter",
        type=finite_float(0.0, low_open=True),
        metavar="R",
        help="adams2/adams3: first order for a sample whose x0_hat speeds up over R times as "
        "fast as exp(lambda), lambda = log(alpha/sigma): one switching modes (1 goes with "
        f"--last-step posterior){suffix}",
    )


def add_sampler_options(parser, suffix: str = "") -> None:
    """``--eta``, ``--variance``, ``--last-step``, ``--krylov`` and :func:`add_adams_options` on
    ``parser``; ``suffix`` ends each help text (e.g. " (for --fid)")."""
    parser.add_argument(
        "--eta", type=finite_float(), help=f"DDIM eta (>= 0; 0 is deterministic){suffix}"
    )
    parser.add_argument(
        "--variance",
        help=f"DDPM variance: fixed_small, fixed_large, tweedie, tweedie_jacobian{suffix}",
    )
    parser.add_argument(
        "--last-step", help=f"adams2/adams3's last step: ode, or posterior (a draw){suffix}"
    )
    parser.add_argument(
        "--krylov",
        type=positive_int,
        help="adams2/adams3 with --last-step posterior: Jacobian-vector products that shape the "
        f"draw (default 1; m: a Lanczos square root, 2m model calls){suffix}",
    )
    add_adams_options(parser, suffix)


# argparse destination -> the samplers' keyword
_KEYWORDS = {"eta": "eta", "variance": "variance", "last_step": "last", "krylov": "krylov"}
_KEYWORDS.update(interpolate="interpolate", limiter="limiter")


def sampler_options(args) -> dict:
    """The options given on the command line, by the samplers' keyword names."""
    given = {key: getattr(args, dest, None) for dest, key in _KEYWORDS.items()}
    return {key: value for key, value in given.items() if value is not None}
