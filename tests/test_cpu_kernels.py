"""The fused GroupNorm + SiLU CPU kernel (ddkit.cpu.gn_silu, gn_silu.c): the same function
and gradients as PyTorch's ops in float64, in both memory layouts; its dropout; its fallbacks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkit.cpu import gn_silu as cpu_kernels
from ddkit.cpu import winograd
from ddkit.models import UNetConfig
from ddkit.models import unet as unet_module
from ddkit.models.layers import Dropout, GroupNormSiLU, ResBlock
from ddkit.paths import file_mode

pytestmark = pytest.mark.skipif(
    cpu_kernels.library() is None,
    reason="the fused kernel needs a C compiler (cc/gcc; Debian: apt-get install gcc)",
)

CASES = [  # N, C, H, W, groups
    (3, 32, 28, 28, 8),
    (2, 96, 14, 14, 32),
    (4, 64, 7, 7, 32),
    (2, 6, 5, 3, 3),
    (1, 4, 1, 1, 2),
    (2, 1, 4, 4, 1),
]


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


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_shift", [True, False])
def test_forward_and_gradients_match_float64_reference(case, channels_last, with_shift):
    n, c, h, w, groups = case
    x, shift, weight, bias = _leaves(n, c, h, w, channels_last)
    shift_in = shift if with_shift else None
    y = cpu_kernels.gn_silu(x, shift_in, weight, bias, groups, 1e-6)
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
    for name, got, want in zip(names, grads, grads_ref):
        scale = max(want.abs().max().item(), terms if name == "shift" else 0.0)
        assert (got.double() - want).abs().max().item() <= 1e-5 * scale + 1e-7, name


def test_saturates_exactly_for_large_arguments_and_propagates_nan():
    """|z| up to 1e4 (the exp is clamped at +-80): SiLU(z) = z above, ~0 below; NaN stays NaN."""
    z = torch.tensor([-1e4, -200.0, -80.0, -30.0, 0.0, 30.0, 80.0, 200.0, 1e4])
    # nine groups of one channel and one pixel normalise to 0, so z is the bias
    y = cpu_kernels.gn_silu(torch.zeros(1, 9, 1, 1), None, torch.ones(9), z, 9, 1e-6).flatten()
    torch.testing.assert_close(y.double(), F.silu(z.double()), rtol=2e-7, atol=1e-30)
    assert torch.isfinite(y).all()
    x = torch.randn(2, 4, 3, 3)
    x[0, 1, 2, 0] = float("nan")
    y = cpu_kernels.gn_silu(x, None, torch.ones(4), torch.zeros(4), 2, 1e-6)
    assert torch.isnan(y[0, :2]).all()  # the group that holds the NaN
    assert torch.isfinite(y[0, 2:]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_rate_scale_and_the_same_mask_in_the_backward(p, channels_last):
    torch.manual_seed(0)
    n, c, h, w, groups = 4, 16, 32, 32, 4
    x, shift, weight, bias = _leaves(n, c, h, w, channels_last)
    y = cpu_kernels.gn_silu(x, shift, weight, bias, groups, 1e-6, dropout=p)
    plain = _reference(x, shift, weight, bias, groups)
    threshold, scale = cpu_kernels.dropout_threshold(p)
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
    again = cpu_kernels.gn_silu(x, shift, weight, bias, groups, 1e-6, dropout=p) != 0
    corr = torch.corrcoef(torch.stack([k, again.flatten().double()]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(count)
    # the backward applies the same mask: gradient = reference gradient of plain * mask * scale
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y, (x, shift, weight, bias), grad_y)
    want = torch.autograd.grad(plain, (x, shift, weight, bias), grad_y * keep * scale)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_mask_is_kept_per_element_in_the_activations_layout(channels_last):
    """The backward reads the forward's draws from a 16-bit mask laid out like x (no second hash):
    kept elements are 1, dropped 0, and a non-finite gradient at a dropped element still
    propagates, as it does through ``grad * mask * scale``."""
    torch.manual_seed(1)
    x, shift, weight, bias = _leaves(2, 8, 5, 7, channels_last)
    y = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.4)
    keep = y.grad_fn.saved_tensors[-1]
    assert keep.dtype == torch.int16 and keep.shape == x.shape and keep.stride() == x.stride()
    assert torch.equal(keep, (y != 0).to(torch.int16))
    dropped = (keep == 0).nonzero()[0].tolist()
    grad_y = torch.ones_like(y)
    grad_y[tuple(dropped)] = float("nan")
    (gx,) = torch.autograd.grad(y, x, grad_y)
    assert gx.isnan().any()
    plain = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.0)
    assert plain.grad_fn.saved_tensors[-1] is None  # no mask without dropout
    # the backward reads the mask rather than drawing again: with every flag cleared (behind
    # autograd's back), no gradient passes
    y = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.4)
    y.grad_fn.saved_tensors[-1].data.zero_()
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", ["x", "x + shift", "cat"])
def test_with_input_concatenates_and_adds_the_second_paths_gradient(channels_last, case):
    """gn_silu(x, other=o, with_input=True) returns (the function of u, u) with u = x or
    cat([x, o]): the float64 reference's value, and with a second consumer of u, the reference
    graph's gradients for x, o, the shift and the affine parameters (there autograd adds the two
    paths; here the kernel does).  x's and o's gradients come back dense in their layout.  In
    "cat" the groups straddle the boundary between x and o (6 + 10 channels in 4 groups)."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def leaf(*shape):
        t = torch.randn(*shape, generator=g) * 2 + 0.5
        return (t.contiguous(memory_format=fmt) if t.ndim == 4 else t).requires_grad_()

    x = leaf(2, 6, 5, 7)
    other = leaf(2, 10, 5, 7) if case == "cat" else None
    c, groups = (16, 4) if case == "cat" else (6, 2)
    shift = leaf(2, c) if case == "x + shift" else None
    weight, bias = leaf(c), leaf(c)
    assert cpu_kernels.usable(x, weight, bias, groups, shift, other)
    y, u = cpu_kernels.gn_silu(x, shift, weight, bias, groups, 1e-6, other=other, with_input=True)
    leaves = [t for t in (x, other, shift, weight, bias) if t is not None]
    ref_u = x if other is None else torch.cat([x, other], dim=1)
    want_y = _reference(*(None if t is None else t.double() for t in (ref_u, shift, weight, bias)),
                        groups)  # fmt: skip
    assert torch.equal(u, ref_u)
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
    gy, gu = torch.randn(y.shape, generator=g), torch.randn(u.shape, generator=g)
    got = torch.autograd.grad((y * gy).sum() + (u * gu).sum(), leaves)
    want = torch.autograd.grad(
        (want_y * gy).sum() + (ref_u.double() * gu).sum(), leaves, retain_graph=True
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for grad in got[: 1 if other is None else 2]:
        assert grad.is_contiguous(memory_format=fmt)
    # y alone used (no gradient for u): the reference gradients of y alone
    y, u = cpu_kernels.gn_silu(x, shift, weight, bias, groups, 1e-6, other=other, with_input=True)
    got = torch.autograd.grad((y * gy).sum(), leaves)
    want = torch.autograd.grad((want_y * gy).sum(), leaves, retain_graph=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # u alone used (no gradient for y): u's own gradient reaches x and other, nothing else moves
    inputs = [t for t in (x, other) if t is not None]
    y, u = cpu_kernels.gn_silu(x, shift, weight, bias, groups, 1e-6, other=other, with_input=True)
    got = torch.autograd.grad((u * gu).sum(), inputs)
    want = torch.autograd.grad((ref_u * gu).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # without an input that needs a gradient, u is not differentiable (no wasted gradient for it)
    y, u = cpu_kernels.gn_silu(
        x.detach(), shift, weight, bias, groups, 1e-6,
        other=None if other is None else other.detach(), with_input=True,
    )  # fmt: skip
    assert y.requires_grad and not u.requires_grad


@pytest.mark.parametrize("channels_last", [False, True])
def test_with_input_and_dropout_on_a_concatenation(channels_last):
    """Dropout with ``other``: the result is the reference times the kept mask (the mask is the
    kernel's own draw, read off y), and the gradients are the reference graph's through that
    mask, with u's second path added."""
    g = torch.Generator().manual_seed(4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, 6, 5, generator=g).contiguous(memory_format=fmt).requires_grad_()
    other = torch.randn(2, 12, 6, 5, generator=g).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(16, generator=g).requires_grad_()
    bias = torch.randn(16, generator=g).requires_grad_()
    torch.manual_seed(0)
    y, u = cpu_kernels.gn_silu(x, None, weight, bias, 4, 1e-6, 0.3, other=other, with_input=True)
    _, scale = cpu_kernels.dropout_threshold(0.3)
    plain = _reference(torch.cat([x, other], dim=1), None, weight, bias, 4)
    keep = y != 0
    assert 0.6 < keep.double().mean().item() < 0.8
    torch.testing.assert_close(y, plain * keep * scale, rtol=1e-5, atol=1e-6)
    gy, gu = torch.randn(y.shape, generator=g), torch.randn(u.shape, generator=g)
    leaves = (x, other, weight, bias)
    got = torch.autograd.grad((y * gy).sum() + (u * gu).sum(), leaves)
    ref_u = torch.cat([x, other], dim=1)
    want = torch.autograd.grad((plain * keep * scale * gy).sum() + (ref_u * gu).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_usable_rejects_a_second_input_that_does_not_fit():
    """``other`` must match x's batch and spatial size, dtype, device and memory layout; anything
    else takes torch.cat and the PyTorch ops."""
    x = torch.randn(2, 4, 6, 6)
    w, b = torch.ones(8), torch.zeros(8)
    assert cpu_kernels.usable(x, w, b, 4, other=torch.randn(2, 4, 6, 6))
    for bad in (
        torch.randn(3, 4, 6, 6),
        torch.randn(2, 4, 6, 5),
        torch.randn(2, 4, 6, 6, dtype=torch.float64),
        torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last),
        torch.randn(2, 4, 6),
        torch.randn(2, 0, 6, 6),
    ):
        assert not cpu_kernels.usable(x, w, b, 4, other=bad), bad.shape


def test_with_input_falls_back_to_cat_for_mixed_layouts():
    """``other`` in the other memory layout is not the kernel's case: usable() says so, and the
    module's with_input concatenates with torch.cat and runs the norm on the result."""
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    other = torch.randn(2, 8, 4, 4)
    norm = GroupNormSiLU(4, 16)
    assert not cpu_kernels.usable(x, norm.weight, norm.bias, 4, other=other)
    y, u = norm.with_input(x, other)
    assert torch.equal(u, torch.cat([x, other], dim=1))
    torch.testing.assert_close(y, norm(u))


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
        keep = cpu_kernels.gn_silu(x, None, weight, bias, 32, 1e-6, dropout=0.5) != 0
        k = keep.flatten().double()
        k -= k.mean()
        var = (k @ k).item() / k.numel()
        for j, lag in enumerate(lags):
            m = k.numel() - lag
            z = (k[:-lag] @ k[lag:]).item() / m / var * math.sqrt(m)
            z2[j] += z * z / 8
    # P(chi2_8 / 8 > 4) ~ 1e-4 per lag for an ideal generator
    assert (z2 < 4).all(), dict(zip(lags, z2.tolist()))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("magnitude", [1e20, 1e36])
def test_huge_activations_keep_their_statistics(channels_last, magnitude):
    """|u - mu| beyond ~1e19 overflows fp32 squares: the image's statistics are then summed in
    double throughout, as PyTorch's fp32 ops do not (they are off by 4 at 1e20, NaN at 1e36)."""
    x, shift, weight, bias = _leaves(2, 8, 12, 12, channels_last, scale=magnitude, offset=0.0)
    y = cpu_kernels.gn_silu(x, None, weight, bias, 4, 1e-6)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(y, (x, weight, bias), grad_y)
    ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = _reference(ref[0], None, ref[1], ref[2], 4)
    want = torch.autograd.grad(y_ref, ref, grad_y.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("x", "weight", "bias"), got, want):
        assert torch.isfinite(a).all(), name
        if name == "x" and magnitude > 1e30:
            continue  # ~1e-37: fp32 subnormals, with their few bits, in any implementation
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max(), name


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [6, 40])
def test_large_mean_and_non_dense_input(channels_last, size):
    """A mean 1000 times the spread: the error stays at the input's own fp32 resolution (ulp(1000)
    = 6e-5; statistics are two-pass, gradient sums taken about the mean, in fp32 blocks of pixels
    summed in double: 40 x 40 spans several blocks in either layout); PyTorch's fp32 ops are
    off by 0.3 here.  And an input in neither dense layout (copied to NCHW first)."""
    x, shift, weight, bias = _leaves(2, 8, size, size, channels_last, scale=1.0, offset=1e3)
    y = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(y, (x, shift, weight, bias), grad_y)
    ref = [t.detach().double().requires_grad_() for t in (x, shift, weight, bias)]
    y_ref = _reference(*ref, 4)
    want = torch.autograd.grad(y_ref, ref, grad_y.double())
    assert (y.double() - y_ref).abs().max() <= 3e-4
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max() <= 3e-4 * b.abs().max()
    strided = torch.randn(2, 8, 6, 5).transpose(2, 3)  # [2, 8, 5, 6], neither layout
    assert not strided.is_contiguous() and not strided.is_contiguous(
        memory_format=torch.channels_last
    )
    out = cpu_kernels.gn_silu(strided, None, weight.detach(), bias.detach(), 4, 1e-6)
    torch.testing.assert_close(out, _reference(strided, None, weight.detach(), bias.detach(), 4))


def test_no_dropout_at_p_zero_and_in_eval():
    x, shift, weight, bias = (t.detach() for t in _leaves(2, 8, 5, 5, False))
    plain = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6)
    assert torch.equal(cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.0), plain)
    norm = GroupNormSiLU(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    assert torch.equal(norm(x, shift, Dropout(0.5).eval()), plain)
    assert torch.equal(norm(x, shift, Dropout(0.0)), plain)


def test_inconsistent_shapes_take_the_pytorch_ops_and_their_errors():
    """Nothing inconsistent reaches the C code: a weight of the wrong size, channels that the
    groups do not divide, a shift of the wrong shape or a non-fp32 bias take PyTorch's ops."""
    x = torch.randn(2, 12, 3, 3)
    ok = (torch.ones(12), torch.zeros(12))
    assert cpu_kernels.usable(x, *ok, 4)
    assert not cpu_kernels.usable(x, torch.ones(8), torch.zeros(8), 4)
    assert not cpu_kernels.usable(x, *ok, 5)
    assert not cpu_kernels.usable(x, *ok, 4, shift=torch.zeros(2, 8))
    assert not cpu_kernels.usable(x, ok[0], ok[1].double(), 4)
    assert not cpu_kernels.usable(torch.randn(0, 12, 3, 3), *ok, 4)
    with pytest.raises(RuntimeError):
        GroupNormSiLU(4, 8)(x)  # torch's own error, not a crash


def test_dropout_mask_follows_the_seed_not_the_layout_or_threads():
    x, shift, weight, bias = (t.detach() for t in _leaves(2, 8, 6, 6, False))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    outs = []
    threads = torch.get_num_threads()
    try:
        for inp, nthreads in [(x, threads), (x_cl, threads), (x, 1)]:
            torch.set_num_threads(nthreads)
            torch.manual_seed(5)
            outs.append(cpu_kernels.gn_silu(inp, shift, weight, bias, 4, 1e-6, dropout=0.5))
    finally:
        torch.set_num_threads(threads)
    # the same draws (bit for bit across thread counts; the channels_last statistics are summed
    # in another order, so its values agree to rounding)
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0] != 0, outs[1] != 0)
    torch.testing.assert_close(outs[0], outs[1].contiguous(), rtol=1e-5, atol=1e-6)
    again = cpu_kernels.gn_silu(x, shift, weight, bias, 4, 1e-6, dropout=0.5)
    assert not torch.equal((again != 0), (outs[0] != 0))  # a fresh seed per call


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_module_uses_the_kernel_only_where_it_applies(monkeypatch):
    calls = []
    real = cpu_kernels.gn_silu
    monkeypatch.setattr(cpu_kernels, "gn_silu", lambda *a, **k: calls.append(1) or real(*a, **k))
    norm = GroupNormSiLU(4, 8, eps=1e-6)
    with torch.autograd.forward_ad.dual_level():  # a dual weight with a plain input
        assert not cpu_kernels.usable(
            torch.randn(2, 8, 5, 5),
            torch.autograd.forward_ad.make_dual(torch.ones(8), torch.ones(8)),
            torch.zeros(8),
            4,
        )
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 5, 5)
    shift = torch.randn(2, 8)
    fused = norm(x, shift)
    assert calls == [1]
    torch.testing.assert_close(fused, _reference(x, shift, norm.weight, norm.bias, 4))
    norm.double()(x.double(), shift.double())  # float64: PyTorch ops
    norm.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(x, shift)
    with torch.autograd.forward_ad.dual_level():
        norm(torch.autograd.forward_ad.make_dual(x, torch.randn_like(x)), shift)
    torch.func.vmap(lambda v: norm(v[None]))(x)
    broadcast = norm(x, shift[:1])  # a [1, C] shift broadcasts over the batch: PyTorch ops
    assert calls == [1]
    torch.testing.assert_close(broadcast, _reference(x, shift[:1], norm.weight, norm.bias, 4))
    # dropout: a module in eval mode, or p = 0, means none
    drop = Dropout(0.5).eval()
    torch.testing.assert_close(norm(x, shift, drop), fused)


