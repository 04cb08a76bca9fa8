"""``ddkit eval`` as one function: the measurements of a checkpoint that the command line offers,
every input checked before the first model call, results written to a folder.

    evaluate("runs/digits", fid=True, num=2000, out="eval-digits")
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from os import PathLike
from pathlib import Path

from .. import viz
from ..data import as_dataset, read_array_file
from ..data.config import MEMORY
from ..generation import check_labels, noise_source
from ..paths import atomic_write_bytes
from ..resources import (
    check_device,
    check_output_files,
    check_output_folder,
    check_regular_file,
    check_seed,
)
from ..trained import SampleSpec, Trained, load_trained
from .bpd import bits_per_dim_ode, bits_per_dim_vlb
from .checks import check_choices, check_counts, check_memory_use
from .fid import FIDWarning
from .guidance import OUTPUT_FILES as GUIDANCE_FILES
from .guidance import check_scales, guidance_sweep, sample_classifier
from .heldout import data_config_for, split_data
from .inversion import interpolation_grid, reconstruction_error
from .quality import feature_network, min_samples, reference_features, sample_quality
from .sweep import (
    DEFAULT_FAMILIES,
    DEFAULT_NFES,
    SWEEP_FAMILIES,
    sweep_plan,
    sweep_row,
    write_sweep,
)

INVERSION_STEPS = (10, 20, 50, 100, 200, 500, 1000)
OUTPUT_FILES = (
    "eval.json",
    "fid_samples.png",
    "sweep.csv",
    "sweep.md",
    "sweep.png",
    "interpolation.png",
    *GUIDANCE_FILES,
)

_LOG = partial(print, flush=True)


def evaluate(
    checkpoint: str | Path,
    *,
    bpd: bool = False,
    fid: bool = False,
    sweep: bool = False,
    inversion: bool = False,
    interpolation: bool = False,
    out: str | Path = "eval-out",
    weights: str = "ema",
    device: str = "cpu",
    seed: int = 0,
    noise: str | None = None,
    split: str = "test",
    bpd_num: int = 1000,
    bpd_methods: Sequence[str] = ("vlb", "ode"),
    ode_num: int = 100,
    ode_steps: int | None = None,
    probes: int = 1,
    num: int = 10_000,
    ref_num: int = 10_000,
    ref_split: str = "train",
    inception: str | None = None,
    feature_net: str | None = None,
    cache_dir: str | Path | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "trailing",
    sampler_options: dict | None = None,
    clip_x0: str = "auto",
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    guidance_scales: Sequence[float] | None = None,
    batch_size: int = 250,
    nfes: Sequence[int] = DEFAULT_NFES,
    families: Sequence[str] = DEFAULT_FAMILIES,
    inversion_steps: Sequence[int] = INVERSION_STEPS,
    inversion_num: int = 100,
    data=None,
    log=_LOG,
) -> dict:
    """Measure the checkpoint (a file, or a run folder's newest) and write ``eval.json`` with
    every result to the folder ``out``; returns that report.

    ``bpd``: bits/dim of ``split`` by the variational bound (``bpd_num`` images) and the PF-ODE
    (``ode_num`` images, ``ode_steps`` Heun intervals, ``probes`` Hutchinson probes), as chosen
    by ``bpd_methods``.  ``fid``: FID / KID of ``num`` samples of one sampler (``sampler``,
    ``steps``, ``spacing``, ``sampler_options``, ``clip_x0``) against ``ref_num`` images of
    ``ref_split``, on Inception from the weights file ``inception``, the ddkit feature network
    file ``feature_net``, or else the data set's cached ddkit network (trained when absent).
    ``sweep``: the same for each family of ``families`` at each NFE of ``nfes`` (sweep.csv,
    sweep.md, sweep.png, rewritten after each run).  A class-conditional model samples the
    classes in turn with classifier-free ``guidance`` (in ``guidance_interval``), and its
    samples' class accuracy is measured by ddkit's classifier of the data; ``guidance_scales``:
    FID and class accuracy of ``sampler`` at each scale (guidance.md, guidance.png).
    ``inversion``: DDIM encode-decode error of ``inversion_num`` images of ``split`` at each of
    ``inversion_steps``.  ``interpolation``: interpolation.png, decoded with ``steps`` DDIM
    steps.  ``data``: examples to measure against instead of the run's data set, for every
    split (a tensor or array [N, ...], a torch Dataset: see :func:`ddkit.data.as_dataset`; or
    a ``.npy`` file of such an array, read by :func:`ddkit.data.memory.read_array_file`); FID
    on them takes ``inception``, ``feature_net``, the standard Inception weights where found,
    or else ddkit's classifier of the run's data set where it has one.  ``noise``: the
    stochastic samplers' noise source, "philox" or "torch" (default by ``device``:
    :func:`ddkit.generation.noise_source`).

    ValueError, before any model call and with nothing written, when an input is not allowed.
    A FIDWarning says when ``num`` is too small for an unbiased FID."""
    # everything that can be checked is checked before the first model call
    scales = None if guidance_scales is None else check_scales(guidance_scales)
    if not (bpd or fid or sweep or inversion or interpolation or scales):
        raise ValueError(
            "say what to measure: --bpd, --fid, --sweep, --guidance-sweep, --inversion, "
            "--interpolation"
        )
    out = check_output_folder(out, "--out")
    check_output_files(out, OUTPUT_FILES)
    check_device(device, "--device")
    check_seed(seed, "--seed")
    noise = noise_source(noise, device)
    cache = check_output_folder(cache_dir, "--cache") if cache_dir else None
    check_counts(
        bpd_num=bpd_num,
        ode_num=ode_num,
        ode_steps=100 if ode_steps is None else ode_steps,
        probes=probes,
        num=num,
        ref_num=ref_num,
        steps=steps,
        batch_size=batch_size,
        inversion_num=inversion_num,
        nfe=nfes,
        inversion_steps=inversion_steps,
    )
    check_choices(split, ref_split, bpd_methods, families)
    if inception is not None and feature_net is not None:
        raise ValueError("give either --inception or --feature-net, not both")
    if feature_net is not None:
        check_regular_file(feature_net, "--feature-net")
    spec = SampleSpec(
        sampler, steps, spacing, sampler_options or {}, clip_x0, guidance, guidance_interval
    )
    trained = load_trained(checkpoint, weights, device)
    check_labels(trained, spec, num, None)
    if scales and max(scales) > 0:
        check_labels(trained, replace(spec, guidance=max(scales)), num, None)
    samples = fid or sweep or bool(scales)
    T = trained.schedule.T
    if fid or scales or interpolation:  # the sweep chooses its own steps
        spec.timesteps(trained.schedule)
    if inversion:
        for s in inversion_steps:
            try:
                SampleSpec("ddim", s, "leading").timesteps(trained.schedule)
            except ValueError as e:
                raise ValueError(f"--inversion-steps {s}: {e}") from None
    if isinstance(data, str | PathLike):
        data = read_array_file(data)
    if data is not None:
        data = split_data(trained, split, as_dataset(data))
    elif trained.config.data.name == MEMORY and (bpd or samples or inversion):
        raise ValueError(
            f"{trained.path!r} names no data set (a diffusers folder, or a run on data handed in "
            "from Python): --bpd, --fid, --sweep and --inversion measure against one; give its "
            "examples with --data FILE.npy (or data= from Python)"
        )
    if data is None and (bpd or inversion):
        split_data(trained, split)
    ode = bpd and "ode" in bpd_methods
    if ode_steps is None:  # the default: 100 Heun intervals, fewer for a short schedule
        ode_steps = min(100, T - 1)
    if ode and not ode_steps <= T - 1:
        raise ValueError(f"--ode-steps {ode_steps} must lie in 1..{T - 1} (the model's T - 1)")
    check_memory_use(trained, device, samples, num, batch_size, ode, ode_num, probes)
    featnet = plan = classifier = None
    if samples:
        if not trained.is_image:
            raise ValueError("FID needs an image model; this checkpoint models 2-D points")
        if num < 2:
            raise ValueError(f"--num {num}: FID needs at least 2 samples")
        if sweep:
            plan = sweep_plan(trained, families, nfes, clip_x0=clip_x0)
        featnet = feature_network(
            trained, inception, feature_net, cache_dir=cache, data=data, log=log
        )
        if num < min_samples(featnet):
            warnings.warn(
                f"{num} samples for {featnet.dim}-dimensional features; FID is biased below "
                f"N = {min_samples(featnet)} (compare only equal N)",
                FIDWarning,
                stacklevel=2,
            )
        classifier = sample_classifier(trained, featnet, cache, log)

    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        "data": trained.config.data.name if data is None else f"{len(data)} examples handed in",
        "date": time.strftime("%Y-%m-%d"),
        "noise": noise,
        "complete": False,  # true once every measurement asked for is in
    }

    def save() -> None:  # after every stage: an interrupted run keeps what it finished
        atomic_write_bytes(out / "eval.json", json.dumps(report, indent=2).encode())

    save()  # at once: an earlier eval.json in --out must not stand beside this run's files

    log(f"ddkit eval: {trained.path} (step {trained.step}, {trained.weights} weights)")
    if bpd:
        report["bpd"] = _bits_per_dim(
            trained,
            bpd_methods,
            split=split,
            bpd_num=bpd_num,
            ode_num=ode_num,
            ode_steps=ode_steps,
            probes=probes,
            seed=seed,
            device=device,
            data=data,
            log=log,
        )
        save()
    if featnet is not None:
        ref_cfg = data_config_for(trained, ref_split)
        reference = reference_features(
            featnet, ref_cfg, ref_num, cache_dir=cache, data=data, log=log
        )
        report["features"] = {
            "network": featnet.label,
            "path": featnet.path,
            "sha256": featnet.digest,
            "metric": featnet.metric_name,
            # a classifier's features are only as good as the classifier: always on record
            "test_accuracy": getattr(featnet, "test_accuracy", None),
        }
        if classifier is not None:  # scores the class accuracy of a conditional model
            report["class_accuracy_classifier"] = {
                "network": classifier.label,
                "sha256": classifier.digest,
                "test_accuracy": classifier.test_accuracy,
            }
        quality = partial(
            sample_quality,
            trained,
            featnet=featnet,
            reference=reference,
            num=num,
            reference_split=ref_split,
            seed=seed,
            batch_size=batch_size,
            device=device,
            classifier=classifier,
            noise=noise,
        )
    if fid:
        q = quality(spec, samples_out=out / "fid_samples.png")
        log(
            f"{spec.sampler} {spec.steps} steps ({spec.spacing}, {spec.options}, x0 clamp "
            f"{spec.clip_x0}): {q.line()}"
        )
        report["fid"] = {"sampler": spec.as_dict(), **asdict(q)}
        save()
    if sweep:
        title = (
            f"{trained.config.data.name}, {Path(trained.path).name} (step "
            f"{trained.step}), {num} samples"
            + ("" if clip_x0 == "auto" else f", x0 clamp {clip_x0}")
        )
        report["sweep"] = []
        _sweep(plan, quality, out, title, log, report["sweep"], save)
    if scales:
        title = f"{trained.config.data.name}, {Path(trained.path).name}, {num} samples"
        report["guidance_sweep"] = []
        guidance_sweep(quality, spec, scales, out, title, log, report["guidance_sweep"], save)
    if inversion:
        report["inversion"] = reconstruction_error(
            trained,
            inversion_steps,
            split=split,
            num=inversion_num,
            device=device,
            data=data,
            log=log,
        )
        save()
    if interpolation:
        _interpolation(trained, out / "interpolation.png", steps=steps, seed=seed, device=device)
        log(f"wrote {out / 'interpolation.png'}")
    report["complete"] = True
    save()
    log(f"wrote {out / 'eval.json'}")
    return report


def _bits_per_dim(
    trained: Trained,
    methods,
    *,
    split,
    bpd_num,
    ode_num,
    ode_steps,
    probes,
    seed,
    device,
    data,
    log,
) -> list[dict]:
    res = []
    if "vlb" in methods:
        r = bits_per_dim_vlb(
            trained, split=split, num=bpd_num, seed=seed, device=device, data=data, log=log
        )
        log(r.line())
        for name, v in r.parts.items():
            log(f"    {name}: {v:.4f}")
        res.append(r)
    if "ode" in methods:
        r = bits_per_dim_ode(
            trained,
            split=split,
            num=ode_num,
            steps=ode_steps,
            probes=probes,
            seed=seed,
            device=device,
            data=data,
            log=log,
        )
        log(r.line())
        res.append(r)
    return [asdict(r) for r in res]


def _sweep(plan, quality, out: Path, title: str, log, rows: list, save) -> None:
    """Each configuration of ``plan`` in turn, appended to ``rows``; sweep.csv/.md/.png and
    eval.json are rewritten after each, so that an interrupted sweep keeps its finished rows."""
    for i, (fam, s) in enumerate(plan):
        q = quality(s)
        rows.append(sweep_row(fam, s, q))
        log(f"[{i + 1}/{len(plan)}] {SWEEP_FAMILIES[fam][0]}, {s.steps} steps: {q.line()}")
        write_sweep(rows, out, title)
        save()
    log(f"wrote {out / 'sweep.csv'}, sweep.md and sweep.png")


def _interpolation(trained: Trained, path: Path, *, steps: int, seed: int, device: str) -> None:
    x = interpolation_grid(trained, steps=steps, seed=seed, device=device)
    if trained.is_image:
        viz.save_image_grid(x, path, nrow=9)
    else:
        viz.save_scatter(x, path)
