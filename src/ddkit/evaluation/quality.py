"""Sample quality of a checkpoint: the feature network FID is computed on for its data, features
of real reference images (cached), and FID / KID of a sampler's samples against them.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..data import DataConfig, load_dataset
from ..generation import check_labels
from ..paths import atomic_write_bytes, default_cache_dir
from ..progress import Progress
from ..resources import check_output_folder, check_seed
from ..trained import SampleSpec, Trained, generate
from .features import (
    ClassifierFeatures,
    accuracy,
    classifier_path,
    extract,
    feature_scale,
    load_classifier,
    quantize,
    save_classifier,
    train_classifier,
)
from .fid import FIDWarning, feature_stats, frechet_distance, kid

LABELLED = ("digits", "mnist5k", "fashion_mnist")

_LOG = partial(print, flush=True)


def classifier_features(
    data_cfg: DataConfig,
    *,
    cache_dir: Path | None = None,
    train_if_missing: bool = True,
    retrain: bool = False,
    epochs: int = 4,
    seed: int = 0,
    log=_LOG,
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


def train_or_show_classifier(
    data: str,
    *,
    path: str | None = None,
    cache_dir: str | Path | None = None,
    retrain: bool = False,
    epochs: int = 4,
    seed: int = 0,
    log=_LOG,
) -> ClassifierFeatures:
    """``ddkit features``: ddkit's feature network for the data set ``data`` (its files in the
    folder ``path``, where it has one), logged with its test accuracy: the cached one, or one
    trained (``epochs``, ``seed``) when absent or when ``retrain``.  ValueError for a data set
    without labels."""
    check_seed(seed, "--seed")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs {epochs!r} must be an integer >= 1")
    cfg = DataConfig(data, path=path)
    if cfg.name not in LABELLED:
        raise ValueError(
            f"--data {cfg.name!r} has no labels to train on; allowed: {', '.join(LABELLED)}"
        )
    cache = check_output_folder(cache_dir, "--cache") if cache_dir else None
    file = classifier_path(cfg.name, load_dataset(cfg).shape, cache)
    if file.exists() and not retrain:
        net = load_classifier(file)
        log(f"{file}: ddkit-{net.dataset} features, test accuracy {net.test_accuracy:.4f}")
        return net
    net = classifier_features(cfg, cache_dir=cache, retrain=True, epochs=epochs, seed=seed, log=log)
    log(f"{net.path}: test accuracy {net.test_accuracy:.4f}")
    return net


def feature_network(
    trained: Trained,
    inception: str | None = None,
    feature_net: str | None = None,
    *,
    cache_dir=None,
    data=None,
    log=_LOG,
):
    """The features FID is computed on: Inception from a local weights file (``inception``), a
    given ddkit feature-network file (``feature_net``), or else the standard Inception weights
    where :func:`find_inception` finds them, or else ddkit's cached classifier for the
    checkpoint's data set (trained when absent).  Which one, and a classifier's test accuracy,
    is logged.  Checked against the checkpoint's data; with ``data`` (examples handed in, a
    ddkit Dataset, of the model's shape) any network for that shape will do, and when none is
    given or found the run's data set must be one ddkit has a classifier of."""
    from .inception import KNOWN_INCEPTION_FILES, load_inception

    if not trained.is_image:
        raise ValueError("FID needs an image model; this checkpoint models 2-D points")
    if inception is not None and feature_net is not None:
        raise ValueError("give either Inception weights or a ddkit feature network, not both")
    if inception is not None:
        try:
            net = load_inception(inception)
        except ValueError as e:
            if "nception" in str(e):
                raise
            raise ValueError(f"--inception: {e}") from None
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
    elif (found := find_inception(cache_dir)) is not None:
        net = load_inception(found)
        log(
            f"FID features: the Inception-v3 weights found at {found} (--feature-net FILE: ddkit's)"
        )
    elif data is not None and trained.config.data.name not in LABELLED:
        raise ValueError(
            "FID against data handed in needs Inception weights (--inception FILE) or a ddkit "
            "feature network (--feature-net FILE): ddkit trains its own only for a named, "
            f"labelled data set ({', '.join(LABELLED)})"
        )
    else:
        net = classifier_features(trained.config.data, cache_dir=cache_dir, log=log)
        where = " or ".join(str(d) for d in inception_dirs(cache_dir))
        log(
            f"FID features: ddkit's {net.label} classifier, test accuracy {net.test_accuracy:.1%}"
            f" (no Inception weights in {where}; put pt_inception-2015-12-05-6726825d.pth there,"
            " or pass --inception FILE, for a FID comparable with published ones)"
        )
    if feature_net is not None:
        log(f"FID features: {net.label} from {feature_net}, test accuracy {net.test_accuracy:.1%}")
    if data is None:
        net.check_data(trained.config.data.name, trained.data_shape)
    elif isinstance(net, ClassifierFeatures):  # any net of the right image shape will do
        net.check_data(net.dataset, trained.data_shape)
    else:
        net.check_data("the data handed in", trained.data_shape)
    return net


