"""Bits/dim of a checkpoint on held-out data, as the papers report it: the full variational
bound (DDPM) and the probability-flow ODE (score SDE), each with its standard error over images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import torch

from ..trained import Trained
from .heldout import held_out, mean_stderr

ODE_BATCH_SIZE = 50  # images per PF-ODE batch
_LOG = partial(print, flush=True)


@dataclass(frozen=True)
class BPDResult:
    """Bits/dim of ``num_images`` images of ``split`` by one method, with its standard error."""

    method: str  # "vlb" | "ode"
    bpd: float
    stderr: float  # of the mean over images
    num_images: int
    split: str
    detail: str  # decoder / dequantization / solver, in words
    parts: dict = field(default_factory=dict)  # vlb: prior, decoder L_0, diffusion sum
    per_image: list = field(default_factory=list)  # bits/dim of each image, in subset order

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"{self.method.upper()}: {self.bpd:.4f} +- {self.stderr:.4f} bits/dim "
            f"({self.num_images} {self.split} images; {self.detail})"
        )


def bits_per_dim_vlb(
    trained: Trained,
    *,
    split: str = "test",
    num: int = 1000,
    batch_size: int = 50,
    seed: int = 0,
    device: str = "cpu",
    data=None,
    log=_LOG,
) -> BPDResult:
    """The full bound -- L_T + sum_t L_{t-1} + L_0 over all T terms -- averaged over ``num``
    images of ``split`` (a fixed random subset, seed 0; or of ``data``, a ddkit Dataset, when
    given), with its standard error over images.
    8-bit data uses the discretized Gaussian decoder (DDPM eq. 13): a bound on the discrete code
    length.  The reverse variance is the model's: fixed (beta-tilde or beta) or learned.
    The image subset and, for one ``seed``, every noise draw are the same for any checkpoint of
    the data set, so two checkpoints can be compared image by image (``per_image``)."""
    from ..diffusion.likelihood import vlb_bpd

    data, x0 = held_out(trained, split, num, data)
    d = trained.config.diffusion
    decoder = "discretized" if data.quantized else "gaussian"
    den = trained.denoiser() if d.variance != "learned_range" else None
    gen = torch.Generator(device=device).manual_seed(seed)
    parts, t0 = [], time.perf_counter()
    for start in range(0, len(x0), batch_size):
        xb = x0[start : start + batch_size].to(device)
        if den is not None:  # fixed variance: the denoiser, which clips x0 for 8-bit data
            model, kw = den, {}
        else:  # learned variance: the raw network's two halves
            model, kw = trained.model, {"prediction": d.prediction}
        r = vlb_bpd(
            model,
            trained.schedule,
            xb,
            variance=d.variance,
            decoder=decoder,
            batch_t=max(1, 500 // len(xb)),
            generator=gen,
            **kw,
        )
        parts.append(torch.stack([r.total, r.prior, r.decoder, r.diffusion], 1).cpu())
        log("  vlb: " + eta_line(start + len(xb), len(x0), time.perf_counter() - t0))
    p = torch.cat(parts)
    mean, se = mean_stderr(p[:, 0])
    names = ("prior L_T", "decoder L_0", "diffusion sum L_1..L_T-1")
    detail = (
        f"{decoder} decoder"
        + (" for 8-bit data" if decoder == "discretized" else ", a density")
        + f", {d.variance} variance, T = {trained.schedule.T} terms"
    )
    return BPDResult(
        "vlb",
        mean,
        se,
        len(p),
        split,
        detail,
        {n: mean_stderr(p[:, i + 1])[0] for i, n in enumerate(names)},
        [round(float(v), 6) for v in p[:, 0]],
    )


def bits_per_dim_ode(
    trained: Trained,
    *,
    split: str = "test",
    num: int = 100,
    steps: int = 100,
    probes: int = 1,
    batch_size: int = ODE_BATCH_SIZE,
    seed: int = 0,
    device: str = "cpu",
    data=None,
    log=_LOG,
) -> BPDResult:
    """Bits/dim by the probability-flow ODE (Heun, ``steps`` quadratic intervals, Hutchinson
    divergence with Rademacher probes) with uniform dequantization for 8-bit data, averaged over
    ``num`` images of ``split`` (or of ``data``, a ddkit Dataset) with its standard error over
    images (which includes the probe noise)."""
    from ..diffusion.likelihood import ode_bpd

    data, x0 = held_out(trained, split, num, data)
    den = trained.denoiser()
    gen = torch.Generator(device=device).manual_seed(seed)
    vals, t0 = [], time.perf_counter()
    for start in range(0, len(x0), batch_size):
        xb = x0[start : start + batch_size].to(device)
        r = ode_bpd(
            den,
            xb,
            n_steps=steps,
            hutchinson_samples=probes,
            spacing="quadratic",
            dequantize=data.quantized,
            generator=gen,
        )
        vals.append(r.bpd.cpu())
        log("  ode: " + eta_line(start + len(xb), len(x0), time.perf_counter() - t0))
    per_image = torch.cat(vals)
    mean, se = mean_stderr(per_image)
    deq = "uniform dequantization U(-1/255, 1/255) + log2(127.5)" if data.quantized else "density"
    detail = f"{deq}; Heun on {steps} quadratic intervals, {probes} Rademacher probe(s)"
    return BPDResult(
        "ode", mean, se, len(x0), split, detail, per_image=[round(float(v), 6) for v in per_image]
    )


def eta_line(done: int, total: int, seconds: float) -> str:
    """'k/n images (s s, ETA e s)': the work done so far and the time left at this rate."""
    eta = seconds / done * (total - done) if done else float("nan")
    return f"{done}/{total} images ({seconds:.0f} s, ETA {eta:.0f} s)"
