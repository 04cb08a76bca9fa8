"""The compiled-kernel cache (cpu/kernel_cache.py, as gn_silu.library() uses it): new folders and
files are owner-only whatever the umask; a library is loaded only when its bytes match the hash
ddkit stored when it built it (else it is rebuilt, and a planted library never runs); a folder
or file that another user could write, or a symbolic link, is refused with a one-line warning
and the U-Net runs as PyTorch ops; a library without the kernel's symbols falls back too."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddkit import cpu
from ddkit.cpu import gn_silu
from ddkit.models.layers import GroupNormSiLU

COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
needs_compiler = pytest.mark.skipif(
    COMPILER is None or shutil.which(COMPILER) is None,
    reason="building a library needs a C compiler (cc/gcc; Debian: apt-get install gcc)",
)
pytestmark = needs_compiler

# a library with the kernel's symbol names whose constructor writes the file $DDKIT_TEST_MARKER;
# -DONLY_FORWARD leaves out two of the three symbols
PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("DDKIT_TEST_MARKER");
    FILE *f = marker ? fopen(marker, "w") : NULL;
    if (f) fclose(f);
}
void gn_silu_forward(void) {}
#ifndef ONLY_FORWARD
void gn_silu_backward(void) {}
long long gn_silu_scratch_per_thread(long long channels) { return -7; }
#endif
"""


@dataclass(frozen=True)
class Built:
    name: str  # the library's file name in the kernels folder
    data: bytes  # the bytes ddkit built
    folder: Path  # the kernels folder of the build


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """One real build by gn_silu.library(), in a fresh cache, under umask 0o002."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    patch = pytest.MonkeyPatch()
    patch.setenv("DDKIT_CACHE", str(cache))
    gn_silu.library.cache_clear()
    umask = os.umask(0o002)
    try:
        assert gn_silu.library() is not None
    finally:
        os.umask(umask)
        patch.undo()
        gn_silu.library.cache_clear()
    (library,) = (cache / "kernels").glob("gn_silu-*.so")
    return Built(library.name, library.read_bytes(), library.parent)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, bytes]:
    """Libraries ddkit did not build: "planted" (all three symbols) and "partial" (one)."""
    folder = tmp_path_factory.mktemp("foreign")
    source = folder / "planted.c"
    source.write_text(PLANTED_C)
    out = {}
    for kind, extra in (("planted", []), ("partial", ["-DONLY_FORWARD"])):
        target = folder / f"{kind}.so"
        subprocess.run(
            [COMPILER, "-shared", "-fPIC", *extra, "-o", str(target), str(source)], check=True
        )
        out[kind] = target.read_bytes()
    return out


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache folder as $DDKIT_CACHE, with library()'s memo cleared before and after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("DDKIT_CACHE", str(folder))
    gn_silu.library.cache_clear()
    yield folder
    gn_silu.library.cache_clear()


@pytest.fixture
def builds(monkeypatch, tmp_path, built) -> Callable[[], int]:
    """$CC replaced by a script that reports the real compiler's version (the cache key stays
    that of ``built``) and builds by copying the bytes of ``built``; returns a function that
    counts the builds so far."""
    log = tmp_path / "builds.log"
    (tmp_path / "built.so").write_bytes(built.data)
    script = tmp_path / "fake-cc"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {shlex.quote(shutil.which(COMPILER))} --version\n'
        'while [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
        f"echo build >> {shlex.quote(str(log))}\n"
        f'cp {shlex.quote(str(tmp_path / "built.so"))} "$out"\n'
    )
    script.chmod(0o700)
    monkeypatch.setenv("CC", str(script))
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


def _install(folder: Path, name: str, data: bytes, digest: str | None = None) -> Path:
    """``data`` as ``folder/name`` (0o700) with ``digest`` (default: its SHA-256) as its hash
    file (0o600); no hash file when ``digest`` is empty."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / name
    path.write_bytes(data)
    path.chmod(0o700)
    if digest != "":
        hash_file = folder / f"{name}.sha256"
        hash_file.write_text((digest or hashlib.sha256(data).hexdigest()) + "\n")
        hash_file.chmod(0o600)
    return path


