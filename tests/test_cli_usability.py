"""What the command line tells a user: its version, every option's default in --help, and
samples as one PNG per image for the FID tools that read folders."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_run import MLP_CONFIG, write_checkpoint

from ddkit import __version__
from ddkit.cli import build_parser, main


def _stdout(argv) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return buf.getvalue()


def test_version():
    assert _stdout(["--version"]).strip() == f"ddkit {__version__}"


def test_help_shows_every_default():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subs.items():
        text = sub.format_help()
        for action in sub._actions:
            d = action.default
            if not action.option_strings or any(d is v for v in (None, False, argparse.SUPPRESS)):
                continue
            shown = " ".join(map(str, d)) if isinstance(d, list) else str(d)
            flat = "".join(text.split())  # argparse wraps at spaces and hyphens
            assert "".join(f"default: {shown}".split()) in flat or "default" in (
                action.help or ""
            ), (name, action)


def _image_checkpoint(tmp_path: Path) -> Path:
    d = {
        "model": {
            "arch": "unet",
            "image_size": 8,
            "in_channels": 1,
            "base_channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [],
            "dropout": 0.0,
            "groups": 8,
        },
        "data": {"name": "digits"},
        "diffusion": {"T": 100},
        "train": {"max_steps": 1},
    }
    return write_checkpoint(tmp_path / "c.safetensors", d)


def test_sample_format_png_writes_one_file_per_sample(tmp_path, capsys):
    path, out = _image_checkpoint(tmp_path), tmp_path / "o"
    argv = ["sample", str(path), "--steps", "3", "--num", "5", "--out", str(out)]
    assert main([*argv, "--format", "png"]) == 0
    images = np.load(out / "samples.npz")["images"]
    files = sorted((out / "png").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for f, img in zip(files, images, strict=True):
        assert np.array_equal(np.asarray(Image.open(f)), img[..., 0])
    assert main([*argv, "--format", "png"]) == 2  # png/ exists: a new set is not mixed in
    assert "png/ exists" in capsys.readouterr().err
    assert len(list((out / "png").iterdir())) == 5


def test_sample_format_png_on_a_full_disk_exits_1_in_one_line_leaving_no_partial_set(
    tmp_path, monkeypatch, capsys
):
    """The disk fills up at the fourth PNG: one line naming it and the free space, exit 1, no
    png/ folder and no temporary folder beside it; the samples written before it are whole."""
    import errno

    from PIL import Image as PILImage

    real_save = PILImage.Image.save

    def save(self, fp, *args, **kwargs):
        if str(fp).endswith("000003.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", save)
    path, out = _image_checkpoint(tmp_path), tmp_path / "o"
    argv = ["sample", str(path), "--steps", "3", "--num", "5", "--out", str(out)]
    assert main([*argv, "--format", "png"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no space left" in err and "MiB free" in err, err
    assert str(out / "png" / "000003.png") in err
    assert sorted(p.name for p in out.iterdir()) == ["samples.npz", "samples.png"]
    assert np.load(out / "samples.npz")["images"].shape[0] == 5


def test_sample_format_png_needs_an_image_model(tmp_path, capsys):
    path = write_checkpoint(tmp_path / "m.safetensors", MLP_CONFIG)
    argv = ["sample", str(path), "--steps", "3", "--num", "5", "--out", str(tmp_path / "o")]
    assert main([*argv, "--format", "png"]) == 2
    assert "needs an image model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
