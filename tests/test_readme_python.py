"""The README's "Use from Python" code blocks run as written (in a fresh folder) and do what
the text around them says."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_code():
    assert len(_blocks()) >= 2


@pytest.mark.slow
def test_use_from_python_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(_blocks()):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
        if i == 0:  # the first block ends by printing the FID
            fid = float(capsys.readouterr().out.split()[-1])
    # 1500 steps on 2000 points: close to the data (the Frechet distance of the coordinates;
    # the data's own spread is about 0.3 per coordinate)
    assert 0.0 <= fid < 0.01, fid
    assert namespace["samples"].shape == (2000, 2) and torch.isfinite(namespace["samples"]).all()
    assert (tmp_path / "runs" / "moons" / "checkpoints").is_dir()
    # the model's likelihood of the points beats the best Gaussian's (bits per coordinate)
    points, nll = namespace["points"].double(), namespace["nll"]
    gauss = 0.5 * torch.logdet(2 * torch.pi * torch.e * torch.cov(points.T)) / 2 / math.log(2)
    assert nll["method"] == "ode" and nll["num_images"] == 500
    assert nll["bpd"] + 3 * nll["stderr"] < float(gauss), (nll, float(gauss))
