"""ddkit's feature networks for FID and KID, and what every feature network shares.

Two kinds of network give features, and the number they give is named after the kind:

* ``InceptionFeatures`` (:mod:`ddkit.evaluation.inception`): Inception-v3 pool3 (2048-d) with the
  weights of the reference FID implementation.  Its numbers are "FID".
* ``ClassifierFeatures`` (here): a small CNN that ddkit trains on a labelled data set
  (:func:`train_classifier`), penultimate layer (64-d).  Its numbers are
  "FID (ddkit-<dataset> features)": comparable with each other, never with Inception FID.

Every image is quantized to 8 bits before its features are taken (:func:`quantize`), real and
generated alike, as when samples are saved as PNG files.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..paths import default_cache_dir
from ..progress import Progress
from ..resources import check_regular_file

SCHEMA = 1
CLASSIFIER_KIND = "ddkit-classifier"


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats rounded to the 256 levels of an 8-bit image (values outside are clipped)."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def file_digest(path: Path) -> str:
    """The sha256 of a file, in hex: the cache key of features made with its weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Classifier(nn.Module):
    """conv-BN-ReLU at full, 1/2 and 1/4 resolution (width w, 2w, 4w), then a 64-d ReLU layer
    (the features) and a linear classifier."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        side = image_size // 4
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for the classifier (>= 4)")
        self.body = nn.Sequential(
            *block(channels, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.Flatten(),
            nn.Linear(4 * width * side * side, 64),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes] of images [N, C, H, W]."""
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate layer."""
        return self.body(x)


@dataclass(frozen=True)
class ClassifierFeatures:
    """A trained :class:`Classifier` with what it was trained on; call it on [-1, 1] images."""

    net: Classifier
    dataset: str
    shape: tuple[int, int, int]
    test_accuracy: float
    digest: str  # sha256 of the weights file: the cache key of reference features
    path: str
    scale: float = (
        1.0  # root-mean-square feature of the training images: features are divided by it
    )
    dim: int = 64

    @property
    def label(self) -> str:
        """Names the network in cache keys and reports."""
        return f"ddkit-{self.dataset}"

    @property
    def metric_name(self) -> str:
        """The name of the FID these features give."""
        return f"FID (ddkit-{self.dataset} features)"

    def check_data(self, dataset: str, shape: tuple[int, ...]) -> None:
        """ValueError unless images of ``dataset`` with ``shape`` are what this net was made for."""
        if dataset != self.dataset or tuple(shape) != self.shape:
            raise ValueError(
                f"feature network {self.path!r} was trained on {self.dataset} "
                f"{list(self.shape)}, not on {dataset} {list(shape)}; train one with "
                f"'ddkit features --data {dataset}'"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(quantize(x.float())).double() / self.scale


def classifier_path(dataset: str, shape, cache_dir: Path | None = None) -> Path:
    """Where the cache keeps ddkit's feature network for ``dataset`` images of ``shape``."""
    c, h, w = shape
    return (
        (cache_dir or default_cache_dir()) / "features" / f"ddkit-{dataset}-{c}x{h}x{w}.safetensors"
    )


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log=None,
) -> tuple[Classifier, float]:
    """Train a :class:`Classifier` on [-1, 1] images (quantized as at feature time) with Adam and
    a linearly decaying learning rate, small random shifts as augmentation; returns the net (eval
    mode) and its test accuracy."""
    if train_x.ndim != 4 or len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("train_classifier needs images [N, C, H, W] and one label per image")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Classifier(train_x.shape[1], train_x.shape[-1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    train_x, test_x = quantize(train_x.float()), quantize(test_x.float())
    pad = max(1, train_x.shape[-1] // 14)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_x), generator=g)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = F.pad(train_x[idx], (pad,) * 4, value=-1.0)
            dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
            x = x[..., dy : dy + train_x.shape[-2], dx : dx + train_x.shape[-1]]
            loss = F.cross_entropy(net(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(net, test_x, test_y)
        if log:
            seconds = time.perf_counter() - t0
            log(f"epoch {epoch + 1}/{epochs}: test accuracy {acc:.4f} ({seconds:.0f} s)")
    return net.eval(), acc


@torch.no_grad()
def accuracy(net: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """The share of images ``x`` that ``net`` (put in eval mode) labels as ``y``."""
    net.eval()
    right = sum(
        int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return right / len(x)


def save_classifier(
    net: Classifier,
    path: Path,
    *,
    dataset: str,
    shape,
    test_accuracy: float,
    feature_scale: float,
    **info,
) -> None:
    """Write ``net`` as safetensors (atomically) with what :func:`load_classifier` needs: the
    data set and image shape it was trained for, its test accuracy and its feature scale (see
    :func:`feature_scale`); ``info`` is stored beside them."""
    from safetensors.torch import save as st_save

    from ..paths import atomic_write_bytes

    meta = {
        "kind": CLASSIFIER_KIND,
        "schema": SCHEMA,
        "dataset": dataset,
        "shape": list(shape),
        "num_classes": net.head[-1].out_features,
        "test_accuracy": test_accuracy,
        "feature_scale": feature_scale,
        **info,
    }
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(Path(path), st_save(state, metadata={"ddkit": json.dumps(meta)}))


def load_classifier(path: str | Path) -> ClassifierFeatures:
    """A feature net written by :func:`save_classifier`; ValueError naming the file otherwise
    (missing, not a regular file -- a FIFO or device is never opened --, not safetensors, or
    its metadata or tensors do not describe a ddkit feature network)."""
    from safetensors import safe_open

    path = check_regular_file(path, "feature network")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("ddkit", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{str(path)!r} is not a ddkit feature network ({one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("kind") != CLASSIFIER_KIND:
        raise ValueError(f"{str(path)!r} is not a ddkit feature network (schema {SCHEMA})")
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{str(path)!r} is not a ddkit feature network (schema {SCHEMA})")
    try:
        c, h, w = (int(v) for v in meta["shape"])
        classes = int(meta["num_classes"])
        if c not in (1, 3) or not 4 <= h <= 1024 or w != h or not 2 <= classes <= 100_000:
            raise ValueError(f"shape {[c, h, w]} with {classes} classes is not one it makes")
        net = Classifier(c, h, classes)
        net.load_state_dict(state)
        return ClassifierFeatures(
            net.eval(),
            str(meta["dataset"]),
            (c, h, w),
            float(meta["test_accuracy"]),
            file_digest(path),
            str(path),
            float(meta["feature_scale"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{str(path)!r}: its metadata or tensors do not describe a ddkit feature network "
            f"({one_line(e)})"
        ) from None


def one_line(e: BaseException) -> str:
    """An exception as '<type>: <first line of its message>'."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@torch.no_grad()
def feature_scale(net: Classifier, images: torch.Tensor, batch_size: int = 1000) -> float:
    """Root-mean-square of the raw features of ``images``: dividing by it puts the features at
    unit scale, the scale that KID's kernel (x.y / d + 1)^3 assumes (as for Inception's)."""
    net.eval()
    sq = sum(
        float(net.features(quantize(images[i : i + batch_size].float())).double().pow(2).sum())
        for i in range(0, len(images), batch_size)
    )
    return math.sqrt(sq / (len(images) * net.body[-2].out_features))


@torch.no_grad()
def extract(
    featnet, images: torch.Tensor, batch_size: int = 500, progress: str | None = None
) -> torch.Tensor:
    """Features [N, d] (float64) of [-1, 1] images [N, ...], in batches; ``progress`` names the
    phase in a progress display (with its ETA, once it has run 5 s)."""
    out = []
    with Progress(len(images), progress or "", unit="image", enabled=progress is not None) as bar:
        for i in range(0, len(images), batch_size):
            out.append(featnet(images[i : i + batch_size]))
            bar.update(len(out[-1]))
    return torch.cat(out)