def test_double_backward_is_refused_with_a_clear_error():
    x, shift, weight, bias = _leaves(1, 4, 3, 3, False)
    y = cpu_kernels.gn_silu(x, shift, weight, bias, 2, 1e-6)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("channels_last", ["0", "1"])
def test_unet_with_kernel_is_the_pytorch_ops_model(monkeypatch, channels_last):
    """The whole U-Net (no dropout): same output and parameter gradients with the kernel as
    with PyTorch's ops (DDKIT_CPU_KERNELS=0's path), with its first level in NCHW and in
    channels_last."""
    monkeypatch.setenv("DDKIT_CHANNELS_LAST", channels_last)
    unet_module.cpu_favours_channels_last.cache_clear()
    monkeypatch.setattr(unet_module.UNetConfig, "channels_last_levels", lambda self: frozenset({0}))
    cfg = UNetConfig(
        image_size=16,
        in_channels=3,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        groups=4,
    )
    torch.manual_seed(0)
    fast = cfg.build()
    plain = cfg.build()
    plain.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised layers get weights so every path carries gradient
        for a, b in zip(fast.parameters(), plain.parameters()):
            if not a.any():
                a.copy_(0.05 * torch.randn(a.shape, generator=g))
                b.copy_(a)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([0, 500, 999])
    out_fast = fast(x, t)
    out_fast.square().mean().backward()
    monkeypatch.setattr(cpu_kernels, "usable", lambda *a, **k: False)
    out_plain = plain(x, t)
    out_plain.square().mean().backward()
    unet_module.cpu_favours_channels_last.cache_clear()
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_residual_block_trains_with_winograd_on_channels_last_input(monkeypatch):
    """The in-place residual add steps aside when the second conv's output is a view (Winograd
    returns one for channels_last input), so training works and matches plain convolutions."""
    monkeypatch.setenv("DDKIT_WINOGRAD", "1")
    winograd.cpu_favours_winograd.cache_clear()
    try:
        torch.manual_seed(0)
        block = ResBlock(128, 128, 32, dropout=0.0, groups=32).train()
        with torch.no_grad():
            block.conv2.weight.normal_(0, 0.05)
        x = torch.randn(8, 128, 16, 16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        emb = torch.randn(8, 32)
        assert winograd.winograd_pays(x, 128, 128)
        out = block(x, emb)
        out.square().mean().backward()
        grads = [x.grad] + [p.grad for p in block.parameters()]
        monkeypatch.setenv("DDKIT_WINOGRAD", "0")
        winograd.cpu_favours_winograd.cache_clear()
        x2 = x.detach().clone().requires_grad_()
        block.zero_grad()
        ref = block(x2, emb)
        ref.square().mean().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for a, b in zip(grads, [x2.grad] + [p.grad for p in block.parameters()]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    finally:
        winograd.cpu_favours_winograd.cache_clear()


def test_without_a_compiler_the_library_is_none_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    cpu_kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the fused GroupNorm"):
            assert cpu_kernels.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cpu_kernels.library() is None  # cached: warned once
            assert not cpu_kernels.usable(torch.randn(1, 4, 2, 2), torch.ones(4), torch.ones(4), 2)
        norm = GroupNormSiLU(2, 4)
        x = torch.randn(2, 4, 3, 3)
        torch.testing.assert_close(norm(x), _reference(x, None, norm.weight, norm.bias, 2, 1e-5))
    finally:
        cpu_kernels.library.cache_clear()
        assert list(tmp_path.iterdir()) == [] or not any(tmp_path.rglob("*.so"))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("DDKIT_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is None
    finally:
        monkeypatch.delenv("DDKIT_CPU_KERNELS")
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.library() is not None


def test_build_is_cached_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        lib = cpu_kernels.library()
        built = sorted((tmp_path / "kernels").glob("gn_silu-*.so"))
        assert lib is not None and len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.library() is not None
        assert sorted((tmp_path / "kernels").iterdir()) == built  # reused, no temporary left
        assert built[0].stat().st_mtime_ns == stamp
        # as readable to others as a file the user makes by hand (mkstemp's 0600 is not)
        assert built[0].stat().st_mode & 0o777 == file_mode(executable=True)
        # a different build (here: one more flag) gets its own file
        monkeypatch.setattr(cpu_kernels, "FLAGS", [*cpu_kernels.FLAGS, "-DDDKIT_TEST_KEY"])
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.library() is not None
        assert len(list((tmp_path / "kernels").glob("gn_silu-*.so"))) == 2
    finally:
        cpu_kernels.library.cache_clear()


@pytest.mark.parametrize("hook", ["forward", "backward", "global backward"])
def test_residual_block_calls_a_hooked_norm_through_the_module(monkeypatch, hook):
    """The first norm's fused call (with_input) bypasses module hooks, so a block whose norm1
    has a hook (forward or backward, its own or global) calls it as a module instead: the hook
    runs, and the block computes the same function, gradients included, as the fused path,
    which an unhooked block takes."""
    torch.manual_seed(0)
    block = ResBlock(12, 8, 16, groups=4).train()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    fmt = torch.channels_last
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=fmt).requires_grad_()
    skip = torch.randn(2, 4, 6, 6).contiguous(memory_format=fmt).requires_grad_()
    emb = torch.randn(2, 16)
    fused_calls = []
    gn_silu = cpu_kernels.gn_silu

    def recording(*args, **kwargs):
        fused_calls.append(kwargs.get("with_input", False))
        return gn_silu(*args, **kwargs)

    monkeypatch.setattr(cpu_kernels, "gn_silu", recording)
    g = torch.randn(2, 8, 6, 6)
    leaves = (x, skip, *block.parameters())

    def run():
        out = block(x, emb, concat=skip)
        return out, torch.autograd.grad((out * g).sum(), leaves)

    fused, fused_grads = run()
    assert True in fused_calls
    fused_calls.clear()
    seen = []
    if hook == "forward":
        handle = block.norm1.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    elif hook == "backward":
        handle = block.norm1.register_full_backward_hook(
            lambda m, gi, go: seen.append(gi[0].shape[1])
        )
    else:
        handle = torch.nn.modules.module.register_module_full_backward_hook(
            lambda m, gi, go: seen.append(gi[0].shape[1]) if m is block.norm1 else None
        )
    try:
        hooked, hooked_grads = run()
    finally:
        handle.remove()
    assert True not in fused_calls
    assert seen == [12]
    torch.testing.assert_close(hooked, fused, rtol=1e-5, atol=1e-6)
    for a, b in zip(hooked_grads, fused_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _small_unet():
    """A two-level 8x8 U-Net (eval mode, random non-zero weights) and inputs for it."""
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(), groups=4)  # fmt: skip
    model = cfg.build().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model, torch.randn(2, 1, 8, 8), torch.tensor([3, 700])


def test_unet_concatenates_first_for_a_hooked_decoder_block():
    """A forward pre-hook on a decoder ResBlock sees its input with the skip's channels, as
    before the concatenation moved into the block's norm; the output is unchanged."""
    model, x, t = _small_unet()
    plain = model(x, t)
    block = model.up[0][0]
    widths = []
    handle = block.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    try:
        hooked = model(x, t)
    finally:
        handle.remove()
    assert widths == [block.norm1.num_channels]
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)


def test_with_input_under_vmap_takes_the_pytorch_ops():
    """Under ``torch.func.vmap`` with a per-sample x that is not dense and a plain ``other``, the
    kernel does not apply (its layout checks cannot run on a batched tensor): the norm falls back
    to torch.cat and the PyTorch ops, per sample the same function."""
    torch.manual_seed(0)
    norm = GroupNormSiLU(4, 16)
    xs = torch.randn(3, 2, 8, 5, 5)
    other = torch.randn(2, 8, 5, 5)

    def per_sample(x):
        return norm.with_input(x.transpose(2, 3), other)[0]

    got = torch.func.vmap(per_sample)(xs)
    want = torch.stack([norm(torch.cat([x.transpose(2, 3), other], dim=1)) for x in xs])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_unet_calls_a_subclassed_decoder_block_with_its_own_signature():
    """A ResBlock subclass written against forward(x, emb, shift) in the decoder gets the
    concatenated input and no ``concat`` keyword; the model computes the same function."""
    model, x, t = _small_unet()
    plain = model(x, t)

    class OldSignature(ResBlock):
        def forward(self, x, emb, shift=None):
            return super().forward(x, emb, shift)

    old = model.up[0][0]
    new = OldSignature(old.norm1.num_channels, old.conv1.out_channels, old.emb_proj.in_features,
                       groups=4)  # fmt: skip
    new.load_state_dict(old.state_dict())
    model.up[0][0] = new.eval()
    torch.testing.assert_close(model(x, t), plain, rtol=1e-5, atol=1e-6)
