"""ddkit.cpu, the CPU fast paths of the U-Net: the fused GroupNorm + SiLU kernel (gn_silu.py,
gn_silu.c: the same function and gradients as PyTorch's ops in float64, in both memory layouts;
its dropout; its build and fallbacks), the sub-pixel upsampling (upsample.py), and the switch
(``disabled``, ``DDKIT_CPU_FAST_PATHS=0``) and eligibility check (``fast_path``) in front of them:
the U-Net with its fast paths is the U-Net without them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from ddkit import cpu
from ddkit.cpu import gn_silu, winograd
from ddkit.cpu.upsample import _Interleave
from ddkit.cpu.winograd import winograd_conv3x3, winograd_pays
from ddkit.models import UNetConfig, Upsample
from ddkit.models.layers import Conv3x3, GroupNormSiLU, ResBlock

needs_kernel = pytest.mark.skipif(
    gn_silu.library() is None,
    reason="the fused kernel needs a C compiler (cc/gcc; Debian: apt-get install gcc)",
)
switched_on = pytest.mark.skipif(
    not all(cpu.enabled(name) for name in cpu.FAST_PATHS),
    reason="the CPU fast paths are switched off (DDKIT_CPU_FAST_PATHS=0)",
)

CASES = [  # N, C, H, W, groups
    (3, 32, 28, 28, 8),
    (2, 96, 14, 14, 32),
    (4, 64, 7, 7, 32),
    (2, 6, 5, 3, 3),
    (1, 4, 1, 1, 2),
    (2, 1, 4, 4, 1),
]


def _counting(monkeypatch):
    """Count the calls the model layers make of each of their fast paths (by name in FAST_PATHS;
    the other, "philox", serves the samplers)."""
    model_paths = (
        ("gn_silu", "group_norm_silu"),
        ("subpixel", "upsample_conv"),
        ("winograd", "winograd_conv3x3"),
    )
    assert {name for name, _ in model_paths} == set(cpu.FAST_PATHS) - {"philox"}
    calls = {name: 0 for name, _ in model_paths}
    for name, attr in model_paths:
        real = getattr(cpu, attr)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(cpu, attr, counted)
    return calls


# --- the fused GroupNorm + SiLU kernel ------------------------------------------------------


def _reference(x, shift, weight, bias, groups, eps=1e-6):
    if shift is not None:
        x = x + shift[:, :, None, None]
    return F.silu(F.group_norm(x, groups, weight, bias, eps))


def _leaves(n, c, h, w, channels_last, seed=0, scale=3.0, offset=1.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * scale + offset
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shift = torch.randn(n, c, generator=g)
    weight = torch.randn(c, generator=g)
    bias = torch.randn(c, generator=g)
    return [t.requires_grad_() for t in (x, shift, weight, bias)]


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_shift", [True, False])
def test_forward_and_gradients_match_float64_reference(case, channels_last, with_shift):
    n, c, h, w, groups = case
    x, shift, weight, bias = _leaves(n, c, h, w, channels_last)
    shift_in = shift if with_shift else None
    y = cpu.group_norm_silu(x, shift_in, weight, bias, groups, 1e-6)
    assert y.shape == x.shape
    # the output keeps the input's memory layout
    assert y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    inputs = (x, shift, weight, bias) if with_shift else (x, weight, bias)
    grads = torch.autograd.grad(y, inputs, grad_y)

    ref_leaves = [t.detach().double().requires_grad_() for t in (x, shift, weight, bias)]
    xd, sd, wd, bd = ref_leaves
    y_ref = _reference(xd, sd if with_shift else None, wd, bd, groups)
    ref_inputs = (xd, sd, wd, bd) if with_shift else (xd, wd, bd)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, grad_y.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    names = ["x", "shift", "weight", "bias"] if with_shift else ["x", "weight", "bias"]
    # with one channel per group the shift moves the whole group and its gradient is exactly 0:
    # a pixel sum of x's gradient that cancels, so its error is measured against the summands
    terms = grads_ref[0].abs().sum(dim=(2, 3)).max().item() if groups == c else 0.0
    for name, got, want in zip(names, grads, grads_ref, strict=True):
        scale = max(want.abs().max().item(), terms if name == "shift" else 0.0)
        assert (got.double() - want).abs().max().item() <= 1e-5 * scale + 1e-7, name


@needs_kernel
def test_saturates_exactly_for_large_arguments_and_propagates_nan():
    """|z| up to 1e4 (the exp is clamped at +-80): SiLU(z) = z above, ~0 below; NaN stays NaN."""
    z = torch.tensor([-1e4, -200.0, -80.0, -30.0, 0.0, 30.0, 80.0, 200.0, 1e4])
    # nine groups of one channel and one pixel normalise to 0, so z is the bias
    y = cpu.group_norm_silu(torch.zeros(1, 9, 1, 1), None, torch.ones(9), z, 9, 1e-6).flatten()
    torch.testing.assert_close(y.double(), F.silu(z.double()), rtol=2e-7, atol=1e-30)
    assert torch.isfinite(y).all()
    x = torch.randn(2, 4, 3, 3)
    x[0, 1, 2, 0] = float("nan")
    y = cpu.group_norm_silu(x, None, torch.ones(4), torch.zeros(4), 2, 1e-6)
    assert torch.isnan(y[0, :2]).all()  # the group that holds the NaN
    assert torch.isfinite(y[0, 2:]).all() and torch.isfinite(y[1]).all()


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_rate_scale_and_the_same_mask_in_the_backward(p, channels_last):
    torch.manual_seed(0)
    n, c, h, w, groups = 4, 16, 32, 32, 4
    x, shift, weight, bias = _leaves(n, c, h, w, channels_last)
    y = cpu.group_norm_silu(x, shift, weight, bias, groups, 1e-6, dropout=p)
    plain = _reference(x, shift, weight, bias, groups)
    threshold, scale = gn_silu.dropout_threshold(p)
    q = threshold / 2**24
    assert abs(q - p) <= 2**-25 and scale == pytest.approx(1 / (1 - q), rel=1e-12)
    keep = y != 0
    count = keep.numel()
    rate = keep.double().mean().item()
    assert abs(rate - (1 - q)) <= 5 * math.sqrt(q * (1 - q) / count)  # 5 standard errors
    torch.testing.assert_close(y[keep], plain[keep] * scale, rtol=1e-5, atol=1e-6)
    # draws are not correlated with their neighbours along a row, a column, the channels or the
    # batch (logical index lags 1, W, H W, C H W), nor with the next call's draws (a fresh seed)
    k = keep.flatten().double()
    for lag in (1, w, h * w, c * h * w):
        corr = torch.corrcoef(torch.stack([k[:-lag], k[lag:]]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(count - lag), lag
    again = cpu.group_norm_silu(x, shift, weight, bias, groups, 1e-6, dropout=p) != 0
    corr = torch.corrcoef(torch.stack([k, again.flatten().double()]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(count)
    # the backward applies the same mask: gradient = reference gradient of plain * mask * scale
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y, (x, shift, weight, bias), grad_y)
    want = torch.autograd.grad(plain, (x, shift, weight, bias), grad_y * keep * scale)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_mask_is_kept_per_element_in_the_activations_layout(channels_last):
    """The backward reads the forward's draws from a 16-bit mask laid out like x (no second hash):
    kept elements are 1, dropped 0, and a non-finite gradient at a dropped element still
    propagates, as it does through ``grad * mask * scale``."""
    torch.manual_seed(1)
    x, shift, weight, bias = _leaves(2, 8, 5, 7, channels_last)
    y = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.4)
    keep = y.grad_fn.saved_tensors[-1]
    assert keep.dtype == torch.int16 and keep.shape == x.shape and keep.stride() == x.stride()
    assert torch.equal(keep, (y != 0).to(torch.int16))
    dropped = (keep == 0).nonzero()[0].tolist()
    grad_y = torch.ones_like(y)
    grad_y[tuple(dropped)] = float("nan")
    (gx,) = torch.autograd.grad(y, x, grad_y)
    assert gx.isnan().any()
    plain = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.0)
    assert plain.grad_fn.saved_tensors[-1] is None  # no mask without dropout
    # the backward reads the mask rather than drawing again: with every flag cleared (behind
    # autograd's back), no gradient passes
    y = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.4)
    y.grad_fn.saved_tensors[-1].data.zero_()
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.slow
@needs_kernel
def test_dropout_draws_are_uncorrelated_at_power_of_two_lags():
    """2**24 draws at p = 0.5, eight seeds: the correlation of the keep mask with itself shifted
    by 1, 2, 4, ..., 65536 logical positions (1024 = H W here: the same pixel, next channel), in
    standard errors, has mean square ~1 per lag (chi-square with 8 degrees of freedom / 8).  A
    hash with too little mixing fails this: one keyed round of lowbias32 gave 42 at lag 1024."""
    x = torch.randn(16, 1024, 32, 32, generator=torch.Generator().manual_seed(0))
    weight, bias = torch.ones(1024), torch.zeros(1024)
    lags = [2**j for j in range(17)]
    z2 = torch.zeros(len(lags), dtype=torch.float64)
    for seed in range(8):
        torch.manual_seed(seed)
        keep = cpu.group_norm_silu(x, None, weight, bias, 32, 1e-6, dropout=0.5) != 0
        k = keep.flatten().double()
        k -= k.mean()
        var = (k @ k).item() / k.numel()
        for j, lag in enumerate(lags):
            m = k.numel() - lag
            z = (k[:-lag] @ k[lag:]).item() / m / var * math.sqrt(m)
            z2[j] += z * z / 8
    # P(chi2_8 / 8 > 4) ~ 1e-4 per lag for an ideal generator
    assert (z2 < 4).all(), dict(zip(lags, z2.tolist(), strict=True))


@needs_kernel
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("magnitude", [1e20, 1e36])
def test_huge_activations_keep_their_statistics(channels_last, magnitude):
    """|u - mu| beyond ~1e19 overflows fp32 squares: the image's statistics are then summed in
    double throughout, as PyTorch's fp32 ops do not (they are off by 4 at 1e20, NaN at 1e36)."""
    x, shift, weight, bias = _leaves(2, 8, 12, 12, channels_last, scale=magnitude, offset=0.0)
    y = cpu.group_norm_silu(x, None, weight, bias, 4, 1e-6)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(y, (x, weight, bias), grad_y)
    ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = _reference(ref[0], None, ref[1], ref[2], 4)
    want = torch.autograd.grad(y_ref, ref, grad_y.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("x", "weight", "bias"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        if name == "x" and magnitude > 1e30:
            continue  # ~1e-37: fp32 subnormals, with their few bits, in any implementation
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max(), name


@needs_kernel
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [6, 40])
def test_large_mean_and_non_dense_input(channels_last, size):
    """A mean 1000 times the spread: the error stays at the input's own fp32 resolution (ulp(1000)
    = 6e-5; statistics are two-pass, gradient sums taken about the mean, in fp32 blocks of pixels
    summed in double: 40 x 40 spans several blocks in either layout); PyTorch's fp32 ops are
    off by 0.3 here.  And an input in neither dense layout (copied to NCHW first)."""
    x, shift, weight, bias = _leaves(2, 8, size, size, channels_last, scale=1.0, offset=1e3)
    y = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(y, (x, shift, weight, bias), grad_y)
    ref = [t.detach().double().requires_grad_() for t in (x, shift, weight, bias)]
    y_ref = _reference(*ref, 4)
    want = torch.autograd.grad(y_ref, ref, grad_y.double())
    assert (y.double() - y_ref).abs().max() <= 3e-4
    for a, b in zip(got, want, strict=True):
        assert (a.double() - b).abs().max() <= 3e-4 * b.abs().max()
    strided = torch.randn(2, 8, 6, 5).transpose(2, 3)  # [2, 8, 5, 6], neither layout
    assert not strided.is_contiguous() and not strided.is_contiguous(
        memory_format=torch.channels_last
    )
    out = cpu.group_norm_silu(strided, None, weight.detach(), bias.detach(), 4, 1e-6)
    torch.testing.assert_close(out, _reference(strided, None, weight.detach(), bias.detach(), 4))


@needs_kernel
def test_no_dropout_at_p_zero_and_in_eval():
    x, shift, weight, bias = (t.detach() for t in _leaves(2, 8, 5, 5, False))
    plain = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6)
    assert torch.equal(cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.0), plain)
    norm = GroupNormSiLU(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    assert torch.equal(norm(x, shift, nn.Dropout(0.5).eval()), plain)
    assert torch.equal(norm(x, shift, nn.Dropout(0.0)), plain)


@needs_kernel
def test_dropout_mask_follows_the_seed_not_the_layout_or_threads():
    x, shift, weight, bias = (t.detach() for t in _leaves(2, 8, 6, 6, False))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    outs = []
    threads = torch.get_num_threads()
    try:
        for inp, nthreads in [(x, threads), (x_cl, threads), (x, 1)]:
            torch.set_num_threads(nthreads)
            torch.manual_seed(5)
            outs.append(cpu.group_norm_silu(inp, shift, weight, bias, 4, 1e-6, dropout=0.5))
    finally:
        torch.set_num_threads(threads)
    # the same draws (bit for bit across thread counts; the channels_last statistics are summed
    # in another order, so its values agree to rounding)
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0] != 0, outs[1] != 0)
    torch.testing.assert_close(outs[0], outs[1].contiguous(), rtol=1e-5, atol=1e-6)
    again = cpu.group_norm_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.5)
    assert not torch.equal((again != 0), (outs[0] != 0))  # a fresh seed per call


