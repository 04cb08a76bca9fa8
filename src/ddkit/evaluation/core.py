"""Evaluation of a trained checkpoint as the papers do it: bits/dim on held-out data (variational
bound and probability-flow ODE), FID / KID of samples, and sample quality against the number of
model calls (the sweep).  ``ddkit eval`` is a thin wrapper over these functions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint import atomic_write_bytes
from ..data import DataConfig, load_dataset
from ..diffusion.schedule import max_steps
from ..trained import SampleSpec, Trained, generate
from .features import (
    ClassifierFeatures,
    classifier_path,
    default_cache_dir,
    extract,
    feature_scale,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .fid import FIDWarning, feature_stats, frechet_distance, kid

LABELLED = ("digits", "mnist5k", "fashion_mnist")


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def data_config_for(trained: Trained, split: str) -> DataConfig:
    """The checkpoint's data set, the given split, no augmentation."""
    return replace(trained.config.data, split=split, hflip=False)


def check_shape(trained: Trained, data) -> None:
    if tuple(data.shape) != tuple(trained.data_shape):
        raise ValueError(
            f"the checkpoint's model makes {list(trained.data_shape)} samples but the data set "
            f"{data.name!r} has shape {list(data.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# feature networks


def classifier_features(
    data_cfg: DataConfig,
    *,
    cache_dir: Path | None = None,
    train_if_missing: bool = True,
    retrain: bool = False,
    epochs: int = 4,
    seed: int = 0,
    log=_log_default,
) -> ClassifierFeatures:
    """ddkit's feature network for this data set, from the cache; trained on the data set's
    train split (and saved atomically) when absent or when ``retrain``.  Data sets without labels
    raise ValueError."""
    if data_cfg.name not in LABELLED:
        raise ValueError(
            f"ddkit trains feature networks on labelled data sets ({', '.join(LABELLED)}); "
            f"{data_cfg.name!r} has no labels: pass --inception PATH to the FID Inception weights"
        )
    train = load_dataset(replace(data_cfg, split="train", hflip=False))
    path = classifier_path(data_cfg.name, train.shape, cache_dir)
    if path.exists() and not retrain:
        return load_classifier(path)
    if not train_if_missing:
        raise ValueError(f"no feature network for {data_cfg.name} at {str(path)!r}")
    test = load_dataset(replace(data_cfg, split="test", hflip=False))
    log(
        f"training the ddkit-{data_cfg.name} feature network on {len(train)} labelled images "
        f"(saved to {path})"
    )
    all_train = torch.arange(len(train))
    all_test = torch.arange(len(test))
    train_x = train.get_batch(all_train)
    net, acc = train_classifier(
        train_x,
        train.labels,
        test.get_batch(all_test),
        test.labels,
        epochs=epochs,
        seed=seed,
        log=log,
    )
    save_classifier(
        net,
        path,
        dataset=data_cfg.name,
        shape=train.shape,
        test_accuracy=acc,
        feature_scale=feature_scale(net, train_x),
        epochs=epochs,
        seed=seed,
        train_images=len(train),
        test_images=len(test),
    )
    log(f"test accuracy {acc:.4f} on {len(test)} held-out images")
    return load_classifier(path)


def feature_network(
    trained: Trained,
    inception: str | None = None,
    feature_net: str | None = None,
    *,
    cache_dir=None,
    log=_log_default,
):
    """The features FID is computed on: Inception from a local weights file (``inception``), a
    given ddkit feature-network file (``feature_net``), or else ddkit's cached classifier for the
    checkpoint's data set (trained when absent).  Checked against the checkpoint's data."""
    from .features import KNOWN_INCEPTION_FILES, load_inception

    if not trained.is_image:
        raise ValueError("FID needs an image model; this checkpoint models 2-D points")
    if inception is not None and feature_net is not None:
        raise ValueError("give either Inception weights or a ddkit feature network, not both")
    if inception is not None:
        net = load_inception(inception)
        if not net.reference_weights:
            warnings.warn(
                f"{inception!r} is not a known file of the FID Inception weights (its sha256 "
                f"starts with neither of {sorted(KNOWN_INCEPTION_FILES)}): its FID is not "
                "comparable with published ones",
                FIDWarning,
                stacklevel=2,
            )
    elif feature_net is not None:
        net = load_classifier(feature_net)
    else:
        net = classifier_features(trained.config.data, cache_dir=cache_dir, log=log)
    net.check_data(trained.config.data.name, trained.data_shape)
    return net


def _data_key(cfg: DataConfig) -> str:
    """Names the data a reference was computed on; folders by a hash of their path."""
    if cfg.path is None:
        return cfg.name
    return f"{cfg.name}-{hashlib.sha256(str(Path(cfg.path).resolve()).encode()).hexdigest()[:10]}"


def reference_features(
    featnet,
    data_cfg: DataConfig,
    num: int,
    *,
    cache_dir: Path | None = None,
    log=_log_default,
) -> torch.Tensor:
    """Features [n, d] of ``n = min(num, len(data))`` real images (a fixed random subset, seed 0)
    of the given split, cached per data set, split, feature network and n."""
    data = load_dataset(data_cfg)
    n = min(num, len(data))
    if n < num:
        log(f"the {data_cfg.split} split of {data_cfg.name} has {n} images; using all of them")
    cache = (cache_dir or default_cache_dir()) / "reference"
    name = f"{featnet.label}-{featnet.digest[:12]}-{_data_key(data_cfg)}-{data_cfg.split}-n{n}.pt"
    path = cache / name
    if path.exists():
        return torch.load(path, weights_only=True)["features"].double()
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    feats = torch.cat(
        [extract(featnet, data.get_batch(idx[i : i + 1000])) for i in range(0, n, 1000)]
    )
    buf = io.BytesIO()
    torch.save({"features": feats.float(), "split": data_cfg.split, "n": n}, buf)
    atomic_write_bytes(path, buf.getvalue())
    log(f"cached reference features of {n} {data_cfg.split} images: {path}")
    return feats


# ---------------------------------------------------------------------------------------------
# sample quality


@dataclass(frozen=True)
class QualityResult:
    metric: str  # "FID" or "FID (ddkit-<dataset> features)"
    fid: float
    kid: float  # x 1e3 as usually printed
    kid_std: float
    num_samples: int
    num_reference: int
    reference_split: str
    nfe: int
    seconds_per_sample: float

    def line(self) -> str:
        return (
            f"{self.metric} = {self.fid:.3f}, KID x 1e3 = {self.kid:.3f} +- {self.kid_std:.3f} "
            f"({self.num_samples} samples vs {self.num_reference} {self.reference_split} "
            f"images; {self.nfe} model calls, {self.seconds_per_sample * 1e3:.1f} ms/sample)"
        )


def min_samples(featnet) -> int:
    """Below 2 x the feature dimension the covariance, and so FID, is strongly biased."""
    return 2 * featnet.dim


def feature_quality(feats: torch.Tensor, reference: torch.Tensor, *, seed: int = 0):
    """(FID, KID) of features [n, d] against reference features; KID over 50 subsets drawn with
    ``seed``.  The small-N FID warning is left to the caller, which says it once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDWarning)
        fid = frechet_distance(feature_stats(feats), feature_stats(reference))
    return fid, kid(reference, feats, subsets=50, generator=torch.Generator().manual_seed(seed))


def sample_quality(
    trained: Trained,
    spec: SampleSpec,
    featnet,
    reference: torch.Tensor,
    num: int,
    *,
    reference_split: str = "train",
    seed: int = 0,
    batch_size: int = 250,
    device: str = "cpu",
    samples_out: Path | None = None,
) -> QualityResult:
    """FID and KID of ``num`` samples of ``spec`` against reference features."""
    t0 = time.perf_counter()
    x = generate(trained, spec, num, seed=seed, batch_size=batch_size, device=device)
    wall = time.perf_counter() - t0
    if samples_out is not None:
        from .. import viz

        viz.save_samples(x[:64], samples_out)
    fid, k = feature_quality(extract(featnet, x), reference, seed=seed)
    return QualityResult(
        featnet.metric_name,
        fid,
        k.mean * 1e3,
        k.std * 1e3,
        num,
        len(reference),
        reference_split,
        spec.nfe(),
        wall / num,
    )


# ---------------------------------------------------------------------------------------------
# likelihood


@dataclass(frozen=True)
class BPDResult:
    method: str  # "vlb" | "ode"
    bpd: float
    stderr: float  # of the mean over images
    num_images: int
    split: str
    detail: str  # decoder / dequantization / solver, in words
    parts: dict = field(default_factory=dict)  # vlb: prior, decoder L_0, diffusion sum
    per_image: list = field(default_factory=list)  # bits/dim of each image, in subset order

    def line(self) -> str:
        return (
            f"{self.method.upper()}: {self.bpd:.4f} +- {self.stderr:.4f} bits/dim "
            f"({self.num_images} {self.split} images; {self.detail})"
        )


def _held_out(trained: Trained, split: str, num: int):
    data = load_dataset(data_config_for(trained, split))
    check_shape(trained, data)
    n = min(num, len(data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return data, data.get_batch(idx)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se


def bits_per_dim_vlb(
    trained: Trained,
    *,
    split: str = "test",
    num: int = 1000,
    batch_size: int = 50,
    seed: int = 0,
    device: str = "cpu",
    log=_log_default,
) -> BPDResult:
    """The full bound -- L_T + sum_t L_{t-1} + L_0 over all T terms -- averaged over ``num``
    images of ``split`` (a fixed random subset, seed 0), with its standard error over images.
    8-bit data uses the discretized Gaussian decoder (DDPM eq. 13): a bound on the discrete code
    length.  The reverse variance is the model's: fixed (beta-tilde or beta) or learned.
    The image subset and, for one ``seed``, every noise draw are the same for any checkpoint of
    the data set, so two checkpoints can be compared image by image (``per_image``)."""
    from ..diffusion.likelihood import vlb_bpd

    data, x0 = _held_out(trained, split, num)
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
        log(f"  vlb: {start + len(xb)}/{len(x0)} images ({time.perf_counter() - t0:.0f} s)")
    p = torch.cat(parts)
    mean, se = _mean_se(p[:, 0])
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
        {n: _mean_se(p[:, i + 1])[0] for i, n in enumerate(names)},
        [round(float(v), 6) for v in p[:, 0]],
    )


def bits_per_dim_ode(
    trained: Trained,
    *,
    split: str = "test",
    num: int = 100,
    steps: int = 100,
    probes: int = 1,
    batch_size: int = 50,
    seed: int = 0,
    device: str = "cpu",
    log=_log_default,
) -> BPDResult:
    """Bits/dim by the probability-flow ODE (Heun, ``steps`` quadratic intervals, Hutchinson
    divergence with Rademacher probes) with uniform dequantization for 8-bit data, averaged over
    ``num`` images with its standard error over images (which includes the probe noise)."""
    from ..diffusion.likelihood import ode_bpd

    data, x0 = _held_out(trained, split, num)
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
        log(f"  ode: {start + len(xb)}/{len(x0)} images ({time.perf_counter() - t0:.0f} s)")
    per_image = torch.cat(vals)
    mean, se = _mean_se(per_image)
    deq = "uniform dequantization U(-1/255, 1/255) + log2(127.5)" if data.quantized else "density"
    detail = f"{deq}; Heun on {steps} quadratic intervals, {probes} Rademacher probe(s)"
    return BPDResult(
        "ode", mean, se, len(x0), split, detail, per_image=[round(float(v), 6) for v in per_image]
    )


# ---------------------------------------------------------------------------------------------
# quality against the number of model calls


def _heun_steps(nfe: int) -> int | None:
    n = (nfe + 1) // 2  # Heun: 2 n - 1 calls for n timesteps
    return n if n >= 2 else None


# family -> (label, steps for a target NFE, SampleSpec for those steps)
SWEEP_FAMILIES: dict[str, tuple[str, object, object]] = {
    "ddpm": (
        "DDPM ancestral, sigma-hat (fixed_large), uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddpm", s, "leading", {"variance": "fixed_large"}),
    ),
    "ddim-eta0": (
        "DDIM eta=0, uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "leading", {"eta": 0.0}),
    ),
    "ddim-eta0-quad": (
        "DDIM eta=0, quadratic",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "quadratic", {"eta": 0.0}),
    ),
    "ddim-eta0-ddimquad": (
        "DDIM eta=0, quadratic to 0.8T (DDIM's code)",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "ddim_quadratic", {"eta": 0.0}),
    ),
    "ddim-eta1": (
        "DDIM eta=1 (= DDPM fixed_small), uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "leading", {"eta": 1.0}),
    ),
    "ddim-eta1-quad": (
        "DDIM eta=1, quadratic",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "quadratic", {"eta": 1.0}),
    ),
    "ddim-eta1-ddimquad": (
        "DDIM eta=1, quadratic to 0.8T (DDIM's code)",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "ddim_quadratic", {"eta": 1.0}),
    ),
    "dpmpp_2m": (
        "DPM-Solver++(2M), log-SNR spacing",
        lambda nfe: nfe,
        lambda s: SampleSpec("dpmpp_2m", s, "log_snr"),
    ),
    "pf-ode": (
        "PF-ODE, Heun, quadratic",
        _heun_steps,
        lambda s: SampleSpec("heun", s, "quadratic"),
    ),
}
DEFAULT_FAMILIES = tuple(SWEEP_FAMILIES)
DEFAULT_NFES = (5, 10, 20, 50, 100, 1000)


def sweep_plan(
    trained: Trained, families, nfes, clip_x0: str = "auto"
) -> list[tuple[str, SampleSpec]]:
    """(family, spec) for each family and target NFE, skipping duplicates (quadratic at T steps
    is uniform) and NFEs a family cannot reach (more steps than T, or than the 0.8 T + 1 indices
    of DDIM's quadratic); every spec with the given x0 clamping; validated before any sampling."""
    T = trained.schedule.T
    plan, seen = [], set()
    for fam in families:
        if fam not in SWEEP_FAMILIES:
            raise ValueError(f"unknown sweep family {fam!r}; allowed: {', '.join(SWEEP_FAMILIES)}")
        _, steps_for, make = SWEEP_FAMILIES[fam]
        for nfe in nfes:
            steps = steps_for(nfe)
            if steps is None:
                continue
            spec = replace(make(steps), clip_x0=clip_x0)
            if steps > max_steps(T, spec.spacing):
                continue
            ts = tuple(spec.timesteps(trained.schedule))
            key = (spec.sampler, ts, tuple(sorted(spec.options.items())))
            if key in seen:
                continue
            seen.add(key)
            plan.append((fam, spec))
    if not plan:
        raise ValueError(f"no sampler of {list(families)} can run at NFE {list(nfes)} with T = {T}")
    return plan


SWEEP_COLUMNS = (
    "family",
    "label",
    "sampler",
    "spacing",
    "options",
    "clip_x0",
    "steps",
    "nfe",
    "metric",
    "fid",
    "kid_x1e3",
    "kid_std_x1e3",
    "num_samples",
    "num_reference",
    "reference_split",
    "seconds_per_sample",
)


def sweep_row(fam: str, spec: SampleSpec, q: QualityResult) -> dict:
    return {
        "family": fam,
        "label": SWEEP_FAMILIES[fam][0],
        "sampler": spec.sampler,
        "spacing": spec.spacing,
        "options": json.dumps(spec.options, sort_keys=True),
        "clip_x0": spec.clip_x0,
        "steps": spec.steps,
        "nfe": q.nfe,
        "metric": q.metric,
        "fid": round(q.fid, 4),
        "kid_x1e3": round(q.kid, 4),
        "kid_std_x1e3": round(q.kid_std, 4),
        "num_samples": q.num_samples,
        "num_reference": q.num_reference,
        "reference_split": q.reference_split,
        "seconds_per_sample": round(q.seconds_per_sample, 5),
    }


def write_sweep(rows: list[dict], out: Path, title: str) -> None:
    """sweep.csv, sweep.md (one row per run, and FID by family x NFE) and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode())

    metric = rows[0]["metric"]
    nfes = sorted({r["nfe"] for r in rows})
    fams = list(dict.fromkeys(r["family"] for r in rows))
    lines = [
        f"# {title}",
        "",
        f"{metric} (lower is better) by sampler and number of model calls.",
        "",
    ]
    lines.append("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    lines.append("|---|" + "---:|" * len(nfes))
    for fam in fams:
        by = {r["nfe"]: r for r in rows if r["family"] == fam}
        cells = [f"{by[n]['fid']:.2f}" if n in by else "" for n in nfes]
        lines.append(f"| {SWEEP_FAMILIES[fam][0]} | " + " | ".join(cells) + " |")
    lines += ["", "Every run:", ""]
    cols = (
        "label",
        "steps",
        "nfe",
        "fid",
        "kid_x1e3",
        "kid_std_x1e3",
        "num_samples",
        "seconds_per_sample",
    )
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    atomic_write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for fam in fams:
        pts = sorted((r["nfe"], r["fid"]) for r in rows if r["family"] == fam)
        ax.plot(*zip(*pts), marker="o", label=SWEEP_FAMILIES[fam][0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model calls per sample (NFE)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "sweep.png", buf.getvalue())


# ---------------------------------------------------------------------------------------------
# DDIM inversion and interpolation (DDIM sec. 5.3 and 5.4)


@torch.no_grad()
def reconstruction_error(
    trained: Trained,
    steps_list,
    *,
    split: str = "test",
    num: int = 100,
    spacing: str = "leading",
    batch_size: int = 100,
    device: str = "cpu",
    log=_log_default,
) -> list[dict]:
    """DDIM Table 2: encode held-out images to x_T with DDIM run backwards and decode with
    DDIM eta=0 on the same S timesteps; the per-dimension mean squared error (data in [-1, 1]),
    mean over images with its standard error, for each S."""
    from ..samplers import ddim_invert, sample_ddim

    _, x0 = _held_out(trained, split, num)
    den = trained.denoiser()
    rows = []
    for steps in steps_list:
        ts = SampleSpec("ddim", steps, spacing).timesteps(trained.schedule)
        t0, errs = time.perf_counter(), []
        for start in range(0, len(x0), batch_size):
            xb = x0[start : start + batch_size].to(device)
            z = ddim_invert(den, xb, ts)
            xr = sample_ddim(den, z, ts, eta=0.0)
            errs.append((xr - xb).pow(2).flatten(1).mean(1).cpu())
        mean, se = _mean_se(torch.cat(errs))
        rows.append(
            {
                "steps": steps,
                "mse": mean,
                "stderr": se,
                "num_images": len(x0),
                "split": split,
                "spacing": spacing,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        log(f"  S = {steps}: reconstruction MSE {mean:.3g} +- {se:.2g}")
    return rows


@torch.no_grad()
def interpolation_grid(
    trained: Trained,
    *,
    rows: int = 6,
    cols: int = 9,
    steps: int = 50,
    seed: int = 0,
    device: str = "cpu",
) -> torch.Tensor:
    """DDIM sec. 5.3: for each row, two latents x_T ~ N(0, I) and the DDIM eta=0 samples of
    ``cols`` spherical interpolations between them, [rows * cols, *shape]."""
    from ..samplers import sample_ddim, slerp

    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn((rows, *trained.data_shape), generator=g)
    z1 = torch.randn((rows, *trained.data_shape), generator=g)
    alphas = torch.linspace(0, 1, cols)
    z = torch.stack([slerp(z0, z1, torch.full((rows,), float(a))) for a in alphas], 1)
    z = z.reshape(rows * cols, *trained.data_shape).to(device)
    ts = SampleSpec("ddim", steps, "leading").timesteps(trained.schedule)
    return sample_ddim(trained.denoiser(), z, ts, eta=0.0).float().cpu()
