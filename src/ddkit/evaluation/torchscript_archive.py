"""The parameters and buffers of a TorchScript archive, read without running any of its code.

A TorchScript archive (``torch.jit.save``) is a zip file whose entries share one top folder
``<root>``: ``<root>/data.pkl`` pickles the module tree (each module an object of a
``__torch__.*`` class whose state is a dict of its attributes), ``<root>/data/<key>`` hold the
raw bytes of the tensors' storages, and ``<root>/code/`` holds the TorchScript source of every
class.  ``torch.jit.load`` compiles and runs that source (a class's ``__setstate__`` runs while
the archive loads), so it is never called here.  Instead:

* ``data.pkl`` is unpickled with a fixed allowlist of globals: every ``__torch__.*`` class
  becomes an inert record of its state, the tensor rebuild function and storage types become
  checked references into the storages, and any other global refuses the file;
* each storage is read from its zip entry, whose size must be exactly what the pickle declares;
* which attributes are parameters and buffers is read from the ``__parameters__`` and
  ``__buffers__`` lists of each class's source, parsed (never run) with :mod:`ast`.

The result has the names and tensors of ``torch.jit.load(path).state_dict()``.  Constant tensors
of the code (``<root>/constants.pkl``) are not part of that state and are not read.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import pickletools
import re
import stat
import sys
import zipfile
from collections import OrderedDict
from typing import BinaryIO

import torch

MAX_ENTRY_BYTES = 1 << 30  # no zip entry larger than 1 GiB is read
MAX_TEXT_BYTES = 1 << 23  # nor a pickle or source file larger than 8 MiB
MAX_DEPTH = 64  # how deeply modules may nest
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")  # a storage's key
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_]{1,200}")  # a module's attribute: "conv", "0", ...


class ArchiveError(ValueError):
    """The archive is malformed or holds something this reader refuses."""


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading.  ArchiveError unless it is a regular file: a FIFO,
    directory or device is refused from ``os.stat`` before it is opened, and the file is opened
    without blocking and checked again, so nothing waits on a FIFO swapped in between.
    OSError (FileNotFoundError, ...) if it cannot be opened."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ArchiveError("not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArchiveError("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_torchscript_archive(f: BinaryIO) -> bool:
    """Whether the open file ``f`` is a zip file with TorchScript source (``*/code/`` entries).
    Leaves ``f`` at its start."""
    try:
        if not zipfile.is_zipfile(f):
            return False
        f.seek(0)
        with zipfile.ZipFile(f) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False
    finally:
        f.seek(0)


def one_line(e: BaseException, limit: int = 200) -> str:
    """``e`` as one short line: its message, or its type's name and message."""
    text = " ".join(str(e).split())[:limit]
    if isinstance(e, ArchiveError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Inert:
    """Base of the objects the unpickler hands out: no ``__dict__``, and the pickle cannot set
    their state (its BUILD opcode is refused)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise ArchiveError(f"the pickle sets the state of a {type(self).__name__.strip('_')}")


class _Callable(_Inert):
    """An allowed global: calls ``fn``."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _StorageKind(_Inert):
    """A storage type of the pickle (``torch.FloatStorage``, ...): its dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage(_Inert):
    """A storage read from the archive, as a flat tensor."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class _TensorRef(_Inert):
    """A checked view into a storage: ``flat.as_strided(size, stride, offset)``."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def tensor(self) -> torch.Tensor:
        return self.storage.flat.as_strided(self.size, self.stride, self.offset)


class _ScriptObject:
    """An object of a ``__torch__`` class: records the state the pickle gives it, nothing else.
    ``cls_name`` is set on the subclass made for each class name."""

    __slots__ = ("state",)
    cls_name: tuple[str, str] = ("", "")

    def __setstate__(self, state):
        if hasattr(self, "state"):
            raise ArchiveError(f"the state of {'.'.join(self.cls_name)} is set twice")
        self.state = state


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int for v in value):
        raise ArchiveError(f"tensor {what} is not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """The checked stand-in for ``torch._utils._rebuild_tensor_v2``."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise ArchiveError("tensor with a bad storage or offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or any(v < 0 for v in size + stride):
        raise ArchiveError("tensor with a bad size or stride")
    if type(requires_grad) is not bool or hooks != {} or metadata not in (None, {}):
        raise ArchiveError("tensor with hooks or metadata")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.flat.numel():
            raise ArchiveError("tensor reaches past the end of its storage")
        numel = 1
        for n in size:
            numel *= n
        if numel * storage.flat.element_size() > MAX_ENTRY_BYTES:
            raise ArchiveError("tensor is too large")
    return _TensorRef(storage, offset, size, stride)


def _plain_list(items):
    if not isinstance(items, list):
        raise ArchiveError("typed list that is not a list")
    return list(items)


def _type_tagged(value, type_name):
    return value


_ALLOWED: dict[tuple[str, str], _Inert] = {
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor),
    ("collections", "OrderedDict"): _Callable(OrderedDict),
    ("torch.jit._pickle", "restore_type_tag"): _Callable(_type_tagged),
    **{
        ("torch.jit._pickle", f"build_{kind}list"): _Callable(_plain_list)
        for kind in ("int", "double", "bool", "tensor")
    },
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Archive:
    """The entries of an open TorchScript zip, read within a budget of bytes."""

    def __init__(self, z: zipfile.ZipFile, budget: int):
        self.names = set(z.namelist())
        roots = [n[: -len("/data.pkl")] for n in self.names if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(roots) != 1:
            raise ArchiveError(f"{len(roots)} '<root>/data.pkl' entries instead of one")
        self.z, self.root, self.budget = z, roots[0], budget
        self.storages: dict[str, _Storage] = {}
        self.classes: dict[str, dict[str, ast.ClassDef]] = {}

    def has(self, name: str) -> bool:
        return f"{self.root}/{name}" in self.names

    def read(self, name: str, size: int | None = None, limit: int = MAX_ENTRY_BYTES) -> bytearray:
        """The bytes of entry ``<root>/name``; ArchiveError if it is missing, if ``size`` is given
        and it differs, or if it is larger than the budget left or ``limit``."""
        try:
            info = self.z.getinfo(f"{self.root}/{name}")
        except KeyError:
            raise ArchiveError(f"no entry {name!r}") from None
        if size is not None and info.file_size != size:
            raise ArchiveError(f"entry {name!r} has {info.file_size} bytes, not {size}")
        if info.file_size > min(limit, self.budget):
            raise ArchiveError(f"entry {name!r} is too large ({info.file_size} bytes)")
        self.budget -= info.file_size
        buf = bytearray(info.file_size)
        with self.z.open(info) as f:
            if f.readinto(buf) != len(buf) or f.read(1):
                raise ArchiveError(f"entry {name!r} does not have its declared size")
        return buf

    def storage(self, pid) -> _Storage:
        """The storage named by the pickle's persistent id
        ``('storage', kind, key, location, numel)``."""
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise ArchiveError("a persistent id that is not a storage")
        _, kind, key, _, numel = pid
        ok_key = isinstance(key, str) and _KEY.fullmatch(key)
        if not isinstance(kind, _StorageKind) or not ok_key or type(numel) is not int:
            raise ArchiveError("a malformed storage id")
        if key in self.storages:
            flat = self.storages[key].flat
            if flat.dtype != kind.dtype or flat.numel() != numel:
                raise ArchiveError(f"storage {key!r} is declared twice, differently")
            return self.storages[key]
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if numel < 0 or numel * itemsize > MAX_ENTRY_BYTES:
            raise ArchiveError(f"storage {key!r} is too large or of negative size")
        buf = self.read(f"data/{key}", numel * itemsize)
        flat = torch.frombuffer(buf, dtype=kind.dtype) if buf else torch.empty(0, dtype=kind.dtype)
        self.storages[key] = _Storage(flat)
        return self.storages[key]

    def class_def(self, module: str, name: str) -> ast.ClassDef:
        """The parsed source of class ``name`` of ``module`` (``__torch__.a.b`` is in
        ``code/__torch__/a/b.py``)."""
        if module not in self.classes:
            name_of_file = "code/" + module.replace(".", "/") + ".py"
            source = self.read(name_of_file, limit=MAX_TEXT_BYTES).decode("utf-8")
            tree = ast.parse(source)
            defs = [n for n in tree.body if isinstance(n, ast.ClassDef)]
            self.classes[module] = {c.name: c for c in defs}
        if name not in self.classes[module]:
            raise ArchiveError(f"no source for class {module}.{name}")
        return self.classes[module][name]


class _Unpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with the allowlist of globals; storages come from the archive."""

    def __init__(self, data: bytes | bytearray, archive: _Archive):
        # memo indices are where the C unpickler allocates memory: each must be below the
        # pickle's length, as those of any pickler are
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg < len(data):
                raise ArchiveError("the pickle's memo index is out of range")
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.script_classes: dict[tuple[str, str], type] = {}

    def find_class(self, module, name):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        torch_class = module == "__torch__" or module.startswith("__torch__.")
        if torch_class and all(_IDENTIFIER.fullmatch(p) for p in [*module.split("."), name]):
            if key not in self.script_classes:
                attrs = {"__slots__": (), "cls_name": key}
                self.script_classes[key] = type("ScriptObject", (_ScriptObject,), attrs)
            return self.script_classes[key]
        raise ArchiveError(f"the pickle refers to {module[:80]!r}.{name[:80]!r}, not allowed")

    def persistent_load(self, pid):
        return self.archive.storage(pid)


def _slot_names(class_def: ast.ClassDef, slot: str) -> list[str]:
    """The literal list ``slot = [...]`` in the class body (``__parameters__``, ...)."""
    for node in class_def.body:
        targets = [getattr(t, "id", None) for t in getattr(node, "targets", ())]
        if isinstance(node, ast.Assign) and targets == [slot]:
            names = ast.literal_eval(node.value)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ArchiveError(f"{class_def.name}.{slot} is not a list of names")
            return names
    return []


def _state_dict(root: object, archive: _Archive) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the module tree under ``root``, named and ordered as
    ``nn.Module.state_dict`` names them: each module's parameters, its buffers, then its
    submodules, in attribute order."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    stack = [("", root)]
    while stack:
        prefix, obj = stack.pop()
        if not isinstance(obj, _ScriptObject):
            raise ArchiveError("the pickle's top object is not a TorchScript module")
        if id(obj) in seen or prefix.count(".") > MAX_DEPTH:
            raise ArchiveError("modules that nest in a cycle or too deeply")
        seen.add(id(obj))
        module, name = obj.cls_name
        state = getattr(obj, "state", None)
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ArchiveError(f"{module}.{name} has a custom state (a __setstate__ of its own)")
        class_def = archive.class_def(module, name)
        named = [k for k, v in state.items() if isinstance(v, _TensorRef | _ScriptObject)]
        if any(not _ATTRIBUTE.fullmatch(k) for k in named):
            raise ArchiveError(f"{module}.{name} has an attribute that is not a name")
        for slot in ("__parameters__", "__buffers__"):
            names = set(_slot_names(class_def, slot))
            for attr, value in state.items():
                if attr in names and value is not None:
                    if not isinstance(value, _TensorRef):
                        raise ArchiveError(f"{module}.{name}.{attr!r} is not a tensor")
                    out[prefix + attr] = value.tensor()
        children = []
        for attr, value in state.items():
            if isinstance(value, _ScriptObject):
                child = archive.class_def(*value.cls_name)
                if any(getattr(b, "id", None) == "Module" for b in child.bases):
                    children.append((f"{prefix}{attr}.", value))
        stack.extend(reversed(children))
    return out


def read_torchscript_state(f: BinaryIO) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript archive open in ``f``, as
    ``torch.jit.load(f).state_dict()`` gives them (CPU tensors), without running any of its code.
    At most MAX_ENTRY_BYTES per entry (MAX_TEXT_BYTES for the pickle and each source file) and
    four times the file's size, plus 1 MiB, in all are read.
    ArchiveError (one line) for anything malformed or not allowed."""
    if sys.byteorder != "little":
        raise ArchiveError("TorchScript archives are read on little-endian machines only")
    size = os.fstat(f.fileno()).st_size
    try:
        with zipfile.ZipFile(f) as z:
            archive = _Archive(z, budget=4 * size + (1 << 20))
            if archive.has("byteorder") and archive.read("byteorder") != b"little":
                raise ArchiveError("the tensors are stored big-endian")
            root = _Unpickler(archive.read("data.pkl", limit=MAX_TEXT_BYTES), archive).load()
            return _state_dict(root, archive)
    except ArchiveError:
        raise
    except Exception as e:  # a malformed zip, pickle or source of any kind
        raise ArchiveError(one_line(e)) from None
