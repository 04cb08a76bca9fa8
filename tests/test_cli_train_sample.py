"""``ddkit train`` / ``ddkit sample`` / ``ddkit demo``: outputs, settings files and one-line errors
with exit status 2 that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import one_line_error

from ddkit.cli import main
from ddkit.trained import SampleSpec, generate, load_trained

TOML = """
[model]
preset = "mlp-2d"
hidden = 32
depth = 2
time_dim = 16
[data]
name = "moons"
num_samples = 64
[diffusion]
T = 50
[optim]
warmup_steps = 2
[train]
max_steps = 3
batch_size = 16
ckpt_every = 3
log_every = 1
sample_every = 0
progress = false
tensorboard = false
"""


def write_config(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "run.toml"
    f.write_text(TOML + extra)
    return f


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp)
    assert main(["train", str(cfg), "--set", f'train.out_dir="{tmp / "out"}"']) == 0
    return tmp / "out"


def test_train_writes_config_metrics_checkpoint(trained_run):
    assert (trained_run / "checkpoints" / "ckpt-00000003.safetensors").exists()
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "mlp" and cfg["train"]["max_steps"] == 3
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 3


def test_sample_writes_png_npz_and_settings(trained_run, tmp_path):
    out = tmp_path / "s"
    argv = ["sample", str(trained_run), "--sampler", "ddim", "--steps", "5", "--eta", "0"]
    assert main([*argv, "--num", "10", "--batch-size", "4", "--out", str(out)]) == 0
    x = np.load(out / "samples.npz")["x"]
    assert x.shape == (10, 2) and np.isfinite(x).all()
    settings = json.loads((out / "sampler.json").read_text())
    assert settings["sampler"] == "ddim" and settings["options"] == {"eta": 0.0}
    assert settings["steps"] == 5 and len(settings["timesteps"]) == 5 and settings["nfe"] == 5
    assert settings["step"] == 3 and settings["weights"] == "ema"
    assert (out / "samples.png").stat().st_size > 0


def test_sample_posterior_draw_of_m_products_is_recorded_and_counted(trained_run, tmp_path):
    """``--last-step posterior --krylov 3 --limiter 1 --interpolate sigma^0.25``: the options land
    in sampler.json and the call count is the ODE's steps plus 2 * 3 - 1 for the draw (its first
    product is the last step's call); the limiter and the variable cost no call."""
    out = tmp_path / "s"
    argv = ["sample", str(trained_run), "--sampler", "adams2", "--steps", "6", "--num", "5"]
    argv += ["--last-step", "posterior", "--krylov", "3", "--limiter", "1"]
    argv += ["--interpolate", "sigma^0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "sampler.json").read_text())
    want = {"last": "posterior", "krylov": 3, "limiter": 1.0, "interpolate": "sigma^0.25"}
    assert settings["options"] == want
    assert settings["nfe"] == 11
    assert np.isfinite(np.load(out / "samples.npz")["x"]).all()


def test_clip_x0_is_off_by_default_for_2d_data_and_recorded(trained_run, tmp_path):
    """Unbounded data is not clamped unless asked ("on"); the choice lands in sampler.json."""
    trained = load_trained(trained_run)
    x = {
        c: generate(trained, SampleSpec("ddim", 5, "trailing", {"eta": 0.0}, c), 16, seed=2)
        for c in ("auto", "on", "off")
    }
    assert torch.equal(x["auto"], x["off"]) and x["off"].abs().max() > 1.0
    assert x["on"].abs().max() <= 1.0  # DDIM at eta = 0 ends on the clamped x0_hat
    out = tmp_path / "s"
    argv = ["sample", str(trained_run), "--steps", "5", "--clip-x0", "on", "--num", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "sampler.json").read_text())["clip_x0"] == "on"
    assert np.abs(np.load(out / "samples.npz")["x"]).max() <= 1.0


