"""The value checks of ``ddkit eval`` that need no model: counts, choices, memory."""

from __future__ import annotations

import math

from ..data.config import SPLITS
from ..memory import check_memory, sampling_memory
from ..trained import Trained
from .bpd import ODE_BATCH_SIZE
from .sweep import SWEEP_FAMILIES

BPD_METHODS = ("vlb", "ode")


def check_counts(**counts) -> None:
    """ValueError naming the option when a count (or one of a list of counts) is not an integer
    >= 1, or a list is empty."""
    for name, value in counts.items():
        option = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"{option} needs at least one integer >= 1")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{option} {v!r} must be an integer >= 1")


def check_choices(split: str, ref_split: str, bpd_methods, families) -> None:
    """ValueError naming the option when a split, bpd method or sweep family is not allowed."""
    for option, value in (("--split", split), ("--ref-split", ref_split)):
        if value not in SPLITS:
            raise ValueError(f"{option} {value!r} is not allowed; allowed: {', '.join(SPLITS)}")
    for option, values, allowed in (
        ("--bpd-methods", bpd_methods, BPD_METHODS),
        ("--families", families, tuple(SWEEP_FAMILIES)),
    ):
        bad = [v for v in values if v not in allowed] if not isinstance(values, str) else [values]
        if bad or not values:
            what = "sweep family" if option == "--families" else "method"
            shown = repr(bad[0]) if bad else "nothing"
            raise ValueError(f"{option}: unknown {what} {shown}; allowed: {', '.join(allowed)}")


def check_memory_use(
    trained: Trained, device, samples: bool, num: int, batch_size: int, ode: bool, ode_num, probes
) -> None:
    """ValueError when the samples for FID, or the PF-ODE's Hutchinson probes, would not fit."""
    if samples:
        parts = sampling_memory(trained.config.model, num, batch_size, trained.schedule.T)
        what = f"--num {num} samples of {list(trained.data_shape)}"
        check_memory(parts, device, what, "lower --num or --batch-size")
    if ode:
        batch = min(ode_num, ODE_BATCH_SIZE)
        need = {"probes": 2 * probes * batch * math.prod(trained.data_shape) * 4}
        check_memory(need, device, f"--probes {probes}", "lower --probes")
