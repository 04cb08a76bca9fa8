"""ddkit.models: the DDPM U-Net, the MLP, their layers and configs."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.cpu import winograd
from ddkit.cpu.winograd import winograd_conv3x3, winograd_pays
from ddkit.models import (
    PRESETS,
    MLPConfig,
    UNetConfig,
    count_parameters,
    layers,
    model_config_from_dict,
    model_config_to_dict,
    preset,
    timestep_embedding,
)
from ddkit.models import unet as unet_module
from ddkit.models.layers import (
    AttentionBlock,
    Conv3x3,
    Dropout,
    Upsample,
    keep_mask,
    upsample_conv,
)

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


@pytest.mark.parametrize("shape", [(2, 5, 6, 4), (1, 3, 2, 2), (2, 3, 4, 6)])
def test_winograd_conv_is_the_convolution_forward_and_backward(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(winograd_conv3x3(x, w, b), F.conv2d(x, w, b, padding=1))
    assert torch.autograd.gradcheck(winograd_conv3x3, (x, w, b))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(winograd_conv3x3, (x_cl, w, None))


def test_winograd_conv_float32_accuracy_and_layout():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 8)
    w = torch.randn(32, 64, 3, 3) / 24
    b = torch.randn(32)
    y = winograd_conv3x3(x, w, b)
    exact = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    assert ((y.double() - exact).abs().max() / exact.abs().max()).item() < 1e-5
    assert y.is_contiguous()
    y_cl = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), w, b)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="even"):
        winograd_conv3x3(torch.randn(1, 64, 7, 8), w, b)
    with pytest.raises(ValueError, match="input channels"):
        winograd_conv3x3(torch.randn(1, 32, 8, 8), w, b)


@pytest.fixture
def avx2(monkeypatch):
    """Take the CPU for one where Winograd pays (AVX2 without AVX-512), whatever this one is."""
    monkeypatch.setattr(winograd, "cpu_favours_winograd", lambda: True)


def test_winograd_is_taken_only_where_it_pays(avx2):
    wide = torch.empty(8, 256, 16, 16)
    assert winograd_pays(wide, 256, 256)
    assert not winograd_pays(wide[:1], 256, 256)  # 64 tiles
    assert not winograd_pays(torch.empty(64, 32, 28, 28), 32, 32)  # few channels
    assert not winograd_pays(torch.empty(8, 256, 15, 16), 256, 256)  # odd size
    assert not winograd_pays(torch.empty(8, 384, 32, 32), 384, 128)  # V beyond cache
    assert not winograd_pays(wide.to(torch.bfloat16), 256, 256)


def test_winograd_is_never_taken_on_cpus_where_it_loses(monkeypatch):
    monkeypatch.setattr(winograd, "cpu_favours_winograd", lambda: False)
    assert not winograd_pays(torch.empty(8, 256, 16, 16), 256, 256)


def test_conv3x3_matches_conv2d_on_both_paths(avx2):
    torch.manual_seed(0)
    conv = Conv3x3(128, 128)
    ref = torch.nn.Conv2d(128, 128, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    for x in (torch.randn(8, 128, 16, 16), torch.randn(2, 128, 6, 6)):
        assert winograd_pays(x, 128, 128) == (x.shape[0] == 8)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = conv(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-3)
        conv.zero_grad()
        ref.zero_grad()


# --- memory layout: channels_last at wide, few-channel levels on AVX-512 CPUs ----------------

# 16x16 with 32 channels, 8x8 with 64; groups 4, one block per level, attention at both.  The
# layout tests pin level 0 to channels_last and level 1 to NCHW (_mixed_levels), so that layouts
# meet inside the model.
LAYOUT_CFG = TINY.replace(
    image_size=16, in_channels=3, base_channels=32, attention_resolutions=(16, 8), dropout=0.1
)


def _mixed_levels(monkeypatch):
    monkeypatch.setattr(unet_module, "cpu_favours_channels_last", lambda: True)
    monkeypatch.setattr(unet_module.UNetConfig, "channels_last_levels", lambda self: frozenset({0}))


def test_channels_last_levels_of_the_presets():
    assert preset("ddpm-cifar10").channels_last_levels() == {0}  # 32x32 x 128; 256 wide below
    assert preset("ddpm-28").channels_last_levels() == {0, 1, 2}  # 32, 64 and 64 channels
    assert preset("ddpm-8").channels_last_levels() == {0, 1}  # 32 and 64 channels
    assert LAYOUT_CFG.replace(base_channels=96).channels_last_levels() == {0}  # 96, 192


def _layout_twins(monkeypatch, pinned: bool = True):
    """The same U-Net twice, one that may use channels_last (the CPU check forced on; levels
    pinned to {0} unless ``pinned`` is False, then the default rule's, here every level) and one
    pinned to NCHW; and a record of the memory format each 3x3 conv of the first receives."""
    if pinned:
        _mixed_levels(monkeypatch)
    else:
        monkeypatch.setattr(unet_module, "cpu_favours_channels_last", lambda: True)
    torch.manual_seed(0)
    fast, plain = LAYOUT_CFG.build(), LAYOUT_CFG.build()
    _randomise_zero_params(fast)
    plain.load_state_dict(fast.state_dict())
    plain._channels_last_levels = frozenset()
    seen = []

    def record(module, args):
        x = args[0]
        seen.append((x.shape[-1], x.is_contiguous(memory_format=torch.channels_last)))

    for m in fast.modules():
        if isinstance(m, Conv3x3):
            m.register_forward_pre_hook(record)
    return fast, plain, seen


@pytest.mark.parametrize("pinned", [True, False])
def test_unet_is_the_same_function_and_gradient_in_either_layout(monkeypatch, pinned):
    fast, plain, seen = _layout_twins(monkeypatch, pinned)
    x, t = _inputs(LAYOUT_CFG, 4)
    outs = []
    for model in (fast, plain):
        torch.manual_seed(1)  # same dropout masks: drawn in logical order in both layouts
        out = model(x, t)
        out.square().mean().backward()
        outs.append(out)
    # pinned: the 16x16 convs ran in channels_last, the 8x8 ones in NCHW; else all of them in
    # channels_last (both levels have at most 128 channels)
    assert seen and all(cl == (size == 16 or not pinned) for size, cl in seen)
    assert {size for size, _ in seen} == {16, 8}
    assert outs[0].is_contiguous()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "in_channels, base, pinned",
    [(1, 32, True), (3, 32, True), (3, 64, True), (3, 8, True), (1, 32, False), (3, 8, False)],
)
def test_unet_layouts_meet_without_copies(monkeypatch, in_channels, base, pinned):
    """With channels_last levels next to NCHW ones (pinned), every convolution receives its input and,
    in the backward pass, its output gradient dense in one layout, and no concatenation mixes
    layouts: no gradient reaches a convolution strided or in the other layout (each of those
    would be a copy per convolution).  Included: a 1-channel input, whose conv_in output comes
    out NCHW, the sub-pixel upsampling (bases 32 and 64: 64 and 128 channels at 8x8) and the
    upsampling as written (base 8: 16 channels); and, unpinned, the default rule's levels (all
    channels_last here)."""
    if pinned:
        _mixed_levels(monkeypatch)
    else:
        monkeypatch.setattr(unet_module, "cpu_favours_channels_last", lambda: True)
    # no attention at 16x16: the residual blocks there receive the concatenations' gradients
    cfg = LAYOUT_CFG.replace(
        in_channels=in_channels, base_channels=base, attention_resolutions=(8,)
    )
    torch.manual_seed(0)
    model = cfg.build()
    _randomise_zero_params(model)
    bad = []
    cat = torch.cat

    def same_layout_cat(tensors, dim=0, **kwargs):
        if not all(same_layout(a, tensors[0]) for a in tensors):
            bad.append(("concatenation", [a.stride() for a in tensors]))
        return cat(tensors, dim=dim, **kwargs)

    monkeypatch.setattr(torch, "cat", same_layout_cat)

    def dense(t):
        return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)

    def same_layout(a, b):
        cl = torch.channels_last
        return a.is_contiguous() == b.is_contiguous() or (
            a.is_contiguous(memory_format=cl) and b.is_contiguous(memory_format=cl)
        )

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(
                lambda m, args, out, name=name: (
                    None
                    if dense(args[0]) and same_layout(args[0], out)
                    else bad.append(("input", name))
                )
            )
            m.register_full_backward_hook(
                lambda m, gin, gout, name=name: (
                    None
                    if dense(gout[0]) and (gin[0] is None or same_layout(gin[0], gout[0]))
                    else bad.append(("gradient", name, gout[0].stride()))
                )
            )
    x, t = _inputs(cfg, 3)
    model(x, t).square().mean().backward()
    assert not bad, bad


def test_torch_func_grad_through_a_training_unet_with_dropout(monkeypatch):
    """torch.func.grad over the parameters (functional_call) of a U-Net in training mode, dropout
    on, gives autograd's gradient for the same dropout masks.  The fused kernel steps aside for
    functorch tensors, so both sides take the PyTorch-ops path here (same masks, same seed)."""
    from torch.func import functional_call, grad

    from ddkit.cpu import gn_silu as cpu_kernels

    monkeypatch.setattr(cpu_kernels, "usable", lambda *args, **kwargs: False)
    torch.manual_seed(0)
    model = LAYOUT_CFG.build().train()
    _randomise_zero_params(model)
    x, t = _inputs(LAYOUT_CFG, 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.manual_seed(3)
    g = grad(lambda p: functional_call(model, p, (x, t)).square().mean())(params)
    torch.manual_seed(3)
    model(x, t).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_unet_stays_nchw_where_channels_last_does_not_pay(monkeypatch):
    fast, _, seen = _layout_twins(monkeypatch)
    x, t = _inputs(LAYOUT_CFG, 2)
    fast.double()(x.double(), t)  # not fp32
    fast.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 convolutions
        fast(x, t)
    monkeypatch.setattr(unet_module, "cpu_favours_channels_last", lambda: False)
    fast(x, t)  # a CPU where NCHW is faster
    assert seen and not any(cl for _, cl in seen)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_unet_forward_mode_derivative_in_nchw_under_jvp(monkeypatch):
    """GroupNorm's forward-mode derivative needs NCHW: under torch.func.jvp (used by the DDPM
    sampler's Tweedie variances) the U-Net keeps NCHW and gives the NCHW model's derivative."""
    fast, plain, seen = _layout_twins(monkeypatch)
    fast.eval()
    plain.eval()
    x, t = _inputs(LAYOUT_CFG, 2)
    v = torch.randn_like(x)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward derivative
        out_f, jv_f = torch.func.jvp(lambda y: fast(y, t), (x,), (v,))
        out_p, jv_p = torch.func.jvp(lambda y: plain(y, t), (x,), (v,))
    torch.testing.assert_close(jv_f, jv_p, rtol=1e-5, atol=1e-5)
    assert seen and not any(cl for _, cl in seen)
    seen.clear()
    fast(x, t)  # outside the transform: channels_last again
    assert any(cl for _, cl in seen)


# each CPU check: the function, its override variable, and the torch capability it accepts
CPU_CHECKS = {
    "winograd": (winograd, "cpu_favours_winograd", "DDKIT_WINOGRAD", "AVX2"),
    "channels_last": (unet_module, "cpu_favours_channels_last", "DDKIT_CHANNELS_LAST", "AVX512"),
}


@pytest.mark.parametrize("check", sorted(CPU_CHECKS))
@pytest.mark.parametrize("isa", ["AVX2", "AVX512", "DEFAULT"])
@pytest.mark.parametrize("env", [None, "0", "1"])
def test_cpu_checks_follow_the_isa_and_the_override(monkeypatch, check, isa, env):
    module, name, variable, favoured = CPU_CHECKS[check]
    fn = getattr(module, name)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    if env is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, env)
    fn.cache_clear()
    try:
        assert fn() is (isa == favoured if env is None else env == "1")
    finally:
        fn.cache_clear()


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_is_nearest_upsampling_then_conv(channels_last, monkeypatch):
    """Function and gradients (gradcheck, float64) in either layout, the output in the input's
    layout; the slicing path taken under torch.compile gives the same output and gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    out = upsample_conv(x, w, b)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.autograd.gradcheck(upsample_conv, (x, w, b))
    assert torch.autograd.gradgradcheck(upsample_conv, (x, w, b))
    g = torch.randn_like(expected)
    grads = torch.autograd.grad(out, (x, w, b), g)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    sliced = upsample_conv(x, w, b)
    torch.testing.assert_close(sliced, out)
    for a, c in zip(torch.autograd.grad(sliced, (x, w, b), g), grads):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("channels_last", [False, True])