@needs_kernel
def test_double_backward_is_refused_with_a_clear_error():
    x, shift, weight, bias = _leaves(1, 4, 3, 3, False)
    y = cpu.group_norm_silu(x, shift, weight, bias, 2, 1e-6)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@needs_kernel
def test_inconsistent_shapes_take_the_pytorch_ops_and_their_errors():
    """Nothing inconsistent reaches the C code: a weight of the wrong size, channels that the
    groups do not divide, a shift of the wrong shape, an empty or non-4-D input take PyTorch's
    ops (a non-fp32 bias is the eligibility check's)."""
    x = torch.randn(2, 12, 3, 3)
    ok = (torch.ones(12), torch.zeros(12))
    assert cpu.kernel_applies(x, ok[0], 4)
    assert cpu.kernel_applies(x, ok[0], 4, shift=torch.zeros(2, 12))
    assert not cpu.kernel_applies(x, torch.ones(8), 4)
    assert not cpu.kernel_applies(x, ok[0], 5)
    assert not cpu.kernel_applies(x, ok[0], 0)
    assert not cpu.kernel_applies(x, ok[0], 4, shift=torch.zeros(2, 8))
    assert not cpu.kernel_applies(x, ok[0], 4, shift=torch.zeros(1, 12))  # broadcast: not here
    assert not cpu.kernel_applies(torch.randn(0, 12, 3, 3), ok[0], 4)
    assert not cpu.kernel_applies(torch.randn(2, 12, 9), ok[0], 4)
    assert not cpu.fast_path("gn_silu", x, ok[0], ok[1].double())
    with pytest.raises(RuntimeError):
        GroupNormSiLU(4, 8)(x)  # torch's own error, not a crash
    with pytest.raises(RuntimeError):
        GroupNormSiLU(4, 12)(x, torch.zeros(2, 8))


