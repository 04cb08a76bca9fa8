"""ddkit.models: the DDPM U-Net, the MLP, their layers and configs; the U-Net under torch.func
transforms and torch.compile.  The CPU fast paths themselves are tested in test_cpu.py."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddkit import cpu
from ddkit.models import (
    PRESETS,
    MLPConfig,
    UNetConfig,
    count_parameters,
    model_config_from_dict,
    model_config_to_dict,
    preset,
    timestep_embedding,
)
from ddkit.models.layers import AttentionBlock

TINY = UNetConfig(
    image_size=8,
    in_channels=2,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    dropout=0.0,
    groups=4,
)
# 16x16 with 32 channels, 8x8 with 64 (where the sub-pixel upsampling pays), attention at both,
# dropout on: every CPU fast path of the U-Net would apply to it in fp32
WIDE = TINY.replace(
    image_size=16, in_channels=3, base_channels=32, attention_resolutions=(16, 8), dropout=0.1
)


def _randomise_zero_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers (last conv of each branch, attention output, conv_out)
    small random weights, so that every path of the network carries signal and gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _inputs(cfg, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if isinstance(cfg, MLPConfig):
        x = torch.randn(n, cfg.dim, generator=g)
    else:
        x = torch.randn(n, *cfg.input_shape(), generator=g)
    return x, torch.randint(0, 1000, (n,), generator=g)


# --- parameter count and shapes -------------------------------------------------------------


def test_ddpm_cifar10_has_the_official_parameter_count():
    # Ho et al. 2020's CIFAR-10 model (and diffusers' google/ddpm-cifar10-32): 35,746,307
    assert count_parameters(preset("ddpm-cifar10").build()) == 35_746_307


def test_count_parameters_trainable_only():
    model = TINY.build()
    total = count_parameters(model)
    model.conv_in.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.conv_in.weight.numel()


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_every_preset_maps_its_input_shape(name, learn_sigma):
    cfg = preset(name).replace(learn_sigma=learn_sigma)
    model = cfg.build().eval()
    x, t = _inputs(cfg, 2)
    with torch.no_grad():
        out = model(x, t)
    factor = 2 if learn_sigma else 1
    assert out.shape == (x.shape[0], factor * x.shape[1], *x.shape[2:])
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all()


def test_unet_rejects_inputs_that_do_not_match_the_config():
    model = TINY.build()
    x, t = _inputs(TINY, 2)
    with pytest.raises(ValueError, match=r"\[N, 2, 8, 8\]"):
        model(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="input shape"):
        model(torch.randn(2, 2, 16, 16), t)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, t[:1])
    with pytest.raises(ValueError, match="timesteps"):
        model(x, t[:, None])


def test_mlp_rejects_inputs_that_do_not_match_the_config():
    model = MLPConfig(dim=3).build()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        model(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


# --- sinusoidal embedding -------------------------------------------------------------------


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 7, 500, 999])
    dim = 16
    emb = timestep_embedding(t, dim)
    assert emb.shape == (5, dim) and emb.dtype == torch.float32
    half = dim // 2
    for k in range(half):
        freq = 10000.0 ** (-k / (half - 1))
        for i, ti in enumerate(t.tolist()):
            assert emb[i, k].item() == pytest.approx(math.sin(ti * freq), abs=1e-4)
            assert emb[i, half + k].item() == pytest.approx(math.cos(ti * freq), abs=1e-4)
    # t = 0: sin part zero, cos part one
    assert torch.equal(emb[0], torch.cat([torch.zeros(half), torch.ones(half)]))


def test_timestep_embedding_is_bounded_and_distinct():
    t = torch.arange(1000)
    emb = timestep_embedding(t, 128)
    assert emb.abs().max() <= 1.0
    # every pair of distinct timesteps is clearly apart
    dist = torch.cdist(emb, emb)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 0.1


def test_timestep_embedding_odd_dim_and_errors():
    emb = timestep_embedding(torch.tensor([3, 4]), 9)
    assert emb.shape == (2, 9) and torch.equal(emb[:, -1], torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        timestep_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(torch.zeros(2), 2)


# --- layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_attention_block_equals_naive_softmax_attention(num_heads):
    torch.manual_seed(0)
    n, c, h, w = 2, 16, 4, 3
    block = AttentionBlock(c, num_heads=num_heads, groups=4).double()
    _randomise_zero_params(block)
    x = torch.randn(n, c, h, w, dtype=torch.float64)

    tokens = F.group_norm(x, 4, block.norm.weight, block.norm.bias, block.norm.eps)
    tokens = tokens.reshape(n, c, h * w).transpose(1, 2)  # [N, L, C]
    q, k, v = (tokens @ block.qkv.weight.T + block.qkv.bias).chunk(3, dim=-1)
    d = c // num_heads
    outs = []
    for head in range(num_heads):
        sl = slice(head * d, (head + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(weights @ v[..., sl])
    attn = torch.cat(outs, dim=-1) @ block.proj.weight.T + block.proj.bias
    expected = x + attn.transpose(1, 2).reshape(n, c, h, w)

    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)
    channels_last = block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, expected, rtol=1e-10, atol=1e-10)


def test_attention_block_starts_as_identity():
    block = AttentionBlock(8, groups=4)
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(block(x), x)


# --- whole models ---------------------------------------------------------------------------


def test_unet_output_depends_on_the_timestep():
    torch.manual_seed(0)
    model = TINY.build().eval()
    _randomise_zero_params(model)
    x, _ = _inputs(TINY, 1)
    x = x.expand(3, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 1, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[0] - out[2]).abs().max() > 1e-3


def test_mlp_output_depends_on_the_timestep():
    torch.manual_seed(0)
    model = preset("mlp-2d").build().eval()
    _randomise_zero_params(model)
    x = torch.randn(1, 2).expand(3, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 1, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-5
    assert (out[0] - out[2]).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", [TINY.replace(dropout=0.3), MLPConfig(hidden=32, dropout=0.3)])
def test_dropout_is_active_in_train_and_off_in_eval(cfg):
    torch.manual_seed(0)
    model = cfg.build()
    _randomise_zero_params(model)
    x, t = _inputs(cfg, 2)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))


@pytest.mark.parametrize("cfg", [TINY.replace(learn_sigma=True), MLPConfig(hidden=32, depth=2)])
def test_gradient_reaches_every_parameter(cfg):
    torch.manual_seed(0)
    model = cfg.build()
    _randomise_zero_params(model)
    x, t = _inputs(cfg, 4)
    model(x, t).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_zero_initialised_output_at_start():
    model = TINY.build()
    x, t = _inputs(TINY, 2)
    with torch.no_grad():
        assert torch.equal(model(x, t), torch.zeros_like(x))


# --- torch.func transforms and torch.compile ------------------------------------------------
# Under these the CPU fast paths step aside (ddkit.cpu.fast_path): the U-Net must still work and
# compute the function of its plain path (``ddkit.cpu.disabled()``), dropout masks included.


def test_torch_func_grad_through_a_training_unet_with_dropout():
    """torch.func.grad over the parameters (functional_call) of a U-Net in training mode, dropout
    on, gives autograd's gradient on the plain path for the same dropout masks (same seed; the
    fused kernel's own masks would differ, so this also shows that it stepped aside)."""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    model = WIDE.build().train()
    _randomise_zero_params(model)
    x, t = _inputs(WIDE, 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.manual_seed(3)
    g = grad(lambda p: functional_call(model, p, (x, t)).square().mean())(params)
    with cpu.disabled():
        torch.manual_seed(3)
        model(x, t).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(g[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # SDPA under vmap
def test_vmap_over_stacked_parameters_matches_each_model():
    """An ensemble through torch.func (vmap over stacked parameters, the input shared): the
    parameters are transformed but the input is not; each member's output is its model's."""
    from torch.func import functional_call, stack_module_state

    torch.manual_seed(0)
    models = [WIDE.build().eval() for _ in range(3)]
    for m in models:
        _randomise_zero_params(m, seed=int(torch.randint(0, 1000, ())))
    params, buffers = stack_module_state(models)
    x, t = _inputs(WIDE, 2)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b):
        return functional_call(base, (p, b), (x, t))

    out = torch.func.vmap(one)(params, buffers)
    # outputs of order 1: fp32 rounding of a few 1e-6 between the three computations
    for i, m in enumerate(models):
        with torch.no_grad():
            torch.testing.assert_close(out[i], m(x, t), rtol=1e-5, atol=1e-5)
            with cpu.disabled():
                torch.testing.assert_close(out[i], m(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_jvp_through_a_training_unet_with_dropout():
    """torch.func.jvp (forward mode, as the DDPM sampler's Tweedie variances use it) through a
    U-Net in training mode with dropout: the primal output and the tangent are those of the plain
    path for the same masks, and the tangent equals the Jacobian-vector product that reverse mode
    gives (``torch.autograd.functional.jvp``, the double-vjp construction, on the plain path)."""
    torch.manual_seed(0)
    model = WIDE.build().train()
    _randomise_zero_params(model)
    x, t = _inputs(WIDE, 2)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))

    def f(y):
        return model(y, t)

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward derivative
        torch.manual_seed(3)
        out, jv = torch.func.jvp(f, (x,), (v,))
        with cpu.disabled():
            torch.manual_seed(3)
            out_plain, jv_plain = torch.func.jvp(f, (x,), (v,))
            torch.manual_seed(3)
            out_rev, jv_rev = torch.autograd.functional.jvp(f, x, v)
    assert jv.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(out, out_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jv, jv_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, out_rev, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jv, jv_rev, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_unet_traces_into_one_graph_for_torch_compile():
    """Under torch.compile (train.compile) the CPU fast paths step aside, so Dynamo sees the whole
    training forward, dropout included, as one graph, for a model and input where both fast paths
    apply in eager mode.  Traced with the "eager" backend: no C++ compiler needed."""
    model = WIDE.build().train()
    x, t = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 5, 50, 100, 400, 800, 999])
    assert all(cpu.fast_path(name, x) for name in cpu.FAST_PATHS)
    assert cpu.subpixel_pays(torch.empty(8, 64, 8, 8))  # the upsampling from 8x8
    explain = torch._dynamo.explain(model)(x, t)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip_through_json(name):
    cfg = preset(name)
    d = model_config_to_dict(cfg)
    assert d["arch"] == ("unet" if isinstance(cfg, UNetConfig) else "mlp")
    back = model_config_from_dict(json.loads(json.dumps(d)))
    assert back == cfg and type(back) is type(cfg)
    if isinstance(cfg, UNetConfig):
        assert isinstance(back.channel_mult, tuple)
        assert isinstance(back.attention_resolutions, tuple)


def test_config_dict_errors_name_the_bad_and_the_allowed():
    d = model_config_to_dict(preset("ddpm-28"))
    with pytest.raises(ValueError, match=r"'colour'.*allowed keys.*image_size"):
        model_config_from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match=r"'transformer'.*\['mlp', 'unet'\]"):
        model_config_from_dict({**d, "arch": "transformer"})
    with pytest.raises(ValueError, match="arch"):
        model_config_from_dict({k: v for k, v in d.items() if k != "arch"})
    with pytest.raises(ValueError, match="image_size"):
        model_config_from_dict({"arch": "unet"})
    with pytest.raises(ValueError, match="not a model config"):
        model_config_to_dict({"arch": "unet"})


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match=r"'ddpm-64'.*ddpm-cifar10.*mlp-2d"):
        preset("ddpm-64")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(image_size=30), r"image_size 30 must be divisible by 8"),
        (dict(base_channels=100), r"channel width 100 .* divisible by groups 32"),
        (dict(attention_resolutions=(12,)), r"attention resolution 12 .* \(32, 16, 8, 4\)"),
        (dict(num_heads=3), r"divisible by num_heads 3"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(channel_mult=()), r"channel_mult"),
        (dict(channel_mult=(1, 0)), r"channel_mult"),
        (dict(num_res_blocks=0), r"num_res_blocks"),
        (dict(in_channels=0), r"in_channels"),
        (dict(groups=True), r"groups"),
        (dict(learn_sigma=1), r"learn_sigma"),
        (dict(channel_mult=2), r"channel_mult must be a tuple"),
    ],
)
def test_bad_unet_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("ddpm-cifar10").replace(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(dim=0), "dim"),
        (dict(depth=0), "depth"),
        (dict(time_dim=3), "time_dim"),
        (dict(dropout=-0.1), "dropout"),
        (dict(learn_sigma="yes"), "learn_sigma"),
    ],
)
def test_bad_mlp_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        MLPConfig(**changes)


