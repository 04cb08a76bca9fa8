"""glibc malloc set to keep freed memory (``ddkit.cpu.malloc``): it takes effect, page
faults from re-allocated buffers stop, and every way of opting out is respected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ddkit.cpu import malloc as allocator

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# page faults per training step (forward + backward) of a small U-Net, after two warm-up steps
PROBE = """
import resource, sys, torch
from ddkit.cpu.malloc import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
torch.set_num_threads(1)
from ddkit.models import preset
torch.manual_seed(0)
model = preset("ddpm-28").replace(base_channels=16).build()
x, t = torch.randn(8, 1, 28, 28), torch.randint(0, 1000, (8,))
def step():
    model.zero_grad(set_to_none=True)
    model(x, t).square().mean().backward()
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(int(applied), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _probe(tune: bool, **env) -> tuple[bool, int]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DDKIT_MALLOC_TUNING", "LD_PRELOAD", *allocator._USER_SETTINGS)
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if tune else "0"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux with glibc)")
def test_training_steps_stop_page_faulting():
    """glibc's defaults hand some of a step's freed buffers back to the kernel and fault them in
    again the next step (2,226 faults per step of this probe, glibc 2.36); kept, they are
    reused (2 per step)."""
    plain_applied, plain_faults = _probe(False)
    applied, faults = _probe(True)
    assert applied and not plain_applied
    assert plain_faults > 1000
    assert faults < plain_faults / 5


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux with glibc)")
@pytest.mark.parametrize(
    "env",
    [
        {"DDKIT_MALLOC_TUNING": "0"},
        {"MALLOC_TRIM_THRESHOLD_": "1000000"},
        {"MALLOC_MMAP_THRESHOLD_": "1000000"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
    ],
)
def test_the_users_settings_win(env):
    applied, _ = _probe(True, **env)
    assert not applied


def test_not_applied_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
