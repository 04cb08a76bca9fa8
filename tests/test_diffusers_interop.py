"""diffusers interop: a diffusers DDPM pipeline folder read into ddkit computes what diffusers
computes, a ddkit run exported loads in ``DDPMPipeline``/``DDIMPipeline`` offline and samples
what ddkit samples, the round trip is bit-identical, and what does not map is refused in one
line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import MLP_CONFIG, write_checkpoint

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test extra (setup.sh --test)")

from ddkit import checkpoint as ckpt  # noqa: E402
from ddkit import cpu  # noqa: E402
from ddkit.cli import main  # noqa: E402
from ddkit.config import config_from_dict, config_to_dict  # noqa: E402
from ddkit.interop import InteropError, read_diffusers  # noqa: E402
from ddkit.models import UNetConfig  # noqa: E402
from ddkit.samplers import sample_ddim  # noqa: E402
from ddkit.trained import load_trained  # noqa: E402

# the UNet2DModel config of google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10 model)
DDPM_CIFAR10 = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "act_fn": "silu",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "time_embedding_type": "positional",
}
DDPM_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
    "variance_type": "fixed_small",
}
REL = 2e-5  # fp32, a 35.7M-parameter network: the two differ only in summation order


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised layers would hide a mapping error)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return module.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def cifar_pipeline(tmp_path_factory):
    """A pipeline folder with google/ddpm-cifar10-32's configs and random weights, written by
    diffusers' own save_pretrained."""
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32")
    torch.manual_seed(0)
    unet = _perturbed(diffusers.UNet2DModel(**DDPM_CIFAR10))
    scheduler = diffusers.DDPMScheduler(**DDPM_SCHEDULER)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder, unet


def test_a_diffusers_ddpm_cifar10_folder_gives_diffusers_eps(cifar_pipeline):
    folder, unet = cifar_pipeline
    trained = load_trained(folder)
    assert trained.config.model.downsample_padding == 0
    assert sum(p.numel() for p in trained.model.parameters()) == 35_746_307
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 917])
    with torch.no_grad():
        theirs = unet(x, t).sample
        assert _rel(trained.model(x, t), theirs) < REL
        with cpu.disabled():  # the plain PyTorch path agrees as well
            assert _rel(trained.model(x, t), theirs) < REL
        # symmetric padding is a different function: the mapping must carry the attribute
        other = UNetConfig(**{**vars(trained.config.model), "downsample_padding": 1}).build()
        other.load_state_dict(trained.model.state_dict())
        assert _rel(other.eval()(x, t), theirs) > 1e-3
    ab = trained.schedule.alphas_cumprod
    torch.testing.assert_close(
        torch.as_tensor(ab, dtype=torch.float32),
        diffusers.DDPMScheduler(**DDPM_SCHEDULER).alphas_cumprod,
        rtol=1e-5,
        atol=0,
    )


def test_ddim_samples_equal_diffusers_from_the_same_noise(tmp_path):
    """The DDPM family's config (TF padding, one head, attention at 8x8) at 16x16: diffusers'
    UNet stepped by its DDIMScheduler, and ddkit's sampler on the folder read into ddkit, from
    the same x_T (no clipping: with a random network it would saturate every pixel)."""
    folder = _pipeline(tmp_path / "p")
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.DDIMScheduler.from_config(
        diffusers.DDPMScheduler(**DDPM_SCHEDULER).config, set_alpha_to_one=True, clip_sample=False
    )
    scheduler.set_timesteps(10)
    x_T = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    trained = load_trained(folder)
    with torch.no_grad():
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        ours = sample_ddim(trained.denoiser(clip_x0="off"), x_T, scheduler.timesteps.tolist())
    assert _rel(ours, x) < 1e-5