def inception_dirs(cache_dir=None) -> list[Path]:
    """Where :func:`find_inception` looks: ``<cache>/inception`` (ddkit's cache, default
    ``~/.cache/ddkit``), then torch hub's checkpoints folder, where pytorch-fid downloads the
    weights (``torch.hub.get_dir()/checkpoints``: ``$TORCH_HOME/hub``, by default under
    ``~/.cache/torch``)."""
    return [
        Path(cache_dir or default_cache_dir()) / "inception",
        Path(torch.hub.get_dir()) / "checkpoints",
    ]


# the sizes of the files in KNOWN_INCEPTION_FILES: only files of these sizes are hashed
INCEPTION_FILE_SIZES = (95_628_359, 87_335_461)


def find_inception(cache_dir=None) -> Path | None:
    """The first regular file in :func:`inception_dirs` that is the standard FID Inception
    weights (pytorch-fid's name or one of ``INCEPTION_FILE_SIZES``, then its sha256 one of
    ``KNOWN_INCEPTION_FILES``), or None."""
    from .features import file_digest
    from .inception import KNOWN_INCEPTION_FILES

    for folder in inception_dirs(cache_dir):
        try:
            paths = sorted(folder.iterdir()) if folder.is_dir() else []
            for path in paths:
                named = path.name == "pt_inception-2015-12-05-6726825d.pth"
                if path.is_file() and (named or path.stat().st_size in INCEPTION_FILE_SIZES):
                    if file_digest(path)[:8] in KNOWN_INCEPTION_FILES:
                        return path
        except OSError:  # an unreadable folder or file is not the weights
            continue
    return None


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
    data=None,
    log=_LOG,
) -> torch.Tensor:
    """Features [n, d] of ``n = min(num, len(data))`` real images (a fixed random subset, seed 0)
    of the given split, cached per data set, split, feature network and n; or, with ``data``
    (examples handed in, a ddkit Dataset), of its images, not cached."""
    given = data is not None
    data = data if given else load_dataset(data_cfg)
    n = min(num, len(data))
    where = "the data handed in" if given else f"the {data_cfg.split} split of {data_cfg.name}"
    if n < num:
        log(f"{where} has {n} images; using all of them")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    if given:
        return _features(featnet, data, idx)
    cache = (cache_dir or default_cache_dir()) / "reference"
    name = f"{featnet.label}-{featnet.digest[:12]}-{_data_key(data_cfg)}-{data_cfg.split}-n{n}.pt"
    path = cache / name
    if path.exists():
        return torch.load(path, weights_only=True)["features"].double()
    feats = _features(featnet, data, idx)
    buf = io.BytesIO()
    torch.save({"features": feats.float(), "split": data_cfg.split, "n": n}, buf)
    atomic_write_bytes(path, buf.getvalue())
    log(f"cached reference features of {n} {data_cfg.split} images: {path}")
    return feats


def _features(featnet, data, idx: torch.Tensor) -> torch.Tensor:
    """Features of the items ``idx`` of ``data``, a thousand images at a time, with progress."""
    out = []
    with Progress(len(idx), "reference features", unit="image") as bar:
        for i in range(0, len(idx), 1000):
            out.append(extract(featnet, data.get_batch(idx[i : i + 1000])))
            bar.update(len(out[-1]))
    return torch.cat(out)


@dataclass(frozen=True)
class QualityResult:
    """FID and KID of ``num_samples`` samples against ``num_reference`` real images."""

    metric: str  # "FID" or "FID (ddkit-<dataset> features)"
    fid: float
    kid: float  # x 1e3 as usually printed
    kid_std: float
    num_samples: int
    num_reference: int
    reference_split: str
    nfe: int
    seconds_per_sample: float
    # class-conditional models: the share of samples ddkit's classifier gives their class
    class_accuracy: float | None = None

    def line(self) -> str:
        """One line for the terminal."""
        acc = "" if self.class_accuracy is None else f", class accuracy {self.class_accuracy:.3f}"
        return (
            f"{self.metric} = {self.fid:.3f}, KID x 1e3 = {self.kid:.3f} +- {self.kid_std:.3f}"
            f"{acc} ({self.num_samples} samples vs {self.num_reference} {self.reference_split} "
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
    classifier: ClassifierFeatures | None = None,
    noise: str | None = None,
) -> QualityResult:
    """FID and KID of ``num`` samples of ``spec`` (stochastic samplers' noise from ``noise``, as
    in :func:`ddkit.generation.generate`) against reference features; for a class-conditional
    model (drawn class by class in turn) with a ``classifier`` of its data, also the share of
    samples it assigns to the class they were drawn for."""
    t0 = time.perf_counter()
    desc = f"sampling ({spec.sampler}, {spec.steps} steps)"
    labels = check_labels(trained, spec, num, None)
    x = generate(
        trained,
        spec,
        num,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=desc,
        labels=labels,
        noise=noise,
    )
    wall = time.perf_counter() - t0
    acc = None
    if classifier is not None and labels is not None:
        acc = accuracy(classifier.net, quantize(x), labels)
    if samples_out is not None:
        from .. import viz

        viz.save_samples(x[:64], samples_out)
    fid, k = feature_quality(extract(featnet, x, progress="sample features"), reference, seed=seed)
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
        acc,
    )
