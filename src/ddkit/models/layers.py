"""Building blocks shared by the U-Net and the MLP.

Notation: N batch, C channels, H x W spatial size, E time-embedding width, D feature width.
Images are [N, C, H, W] in either memory format (the U-Net picks one per level; see ``unet.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.autograd import forward_ad

from ..cpu import gn_silu as cpu_kernels
from ..cpu.gn_silu import memory_format_of
from ..cpu.winograd import winograd_conv3x3, winograd_pays

GROUPNORM_EPS = 1e-6  # the official DDPM code (tf.contrib.layers.group_norm's default)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps, as in the DDPM code (Ho et al. 2020, ``get_timestep_embedding``).

    ``t``: [N] timestep indices (long, or float for fractional steps).  Returns [N, dim] float32:
    with half = dim // 2 and frequencies f_k = max_period ** (-k / (half - 1)), k = 0 .. half - 1,

        emb[:, k] = sin(t * f_k),    emb[:, half + k] = cos(t * f_k),

    so f_0 = 1 and f_{half-1} = 1 / max_period.  For odd ``dim`` the last column is zero.
    Every entry lies in [-1, 1].
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a [N] tensor, got shape {tuple(t.shape)}")
    if dim < 4:
        raise ValueError(f"embedding dim must be >= 4, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the DDPM code's ``init_scale=0``); returns it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale with the boolean mask saved (1 byte per element) for the backward."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


_DROP_BITS = 15  # mask resolution: p is rounded to a multiple of 2**-15


def keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask with P(keep) = 1 - p', and the scale 1 / (1 - p') that makes inverted
    dropout unbiased, where p' is p rounded to the nearest multiple of 2**-15 (|p' - p| <= 2**-16;
    p above 1 - 2**-15 becomes 1 - 2**-15, so that some elements are kept).

    CPU random draws cost one mt19937 output each, ~20x a SiLU of the same tensor; one 31-bit
    draw here serves two elements (its two low 15-bit fields), which makes the mask ~3x cheaper
    than ``rand_like(x) >= p``.  Draws from torch's default generator (``torch.manual_seed``).
    """
    n = math.prod(shape)
    levels = 1 << _DROP_BITS
    threshold = min(round(p * levels), levels - 1)
    r = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()
    r = r.view(torch.int16)[:n].bitwise_and_(levels - 1).view(shape)
    return r >= threshold, levels / (levels - threshold)


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout(p)``: in training each element is zeroed with probability
    p and the rest scaled by 1 / (1 - p); the identity in eval mode.

    The mask comes from :func:`keep_mask`: p is rounded to a multiple of 2**-15 (0.1 becomes
    0.100006) and the scale uses the rounded value, so E[output] = input exactly.  Drawn from
    torch's default generator (seed it with ``torch.manual_seed``); ~3x cheaper on CPU than the
    float draws of ``nn.Dropout``'s ``bernoulli_``.  Under ``torch.compile`` it is ``F.dropout``
    (exact p), whose mask the compiled code draws from its own counter-based generator.  Inside
    the U-Net's residual blocks on CPU in fp32 the module is applied by the fused kernel of
    :class:`GroupNormSiLU` instead (its own counter-based mask, p rounded to 2**-24).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if torch.compiler.is_compiling():  # compiled code draws its own (counter-based) mask
            return F.dropout(x, self.p, training=True)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        if is_functorch_wrapped_tensor(x) or forward_ad.unpack_dual(x).tangent is not None:
            return x * keep * scale  # plain ops, which torch.func and forward-mode AD see through
        return _MaskedScale.apply(x, keep, scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GroupNormSiLU(nn.GroupNorm):
    """GroupNorm followed by SiLU (the pair that precedes every conv in the DDPM U-Net), with two
    optional neighbours folded in: a per-channel ``shift`` [N, C] added before the norm (the
    residual block's time embedding) and a :class:`Dropout` applied after the SiLU:

        y = dropout(SiLU(GroupNorm(x + shift[:, :, None, None])))

    On CPU in fp32 this runs as one fused kernel (:mod:`~ddkit.models.cpu_kernels`: two passes
    over the activations each way instead of about ten, and only x, plus a 16-bit mask with
    dropout, saved for the backward).  Its dropout mask is a counter-based hash of a seed drawn
    from torch's default generator, with p rounded to a multiple of 2**-24; elsewhere (GPU,
    float64, autocast, forward-mode AD, ``torch.func``, ``torch.compile``, ``DDKIT_CPU_KERNELS=0``,
    no C compiler) it is the PyTorch ops above, with the :class:`Dropout` module's own mask.  Its parameters are those of
    ``nn.GroupNorm`` (weight, bias), so state dicts are unchanged.
    """

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        dropout: Dropout | None = None,
    ) -> torch.Tensor:
        p = dropout.p if dropout is not None and dropout.training else 0.0
        if cpu_kernels.usable(x, self.weight, self.bias, self.num_groups, shift):
            return cpu_kernels.gn_silu(
                x, shift, self.weight, self.bias, self.num_groups, self.eps, p
            )
        if shift is not None:
            x = x + shift[:, :, None, None]
        y = F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))
        return y if p == 0.0 else dropout(y)

    def with_input(
        self, x: torch.Tensor, other: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(u), u)`` with u = x, or ``torch.cat([x, other], dim=1)``: the normalised input
        handed back for a second consumer (a residual block's skip path).  On the fused kernel,
        the gradient that reaches u through that consumer is added inside the kernel's backward
        pass (no separate add by autograd), and x and ``other`` get their gradients as two dense
        tensors (no slices of a concatenation's gradient to copy).  Called directly, so the
        module's hooks do not see it; :meth:`ResBlock.forward` calls ``self(...)`` instead when a
        hook (forward or backward, own or global) is set.  No shift and no dropout (the first norm
        of a residual block has neither)."""
        if cpu_kernels.usable(x, self.weight, self.bias, self.num_groups, other=other):
            return cpu_kernels.gn_silu(
                x, None, self.weight, self.bias, self.num_groups, self.eps,
                other=other, with_input=True,
            )  # fmt: skip
        u = x if other is None else torch.cat([x, other], dim=1)
        return self(u), u


def has_hooks(module: nn.Module) -> bool:
    """Whether a hook (forward or backward, the module's own or a global one) would see a call of
    module, which a direct call of one of its methods would bypass."""
    glob = nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or glob._global_forward_hooks
        or glob._global_forward_pre_hooks
        or glob._global_backward_hooks
        or glob._global_backward_pre_hooks
    )


class Conv3x3(nn.Conv2d):
    """3x3 convolution, stride 1, padding 1 (an ``nn.Conv2d``: same parameters and state dict).

    On CPU, calls where Winograd F(2x2, 3x3) is faster (many channels, see
    :func:`~ddkit.models.winograd.winograd_pays`) run through it; the rest through ``F.conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if winograd_pays(x, self.in_channels, self.out_channels):
            return winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)


# nearest-neighbour x2 then a 3x3 conv, seen from the low-resolution grid: output row 2i + a
# takes input rows (i - 1, i) for a = 0 with filter rows (0, 1 + 2), and (i, i + 1) for a = 1
# with filter rows (0 + 1, 2); likewise for columns
_SUBPIXEL = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` computed
    as four 2x2 convolutions on x, one per output phase (16 instead of 36 multiply-adds per input
    pixel and output channel).  x [N, C, H, W] -> [N, C_out, 2H, 2W] in x's memory format; the same
    function up to rounding, differentiable.
    """
    n, _, h, w = x.shape
    c_out = weight.shape[0]
    p = torch.tensor(_SUBPIXEL, dtype=weight.dtype, device=weight.device)
    # phase filters [(a, b, c_out), C, 2, 2]: P_a g P_b^T
    k = torch.einsum("aph,bqw,oihw->aboipq", p, p, weight).reshape(4 * c_out, -1, 2, 2)
    b4 = None if bias is None else bias.repeat(4)
    z = F.conv2d(x, k, b4, padding=1)  # [N, 4 C_out, H + 1, W + 1]
    # phase (a, b) at low-res (i, j) is z[:, (a, b, :), i + a, j + b]; interleave into 2H x 2W
    if (
        torch.compiler.is_compiling()
        or is_functorch_wrapped_tensor(z)
        or forward_ad.unpack_dual(z).tangent is not None
    ):
        z = z.unflatten(1, (2, 2, c_out))
        phases = [z[:, a, b, :, a : a + h, b : b + w] for a in range(2) for b in range(2)]
        out = torch.stack(phases, dim=2).reshape(n, 4 * c_out, h, w)
        return F.pixel_shuffle(out, 2)
    return _Interleave.apply(z, h, w)


class _Interleave(torch.autograd.Function):
    """out[:, c, 2i + a, 2j + b] = z[:, (a, b, c), i + a, j + b] for z [N, 4 C, H + 1, W + 1]: the
    four phases of :func:`upsample_conv` woven into the 2H x 2W grid in one pass, in z's memory
    format, and scattered back in one pass in the backward.  (Slicing, ``stack`` and
    ``pixel_shuffle`` cost three passes each way, a zero-filled copy of z per phase among them,
    and give NCHW whatever the input.)"""

    @staticmethod
    def forward(ctx, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, c4 = z.shape[:2]
        fmt = memory_format_of(z)
        out = torch.empty(
            n, c4 // 4, 2 * h, 2 * w, dtype=z.dtype, device=z.device, memory_format=fmt
        )
        grid = out.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # [N, C, H, 2, W, 2], a view
        phases = z.unflatten(1, (2, 2, c4 // 4))
        for a in range(2):
            for b in range(2):
                grid[:, :, :, a, :, b].copy_(phases[:, a, b, :, a : a + h, b : b + w])
        ctx.shape, ctx.hw, ctx.fmt = z.shape, (h, w), fmt
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # slice copies, so differentiable again
        h, w = ctx.hw
        n, c4 = ctx.shape[:2]
        dz = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
        grid = grad.unflatten(3, (w, 2)).unflatten(2, (h, 2))
        phases = dz.unflatten(1, (2, 2, c4 // 4))
        for a in range(2):
            for b in range(2):
                phase = phases[:, a, b]
                phase[:, :, a : a + h, b : b + w].copy_(grid[:, :, :, a, :, b])
                # the row and the column of z that this phase does not read get no gradient
                # (zeroed alone, not the whole buffer)
                phase[:, :, h - h * a].zero_()
                phase[:, :, :, w - w * b].zero_()
        return dz, None, None


class ResBlock(nn.Module):
    """The DDPM residual block, [N, C_in, H, W] x [N, E] -> [N, C_out, H, W].

        h = conv1(SiLU(GN(x))) + Linear(emb)[:, :, None, None]
        h = conv2(dropout(SiLU(GN(h))))          (conv2 zero-initialised)
        out = skip(x) + h                         (skip: 1x1 conv if C_in != C_out, else identity)

    ``emb`` is the time embedding *after* its SiLU (the DDPM code applies SiLU to the shared
    embedding inside every block; the U-Net computes it once and passes it in).  The embedding's
    add, GN, SiLU and dropout of the second line are one :class:`GroupNormSiLU` call (one fused
    kernel on CPU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        dropout: float = 0.0,
        groups: int = 32,
    ):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_channels, eps=GROUPNORM_EPS)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = GroupNormSiLU(groups, out_channels, eps=GROUPNORM_EPS)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_(Conv3x3(out_channels, out_channels))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        shift: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``shift``: ``emb_proj(emb)`` when the caller has computed it (the U-Net computes all its
        blocks' projections in one matrix product); None computes it here.  ``concat``: a tensor
        to concatenate after x along channels first (the U-Net's skip connection), which the
        fused GroupNorm kernel does itself."""
        if type(self.norm1) is GroupNormSiLU and not has_hooks(self.norm1):
            # x comes back as the norm's input (the concatenation, if any): the skip path's
            # gradient is then added by the kernel's backward
            a, x = self.norm1.with_input(x, concat)
        else:
            if concat is not None:
                x = torch.cat([x, concat], dim=1)
            a = self.norm1(x)
        h = self.conv1(a)
        if shift is None:
            shift = self.emb_proj(emb)
        # the embedding's add and the dropout are folded into norm2 (one fused pass on CPU)
        h = self.conv2(self.norm2(h, shift=shift, dropout=self.dropout))
        # in place where h is a fresh tensor (a convolution's backward does not need its
        # output); Winograd on channels_last input returns a view, which autograd forbids
        # modifying in place; under torch.compile the compiler does its own buffer reuse
        if torch.compiler.is_compiling() or h._is_view():
            return h + self.skip(x)
        return h.add_(self.skip(x))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, [N, C, H, W] -> [N, C, H, W].

        tokens = GN(x) as [N, H*W, C];  q, k, v = tokens W_qkv + b  (per head, d = C / num_heads)
        out = x + (softmax(q k^T / sqrt(d)) v) W_o + b_o          (W_o, b_o zero-initialised)

    The attention itself is ``F.scaled_dot_product_attention``.  With ``num_heads=1`` this is the
    DDPM block (its q, k, v, proj_out "NIN" layers are these dense maps over channels).
    """

    def __init__(self, channels: int, *, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        # [N, C, H, W] -> [N, H*W, C] (a view when x is channels_last)
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        # q, k, v as views of the [N, H*W, 3C] projection, [N, heads, H*W, d] each; chunk's
        # backward concatenates the three gradients in one pass (a stack of a permuted view
        # took two)
        q, k, v = (
            t.unflatten(-1, (heads, c // heads)).transpose(1, 2)
            for t in self.qkv(tokens).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, H*W, d]
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        # back to [N, C, H, W], added to the input
        return x + out.transpose(1, 2).view(n, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution, [N, C, H, W] -> [N, C, H/2, W/2] (H, W even)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# where upsample_conv pays: inputs with at least this many channels and pixels
SUBPIXEL_MIN_CHANNELS = 32
SUBPIXEL_MIN_PIXELS = 49


def subpixel_pays(x: torch.Tensor) -> bool:
    """Whether :class:`Upsample` runs ``x`` [N, C, H, W] as :func:`upsample_conv`: C >= 32 and
    H W >= 49 (7x7).  Forward + backward on an Intel Xeon with AVX-512, two threads
    (``benchmarks/upsample_paths.py``, 2026-11-30): 1.37x faster for ``ddpm-28``'s 64 channels
    14x14 -> 28x28 (batch 64, channels_last), 1.10x at 7x7, 1.64-2.17x for ``ddpm-cifar10``'s 256
    channels from 8x8; 0.90x for its 4x4 (the 2x2 convolutions cover a 5x5 grid, 1.56x the
    input); mixed at 16 channels (1.07x here, 0.83-0.92x in another run at 14x14)."""
    return x.shape[1] >= SUBPIXEL_MIN_CHANNELS and x.shape[2] * x.shape[3] >= SUBPIXEL_MIN_PIXELS


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution, [N, C, H, W] -> [N, C, 2H, 2W].

    Where :func:`subpixel_pays` it runs as :func:`upsample_conv` (the same function up to
    rounding, 16 instead of 36 multiply-adds per input pixel and output channel); smaller calls,
    where the 2x2 convolutions lose, run as written.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if subpixel_pays(x):
            return upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
