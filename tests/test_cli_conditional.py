"""``ddkit sample --class/--guidance``, ``ddkit inpaint`` and ``ddkit edit`` on a tiny
class-conditional image model: what they write, and one-line refusals (exit 2, nothing written)
for inputs they cannot take."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_run import MLP_CONFIG, write_checkpoint

from ddkit.cli import main

UNET_CONFIG = {
    "model": {
        "preset": "ddpm-cifar10",
        "image_size": 8,
        "in_channels": 1,
        "base_channels": 16,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "groups": 8,
        "num_classes": 3,
    },
    "data": {"name": "digits", "image_size": 8},
    "diffusion": {"T": 25},
    "train": {"max_steps": 1},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    cond = write_checkpoint(d / "cond.safetensors", UNET_CONFIG)
    uncond_cfg = json.loads(json.dumps(UNET_CONFIG))
    uncond_cfg["model"]["num_classes"] = 0
    uncond = write_checkpoint(d / "uncond.safetensors", uncond_cfg)
    no_drop_cfg = json.loads(json.dumps(UNET_CONFIG))
    no_drop_cfg["model"]["p_uncond"] = 0.0
    no_drop = write_checkpoint(d / "nodrop.safetensors", no_drop_cfg)
    points = write_checkpoint(d / "mlp.safetensors", MLP_CONFIG)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(d / "img.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(d / "rgb.png")
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(d / "big.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255  # keep the left half
    Image.fromarray(mask, "L").save(d / "mask.png")
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(d / "small_mask.png")
    (d / "notimage.png").write_bytes(b"not an image")
    return d, cond, uncond, no_drop, points


def test_sample_one_class_with_guidance_and_the_class_grid(files, tmp_path):
    d, cond, *_ = files
    out = tmp_path / "one"
    args = ["sample", str(cond), "--class", "2", "--guidance", "1.5", "--steps", "4"]
    assert main([*args, "--num", "6", "--out", str(out)]) == 0
    settings = json.loads((out / "sampler.json").read_text())
    assert settings["class"] == 2 and settings["guidance"] == 1.5 and settings["nfe"] == 8
    assert (np.load(out / "samples.npz")["labels"] == 2).all()
    out = tmp_path / "grid"
    assert main(["sample", str(cond), "--steps", "2", "--num", "9", "--out", str(out)]) == 0
    labels = np.load(out / "samples.npz")["labels"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the classes in turn
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.shape[0] < grid.shape[1]  # 3 rows (one per class) of up to 21 images


def test_inpaint_keeps_the_white_part_of_the_mask(files, tmp_path):
    d, cond, *_ = files
    out = tmp_path / "inp"
    args = ["inpaint", str(cond), "--image", str(d / "img.png"), "--mask", str(d / "mask.png")]
    assert main([*args, "--steps", "5", "--resample", "2", "--num", "3", "--out", str(out)]) == 0
    images = np.load(out / "inpainted.npz")["images"]
    src = np.asarray(Image.open(d / "img.png"))
    assert images.shape == (3, 8, 8, 1)
    assert (images[:, :, :4, 0] == src[None, :, :4]).all()  # kept exactly
    settings = json.loads((out / "inpainted.json").read_text())
    assert settings["model_calls_each"] == 10 and settings["class"] == 0


def test_edit_writes_edits_of_the_image(files, tmp_path):
    d, cond, *_ = files
    out = tmp_path / "edit"
    args = ["edit", str(cond), "--image", str(d / "img.png"), "--strength", "0.3", "--steps", "10"]
    assert main([*args, "--class", "1", "--num", "2", "--out", str(out)]) == 0
    settings = json.loads((out / "edited.json").read_text())
    assert max(settings["timesteps"]) <= 7  # ceil(0.3 * 25) - 1
    assert np.load(out / "edited.npz")["images"].shape == (2, 8, 8, 1)


def _refused(capsys, argv, match, out):
    try:
        code = main([*argv, "--out", str(out)])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "which, extra, match",
    [
        ("cond", ["--class", "3"], "is not one of the model's 3 classes"),
        ("cond", ["--class", "-1"], "is not one of the model's 3 classes"),
        ("cond", ["--class", "cat"], "is not one of the model's 3 classes"),
        ("uncond", ["--guidance", "2"], "unconditional"),
        ("uncond", ["--class", "1"], "unconditional"),
        ("nodrop", ["--guidance", "2"], "p_uncond = 0"),
        ("cond", ["--guidance", "-1"], "--guidance"),
        ("cond", ["--guidance-interval", "2", "1"], "low < high"),
    ],
)
def test_sample_refuses_classes_and_guidance_the_model_cannot_take(
    files, tmp_path, capsys, which, extra, match
):
    d = files[0]
    path = d / f"{which}.safetensors"
    _refused(capsys, ["sample", str(path), "--steps", "2", *extra], match, tmp_path / "o")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--mask", "small_mask.png"], "it must match the image: 8x8"),
        (["--mask", "notimage.png"], "is not a readable image"),
        (["--mask", "."], "is a folder"),
        (["--mask", "missing.png"], "cannot be read"),
        (["--image", "big.png", "--mask", "mask.png"], "is 16x16 gray; the model takes 8x8"),
        (["--image", "rgb.png", "--mask", "mask.png"], "colour; the model takes 8x8 gray"),
        (["--mask", "mask.png", "--resample", "0"], "--resample"),
    ],
)
def test_inpaint_refuses_bad_images_and_masks(files, tmp_path, capsys, argv, match):
    d, cond, *_ = files
    argv = [a if not a.endswith((".png", ".")) else str(d / a) for a in argv]
    if "--image" not in argv:
        argv = ["--image", str(d / "img.png"), *argv]
    _refused(capsys, ["inpaint", str(cond), "--steps", "2", *argv], match, tmp_path / "o")


@pytest.mark.parametrize("strength", ["0", "-0.5", "1.5", "nan"])
def test_edit_refuses_a_strength_outside_0_1(files, tmp_path, capsys, strength):
    d, cond, *_ = files
    argv = ["edit", str(cond), "--image", str(d / "img.png"), "--strength", strength]
    _refused(capsys, argv, "--strength", tmp_path / "o")


def test_inpaint_and_edit_need_an_image_model(files, tmp_path, capsys):
    d, *_, points = files
    argv = ["edit", str(points), "--image", str(d / "img.png")]
    _refused(capsys, argv, "need an image model", tmp_path / "o")


def test_eval_guidance_sweep_writes_fid_and_class_accuracy_per_scale(files, tmp_path):
    d, cond, uncond, *_ = files
    out, cache = tmp_path / "ev", tmp_path / "cache"
    argv = ["eval", str(cond), "--guidance-sweep", "0", "2", "--num", "30", "--ref-num", "100"]
    assert main([*argv, "--steps", "2", "--cache", str(cache), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    rows = report["guidance_sweep"]
    assert [r["guidance"] for r in rows] == [0.0, 2.0] and report["complete"]
    assert all(0.0 <= r["class_accuracy"] <= 1.0 for r in rows)
    assert [r["nfe"] for r in rows] == [2, 4]  # guided steps call both branches
    assert report["class_accuracy_classifier"]["test_accuracy"] > 0.9
    assert (out / "guidance.png").stat().st_size > 0
    assert "| 2 |" in (out / "guidance.md").read_text()


def test_eval_guidance_on_an_unconditional_model_is_refused(files, tmp_path, capsys):
    d, cond, uncond, *_ = files
    argv = ["eval", str(uncond), "--guidance-sweep", "0", "1", "--cache", str(tmp_path / "c")]
    _refused(capsys, argv, "unconditional", tmp_path / "o")
