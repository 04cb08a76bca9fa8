"""Where training runs: the device for ``train.device`` and the autocast dtype for
``train.precision``."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """The torch device for ``train.device`` (auto: CUDA if available, else CPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; allowed: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``: bf16 if asked for, or on
    ``auto`` with a CUDA device that supports it; else None (fp32)."""
    if precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None
