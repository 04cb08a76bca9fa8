"""Winograd F(2x2, 3x3) convolution for CPU training: the same 3x3, stride-1, padding-1 conv with
2.25x fewer multiplications (Lavin & Gray 2016), forward and backward.

For a 4x4 input tile d (stride 2, overlapping by 2) and a 3x3 filter g, the 2x2 output tile is

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A          ((.) elementwise over the 4x4 "frequencies" xi)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over input channels, the 16 elementwise products become 16 GEMMs:
M[xi] = V[xi] @ U[xi], V [16, P, C_in] (transformed tiles, P = N * H/2 * W/2), U [16, C_in, C_out]
(transformed filters).  The backward pass uses the exact adjoints: dV = dM U^T, dU = V^T dM, and
the transposed tile transforms; it recomputes V from the saved input rather than keeping it.
Tensors are laid out [N, H, W, C] internally (channels_last), so the transforms run over
contiguous channel vectors.

It pays where the GEMMs are large against the transforms (many channels, enough tiles), on AVX2
CPUs; see :func:`winograd_pays`.  fp32 results differ from direct convolution by ~1e-6 relative
(the same order as direct convolution's own rounding); the tests check both passes against
``F.conv2d``.
"""

from __future__ import annotations

import functools

import torch

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


@functools.cache
def cpu_favours_winograd() -> bool:
    """Whether this CPU is one where F(2x2, 3x3) beats oneDNN's direct convolution: torch's CPU
    capability "AVX2" (without AVX-512).  With AVX-512, oneDNN's direct convolutions are fast
    enough that the memory-bound tile transforms lose."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def winograd_pays(x: torch.Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether F(2x2, 3x3) is faster than the direct convolution for ``x`` [N, C_in, H, W] (a call
    that :func:`ddkit.cpu.fast_path` has admitted): a CPU that :func:`cpu_favours_winograd`
    accepts, even H and W, at least 512 tiles, C_in C_out / (C_in + C_out) >= 64 (GEMM work per
    tile against transform work per tile), and transformed input V of at most 24 MiB (beyond, the
    transforms fall out of cache)."""
    if x.ndim != 4 or not cpu_favours_winograd():
        return False
    n, _, h, w = x.shape
    tiles = n * (h // 2) * (w // 2)
    if h % 2 or w % 2 or tiles < 512 or 16 * tiles * in_channels * x.element_size() > 24 << 20:
        return False
    return in_channels * out_channels >= 64 * (in_channels + out_channels)


def _filter_transform(weight: torch.Tensor) -> torch.Tensor:
    """g [C_out, C_in, 3, 3] -> U [16, C_in, C_out], U[4 x + y] = G g G^T [x, y]."""
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    c_out, c_in = weight.shape[:2]
    return torch.einsum("xk,oikl,yl->xyio", g, weight, g).reshape(16, c_in, c_out)


def _filter_transform_adjoint(du: torch.Tensor, c_out: int, c_in: int) -> torch.Tensor:
    """dU [16, C_in, C_out] -> dg [C_out, C_in, 3, 3] = G^T dU G."""
    g = torch.tensor(_G, dtype=du.dtype, device=du.device)
    return torch.einsum("xk,xyio,yl->oikl", g, du.view(4, 4, c_in, c_out), g)


def _b_transform(src: torch.Tensor, dst: torch.Tensor, dim: int) -> None:
    """B^T along ``dim`` of ``src`` (size 2T, zero-padded by one on each side, tiles of 4 at
    stride 2) into ``dst`` [4, ..., T, ...]:  with d_k = padded[2t + k],

        u0 = d0 - d2,  u1 = d1 + d2,  u2 = d2 - d1,  u3 = d1 - d3,

    and d_k = src[2t + k - 1], so d1 = src[2t], d2 = src[2t + 1] need no padding, d0 = src[2t - 1]
    and d3 = src[2t + 2] are zero at the borders.
    """
    size = src.shape[dim]
    even = src.narrow(dim, 0, size // 2 * 2).unflatten(dim, (size // 2, 2)).select(dim + 1, 0)
    odd = src.narrow(dim, 0, size // 2 * 2).unflatten(dim, (size // 2, 2)).select(dim + 1, 1)
    t = size // 2
    torch.add(even, odd, out=dst[1])  # d1 + d2
    torch.sub(odd, even, out=dst[2])  # d2 - d1
    # u0[t] = src[2t-1] - src[2t+1]: u0[0] = -odd[0]; u0[t] = odd[t-1] - odd[t]
    torch.neg(odd.narrow(dim, 0, 1), out=dst[0].narrow(dim, 0, 1))
    torch.sub(
        odd.narrow(dim, 0, t - 1), odd.narrow(dim, 1, t - 1), out=dst[0].narrow(dim, 1, t - 1)
    )
    # u3[t] = src[2t] - src[2t+2]: u3[T-1] = even[T-1]; u3[t] = even[t] - even[t+1]
    dst[3].narrow(dim, t - 1, 1).copy_(even.narrow(dim, t - 1, 1))
    torch.sub(
        even.narrow(dim, 0, t - 1), even.narrow(dim, 1, t - 1), out=dst[3].narrow(dim, 0, t - 1)
    )


def _b_transform_adjoint(du: torch.Tensor, dst: torch.Tensor, dim: int) -> None:
    """Adjoint of :func:`_b_transform`: du [4, ..., T, ...] -> dst [..., 2T, ...] (overwritten):

    dst[2t]     = du1[t] - du2[t] + du3[t] - du3[t-1]
    dst[2t + 1] = du1[t] + du2[t] - du0[t] + du0[t+1]      (out-of-range terms are zero)
    """
    t = du.shape[dim + 1]
    size = 2 * t
    even = dst.unflatten(dim, (t, 2)).select(dim + 1, 0)
    odd = dst.unflatten(dim, (t, 2)).select(dim + 1, 1)
    d0, d1, d2, d3 = du[0], du[1], du[2], du[3]
    torch.sub(d1, d2, out=even)
    even += d3
    even.narrow(dim, 1, t - 1).sub_(d3.narrow(dim, 0, t - 1))
    torch.add(d1, d2, out=odd)
    odd -= d0
    odd.narrow(dim, 0, t - 1).add_(d0.narrow(dim, 1, t - 1))
    assert dst.shape[dim] == size


def _input_transform(xh: torch.Tensor) -> torch.Tensor:
    """x [N, H, W, C] -> V [16, N * H/2 * W/2, C]."""
    n, h, w, c = xh.shape
    rows = xh.new_empty(4, n, h // 2, w, c)
    _b_transform(xh, rows, dim=1)
    v = xh.new_empty(4, 4, n, h // 2, w // 2, c)
    _b_transform(rows, v.transpose(0, 1), dim=3)  # v[x, y] = rows[x] transformed along W by y
    return v.view(16, n * (h // 2) * (w // 2), c)


def _input_transform_adjoint(dv: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """dV [16, P, C] -> dx [N, H, W, C]."""
    c = dv.shape[-1]
    dv = dv.view(4, 4, n, h // 2, w // 2, c)
    rows = dv.new_empty(4, n, h // 2, w, c)
    _b_transform_adjoint(dv.transpose(0, 1), rows, dim=3)
    dx = dv.new_empty(n, h, w, c)
    _b_transform_adjoint(rows, dx, dim=1)
    return dx


def _output_transform(m: torch.Tensor, n: int, h: int, w: int, bias: torch.Tensor | None):
    """M [16, P, C] -> y [N, H, W, C]: y[2i + a, 2j + b] = (A^T M A)[a, b] (+ bias)."""
    c = m.shape[-1]
    m = m.view(4, 4, n, h // 2, w // 2, c)
    s = m.new_empty(2, 4, n, h // 2, w // 2, c)  # A^T along the tile rows
    torch.add(m[0], m[1], out=s[0])
    s[0] += m[2]
    torch.sub(m[1], m[2], out=s[1])
    s[1] -= m[3]
    y = m.new_empty(n, h // 2, 2, w // 2, 2, c)
    for a in range(2):
        y0, y1 = y[:, :, a, :, 0], y[:, :, a, :, 1]
        if bias is None:
            torch.add(s[a, 0], s[a, 1], out=y0)
        else:
            torch.add(s[a, 0], bias, out=y0)
            y0 += s[a, 1]
        y0 += s[a, 2]
        torch.sub(s[a, 1], s[a, 2], out=y1)
        y1 -= s[a, 3]
        if bias is not None:
            y1 += bias
    return y.view(n, h, w, c)


def _output_transform_adjoint(dy: torch.Tensor) -> torch.Tensor:
    """dy [N, H, W, C] -> dM [16, P, C] (the transpose of :func:`_output_transform`)."""
    n, h, w, c = dy.shape
    g = dy.view(n, h // 2, 2, w // 2, 2, c)
    ds = dy.new_empty(2, 4, n, h // 2, w // 2, c)
    for a in range(2):
        g0, g1 = g[:, :, a, :, 0], g[:, :, a, :, 1]
        ds[a, 0].copy_(g0)
        torch.add(g0, g1, out=ds[a, 1])
        torch.sub(g0, g1, out=ds[a, 2])
        torch.neg(g1, out=ds[a, 3])
    dm = dy.new_empty(4, 4, n, h // 2, w // 2, c)
    dm[0].copy_(ds[0])
    torch.add(ds[0], ds[1], out=dm[1])
    torch.sub(ds[0], ds[1], out=dm[2])
    torch.neg(ds[1], out=dm[3])
    return dm.view(16, n * (h // 2) * (w // 2), c)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] (any layout) -> a contiguous [N, H, W, C] (a view when x is channels_last)."""
    return x.permute(0, 2, 3, 1).contiguous()


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        n, _, h, w = x.shape
        xh = _nhwc(x)
        u = _filter_transform(weight)
        y = _output_transform(torch.bmm(_input_transform(xh), u), n, h, w, bias)
        # V (4x the input) is recomputed in the backward: the graph keeps only x, as a direct
        # convolution does
        ctx.save_for_backward(xh, u)
        ctx.dims = (n, h, w, weight.shape[0], weight.shape[1], bias is not None)
        y = y.permute(0, 3, 1, 2)  # [N, C_out, H, W] in channels_last layout
        # keep the caller's layout: a contiguous input gets a contiguous output
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()

    @staticmethod
    def backward(ctx, grad_y):
        xh, u = ctx.saved_tensors
        n, h, w, c_out, c_in, has_bias = ctx.dims
        gy = _nhwc(grad_y)
        dm = _output_transform_adjoint(gy)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _input_transform_adjoint(torch.bmm(dm, u.transpose(1, 2)), n, h, w)
            dx = dx.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            v = _input_transform(xh)
            dw = _filter_transform_adjoint(torch.bmm(v.transpose(1, 2), dm), c_out, c_in)
        if has_bias and ctx.needs_input_grad[2]:
            db = gy.sum(dim=(0, 1, 2))
        return dx, dw, db


def winograd_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for x [N, C_in, H, W] with H, W even and weight
    [C_out, C_in, 3, 3], by Winograd F(2x2, 3x3); differentiable.  Returns [N, C_out, H, W],
    channels_last unless x is contiguous in the default layout."""
    if x.ndim != 4 or x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(
            f"winograd_conv3x3 needs [N, C, H, W] with even H, W, got {tuple(x.shape)}"
        )
    if weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit input channels {x.shape[1]} (3x3 kernel)"
        )
    return _WinogradConv3x3.apply(x, weight, bias)
