"""ddkit: denoising diffusion models (DDPM, DDIM, score SDE), verified against exact ground truth.

``ddkit.train``, ``ddkit.load``, ``ddkit.fid`` and ``ddkit.as_dataset`` are the Python entry
points (:mod:`ddkit.api`); a loaded model samples in memory with ``.sample(n, ...)``, and
``ddkit.evaluate`` (``ddkit eval``) measures a run, on its data set or on examples handed in.

The top-level names are imported on first use, so that ``import ddkit.cli`` does not load torch
before the command line has set up the process (see ``ddkit.cli``)."""

import importlib

__version__ = "0.1.0"
_LAZY = {
    "train": "api",
    "load": "api",
    "fid": "api",
    "as_dataset": "api",
    "evaluate": "evaluation.run",
    "DATA": "diffusion.schedule",
    "Denoiser": "diffusion.denoiser",
    "NoiseSchedule": "diffusion.schedule",
    "PhiloxNoise": "noise",
    "Prediction": "diffusion.parameterization",
    "timesteps": "diffusion.schedule",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddkit' has no attribute {name!r}")