@switched_on
@needs_kernel
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_module_uses_the_kernel_only_where_it_applies(monkeypatch):
    """GroupNormSiLU runs the kernel for plain fp32 CPU calls, and the PyTorch ops, the same
    function, for float64, CPU autocast, forward-mode AD, torch.func.vmap, a broadcast shift,
    the "meta" device and ``disabled("gn_silu")``."""
    calls = _counting(monkeypatch)
    norm = GroupNormSiLU(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 5, 5)
    shift = torch.randn(2, 8)
    fused = norm(x, shift)
    assert calls["gn_silu"] == 1
    want = _reference(x, shift, norm.weight, norm.bias, 4)
    torch.testing.assert_close(fused, want)
    out = norm.double()(x.double(), shift.double())  # float64
    torch.testing.assert_close(out, want.double(), rtol=1e-5, atol=1e-6)
    norm.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(x, shift)
    with forward_ad.dual_level():
        out = norm(forward_ad.make_dual(x, torch.randn_like(x)), shift)
        torch.testing.assert_close(forward_ad.unpack_dual(out).primal, fused)
    # per sample under vmap, x not dense (a transposed view): the PyTorch ops, per sample
    xs = torch.randn(3, 2, 8, 5, 5)
    got = torch.func.vmap(lambda v: norm(v.transpose(2, 3)))(xs)
    expected = torch.stack([_reference(v.transpose(2, 3), None, norm.weight, norm.bias, 4)
                            for v in xs])  # fmt: skip
    torch.testing.assert_close(got, expected)
    broadcast = norm(x, shift[:1])  # a [1, C] shift broadcasts over the batch
    torch.testing.assert_close(broadcast, _reference(x, shift[:1], norm.weight, norm.bias, 4))
    meta = GroupNormSiLU(4, 8, eps=1e-6, device="meta")(x.to("meta"), shift.to("meta"))
    assert meta.device.type == "meta" and meta.shape == x.shape
    with cpu.disabled("gn_silu"):
        torch.testing.assert_close(norm(x, shift), fused, rtol=1e-5, atol=1e-6)
    assert calls["gn_silu"] == 1
    # dropout: a module in eval mode, or p = 0, means none
    torch.testing.assert_close(norm(x, shift, nn.Dropout(0.5).eval()), fused)
    assert calls["gn_silu"] == 2