def test_interleave_gradient_is_exact_zero_where_no_phase_reads(channels_last, monkeypatch):
    """The backward of the phase weaving writes every element of its fresh (uninitialised)
    buffer: the gradient of z is the output gradient where a phase reads z and exactly 0 in the
    row and column each phase leaves, whatever the allocator hands back (here memory that held
    NaN: torch.empty is made to return NaN-filled tensors)."""
    n, c, h, w = 2, 3, 4, 5
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    z = torch.randn(n, 4 * c, h + 1, w + 1).contiguous(memory_format=fmt).requires_grad_()
    out = layers._Interleave.apply(z, h, w)
    g = torch.randn_like(out)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(math.nan))
    (dz,) = torch.autograd.grad(out, z, g)
    monkeypatch.undo()
    want = torch.zeros(n, 2, 2, c, h + 1, w + 1)
    grid = g.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # [N, C, H, 2, W, 2]
    for a in range(2):
        for b_ in range(2):
            want[:, a, b_, :, a : a + h, b_ : b_ + w] = grid[:, :, :, a, :, b_]
    assert torch.equal(dz, want.flatten(1, 3))
    assert dz.is_contiguous(memory_format=fmt)


def test_upsample_takes_the_subpixel_path_where_it_pays(monkeypatch):
    """Upsample runs as upsample_conv from 32 channels and 7x7 up (``subpixel_pays``), as
    written below, and is the same function either way."""
    taken = []
    real = layers.upsample_conv
    monkeypatch.setattr(layers, "upsample_conv", lambda *a: taken.append(1) or real(*a))
    torch.manual_seed(0)
    for channels, size, expect in [(32, 7, True), (64, 4, False), (16, 14, False), (31, 8, False)]:
        up = Upsample(channels).double()
        x = torch.randn(2, channels, size, size, dtype=torch.float64)
        assert layers.subpixel_pays(x) is expect
        taken.clear()
        out = up(x)
        assert bool(taken) is expect, (channels, size)
        conv = up.conv
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        torch.testing.assert_close(out, expected)