def test_list_fields_become_tuples():
    cfg = UNetConfig(image_size=8, channel_mult=[1, 2], attention_resolutions=[4], groups=8)
    assert cfg.channel_mult == (1, 2) and cfg.attention_resolutions == (4,)
    assert hash(cfg) == hash(cfg.replace())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "variance,krylov", [("tweedie", 1), ("tweedie_jacobian", 1), ("tweedie_jacobian", 3)]
)
def test_tweedie_variances_run_through_a_unet_with_attention(variance, krylov):
    """Forward-mode AD through the U-Net (attention on the math kernel): the Jacobian-vector
    product equals central finite differences, and ancestral sampling with either Tweedie
    variance runs (the Jacobian-shaped one also with a 3-step Lanczos draw, whose Jacobian is
    not symmetric here)."""
    from ddkit.diffusion.denoiser import Denoiser
    from ddkit.diffusion.schedule import NoiseSchedule
    from ddkit.samplers import sample_ddpm
    from ddkit.samplers.ddpm import _x0_jvp

    torch.manual_seed(0)
    model = TINY.build().double().eval()
    _randomise_zero_params(model)
    sched = NoiseSchedule.make("linear", 100)
    den = Denoiser(model, sched, "eps")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x0, jv = _x0_jvp(den, x, 40, v)
        h = 1e-5
        fd = (den(x + h * v, 40)[1] - den(x - h * v, 40)[1]) / (2 * h)
    torch.testing.assert_close(x0, den(x, 40)[1])
    assert jv.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-8)
    ts = sched.timesteps(5, "leading")
    out = sample_ddpm(den, x, ts, generator=g, variance=variance, krylov=krylov)
    assert out.shape == x.shape and torch.isfinite(out).all()