def test_without_a_compiler_the_library_is_none_with_one_warning(monkeypatch, tmp_path):
    calls = _counting(monkeypatch)
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    gn_silu.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the fused GroupNorm"):
            assert gn_silu.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert gn_silu.library() is None  # cached: warned once
            assert not cpu.kernel_applies(torch.randn(1, 4, 2, 2), torch.ones(4), 2)
        norm = GroupNormSiLU(2, 4)
        x = torch.randn(2, 4, 3, 3)
        torch.testing.assert_close(norm(x), _reference(x, None, norm.weight, norm.bias, 2, 1e-5))
        assert calls["gn_silu"] == 0
    finally:
        gn_silu.library.cache_clear()
        assert list(tmp_path.iterdir()) == [] or not any(tmp_path.rglob("*.so"))


@needs_kernel
def test_build_is_cached_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path))
    gn_silu.library.cache_clear()
    try:
        lib = gn_silu.library()
        built = sorted((tmp_path / "kernels").glob("gn_silu-*.so"))
        assert lib is not None and len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        gn_silu.library.cache_clear()
        assert gn_silu.library() is not None
        names = sorted(p.name for p in (tmp_path / "kernels").iterdir())
        assert names == [built[0].name, built[0].name + ".sha256"]  # reused, no temporary left
        assert built[0].stat().st_mtime_ns == stamp
        # private to its owner: nobody else may replace code this process loads
        assert built[0].stat().st_mode & 0o777 == 0o700
        # a different build (here: one more flag) gets its own file
        monkeypatch.setattr(gn_silu, "FLAGS", [*gn_silu.FLAGS, "-DDDKIT_TEST_KEY"])
        gn_silu.library.cache_clear()
        assert gn_silu.library() is not None
        assert len(list((tmp_path / "kernels").glob("gn_silu-*.so"))) == 2
    finally:
        gn_silu.library.cache_clear()