def test_dropout_statistics_and_modes():
    torch.manual_seed(0)
    drop = Dropout(0.25)  # a multiple of 2**-15: exact
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005  # 5 standard errors
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)  # the same mask in the backward
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_unet_traces_into_one_graph_for_torch_compile(avx2, monkeypatch):
    """Under torch.compile (train.compile) the CPU-specific paths step aside, so Dynamo sees the
    whole training forward as one graph: Winograd (forced on here), channels_last (forced on)
    and the 15-bit dropout mask (F.dropout instead, still at rate p with scale 1 / (1 - p)).
    Traced with the "eager" backend: no C++ compiler needed."""
    monkeypatch.setenv("DDKIT_CHANNELS_LAST", "1")
    cfg = TINY.replace(
        image_size=16, in_channels=1, base_channels=128, attention_resolutions=(8,), dropout=0.1
    )
    model = cfg.build().train()
    x, t = torch.randn(8, 1, 16, 16), torch.tensor([0, 1, 5, 50, 100, 400, 800, 999])
    assert (
        model._eager_cpu_fp32(x)
        and unet_module.cpu_favours_channels_last()
        and winograd_pays(torch.empty(8, 128, 16, 16), 128, 128)
    )
    explain = torch._dynamo.explain(model)(x, t)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons
    drop = torch.compile(Dropout(0.3), backend="eager")
    torch.manual_seed(0)
    y = drop(torch.ones(200_000))
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.006  # 5 standard errors
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))