def test_deterministic_sampling_does_not_depend_on_batch_size(trained_run):
    trained = load_trained(trained_run)
    spec = SampleSpec("ddim", 4, "trailing", {"eta": 0.0})
    a = generate(trained, spec, 9, seed=1, batch_size=9)
    b = generate(trained, spec, 9, seed=1, batch_size=2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "51"], ["steps=51", "1..50"]),
        (["--sampler", "euler"], ["unknown sampler 'euler'", "ddim"]),
        (["--spacing", "cubic"], ["spacing 'cubic'", "trailing"]),
        (["--sampler", "ddpm", "--eta", "0.5"], ["takes no option 'eta'", "variance"]),
        (["--eta", "-1"], ["eta=-1.0", ">= 0"]),
        (["--sampler", "ddpm", "--variance", "huge"], ["variance='huge'", "tweedie"]),
        (["--weights", "best"], ["weights='best'", "ema, online"]),
        (["--clip-x0", "yes"], ["clip_x0='yes'", "auto, on, off"]),
        (["--sampler", "adams2", "--krylov", "2"], ["krylov=2 takes last='posterior'"]),
        (["--sampler", "ddim", "--krylov", "2"], ["takes no option 'krylov'", "eta"]),
    ],
)
def test_sample_bad_input_exit_2_nothing_written(trained_run, tmp_path, capsys, args, words):
    out = tmp_path / "never"
    assert main(["sample", str(trained_run), *args, "--out", str(out)]) == 2
    one_line_error(capsys, *words)
    assert not out.exists()


def test_sample_missing_or_foreign_checkpoint(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "none.safetensors")]) == 2
    one_line_error(capsys, "does not exist")
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["sample", str(junk)]) == 2
    one_line_error(capsys, "not a ddkit checkpoint")


@pytest.mark.parametrize(
    "extra, words",
    [
        ("[optim]\nlr = nan\n", ["optim.lr=nan"]),
        ("[train]\nmax_step = 3\n", ["unknown key train.max_step", "max_steps"]),
        ("[extra]\nx = 1\n", ["unknown section 'extra'"]),
        ('[model]\narch = "unet"\n', ["contradicts preset 'mlp-2d'"]),
        ('[train]\ninit_from = "no/such/run"\n', ["no/such/run"]),
    ],
)
def test_train_bad_config_exit_2_nothing_written(tmp_path, capsys, extra, words):
    # later tables with the same name would be a TOML error; write one document per case
    base = TOML
    for section in ("[optim]", "[train]", "[model]"):
        if extra.startswith(section):
            base = base.replace(section, extra.strip() + "\n", 1)
            extra = ""
    f = tmp_path / "bad.toml"
    f.write_text(base + extra)
    out = tmp_path / "out"
    assert main(["train", str(f), "--set", f'train.out_dir="{out}"']) == 2
    one_line_error(capsys, *words)
    assert not out.exists()


def test_train_bad_overrides_and_data(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "out"
    assert (
        main(["train", str(cfg), "--set", "optim.lr=nan", "--set", f'train.out_dir="{out}"']) == 2
    )
    one_line_error(capsys, "not a finite number")
    missing = tmp_path / "no-such-folder"
    overrides = ["--set", 'data.name="folder"', "--set", f'data.path="{missing}"']
    overrides += ["--set", f'train.out_dir="{out}"']
    assert main(["train", str(cfg), *overrides]) == 2
    one_line_error(capsys, str(missing))
    assert not out.exists()


def test_resume_refuses_config_changes(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run), "--set", "optim.lr=1e-3"]) == 2
    one_line_error(capsys, "optim.lr cannot change on resume")


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample"])
    assert e.value.code == 2
    one_line_error(capsys, "checkpoint")


@pytest.mark.slow
def test_demo_runs_end_to_end_at_small_scale(tmp_path):
    from ddkit.demo import run_demo

    times = run_demo(tmp_path, steps_scale=0.005, progress=False, log=lambda s: None)
    assert set(times) == {"spiral", "digits"}
    for name in times:
        for f in ("samples.png", "trajectory.png", "loss.png", "config.json"):
            assert (tmp_path / name / f).stat().st_size > 0, (name, f)
    digits = load_trained(tmp_path / "digits")  # class-conditional: a grid row per digit
    assert digits.class_names == tuple(str(i) for i in range(10))
    grid = np.asarray(Image.open(tmp_path / "digits" / "samples.png"))
    cell = 32 + 2  # 8x8 digits enlarged to 32 pixels, 2 pixels apart
    assert (grid.shape[0] - 2) // cell == 10 and (grid.shape[1] - 2) // cell == 4
    # running it again replaces the earlier demo runs (the quick start may be run twice)
    lines = []
    run_demo(tmp_path, steps_scale=0.005, progress=False, log=lines.append)
    assert sum("replacing the previous demo run" in s for s in lines) == 2


def test_demo_refuses_a_folder_holding_another_run(tmp_path, capsys):
    from ddkit.demo import run_demo

    (tmp_path / "spiral").mkdir()
    mine = {"model": {"preset": "mine"}, "data": {"name": "moons"}, "train": {"max_steps": 9}}
    (tmp_path / "spiral" / "config.json").write_text(json.dumps(mine))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="not a ddkit demo run"):
        run_demo(tmp_path, steps_scale=0.005, progress=False, log=lambda s: None)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
