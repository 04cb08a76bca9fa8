"""``ddkit eval --guidance-sweep``: FID / KID and the class accuracy of samples at several
classifier-free guidance scales, the trade-off that guidance buys (Ho & Salimans 2022, Fig. 1).

Each scale's row goes to ``guidance.md`` and ``guidance.png`` (FID and class accuracy against w)
and to eval.json as soon as it is measured, so an interrupted sweep keeps its finished rows.
Class accuracy is the share of samples that ddkit's classifier of the data set (the feature
network of ``ddkit features``, its own test accuracy on record beside it) assigns to the class
they were drawn for; samples are drawn class by class in turn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from .. import viz
from ..paths import atomic_write_bytes
from ..trained import Trained
from .features import ClassifierFeatures
from .heldout import data_config_for
from .quality import LABELLED, classifier_features

OUTPUT_FILES = ("guidance.md", "guidance.png")


def check_scales(scales) -> list[float]:
    """The scales as floats; ValueError unless each is a finite number >= 0 (at least one)."""
    scales = list(scales)
    if not scales:
        raise ValueError("--guidance-sweep needs at least one scale")
    for w in scales:
        ok = isinstance(w, (int, float)) and not isinstance(w, bool)
        if not ok or not math.isfinite(w) or w < 0:
            raise ValueError(f"--guidance-sweep {w!r}: a scale must be a finite number >= 0")
    return [float(w) for w in scales]


def sample_classifier(trained: Trained, featnet, cache_dir, log) -> ClassifierFeatures | None:
    """ddkit's classifier of the model's data set, to score the class accuracy of a
    class-conditional model's samples (the FID feature network itself when it is that
    classifier); None for an unconditional model or a data set ddkit has no classifier of."""
    if not trained.num_classes or trained.config.data.name not in LABELLED:
        return None
    if isinstance(featnet, ClassifierFeatures):
        return featnet
    cfg = data_config_for(trained, "train")
    return classifier_features(cfg, cache_dir=cache_dir, log=log)


def guidance_sweep(quality, spec, scales, out: Path, title: str, log, rows: list, save) -> None:
    """``quality(spec with guidance w)`` for each scale w, appended to ``rows``; guidance.md,
    guidance.png and eval.json rewritten after each."""
    for i, w in enumerate(scales):
        q = quality(replace(spec, guidance=w))
        rows.append({"guidance": w, **asdict(q)})
        log(f"[{i + 1}/{len(scales)}] guidance {w:g}: {q.line()}")
        write_guidance(rows, out, title)
        save()
    log(f"wrote {out / 'guidance.md'} and guidance.png")


def write_guidance(rows: list[dict], out: Path, title: str) -> None:
    """guidance.md (a table) and guidance.png (FID and class accuracy against the scale)."""
    metric = rows[0]["metric"]
    lines = [
        f"# {title}",
        "",
        f"| guidance w | {metric} | KID x 1e3 | class accuracy | model calls |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = "" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        lines.append(
            f"| {r['guidance']:g} | {r['fid']:.3f} | {r['kid']:.3f} +- {r['kid_std']:.3f} "
            f"| {acc} | {r['nfe']} |"
        )
    atomic_write_bytes(out / "guidance.md", ("\n".join(lines) + "\n").encode())
    viz.save_guidance_curve(rows, out / "guidance.png", title)