@pytest.mark.parametrize("p", [0.1, 0.3, 1e-6, 0.99999])
def test_keep_mask_rate_and_unbiased_scale(p):
    """P(keep) = 1 - p' with p' = p rounded to 2**-15, and scale = 1 / (1 - p'), so that
    E[keep * scale] = 1 exactly; the draws are uniform (rate within 5 standard errors), and the
    two 15-bit fields of one draw are independent (no correlation between neighbours)."""
    torch.manual_seed(1)
    n = 1_000_001  # odd: the last draw is half used
    keep, scale = keep_mask((n,), p)
    q = min(round(p * 2**15), 2**15 - 1) / 2**15
    assert abs(q - p) <= 2**-16 or (p > 1 - 2**-15 and q == 1 - 2**-15)  # some are kept
    assert scale == pytest.approx(1 / (1 - q), rel=1e-12)
    rate = keep.double().mean().item()
    assert abs(rate - (1 - q)) <= 5 * math.sqrt(q * (1 - q) / n) + 1e-12
    k = keep[: n - 1].double().view(-1, 2)  # the two fields of each draw
    if 0.01 < q < 0.99:
        corr = torch.corrcoef(k.T)[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(k.shape[0])


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_time_projections_are_each_blocks_own_linear(monkeypatch, dtype):
    """The U-Net computes every ResBlock's emb_proj(emb) in one product against the stacked
    weights, in the order it runs the blocks: each block's slice is its own projection, and the
    output and every parameter's gradient equal those of the blocks projecting the embedding
    themselves (float64; and float32, where the slices go through the fused kernel and, on
    AVX-512 CPUs, channels_last levels)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, num_res_blocks=2, channel_mult=(1, 2, 2))
    model = cfg.build().to(dtype)
    _randomise_zero_params(model)
    x, t = _inputs(cfg, 3)
    x = x.to(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    emb = model.time_embed(timestep_embedding(t, cfg.base_channels).to(dtype))
    stacked = list(model._time_shifts(emb))
    assert len(stacked) == len(model._res_blocks()) == 2 * 3 + 2 + 3 * 3
    for block, shift in zip(model._res_blocks(), stacked):
        torch.testing.assert_close(shift, block.emb_proj(emb), **tol)
    out = model(x, t)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    monkeypatch.setattr(
        type(model), "_time_shifts", lambda self, e: iter([None] * len(self._res_blocks()))
    )
    want = model(x, t)  # each block projects emb itself (shift=None)
    torch.testing.assert_close(out, want, **tol)
    for (name, _), a, b in zip(
        model.named_parameters(),
        grads,
        torch.autograd.grad(want.square().sum(), list(model.parameters())),
    ):
        torch.testing.assert_close(a, b, **tol, msg=name)


def test_time_projections_respect_replaced_or_hooked_projections():
    """A block whose emb_proj is replaced (an adapter, a Linear subclass) or hooked is not
    bypassed by the stacked product: every block then projects the embedding itself."""
    torch.manual_seed(0)
    model = TINY.build()
    _randomise_zero_params(model)
    x, t = _inputs(TINY, 2)
    base = model(x, t)
    calls = []
    block = model._res_blocks()[1]
    handle = block.emb_proj.register_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(model(x, t), base)
    assert calls == [1]
    handle.remove()
    # a backward hook too: it fires only if the block's own Linear runs
    handle = block.emb_proj.register_full_backward_hook(lambda *args: calls.append(2))
    out = model(x, t)
    torch.testing.assert_close(out, base)
    out.sum().backward()
    assert calls == [1, 2]
    handle.remove()

    class Shifted(torch.nn.Linear):
        def forward(self, e):
            return super().forward(e) + 1.0

    shifted = Shifted(block.emb_proj.in_features, block.emb_proj.out_features)
    shifted.load_state_dict(block.emb_proj.state_dict())
    block.emb_proj = shifted
    changed = model(x, t)
    assert not torch.allclose(changed, base)
    with torch.no_grad():
        block.emb_proj.bias += 1.0  # the same function as a plain Linear with this bias
    block.emb_proj = torch.nn.Linear(shifted.in_features, shifted.out_features)
    block.emb_proj.load_state_dict(shifted.state_dict())
    torch.testing.assert_close(model(x, t), changed)
    # a plain Linear without a bias: the same function as a zero bias
    plain = block.emb_proj
    block.emb_proj = torch.nn.Linear(plain.in_features, plain.out_features, bias=False)
    block.emb_proj.weight = plain.weight
    with torch.no_grad():
        plain.bias.zero_()
    no_bias = model(x, t)
    block.emb_proj = plain
    torch.testing.assert_close(model(x, t), no_bias)


def test_vmap_over_stacked_parameters_matches_each_model(monkeypatch):
    """An ensemble through torch.func (vmap over stacked parameters, the input shared): the
    parameters are transformed but the input is not, and the U-Net still takes its NCHW path
    (channels_last queries are not supported under vmap); each member's output is its model's."""
    from torch.func import functional_call, stack_module_state

    monkeypatch.setattr(unet_module, "cpu_favours_channels_last", lambda: True)
    torch.manual_seed(0)
    models = [TINY.build().eval() for _ in range(3)]
    for m in models:
        _randomise_zero_params(m, seed=int(torch.randint(0, 1000, ())))
    params, buffers = stack_module_state(models)
    x, t = _inputs(TINY, 2)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b):
        return functional_call(base, (p, b), (x, t))

    out = torch.func.vmap(one)(params, buffers)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x, t), rtol=1e-5, atol=1e-6)


def test_zero_initialised_output_at_start():
    model = TINY.build()
    x, t = _inputs(TINY, 2)
    with torch.no_grad():
        assert torch.equal(model(x, t), torch.zeros_like(x))


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
@pytest.mark.parametrize("variance", ["tweedie", "tweedie_jacobian"])
def test_tweedie_variances_run_through_a_unet_with_attention(variance):
    """Forward-mode AD through the U-Net (attention on the math kernel): the Jacobian-vector
    product equals central finite differences, and ancestral sampling with either Tweedie
    variance runs."""
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
    out = sample_ddpm(den, x, sched.timesteps(5, "leading"), generator=g, variance=variance)
    assert out.shape == x.shape and torch.isfinite(out).all()
