"""ddkit's noise schedules and diffusers' scheduler configs, both ways.

A scheduler config describes the forward process a model was trained with (betas, T, the
prediction type, a learned variance); that part maps onto ddkit's ``[diffusion]`` section
exactly or is refused.  Its sampling options (clipping, thresholding, spacing, offsets) describe
one sampler and are not read: ddkit's samplers take their own (``--clip-x0``, ``--spacing``).

ddkit's linear schedule for T steps is beta from 1e-4 to 0.02 scaled by 1000 / T; diffusers'
``linear`` takes its two ends as given, so a config maps when its ends are ddkit's for its T.
ddkit's cosine schedule is diffusers' ``squaredcos_cap_v2`` (same s = 0.008, same cap 0.999),
and zero terminal SNR is ``rescale_betas_zero_snr``.
"""

from __future__ import annotations

import math

import numpy as np

from ..diffusion.schedule import cosine_betas, linear_betas
from .unet import InteropError, short

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# schedulers of a discrete, beta-parameterised forward process (the DDPM family's); others
# (EDM, score-SDE VE, flow matching, ...) describe another process and are refused
BETA_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def scheduler_to_diffusers(diffusion: dict, *, image: bool, cls: str = "DDPMScheduler") -> dict:
    """The diffusers scheduler config (``cls``: DDPMScheduler or DDIMScheduler) of ddkit's
    ``[diffusion]`` section ``diffusion`` (a dict); ``image`` clips x0 to [-1, 1] as DDPM's
    sampler does for 8-bit data."""
    T = diffusion["T"]
    if diffusion["schedule"] == "linear":
        betas = {
            "beta_schedule": "linear",
            "beta_start": 1e-4 * 1000 / T,
            "beta_end": 0.02 * 1000 / T,
        }
    else:
        betas = {"beta_schedule": "squaredcos_cap_v2", "beta_start": 1e-4, "beta_end": 0.02}
    out = {
        "_class_name": cls,
        "num_train_timesteps": T,
        **betas,
        "trained_betas": None,
        "prediction_type": {v: k for k, v in PREDICTIONS.items()}[diffusion["prediction"]],
        "clip_sample": image,
        "clip_sample_range": 1.0,
        "rescale_betas_zero_snr": bool(diffusion.get("zero_terminal_snr", False)),
        "timestep_spacing": "leading",
    }
    if cls == "DDPMScheduler":
        variance = diffusion.get("variance", "fixed_small")
        out["variance_type"] = variance if variance in VARIANCES else "fixed_small"
    else:
        out |= {"set_alpha_to_one": True, "steps_offset": 0}
    return out


def diffusion_from_scheduler(d: dict, *, learned_variance: bool, where: str) -> dict:
    """ddkit's ``[diffusion]`` section (a dict) for a diffusers scheduler config; InteropError
    naming the key that has no ddkit equivalent."""

    def refuse(key, why):
        raise InteropError(f"{where}: {key}={short(d.get(key))} {why}")

    if d.get("_class_name") not in BETA_SCHEDULERS:
        refuse("_class_name", "is not a scheduler of the DDPM family's discrete beta schedule")
    for key in ("num_train_timesteps", "beta_schedule"):
        if key not in d:
            refuse(key, "is missing; the forward process cannot be read without it")
    T = d.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= 10**7:
        refuse("num_train_timesteps", "is not an integer in 1..10^7")
    kind = d.get("beta_schedule", "linear")
    trained = d.get("trained_betas")
    if not isinstance(kind, str):
        refuse("beta_schedule", "is not a name")
    if trained is not None:
        try:
            betas = np.asarray(trained, dtype=np.float64)
        except (TypeError, ValueError):
            refuse("trained_betas", "is not a list of numbers")
        schedule = _named(betas, T)
        if schedule is None:
            refuse("trained_betas", "are neither ddkit's linear nor its cosine betas for this T")
    elif kind == "linear":
        lo, hi = d.get("beta_start", 1e-4), d.get("beta_end", 0.02)
        want = (1e-4 * 1000 / T, 0.02 * 1000 / T)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
        if not numbers or not (
            math.isclose(lo, want[0], rel_tol=1e-6) and math.isclose(hi, want[1], rel_tol=1e-6)
        ):
            raise InteropError(
                f"{where}: linear betas {short(lo)}..{short(hi)} for T={T} are not ddkit's linear "
                f"schedule ({want[0]:.6g}..{want[1]:.6g}: 1e-4..0.02 scaled by 1000/T)"
            )
        schedule = "linear"
    elif kind == "squaredcos_cap_v2":
        schedule = "cosine"
    else:
        refuse("beta_schedule", "has no ddkit equivalent; allowed: linear, squaredcos_cap_v2")
    kind = d.get("prediction_type", "epsilon")
    prediction = PREDICTIONS.get(kind) if isinstance(kind, str) else None
    if prediction is None:
        refuse("prediction_type", f"is not one of {', '.join(PREDICTIONS)}")
    zero = d.get("rescale_betas_zero_snr", False)
    if not isinstance(zero, bool):
        refuse("rescale_betas_zero_snr", "is not true or false")
    variance = d.get("variance_type", "fixed_small")
    variance = "fixed_small" if variance in (None, "fixed_small_log") else variance  # same Sigma
    if not isinstance(variance, str):
        refuse("variance_type", "is not a name")
    if learned_variance:
        if variance != "learned_range":
            refuse("variance_type", "must be learned_range for a UNet with 2x output channels")
        return {
            "schedule": schedule,
            "T": T,
            "zero_terminal_snr": zero,
            "prediction": prediction,
            "variance": "learned_range",
            "loss": "hybrid",
        }
    if variance not in ("fixed_small", "fixed_large"):
        refuse("variance_type", "is not fixed_small or fixed_large for a fixed-variance UNet")
    return {
        "schedule": schedule,
        "T": T,
        "zero_terminal_snr": zero,
        "prediction": prediction,
        "variance": variance,
    }


def _named(betas: np.ndarray, T: int) -> str | None:
    """'linear' or 'cosine' if ``betas`` are ddkit's for T (to float32 rounding), else None."""
    if betas.shape != (T,):
        return None
    for name, make in (("linear", linear_betas), ("cosine", cosine_betas)):
        try:
            ours = make(T)
        except ValueError:
            continue
        if np.allclose(betas, ours, rtol=1e-6, atol=1e-9):
            return name
    return None