# --- sub-pixel upsampling -------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_is_nearest_upsampling_then_conv(channels_last):
    """Function and gradients (gradcheck and gradgradcheck, float64) in either layout, the
    output in the input's layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    out = cpu.upsample_conv(x, w, b)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.autograd.gradcheck(cpu.upsample_conv, (x, w, b))
    assert torch.autograd.gradgradcheck(cpu.upsample_conv, (x, w, b))
    without_bias = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, padding=1)
    torch.testing.assert_close(cpu.upsample_conv(x, w, None), without_bias)


@pytest.mark.parametrize("channels_last", [False, True])
def test_interleave_gradient_is_exact_zero_where_no_phase_reads(channels_last, monkeypatch):
    """The backward of the phase weaving writes every element of its fresh (uninitialised)
    buffer: the gradient of z is the output gradient where a phase reads z and exactly 0 in the
    row and column each phase leaves, whatever the allocator hands back (here memory that held
    NaN: torch.empty is made to return NaN-filled tensors)."""
    n, c, h, w = 2, 3, 4, 5
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    z = torch.randn(n, 4 * c, h + 1, w + 1).contiguous(memory_format=fmt).requires_grad_()
    out = _Interleave.apply(z, h, w)
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


@switched_on
def test_upsample_takes_the_subpixel_path_where_it_pays(monkeypatch):
    """Upsample runs as upsample_conv in fp32 from 32 channels and 7x7 up (``subpixel_pays``), as
    written below that, in float64 and under ``disabled("subpixel")``; the same function either
    way, gradients included."""
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    for channels, size, pays in [(32, 7, True), (64, 4, False), (16, 14, False), (31, 8, False)]:
        up = Upsample(channels)
        x = torch.randn(2, channels, size, size, requires_grad=True)
        assert cpu.subpixel_pays(x) is pays
        calls["subpixel"] = 0
        out = up(x)
        assert calls["subpixel"] == int(pays), (channels, size)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, *up.parameters()), g)
        with cpu.disabled("subpixel"):
            want = up(x)
            want_grads = torch.autograd.grad(want, (x, *up.parameters()), g)
        assert calls["subpixel"] == int(pays)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        up.double()(x.detach().double())
        assert calls["subpixel"] == int(pays)


# --- the switch and the eligibility check ---------------------------------------------------


def test_is_transformed_sees_torch_func_wrappers():
    """``ddkit.cpu.is_transformed`` is the one use of a private torch API in ddkit
    (``torch._C._functorch.is_functorch_wrapped_tensor``): if torch renames or changes it, this
    test says so, rather than the fast paths silently running on torch.func wrappers."""
    functorch = getattr(torch._C, "_functorch", None)
    assert callable(getattr(functorch, "is_functorch_wrapped_tensor", None)), (
        f"torch {torch.__version__} no longer has torch._C._functorch.is_functorch_wrapped_tensor:"
        " torch changed its private API; ddkit.cpu.is_transformed needs another way to recognise"
        " torch.func wrappers"
    )
    seen = {}

    def record(y, transform):
        seen[transform] = (cpu.is_transformed(y), cpu.fast_path("gn_silu", y))
        return y.sum()

    x = torch.randn(3, 4)
    torch.func.vmap(lambda y: record(y, "vmap"))(x)
    torch.func.grad(lambda y: record(y, "grad"))(x)
    torch.func.jvp(lambda y: record(y, "jvp"), (x,), (torch.ones_like(x),))
    assert seen == {t: (True, False) for t in ("vmap", "grad", "jvp")}, (
        f"torch {torch.__version__} changed torch._C._functorch.is_functorch_wrapped_tensor: it "
        f"no longer recognises torch.func wrappers ({seen}); ddkit.cpu.is_transformed needs fixing"
    )
    assert cpu.is_transformed(x) is False
    assert cpu.is_transformed(torch.nn.Parameter(x)) is False


def test_fast_path_admits_only_plain_fp32_cpu_tensors(monkeypatch):
    x = torch.randn(2, 8, 4, 4)
    for name in cpu.FAST_PATHS:
        assert cpu.fast_path(name, x, None, torch.ones(8)) is cpu.enabled(name)
        assert cpu.fast_path(name) is cpu.enabled(name)  # no tensor: only the switch decides
        assert not cpu.fast_path(name, x, x.double())
        assert not cpu.fast_path(name, x.to(torch.bfloat16))
        assert not cpu.fast_path(name, x.half(), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cpu.fast_path(name, x)
        with forward_ad.dual_level():  # a dual weight beside a plain input
            assert not cpu.fast_path(name, x, forward_ad.make_dual(x, torch.ones_like(x)))
        with cpu.disabled(name):
            assert not cpu.fast_path(name, x)
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not any(cpu.fast_path(name, x) for name in cpu.FAST_PATHS)


def test_fast_path_is_never_taken_off_the_cpu():
    """A tensor on another device (CUDA, MPS; here "meta", which any torch build has) never takes
    a CPU fast path, alone or beside CPU tensors; and the modules then run their PyTorch ops."""
    meta = torch.empty(2, 64, 8, 8, device="meta")
    assert meta.device.type != "cpu" and meta.dtype == torch.float32
    for name in cpu.FAST_PATHS:
        assert not cpu.fast_path(name, meta)
        assert not cpu.fast_path(name, torch.randn(2, 64, 8, 8), meta)
        assert not cpu.fast_path(name, meta, torch.ones(64))
    assert cpu.subpixel_pays(meta)  # it would pay, were it on the CPU


@switched_on
def test_modules_take_no_fast_path_on_another_device(monkeypatch):
    calls = _counting(monkeypatch)
    norm, up = GroupNormSiLU(4, 64).to("meta"), Upsample(64).to("meta")
    conv = Conv3x3(256, 256).to("meta")
    meta = torch.empty(2, 64, 8, 8, device="meta")
    assert norm(meta, torch.empty(2, 64, device="meta"), nn.Dropout(0.1)).shape == meta.shape
    assert up(meta).shape == (2, 64, 16, 16)
    assert conv(torch.empty(8, 256, 16, 16, device="meta")).shape == (8, 256, 16, 16)
    assert calls == {"gn_silu": 0, "subpixel": 0, "winograd": 0}


def test_disabled_switches_named_paths_off_for_a_block_only():
    before = {name: cpu.enabled(name) for name in cpu.FAST_PATHS}
    with cpu.disabled():
        assert not any(cpu.enabled(name) for name in cpu.FAST_PATHS)
    assert {name: cpu.enabled(name) for name in cpu.FAST_PATHS} == before
    with cpu.disabled("gn_silu"):
        assert not cpu.enabled("gn_silu")
        assert cpu.enabled("subpixel") is before["subpixel"]
        with cpu.disabled("subpixel"):  # nested: both off, then back to the outer block's state
            assert not cpu.enabled("gn_silu") and not cpu.enabled("subpixel")
        assert not cpu.enabled("gn_silu") and cpu.enabled("subpixel") is before["subpixel"]
    with pytest.raises(RuntimeError, match="inside"), cpu.disabled():
        raise RuntimeError("inside")
    assert {name: cpu.enabled(name) for name in cpu.FAST_PATHS} == before  # after an exception
    listed = r"'nope'.*\['gn_silu', 'philox', 'subpixel', 'winograd'\]"
    with pytest.raises(ValueError, match=listed):
        with cpu.disabled("gn_silu", "nope"):
            pass
    assert {name: cpu.enabled(name) for name in cpu.FAST_PATHS} == before


def test_environment_switches_every_path_off_for_the_process():
    code = (
        "import json, torch, ddkit.cpu as cpu\n"
        "print(json.dumps([{n: cpu.enabled(n) for n in cpu.FAST_PATHS},"
        " cpu.fast_path('gn_silu', torch.ones(1))]))"
    )
    env = {**os.environ, "DDKIT_CPU_FAST_PATHS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    enabled, admitted = json.loads(done.stdout.strip().splitlines()[-1])
    assert enabled == dict.fromkeys(cpu.FAST_PATHS, False) and admitted is False


def _wide_unet():
    """A two-level 16x16 U-Net where both fast paths apply (64 channels at 8x8 upsample), with
    random weights in its zero-initialised layers so every path carries signal and gradient."""
    cfg = UNetConfig(
        image_size=16,
        in_channels=3,
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        groups=4,
    )
    torch.manual_seed(0)
    model = cfg.build()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, 3, 16, 16, generator=g)
    return model, x, torch.tensor([0, 500, 999])


@switched_on
@needs_kernel
@pytest.mark.parametrize("off", [(), ("gn_silu",), ("subpixel",)], ids=["all", "gn", "sub"])
def test_unet_with_fast_paths_is_the_unet_without(monkeypatch, off):
    """The whole U-Net (training mode, no dropout): the same output and parameter gradients with
    its fast paths as with ``ddkit.cpu.disabled(*off)`` (all of them, or one), which runs the
    PyTorch ops in their place; each path is taken when on and not when off."""
    calls = _counting(monkeypatch)
    model, x, t = _wide_unet()
    model.train()
    out = model(x, t)
    grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
    # every GroupNormSiLU module (two per ResBlock, one at the end) and the one Upsample
    norms = sum(isinstance(m, GroupNormSiLU) for m in model.modules())
    # (Winograd does not pay at this size: tested on its own below)
    assert norms == 2 * 8 + 1 and calls == {"gn_silu": norms, "subpixel": 1, "winograd": 0}
    for name in calls:
        calls[name] = 0
    with cpu.disabled(*off):
        ref = model(x, t)
        ref_grads = torch.autograd.grad(ref.square().mean(), list(model.parameters()))
    off_paths = set(off or cpu.FAST_PATHS) - {"winograd", "philox"}
    assert {name for name, n in calls.items() if n == 0} - {"winograd"} == off_paths
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


# --- Winograd F(2x2, 3x3) -------------------------------------------------------------------


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


def test_winograd_is_never_taken_on_cpus_where_it_loses(monkeypatch):
    monkeypatch.setattr(winograd, "cpu_favours_winograd", lambda: False)
    assert not winograd_pays(torch.empty(8, 256, 16, 16), 256, 256)


def test_winograd_follows_the_isa():
    isa = torch.backends.cpu.get_cpu_capability()
    assert winograd.cpu_favours_winograd() == (isa == "AVX2")


@switched_on
def test_conv3x3_matches_conv2d_on_both_paths(avx2, monkeypatch):
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    conv = Conv3x3(128, 128)
    ref = torch.nn.Conv2d(128, 128, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    for x in (torch.randn(8, 128, 16, 16), torch.randn(2, 128, 6, 6)):
        pays = x.shape[0] == 8
        assert winograd_pays(x, 128, 128) == pays
        before = calls["winograd"]
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = conv(xa), ref(xb)
        assert calls["winograd"] == before + pays
        torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-3)
        conv.zero_grad()
        ref.zero_grad()
    with cpu.disabled("winograd"):
        conv(torch.randn(8, 128, 16, 16))
    assert calls["winograd"] == 1


@switched_on
def test_residual_block_trains_the_same_with_winograd(avx2, monkeypatch):
    """A ResBlock whose two 3x3 convolutions take Winograd: the same output and parameter
    gradients as with the fast path off."""
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    block = ResBlock(128, 128, 64, groups=32)
    with torch.no_grad():
        block.conv2.weight.normal_(0.0, 0.02)  # zero-initialised: give it signal
    x, emb = torch.randn(8, 128, 16, 16), torch.randn(8, 64)
    out = block(x, emb)
    assert calls["winograd"] == 2
    grads = torch.autograd.grad(out.square().mean(), list(block.parameters()))
    with cpu.disabled("winograd"):
        ref = block(x, emb)
        ref_grads = torch.autograd.grad(ref.square().mean(), list(block.parameters()))
    assert calls["winograd"] == 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for (name, _), a, b in zip(block.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
