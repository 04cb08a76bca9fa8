"""Timestep grids tuned to one model and one budget of model calls.

Where a few-step ODE sampler puts its timesteps decides most of its error, and the best places
depend on the data: on the noise levels at which the denoiser's estimate of x0 changes fast.
:func:`tune_timesteps` places them for one model.  It minimises the root-mean-square distance
between the sampler's result on a grid and a fine-grid solution of the same probability-flow ODE
from the same initial noise (:func:`ode_reference`), over a pilot batch: the objective of
optimal-stepsize distillation, and in the spirit of Align Your Steps (Sabour et al. 2024), which
minimises a bound on the same error; here the error itself is measured, since one fine-grid
solution of a pilot batch is affordable.

The search is a compass search on the log-SNR of each timestep but the first (t_max, where the
initial noise lives): move one timestep by +-delta in log-SNR, to the nearest index that keeps
the grid strictly decreasing, and keep the move if the error falls; when a sweep over all the
timesteps keeps no move, halve delta.  Every evaluation is one run of the sampler on the pilot
batch, and the result is never worse on that batch than the grid it started from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .ode import sample_adams

REFERENCE_STEPS = 200
"""Log-SNR steps of the third-order Adams reference: its error is far below that of any
few-step grid (``benchmarks/few_step_vs_diffusers.py`` uses 400 as "exact")."""


@dataclass(frozen=True)
class TunedGrid:
    """A tuned grid and its error (RMS distance to the reference on the pilot batch), with the
    grid it started from and the number of sampler runs it took."""

    timesteps: list[int]
    error: float
    start: list[int]
    start_error: float
    evaluations: int


def ode_reference(denoiser, x_T: torch.Tensor, steps: int = REFERENCE_STEPS, callback=None):
    """The probability-flow ODE solution from ``x_T``: third-order exponential Adams on
    ``steps`` timesteps uniform in log-SNR."""
    ts = denoiser.schedule.timesteps(min(steps, denoiser.schedule.T), "log_snr")
    return sample_adams(denoiser, x_T, ts, callback=callback)


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square difference over every coordinate (float64); inf if ``x`` is not finite."""
    d = x.double() - ref.double()
    value = float(d.pow(2).mean().sqrt())
    return value if math.isfinite(value) else math.inf


def _finite_log_snr(schedule) -> np.ndarray:
    lam = np.asarray(schedule.log_snr, dtype=np.float64)
    finite = lam[np.isfinite(lam)]
    return np.where(np.isfinite(lam), lam, finite.min() - 1.0)


def _moved(ts: list[int], i: int, target: float, lam: np.ndarray) -> int | None:
    """The index nearest log-SNR ``target`` strictly between ts[i - 1] and ts[i + 1] (or 0 for
    the last point), or None when that is where ts[i] already is."""
    hi = ts[i - 1] - 1
    lo = ts[i + 1] + 1 if i + 1 < len(ts) else 0
    if lo > hi:
        return None
    window = lam[lo : hi + 1]
    new = lo + int(np.abs(window - target).argmin())
    return None if new == ts[i] else new


def tune_timesteps(
    sample: Callable[[list[int]], torch.Tensor],
    start: list[int],
    reference: torch.Tensor,
    schedule,
    *,
    max_evals: int = 100,
    delta: float = 1.0,
    min_delta: float = 1.0 / 32,
    on_eval: Callable[[int, float], None] | None = None,
    keep_last: bool = False,
) -> TunedGrid:
    """Compass search (module docstring) from the decreasing grid ``start``; ``sample(ts)`` runs
    the sampler on the pilot batch and ``reference`` is its fine-grid solution.  Stops after
    ``max_evals`` sampler runs (the start's included) or when delta falls below ``min_delta``
    (log-SNR units).  ``on_eval(evaluations, best_error)`` after each run.  ``keep_last``: the
    last timestep stays where ``start`` has it, as a grid for a posterior draw at the end needs
    (the draw is a good approximation only at the smallest noise level)."""
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals={max_evals!r} must be an integer >= 1")
    if not (math.isfinite(delta) and math.isfinite(min_delta) and 0 < min_delta <= delta):
        raise ValueError(f"need 0 < min_delta <= delta, got {min_delta!r}, {delta!r}")
    lam = _finite_log_snr(schedule)
    best = [int(t) for t in start]
    evals = 0

    def error(ts: list[int]) -> float:
        nonlocal evals
        evals += 1
        value = rms(sample(ts), reference)
        if on_eval is not None:
            on_eval(evals, min(value, best_err) if evals > 1 else value)
        return value

    best_err = start_err = error(best)
    while delta >= min_delta and evals < max_evals:
        moved = False
        for i in range(1, len(best) - 1 if keep_last else len(best)):
            for sign in (1.0, -1.0):  # towards the data first
                if evals >= max_evals:
                    break
                new = _moved(best, i, lam[best[i]] + sign * delta, lam)
                if new is None:
                    continue
                trial = best[:i] + [new] + best[i + 1 :]
                err = error(trial)
                if err < best_err:
                    best, best_err, moved = trial, err, True
                    break
        if not moved:
            delta /= 2.0
    return TunedGrid(best, best_err, [int(t) for t in start], start_err, evals)
