"""The command line's argument types and the checks of inputs that the library functions behind
the commands do not make themselves; every failure is a one-line ValueError (or argparse's
ArgumentTypeError) naming the option or key and what is allowed.

Kept apart from :mod:`ddkit.cli` so that it stays argument parsing only; nothing here imports
torch at module level (parsing stays fast).
"""

from __future__ import annotations

import argparse
import math
import os

from .resources import MAX_SEED

MAX_INT = 2**63 - 1  # counts beyond a 64-bit integer are refused
MAX_DEMO_SCALE = 1000.0  # ddkit.demo.MAX_SCALE
VERIFY_T = 1000  # the schedule length of ddkit.verify.runner.run

# characters str.splitlines() breaks on, and other controls, shown escaped in messages
_BREAKS = {c: f"\\x{c:02x}" for c in range(32) if c != 9}
_BREAKS.update({0x7F: "\\x7f", 0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_BREAKS.update({0x0A: "\\n", 0x0D: "\\r"})


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows every option's default (unless its help already says it or it has
    none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and not any(default is v for v in (None, False, argparse.SUPPRESS))
            and "default" not in text
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2, and the defaults shown
    in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        """As argparse's, but an option with a default and no help gets ``default: ...`` as help."""
        action = super().add_argument(*args, **kwargs)
        if action.help is None and action.option_strings:  # argparse shows nothing for these
            action.help = HelpFormatter(self.prog)._get_help_string(action) or None
        return action

    def error(self, message):
        """Exit with status 2 after one line on stderr: the message and a pointer to ``--help``."""
        self.exit(2, one_line(f"{self.prog}: error: {message} (see --help)") + "\n")


def one_line(text: str) -> str:
    """``text`` on one printable line: line breaks and control characters escaped, and
    characters that cannot be encoded (lone surrogates from undecodable argv bytes) as
    backslash escapes."""
    return text.translate(_BREAKS).encode("utf-8", "backslashreplace").decode("utf-8")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer in 1 .. 2**63 - 1."""
    v = _integer(text)
    if not 1 <= v <= MAX_INT:
        raise argparse.ArgumentTypeError(f"{v} must lie in 1..{MAX_INT}")
    return v


def random_seed(text: str) -> int:
    """A random seed: an integer in 0 .. 2**63 - 1."""
    v = _integer(text)
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {v} must lie in 0..{MAX_SEED} (2**63 - 1)")
    return v


def finite_float(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False):
    """The argparse type of a finite number in [low, high] ((low, high] when ``low_open``);
    infinite bounds are no bounds."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (v > low if low_open else v >= low) and v <= high
        if not math.isfinite(v) or not inside:
            bounds = [f"{'>' if low_open else '>='} {low:g}"] if math.isfinite(low) else []
            bounds += [f"<= {high:g}"] if math.isfinite(high) else []
            text = f"{text!r} must be a finite number " + " and ".join(bounds)
            raise argparse.ArgumentTypeError(text.rstrip())
        return v

    parse.__name__ = "finite_float"
    return parse


def check_train(cfg, resume: bool = False) -> None:
    """Before a training run is built: ``train.device`` exists on this machine,
    ``train.out_dir`` can hold the run, ``train.init_from`` exists (not on a ``resume``, whose
    weights come from its checkpoint), and the run fits in the device's memory."""
    import torch

    from .memory import check_memory, training_memory
    from .resources import check_device, check_output_folder

    tr = cfg.train
    if tr.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = check_device(tr.device, "train.device")
    check_output_folder(tr.out_dir, "train.out_dir")
    if (
        tr.init_from
        and not resume
        and not (os.path.isfile(tr.init_from) or os.path.isdir(tr.init_from))
    ):
        raise ValueError(
            f"train.init_from {tr.init_from!r} is neither a checkpoint file nor a run folder"
        )
    micro = tr.batch_size // tr.grad_accum
    what = f"training {type(cfg.model).__name__} with micro-batches of {micro}"
    hint = "lower train.batch_size (or raise train.grad_accum), the model size or data size"
    check_memory(training_memory(cfg), device, what, hint)


def check_resume_overrides(overrides: dict) -> None:
    """The [train] values given with ``--resume``: ``out_dir`` must be a usable folder."""
    from .resources import check_output_folder

    if "out_dir" in overrides:
        out = overrides["out_dir"]
        if not isinstance(out, str) or not out:
            raise ValueError(f"train.out_dir={out!r} must be a folder name")
        check_output_folder(out, "train.out_dir")


def check_verify(args) -> None:
    """``ddkit verify``'s inputs: the output folder, the samplers and configurations named, each
    NFE reachable within the schedule by every selected configuration, and the memory the sample
    sizes need."""
    from .memory import verify_memory
    from .resources import check_fits, check_output_folder
    from .samplers import get_sampler
    from .verify.runner import select_configs

    check_output_folder(args.out, "--out")
    family = getattr(args, "family", None)
    configs = select_configs(args.sampler, args.config, family=bool(family))
    if family and args.quick:
        raise ValueError("--quick is for the two mixtures; with --family, lower --n instead")
    if args.quick:
        return
    for c in configs:
        top = get_sampler(c.sampler).nfe(VERIFY_T, **c.options)
        for nfe in args.nfe or ():
            if nfe > top:
                raise ValueError(
                    f"--nfe {nfe}: {c.label!r} reaches at most NFE {top} on the T = {VERIFY_T} "
                    "schedule; allowed: 1.." + str(top)
                )
    if family:
        need = verify_memory(0, 0, args.floor_reps, family_n=args.n)
        check_fits(need, "cpu", "verify --family at this sample size", "lower --n")
        return
    need = verify_memory(args.n_2d, args.n_64d, args.floor_reps)
    check_fits(need, "cpu", "verify at these sample sizes", "lower --n-2d, --n-64d, --floor-reps")
