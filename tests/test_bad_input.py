"""Bad input, case by case: sizes that cannot fit in memory, devices the machine lacks, output
folders that cannot be written, broken config files, out-of-range seeds, hostile files and image
folders, non-finite samples.  Each is refused with one line before anything is allocated, opened
for reading (FIFOs, devices) or written; exit status 2 (1 for non-finite samples)."""

from __future__ import annotations

import math
import os
import signal
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import MLP_TOML as TOML

from ddkit.cli import main
from ddkit.cli_checks import one_line
from ddkit.config import ConfigError, load_config, parse_override
from ddkit.data import DataConfig, DataError, load_dataset, read_idx
from ddkit.memory import model_size, sampling_memory, training_memory
from ddkit.models import PRESETS, UNetConfig, count_parameters
from ddkit.resources import (
    available_memory,
    check_device,
    check_fits,
    check_output_folder,
    check_regular_file,
)
from ddkit.trained import NonFiniteSamplesError, SampleSpec, Trained, generate, load_trained

HUGE = 10**12
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")


def _png(width: int, height: int, payload: bytes | None = None) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if payload is None:
        payload = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained 2-D MLP run folder (one optimizer step)."""
    from ddkit.training.trainer import Trainer

    root = tmp_path_factory.mktemp("bad-input")
    (root / "run.toml").write_text(TOML)
    cfg = load_config([root / "run.toml"], [f'train.out_dir="{root / "run"}"'])
    Trainer(cfg, log=lambda *a: None).fit()
    return root / "run"


@pytest.fixture(scope="module")
def img_run(tmp_path_factory) -> Path:
    """A tiny U-Net run folder trained one step on a folder of four 8x8 images (all of them in
    the 'train' split: the 'test' split of so few images is empty)."""
    from ddkit.training.trainer import Trainer

    root = tmp_path_factory.mktemp("bad-input-img")
    images = root / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(_png(8, 8))
    cfg = _cfg()
    image = UNetConfig(8, 1, 8, (1,), 1, (), 0.0, 1, False, 8)
    cfg = replace(cfg, model=image, data=DataConfig("folder", path=str(images), channels=1))
    cfg = replace(cfg, train=replace(cfg.train, out_dir=str(root / "img")))
    Trainer(cfg, log=lambda *a: None).fit()
    return root / "img"


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working folder (inside ``tmp_path``, which tests may also use)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    return work


def refused(capsys, argv, *words, code=2) -> str:
    """Run ``argv``: its exit status is ``code`` and stderr one line holding every word."""
    try:
        got = main([str(a) for a in argv])
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def nothing_in(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


class Blocked(BaseException):
    """Raised by the alarm when a call blocks."""


@pytest.fixture
def no_blocking():
    """Fail a test that blocks (a FIFO opened for reading) after 5 s instead of hanging."""

    def fire(signum, frame):
        raise Blocked("blocked for 5 s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---- 1. sizes that cannot fit ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_is_exact_without_building(name):
    assert model_size(PRESETS[name])[0] == count_parameters(PRESETS[name].build())


def test_parameter_count_of_an_irregular_unet():
    cfg = UNetConfig(16, 3, 16, (1, 2, 3), 3, (8, 16), 0.0, 2, True, 8)
    assert model_size(cfg)[0] == count_parameters(cfg.build())


def test_check_fits_names_estimate_parts_and_available_memory():
    with pytest.raises(ValueError) as e:
        check_fits({"samples": 2**60, "model": 2**20}, "cpu", "sampling", "lower --num")
    text = str(e.value)
    assert "1.0 EiB" in text or "1024.0 PiB" in text, text
    assert "samples" in text and "available on cpu" in text and "lower --num" in text
    check_fits({"samples": 1}, "cpu", "sampling", "")  # fits: no error


def test_available_memory_on_cpu_is_positive():
    free, source = available_memory("cpu")
    assert free > 0 and source


def test_sample_refuses_a_huge_num_before_allocating(run, cwd, capsys):
    refused(capsys, ["sample", run, "--steps", "3", "--num", HUGE], "memory", "available", "--num")
    nothing_in(cwd)


def test_sample_interpolate_and_limiter_only_for_the_adams_samplers(run, cwd, capsys):
    base = ["sample", run, "--steps", "3", "--num", "2", "--out", "o"]
    refused(capsys, [*base, "--sampler", "ddim", "--interpolate", "sigma"], "no option")
    refused(capsys, [*base, "--sampler", "adams2", "--interpolate", "time"], "--interpolate")
    refused(capsys, [*base, "--sampler", "ddim", "--limiter", "1"], "no option 'limiter'")
    for bad in ("0", "-1", "nan", "inf", "x"):
        refused(capsys, [*base, "--sampler", "adams2", f"--limiter={bad}"], "--limiter")
    nothing_in(cwd)


def test_eval_refuses_huge_probes(run, cwd, capsys):
    argv = ["eval", run, "--bpd", "--ode-steps", "3", "--probes", HUGE, "--out", "o"]
    refused(capsys, argv, "--probes", "memory")
    nothing_in(cwd)


@pytest.mark.parametrize(
    "override",
    [
        f"model.hidden={HUGE}",
        f"model.depth={HUGE}",
        f"diffusion.T={HUGE}",
        f"data.num_samples={HUGE}",
        f"train.batch_size={HUGE}",
    ],
)
def test_train_refuses_sizes_that_cannot_fit(cwd, capsys, override):
    (cwd / "run.toml").write_text(TOML)
    refused(capsys, ["train", "run.toml", "--set", override], "memory", "available")
    nothing_in(cwd, "run.toml")


def test_train_refuses_a_preview_that_cannot_fit(cwd, capsys):
    (cwd / "run.toml").write_text(TOML)
    argv = ["train", "run.toml", "--set", "train.sample_every=1"]
    refused(capsys, [*argv, "--set", f"train.sample_num={HUGE}"], "preview samples")


def test_training_estimate_grows_with_the_model():
    small = training_memory(_cfg())
    big = training_memory(_cfg(**{"model.hidden": 1024}))
    assert sum(big.values()) > sum(small.values())


def _cfg(**overrides):
    """The config of ``TOML`` with ``{"section.key": value}`` overrides."""
    import tomllib

    from ddkit.config import config_from_dict

    d = tomllib.loads(TOML)
    for key, value in overrides.items():
        section, name = key.split(".")
        d[section][name] = value
    return config_from_dict(d)


def test_sampling_estimate_counts_all_samples():
    parts = sampling_memory(PRESETS["mlp-2d"], num=1000, batch_size=10, T=1000)
    assert parts["samples"] == 3 * 1000 * 2 * 4


def test_verify_refuses_sample_sizes_that_cannot_fit(cwd, capsys):
    refused(capsys, ["verify", "--n-64d", HUGE], "memory")
    refused(capsys, ["verify", "--nfe", "1001"], "--nfe 1001", "1..1000")
    nothing_in(cwd)


# ---- 2. devices --------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "meta", "garbage", "", "cuda:99"])
def test_sample_and_eval_refuse_unknown_devices(run, cwd, capsys, device):
    refused(capsys, ["sample", run, "--device", device], "--device", "allowed: cpu")
    refused(capsys, ["eval", run, "--bpd", "--device", device], "--device", "allowed: cpu")
    nothing_in(cwd)


@NO_CUDA
def test_cuda_is_refused_without_cuda(run, cwd, capsys):
    refused(capsys, ["sample", run, "--device", "cuda"], "--device 'cuda'", "allowed: cpu")
    (cwd / "run.toml").write_text(TOML.replace("[train]\n", '[train]\ndevice = "cuda"\n'))
    refused(capsys, ["train", "run.toml"], "train.device 'cuda'", "allowed: cpu")
    nothing_in(cwd, "run.toml")


def test_check_device():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device 'tpu'"):
        check_device("tpu")


@pytest.mark.parametrize("device", ["tpu", "meta"])
def test_config_refuses_unknown_train_devices(cwd, capsys, device):
    (cwd / "run.toml").write_text(TOML)
    refused(capsys, ["train", "run.toml", "--set", f'train.device="{device}"'], "train.device")


# ---- 3. output folders -------------------------------------------------------------------------
def test_out_that_is_a_file_or_inside_one_is_refused_before_the_checkpoint(cwd, capsys):
    (cwd / "f").write_text("x")
    for out in ("f", "f/sub"):
        refused(capsys, ["sample", "no-such-run", "--out", out], "--out", "not a folder")
        refused(capsys, ["eval", "no-such-run", "--bpd", "--out", out], "--out", "not a folder")
    nothing_in(cwd, "f")


def test_out_in_an_unwritable_place_is_refused(cwd, capsys):
    refused(capsys, ["sample", "no-such-run", "--out", "/proc/ddkit-test"], "cannot write")
    refused(capsys, ["verify", "--out", "/proc/ddkit-test"], "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_is_refused(cwd, capsys):
    ro = cwd / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refused(capsys, ["sample", "no-such-run", "--out", ro / "o"], "cannot write")
    finally:
        ro.chmod(0o700)


def test_check_output_folder_creates_nothing(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not a folder name"):
        check_output_folder("")


def test_output_file_taken_by_a_folder_is_refused_before_sampling(run, cwd, capsys):
    (cwd / "o" / "samples.npz").mkdir(parents=True)
    refused(capsys, ["sample", run, "--steps", "3", "--out", "o"], "samples.npz")
    assert sorted(p.name for p in (cwd / "o").iterdir()) == ["samples.npz"]


def test_demo_out_inside_a_file_is_refused(cwd, capsys):
    (cwd / "demo-out").mkdir()
    (cwd / "demo-out" / "spiral").write_text("x")
    refused(capsys, ["demo"], "spiral", "not a folder")


# ---- 4. config files ---------------------------------------------------------------------------
def _config_error(tmp_path, data: bytes | str, *words):
    f = tmp_path / "c.toml"
    f.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ConfigError) as e:
        load_config([f])
    for w in words:
        assert w in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_config_that_is_a_folder_or_missing(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a regular file"):
        load_config([tmp_path])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "none.toml"])


def test_config_that_is_a_fifo_is_not_opened(tmp_path, no_blocking):
    os.mkfifo(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="is a FIFO"):
        load_config([tmp_path / "c.toml"])
    with pytest.raises(ConfigError, match="character device"):
        load_config(["/dev/zero"])


def test_config_not_utf8_or_not_toml(tmp_path):
    _config_error(tmp_path, b"[model]\npreset = 'caf\xe9'\n", "c.toml", "not UTF-8")
    _config_error(tmp_path, "[model\n", "c.toml", "not valid TOML")


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 100_000 + "]" * 100_000,
        "x = " + "{a=" * 100_000 + "1" + "}" * 100_000,
        "a" + ".a" * 100_000 + " = 1",
        "[a" + ".a" * 100_000 + "]",
    ],
)
def test_deeply_nested_config_is_refused_quickly(tmp_path, text):
    _config_error(tmp_path, text, "c.toml", "nested")


def test_deeply_nested_override_is_refused():
    with pytest.raises(ConfigError, match="nested"):
        parse_override("model.hidden=" + "[" * 5000 + "]" * 5000)


@pytest.mark.parametrize(
    "extra, words",
    [
        ("[train]\nmax_step = 1\n", ["unknown key train.max_step"]),
        ("[model]\nhidden = true\n", ["model.hidden=True", "int"]),
        ("[model]\nhidden = [[[[[[1]]]]]]\n", ["model.hidden=[[[[...]]]]"]),
        ("[optim]\nlr = nan\n", ["optim.lr"]),
        ("[optim]\nbetas = [0.9, inf]\n", ["optim.betas", "finite"]),
        ("[model]\ndepth = -1\n", ["depth"]),
        ("[data]\nnum_samples = -5\n", ["num_samples"]),
        ("[train]\nlog_every = 18446744073709551616\n", ["train.log_every", "out of range"]),
        ("[train]\nout_dir = 3\n", ["train.out_dir"]),
        ("[diffusion]\nT = 1979-05-27\n", ["diffusion.T"]),
    ],
)
def test_config_wrong_values_name_the_key(tmp_path, extra, words):
    section, line = extra.splitlines()
    key = line.split("=")[0].strip()
    lines, current = [], None
    for old in TOML.splitlines():
        current = old if old.startswith("[") else current
        if current != section or not old.startswith(f"{key} ="):
            lines.append(old)
        if old == section:
            lines.append(line)
    _config_error(tmp_path, "\n".join(lines) + "\n", *words)


def test_train_with_bad_config_files_exits_2(cwd, capsys):
    (cwd / "d").mkdir()
    refused(capsys, ["train", "d"], "config file", "folder")
    (cwd / "bad.toml").write_bytes(b"\xff\xfe")
    refused(capsys, ["train", "bad.toml"], "bad.toml", "UTF-8")
    nothing_in(cwd, "d", "bad.toml")


# ---- 5. seeds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64)])
def test_seed_options_out_of_range(run, cwd, capsys, seed):
    refused(capsys, ["sample", run, "--seed", seed], "--seed", "2**63 - 1")
    refused(capsys, ["eval", run, "--bpd", "--seed", seed], "--seed")
    refused(capsys, ["verify", "--seed", seed], "--seed")
    refused(capsys, ["features", "--data", "digits", "--seed", seed], "--seed")
    nothing_in(cwd)


@pytest.mark.parametrize("key", ["train.seed", "data.seed"])
@pytest.mark.parametrize("value", [-1, 2**63])
def test_config_seeds_out_of_range(cwd, capsys, key, value):
    (cwd / "run.toml").write_text(TOML)
    refused(capsys, ["train", "run.toml", "--set", f"{key}={value}"], "seed")


def test_the_largest_seed_samples(run):
    trained = load_trained(run)
    x = generate(trained, SampleSpec("ddpm", 3), 2, seed=2**63 - 1)
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="seed"):
        generate(trained, SampleSpec("ddpm", 3), 2, seed=2**63)


# ---- 6. demo --scale ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["inf", "nan", "0", "-1", "-inf", "1e400", "1001"])
def test_demo_scale_must_be_finite_and_positive(cwd, capsys, scale):
    refused(capsys, ["demo", "--scale", scale], "--scale")
    nothing_in(cwd)


def test_run_demo_checks_its_scale(tmp_path):
    from ddkit.demo import run_demo

    with pytest.raises(ValueError, match="--scale"):
        run_demo(tmp_path / "d", steps_scale=math.inf)
    assert not (tmp_path / "d").exists()


# ---- 7. FIFOs, devices and hostile images ------------------------------------------------------
@pytest.fixture
def folder(tmp_path) -> Path:
    f = tmp_path / "images"
    f.mkdir()
    for i in range(4):
        (f / f"{i}.png").write_bytes(_png(8, 8))
    return f


def _load(folder: Path, on_corrupt: str = "error"):
    return load_dataset(DataConfig("folder", path=str(folder), on_corrupt=on_corrupt))


@pytest.mark.parametrize("kind", ["fifo", "fifo-link", "dev-zero"])
def test_special_files_in_an_image_folder_are_never_opened(folder, kind, no_blocking):
    bad = folder / "x.png"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "fifo-link":
        os.mkfifo(folder.parent / "fifo")
        bad.symlink_to(folder.parent / "fifo")
    else:
        bad.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="x.png: unreadable image .*not a regular file"):
        _load(folder)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert len(_load(folder, "skip")) == 4


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an image at all\n",
        _png(8, 8)[:45],
        _png(20000, 20000, zlib.compress(b"\0" * 64)),  # decompression bomb (> 2 x limit)
        _png(10000, 10000, zlib.compress(b"\0" * 64)),  # above PIL's MAX_IMAGE_PIXELS
    ],
    ids=["empty", "text", "truncated", "bomb", "bomb-warning"],
)
def test_hostile_images_are_named_in_one_line(folder, content):
    (folder / "bad.png").write_bytes(content)
    with pytest.raises(DataError) as e:
        _load(folder)
    assert "bad.png" in str(e.value) and "\n" not in str(e.value)


def test_idx_fifo_is_not_opened(tmp_path, no_blocking):
    os.mkfifo(tmp_path / "x-idx3-ubyte")
    with pytest.raises(DataError, match="FIFO, not a regular IDX file"):
        read_idx(tmp_path / "x-idx3-ubyte")


def test_check_regular_file_names_the_kind(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(ValueError, match="'.*p' is a FIFO"):
        check_regular_file(tmp_path / "p", "weights file")
    with pytest.raises(ValueError, match="does not exist"):
        check_regular_file(tmp_path / "none", "weights file")


# ---- 8. eval exit codes, and no folder before validation ---------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--bpd", "--split", "valid"], ["--split 'valid'", "train, test"]),
        (["--fid", "--ref-split", "x"], ["--ref-split 'x'"]),
        (["--sweep", "--families", "nope"], ["unknown sweep family 'nope'"]),
        (["--bpd", "--ode-steps", "25"], ["--ode-steps 25", "1..24"]),
        (["--inversion", "--inversion-steps", "26"], ["--inversion-steps 26"]),
        (["--fid", "--steps", "3"], ["FID needs an image model"]),
        (["--bpd", "--cache", "/proc/x"], ["--cache"]),
    ],
)
def test_eval_bad_options_exit_2_without_a_folder(run, cwd, capsys, args, words):
    refused(capsys, ["eval", run, *args, "--out", "o"], *words)
    nothing_in(cwd)


def test_eval_feature_net_that_is_not_one(img_run, cwd, capsys, no_blocking):
    (cwd / "junk").write_bytes(b"junk")
    os.mkfifo(cwd / "pipe")
    base = ["eval", img_run, "--fid", "--steps", "3", "--num", "4", "--out", "o"]
    refused(capsys, [*base, "--feature-net", "junk"], "junk", "not a ddkit feature network")
    refused(capsys, [*base, "--feature-net", "pipe"], "--feature-net", "FIFO")
    refused(capsys, [*base, "--feature-net", "missing"], "--feature-net", "does not exist")
    nothing_in(cwd, "junk", "pipe")


def test_eval_fid_sampler_options_refused_before_the_folder_is_made(img_run, cwd, capsys):
    base = ["eval", img_run, "--fid", "--steps", "3", "--num", "4", "--out", "o"]
    refused(capsys, [*base, "--sampler", "adams2", "--krylov", "2"], "krylov=2", "posterior")
    refused(capsys, [*base, "--sampler", "ddim", "--krylov", "2"], "no option 'krylov'")
    refused(capsys, [*base, "--sampler", "ddim", "--interpolate", "sigma"], "no option")
    refused(capsys, [*base, "--sampler", "adams2", "--interpolate", "time"], "--interpolate")
    nothing_in(cwd)


def test_eval_empty_split_refused_before_the_folder_is_made(img_run, cwd, capsys):
    argv = ["eval", img_run, "--inversion", "--inversion-steps", "3", "--out", "o"]
    refused(capsys, argv, "split 'test' is empty")
    nothing_in(cwd)


# ---- 9. non-finite samples ---------------------------------------------------------------------
def _broken(run: Path, value: float) -> Trained:
    trained = load_trained(run)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.fill_(value)
    return trained


@pytest.mark.parametrize("value", [math.nan, 1e30])
def test_generate_raises_on_non_finite_samples(run, value):
    with pytest.raises(NonFiniteSamplesError, match=r"4 of 4 samples .* ddim, 3 trailing"):
        generate(_broken(run, value), SampleSpec("ddim", 3), 4)


def test_sample_with_nan_weights_exits_1_and_writes_nothing(run, tmp_path, cwd, capsys):
    from ddkit import checkpoint as ckpt

    tensors, meta = ckpt.load_checkpoint(run)
    meta.pop("path")
    nan = {
        k: torch.full_like(v, math.nan) if k.startswith(("model/", "ema/")) else v
        for k, v in tensors.items()
    }
    ckpt.save_checkpoint(tmp_path / "nan.safetensors", nan, meta)
    argv = ["sample", tmp_path / "nan.safetensors", "--steps", "3", "--num", "4", "--out", "o"]
    refused(capsys, argv, "NaN or infinite", "weights", code=1)
    nothing_in(cwd)


@pytest.mark.parametrize("eta", ["inf", "nan", "-inf", "1e400"])
def test_non_finite_eta_is_a_user_error(run, cwd, capsys, eta):
    refused(capsys, ["sample", run, f"--eta={eta}"], "--eta", "finite")
    refused(capsys, ["eval", run, "--fid", f"--eta={eta}"], "--eta", "finite")


def test_generate_refuses_non_finite_options(run):
    with pytest.raises(ValueError, match="eta=inf must be a finite number"):
        generate(load_trained(run), SampleSpec("ddim", 3, options={"eta": math.inf}), 2)


# ---- one line ------------------------------------------------------------------------------------
def test_one_line_escapes_breaks_and_surrogates():
    assert one_line("a\nb\rc\u2028d\x85e") == "a\\nb\\rc\\u2028d\\x85e"
    assert one_line("\udcff") == "\\udcff"
    assert one_line("café\tok") == "café\tok"


def test_argparse_errors_with_newlines_stay_on_one_line(cwd, capsys):
    refused(capsys, ["sample", "x", "--unknown", "a\nb"], "a\\nb")


def test_memory_estimate_numbers_are_integers():
    parts = training_memory(_cfg())
    assert all(isinstance(v, int) and v >= 0 for v in parts.values())
    assert np.isfinite(sum(parts.values()))


def test_sample_buffers_count_against_host_memory_on_an_accelerator(monkeypatch):
    from ddkit import resources
    from ddkit.memory import check_memory

    free = {"cuda": 10**9, "cpu": 10**12}
    monkeypatch.setattr(
        resources, "available_memory", lambda d: (free[str(d).split(":")[0]], "test")
    )
    check_memory({"model": 10**8, "samples": 5 * 10**11}, "cuda", "sampling", "")
    with pytest.raises(ValueError, match="available on cuda"):
        check_memory({"model": 2 * 10**9, "samples": 1}, "cuda:0", "sampling", "")
    with pytest.raises(ValueError, match="available on cpu"):
        check_memory({"model": 1, "samples": 2 * 10**12}, "cuda", "sampling", "")
    with pytest.raises(ValueError, match="available on cpu"):
        check_memory({"model": 2 * 10**12}, "cpu", "sampling", "")