def test_original_attention_names_are_read(cifar_pipeline, tmp_path):
    import shutil

    folder, unet = cifar_pipeline
    copy = Path(shutil.copytree(folder, tmp_path / "old-names"))
    path = copy / "unet" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in load_file(path).items():
        for new, was in old.items():
            k = k.replace(f".{new}.", f".{was}.")
        renamed[k] = v
    save_file(renamed, path)
    a = load_trained(folder).model.state_dict()
    b = load_trained(copy).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tiny_checkpoint(tmp_path: Path, diffusion: dict | None = None, **model) -> Path:
    """A checkpoint of a small random U-Net (model and EMA weights), as training writes one."""
    d = {
        "model": {
            "arch": "unet",
            "image_size": 8,
            "in_channels": 1,
            "base_channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [4],
            "dropout": 0.0,
            "groups": 8,
            **model,
        },
        "data": {"name": "digits"},
        "diffusion": {"T": 100, **(diffusion or {})},
        "train": {"max_steps": 1},
    }
    if model.get("learn_sigma"):
        d["diffusion"] |= {"variance": "learned_range", "loss": "hybrid"}
    net = _perturbed(config_from_dict(d).model.build(), seed=3)
    return write_checkpoint(tmp_path / "run" / "checkpoints" / ckpt.checkpoint_name(1), d, net)


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"num_heads": 2, "base_channels": 32, "channel_mult": [1, 1]},
        {"learn_sigma": True},
        {"num_classes": 3},
    ],
)
def test_export_round_trip_is_bit_identical(tmp_path, capsys, model):
    path = _tiny_checkpoint(tmp_path, **model)
    out = tmp_path / "exported"
    assert main(["export", str(path), str(out)]) == 0
    ours = load_trained(path)
    back = load_trained(out)
    assert back.config.model == ours.config.model
    assert config_to_dict(back.config)["diffusion"] == config_to_dict(ours.config)["diffusion"]
    a, b = ours.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_an_exported_run_loads_in_diffusers_offline_and_computes_the_same(tmp_path, sampler):
    path = _tiny_checkpoint(tmp_path)
    out = tmp_path / "exported"
    assert main(["export", str(path), str(out), "--sampler", sampler]) == 0
    cls = diffusers.DDPMPipeline if sampler == "ddpm" else diffusers.DDIMPipeline
    pipe = cls.from_pretrained(out, local_files_only=True)
    ours = load_trained(path)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 50, 99])
    with torch.no_grad():
        assert _rel(ours.model(x, t), pipe.unet(x, t).sample) < 1e-5
    torch.testing.assert_close(
        torch.as_tensor(ours.schedule.alphas_cumprod, dtype=torch.float32),
        pipe.scheduler.alphas_cumprod,
        rtol=1e-5,
        atol=0,
    )
    if sampler == "ddim":  # and samples what ddkit samples from the same noise
        images = pipe(
            batch_size=2,
            generator=torch.Generator().manual_seed(5),
            num_inference_steps=10,
            eta=0.0,
            use_clipped_model_output=True,
            output_type="np",
        ).images
        x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            x0 = sample_ddim(ours.denoiser("on"), x_T, pipe.scheduler.timesteps.tolist())
        assert abs((x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - images).max() < 1e-5


def test_a_class_conditional_run_exports_its_classes_and_null_label(tmp_path):
    """num_class_embeds = classes + 1 (the null label last): diffusers' UNet with class_labels
    computes ddkit's conditional and unconditional outputs."""
    path = _tiny_checkpoint(tmp_path, num_classes=3)
    out = tmp_path / "exported"
    assert main(["export", str(path), str(out)]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet", local_files_only=True)
    assert unet.config.num_class_embeds == 4
    ours = load_trained(path)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([0, 30, 60, 99]), torch.tensor([0, 1, 2, 3])  # 3: the null label
    with torch.no_grad():
        assert _rel(ours.model(x, t, y), unet(x, t, class_labels=y).sample) < 1e-5
        assert _rel(ours.model(x, t, torch.zeros_like(y)), ours.model(x, t, y)) > 1e-3


# ---- what does not map --------------------------------------------------------------------------
def _pipeline(folder: Path, unet: dict | None = None, scheduler: dict | None = None) -> Path:
    """A pipeline folder with small configs edited by ``unet`` / ``scheduler``."""
    cfg = {
        **DDPM_CIFAR10,
        "sample_size": 16,
        "block_out_channels": [32, 32, 32, 32],
        **(unet or {}),
    }
    net = _perturbed(diffusers.UNet2DModel(**cfg))
    sched = diffusers.DDPMScheduler(**{**DDPM_SCHEDULER, **(scheduler or {})})
    diffusers.DDPMPipeline(unet=net, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("unet", "scheduler", "words"),
    [
        ({"act_fn": "gelu"}, None, "act_fn"),
        ({"norm_eps": 1e-5}, None, "norm_eps"),
        ({"flip_sin_to_cos": True}, None, "flip_sin_to_cos"),
        ({"freq_shift": 0}, None, "freq_shift"),
        ({"attention_head_dim": 8}, None, None),  # 32 / 8 = 4 heads everywhere: maps
        ({"resnet_time_scale_shift": "scale_shift"}, None, "resnet_time_scale_shift"),
        ({"add_attention": False}, None, "add_attention"),
        ({"center_input_sample": True}, None, "center_input_sample"),
        (None, {"beta_schedule": "scaled_linear"}, "beta_schedule"),
        (None, {"beta_end": 0.012}, "linear betas"),
        (None, {"prediction_type": "sample"}, None),  # x0 prediction: maps
        (None, {"variance_type": "learned_range"}, "variance_type"),
        ({"num_class_embeds": 10}, None, "null label"),  # not ddkit's: no null label
    ],
)
def test_what_does_not_map_is_refused_in_one_line(tmp_path, capsys, unet, scheduler, words):
    folder = _pipeline(tmp_path / "p", unet, scheduler)
    argv = ["sample", str(folder), "--steps", "2", "--num", "1", "--out", str(tmp_path / "o")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    if words is None:
        assert code == 0
        return
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert words in err and "config.json" in err
    assert not (tmp_path / "o").exists()


def test_a_unet_folder_without_its_scheduler_is_refused(tmp_path):
    folder = _pipeline(tmp_path / "p")
    assert read_diffusers(folder / "unet")[0].image_size == 16  # a UNet folder beside scheduler/
    (folder / "unet").rename(tmp_path / "alone")
    with pytest.raises(InteropError, match="no scheduler config"):
        read_diffusers(tmp_path / "alone")


def test_pickled_weights_are_read_without_running_code(tmp_path):
    folder = _pipeline(tmp_path / "p")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    weights.unlink()
    target = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (target, "code ran"))

    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    assert read_diffusers(folder)[0].image_size == 16  # a plain .bin reads
    with open(folder / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(InteropError, match="not a weights file"):
        read_diffusers(folder)
    assert not target.exists()


def test_export_refuses_what_diffusers_cannot_express_before_writing(tmp_path, capsys):
    path = write_checkpoint(tmp_path / "mlp.safetensors", MLP_CONFIG)
    assert main(["export", str(path), str(tmp_path / "out")]) == 2
    assert "only U-Nets export" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    two_heads = {"num_heads": 2, "attention_resolutions": [8, 4]}  # widths 16, 32: sizes 8, 16
    unet = _tiny_checkpoint(tmp_path / "heads", **two_heads)
    assert main(["export", str(unet), str(tmp_path / "out")]) == 2
    assert "one head size" in capsys.readouterr().err
    wide_first = _tiny_checkpoint(tmp_path / "wide", channel_mult=[2, 2])
    assert main(["export", str(wide_first), str(tmp_path / "out")]) == 2
    assert "channel_mult[0]=2" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert main(["export", str(_tiny_checkpoint(tmp_path)), str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert json.dumps(sorted(p.name for p in (tmp_path / "full").iterdir())) == '["x"]'


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("file", "changes", "words"),
    [
        ("scheduler/scheduler_config.json", {"_class_name": "EDMEulerScheduler"}, "_class_name"),
        ("scheduler/scheduler_config.json", {"prediction_type": ["epsilon"]}, "prediction_type"),
        ("scheduler/scheduler_config.json", {"trained_betas": {"a": 1}}, "trained_betas"),
        ("scheduler/scheduler_config.json", {"beta_schedule": None}, "beta_schedule"),
        ("unet/config.json", {"norm_eps": [1e-6]}, "norm_eps"),
        ("unet/config.json", {"down_block_types": [["DownBlock2D"]] * 4}, "down_block_types"),
        ("unet/config.json", {"layers_per_block": 10**9}, "layers_per_block"),
        ("unet/config.json", {"block_out_channels": [16] * 5000}, "block_out_channels"),
        ("unet/config.json", {"in_channels": 4, "out_channels": 4}, "in_channels=4"),
        ("model_index.json", {"_class_name": "LDMPipeline"}, "LDMPipeline"),
    ],
)
def test_hostile_or_foreign_folders_are_refused_in_one_line(tmp_path, capsys, file, changes, words):
    folder = _pipeline(tmp_path / "p")
    _edit_json(folder / file, **changes)
    argv = ["sample", str(folder), "--steps", "2", "--num", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and len(err) < 600
    assert words in err
    assert not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_their_config_are_refused(tmp_path, capsys):
    folder = _pipeline(tmp_path / "p")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["conv_in.weight"]
    save_file(state, path)
    argv = ["sample", str(folder), "--steps", "2", "--num", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "lacks 'conv_in.weight'" in capsys.readouterr().err


def test_export_checks_its_output_and_the_ddim_pipeline_first(tmp_path, capsys):
    path = _tiny_checkpoint(tmp_path, learn_sigma=True)
    assert main(["export", str(path), str(tmp_path / "o"), "--sampler", "ddim"]) == 2
    assert "DDPMPipeline only" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", str(path), str(tmp_path / "file" / "x")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "out" in err
    assert not (tmp_path / "o").exists()


def test_eval_of_a_diffusers_folder_says_it_names_no_data(tmp_path, capsys):
    folder = _pipeline(tmp_path / "p")
    assert main(["eval", str(folder), "--bpd", "--out", str(tmp_path / "e")]) == 2
    assert "names no data set" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