def _refused(match: str) -> None:
    """library() is None with one one-line RuntimeWarning matching ``match`` (and not again),
    and a GroupNormSiLU layer computes through PyTorch ops."""
    with pytest.warns(RuntimeWarning) as record:
        assert gn_silu.library() is None
    (warning,) = [w for w in record if "ddkit" in str(w.message)]
    message = str(warning.message)
    assert "\n" not in message and "PyTorch ops" in message, message
    assert match in message, message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gn_silu.library() is None  # memoised: no second warning
    x = torch.randn(2, 4, 3, 3)
    assert not cpu.kernel_applies(x, torch.ones(4), 2)
    norm = GroupNormSiLU(2, 4)
    expected = F.silu(F.group_norm(x, 2, norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(norm(x), expected)


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o777


def test_a_fresh_build_under_umask_002_is_owner_only(built):
    assert _mode(built.folder) == 0o700
    library = built.folder / built.name
    hash_file = built.folder / f"{built.name}.sha256"
    assert _mode(library) & 0o077 == 0 and _mode(hash_file) & 0o077 == 0
    assert hash_file.read_text().strip() == hashlib.sha256(built.data).hexdigest()
    assert sorted(p.name for p in built.folder.iterdir()) == sorted([built.name, hash_file.name])


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022])
def test_new_folders_and_files_are_owner_only_whatever_the_umask(cache, builds, built, umask):
    before = os.umask(umask)
    try:
        assert gn_silu.library() is not None
    finally:
        os.umask(before)
    kernels = cache / "kernels"
    assert builds() == 1 and _mode(kernels) == 0o700
    assert _mode(kernels / built.name) == 0o700
    assert _mode(kernels / f"{built.name}.sha256") == 0o600
    # the next process reuses the verified library without building
    gn_silu.library.cache_clear()
    assert gn_silu.library() is not None and builds() == 1


def test_an_existing_owner_only_folder_keeps_its_mode(cache, builds, built):
    (cache / "kernels").mkdir(parents=True)
    (cache / "kernels").chmod(0o750)
    assert gn_silu.library() is not None
    assert _mode(cache / "kernels") == 0o750


@pytest.mark.parametrize("digest", ["", "0" * 64], ids=["no-hash", "wrong-hash"])
def test_a_planted_library_is_never_loaded_but_rebuilt(
    cache, builds, built, foreign, monkeypatch, tmp_path, digest
):
    marker = tmp_path / "planted-ran"
    monkeypatch.setenv("DDKIT_TEST_MARKER", str(marker))
    path = _install(cache / "kernels", built.name, foreign["planted"], digest)
    lib = gn_silu.library()
    assert not marker.exists(), "the planted library's constructor ran"
    assert lib is not None and lib.gn_silu_scratch_per_thread(8) != -7
    assert builds() == 1 and path.read_bytes() == built.data
    digest_now = (cache / "kernels" / f"{built.name}.sha256").read_text().strip()
    assert digest_now == hashlib.sha256(built.data).hexdigest()


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702])
def test_a_folder_others_can_write_is_refused(cache, builds, built, mode):
    _install(cache / "kernels", built.name, built.data).parent.chmod(mode)
    _refused(f"{cache / 'kernels'} is writable by group or others")
    assert builds() == 0


@pytest.mark.parametrize("suffix", ["", ".sha256"], ids=["library", "hash"])
def test_a_file_others_can_write_is_refused(cache, builds, built, suffix):
    path = _install(cache / "kernels", built.name, built.data)
    Path(f"{path}{suffix}").chmod(0o766)
    _refused(f"{path}{suffix} is writable by group or others")
    assert builds() == 0


def test_a_folder_of_another_user_is_refused(cache, builds, built, monkeypatch):
    _install(cache / "kernels", built.name, built.data)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    _refused(f"{cache / 'kernels'} is owned by uid {uid}, not by this user")
    assert builds() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("suffix", ["", ".sha256"], ids=["library", "hash"])
def test_a_file_of_another_user_is_refused(cache, builds, built, suffix):
    path = Path(f"{_install(cache / 'kernels', built.name, built.data)}{suffix}")
    os.chown(path, 4242, -1)
    _refused(f"{path} is owned by uid 4242")
    assert builds() == 0


def test_a_symlinked_folder_is_refused(cache, builds, built, tmp_path):
    real = _install(tmp_path / "elsewhere", built.name, built.data).parent
    cache.mkdir()
    (cache / "kernels").symlink_to(real)
    _refused(f"{cache / 'kernels'} is a symbolic link")
    assert builds() == 0


@pytest.mark.parametrize("suffix", ["", ".sha256"], ids=["library", "hash"])
def test_a_symlinked_file_is_refused(cache, builds, built, tmp_path, suffix):
    elsewhere = _install(tmp_path / "elsewhere", built.name, built.data)
    path = _install(cache / "kernels", built.name, built.data)
    Path(f"{path}{suffix}").unlink()
    Path(f"{path}{suffix}").symlink_to(f"{elsewhere}{suffix}")
    _refused(f"{path}{suffix} is a symbolic link")
    assert builds() == 0


def test_a_verified_library_without_the_kernels_symbols_falls_back(
    cache, builds, built, foreign, monkeypatch, tmp_path
):
    monkeypatch.setenv("DDKIT_TEST_MARKER", str(tmp_path / "marker"))
    path = _install(cache / "kernels", built.name, foreign["partial"])
    _refused(f"{path} lacks gn_silu_backward, gn_silu_scratch_per_thread")
    assert builds() == 0
