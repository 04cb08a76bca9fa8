"""ddkit's DDPM U-Net and diffusers' ``UNet2DModel`` of the DDPM family: configs and weights,
both ways, exactly.

The two networks compute the same function when diffusers' config is the DDPM one: positional
time embedding with ``flip_sin_to_cos=False, freq_shift=1`` ([sin, cos], frequencies
10000^(-k/(half-1))), SiLU, GroupNorm eps 1e-6, ``DownBlock2D``/``AttnDownBlock2D`` levels
mirrored by ``UpBlock2D``/``AttnUpBlock2D``, a mid block with attention, convolutional up- and
downsampling, a time embedding 4x the base width, and one attention head or one head count that
gives every attended width the same head size.  Anything else is refused with one line naming
the key; nothing is approximated.

Weights: a parameter of one maps to exactly one parameter of the other, except ddkit's fused
attention ``qkv`` = diffusers' ``to_q``, ``to_k``, ``to_v`` stacked.  The attention names of the
original diffusers checkpoints (``query``, ``key``, ``value``, ``proj_attn``) are read too.
"""

from __future__ import annotations

import math
import reprlib

import torch

from ..models import UNetConfig
from ..models.layers import GROUPNORM_EPS


class InteropError(ValueError):
    """A diffusers model or folder that does not map onto ddkit (one line, naming the key)."""


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 40, 40, 6, 4
_SHORT.maxlong = 40

MAX_LEVELS, MAX_BLOCKS = 12, 64  # beyond any U-Net of the DDPM family


def short(value) -> str:
    """``repr(value)`` cut to a short line, for messages about hostile files."""
    return _SHORT.repr(value)


# diffusers UNet2DModel keys whose value must be exactly this for the DDPM family
_FIXED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
}
# a class-conditional ddkit U-Net exports num_class_embeds = classes + 1, the last row being the
# null label of classifier-free guidance; this key (ignored by diffusers) says so on the way back
NULL_LABEL_KEY = "_ddkit_null_label"
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _heads(cfg: UNetConfig) -> int | None:
    """diffusers' ``attention_head_dim`` for ``cfg``: None for one head; else the one head size
    every attended width has."""
    if cfg.num_heads == 1:
        return None
    res = cfg.resolutions()
    widths = {
        cfg.base_channels * m
        for m, r in zip(cfg.channel_mult, res, strict=True)
        if r in cfg.attention_resolutions
    }
    widths.add(cfg.base_channels * cfg.channel_mult[-1])  # the middle block
    sizes = {w // cfg.num_heads for w in widths}
    if len(sizes) != 1:
        raise InteropError(
            f"num_heads={cfg.num_heads} gives attention heads of sizes {sorted(sizes)}; diffusers' "
            "UNet2DModel has one head size for every block (use num_heads=1 or equal widths)"
        )
    return sizes.pop()


def unet_to_diffusers(cfg: UNetConfig) -> dict:
    """The ``UNet2DModel`` config (as in its config.json) of ddkit's U-Net ``cfg``."""
    if cfg.channel_mult[0] != 1:
        raise InteropError(
            f"channel_mult[0]={cfg.channel_mult[0]}: diffusers' UNet2DModel makes its first level "
            "as wide as conv_in and the time embedding (ddkit's base_channels); use channel_mult "
            "starting at 1 with a wider base_channels"
        )
    attended = [r in cfg.attention_resolutions for r in cfg.resolutions()]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attended],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)],
        "layers_per_block": cfg.num_res_blocks,
        "attention_head_dim": _heads(cfg),
        "norm_num_groups": cfg.groups,
        "attn_norm_num_groups": None,
        "norm_eps": GROUPNORM_EPS,
        "dropout": cfg.dropout,
        "downsample_padding": cfg.downsample_padding,
        "time_embedding_dim": None,
        **_FIXED,
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
        **({NULL_LABEL_KEY: cfg.num_classes} if cfg.num_classes else {}),
    }


def unet_from_diffusers(d: dict, where: str = "config.json") -> UNetConfig:
    """ddkit's U-Net config for a ``UNet2DModel`` config; InteropError naming the key that has
    no ddkit equivalent (or of the wrong type)."""
    try:
        return _unet_from_diffusers(d, where)
    except InteropError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise InteropError(f"{where}: not a UNet2DModel config ddkit can read ({e})") from None


def _unet_from_diffusers(d: dict, where: str) -> UNetConfig:
    def get(key, default=None):
        return d.get(key, default)

    def refuse(key, why):
        raise InteropError(f"{where}: {key}={short(get(key))} {why}")

    if get("_class_name", "UNet2DModel") != "UNet2DModel":
        refuse("_class_name", "is not a UNet2DModel")
    defaults = {
        "freq_shift": 0,
        "flip_sin_to_cos": True,
        "mid_block_type": "UNetMidBlock2D",
        "downsample_type": "conv",
        "upsample_type": "conv",
        "act_fn": "silu",
        "time_embedding_type": "positional",
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }
    for key, want in _FIXED.items():
        if get(key, defaults.get(key)) != want:
            refuse(key, f"has no ddkit equivalent (the DDPM U-Net has {want!r})")
    classes = 0
    if get("num_class_embeds") is not None:  # only ddkit's own: the last row is the null label
        k = get("num_class_embeds")
        if not _int(k) or k < 2 or get(NULL_LABEL_KEY) != k - 1:
            refuse(
                "num_class_embeds",
                "has no ddkit equivalent: ddkit reads class embeddings only with the null label "
                f"of classifier-free guidance as their last row ({NULL_LABEL_KEY} = "
                "num_class_embeds - 1, as ddkit export writes)",
            )
        classes = k - 1
    widths = get("block_out_channels")
    if not isinstance(widths, list) or not widths or not all(_int(w) for w in widths):
        refuse("block_out_channels", "is not a list of positive integers")
    if len(widths) > MAX_LEVELS:
        refuse("block_out_channels", f"has more than {MAX_LEVELS} levels")
    blocks = get("layers_per_block", 2)
    if not _int(blocks) or blocks > MAX_BLOCKS:
        refuse("layers_per_block", f"is not an integer in 1..{MAX_BLOCKS}")
    base = widths[0]
    if any(w % base for w in widths):
        refuse("block_out_channels", f"are not multiples of the first ({base})")
    down, up = get("down_block_types"), get("up_block_types")
    if not isinstance(down, list) or len(down) != len(widths):
        refuse("down_block_types", "is not one block type per width")
    if not isinstance(up, list) or len(up) != len(widths):
        refuse("up_block_types", "is not one block type per width")
    kinds = {"DownBlock2D": False, "AttnDownBlock2D": True}
    if any(not isinstance(b, str) or b not in kinds for b in down):
        refuse("down_block_types", f"has blocks other than {', '.join(kinds)}")
    attended = [kinds[b] for b in down]
    mirrored = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)]
    if up != mirrored:
        refuse("up_block_types", f"does not mirror down_block_types (expected {mirrored})")
    if get("time_embedding_dim") not in (None, 0, 4 * base):  # 0 and None: diffusers' default
        refuse("time_embedding_dim", f"is not 4 x block_out_channels[0] = {4 * base}")
    eps = get("norm_eps", 1e-5)
    if not isinstance(eps, int | float) or not math.isclose(eps, GROUPNORM_EPS, rel_tol=1e-9):
        refuse("norm_eps", f"is not the DDPM U-Net's {GROUPNORM_EPS}")
    groups = get("norm_num_groups", 32)
    if get("attn_norm_num_groups") not in (None, groups):
        refuse("attn_norm_num_groups", "differs from norm_num_groups")
    size, cin, cout = get("sample_size"), get("in_channels", 3), get("out_channels", 3)
    if not _int(size):
        refuse("sample_size", "is not one positive integer (square images)")
    if not _int(cin) or cout not in (cin, 2 * cin):
        refuse("out_channels", f"is neither in_channels ({cin}) nor twice it (learned variance)")
    res = [size // 2**i for i in range(len(widths))]
    head_dim = get("attention_head_dim", 8)
    heads = 1
    if head_dim is not None:
        attn_widths = {w for w, a in zip(widths, attended, strict=True) if a} | {widths[-1]}
        if not _int(head_dim) or any(w % head_dim for w in attn_widths):
            refuse("attention_head_dim", "does not divide every attended width")
        counts = {w // head_dim for w in attn_widths}
        if len(counts) != 1:
            refuse("attention_head_dim", f"gives head counts {sorted(counts)}; ddkit has one")
        heads = counts.pop()
    try:
        return UNetConfig(
            image_size=size,
            in_channels=cin,
            base_channels=base,
            channel_mult=tuple(w // base for w in widths),
            num_res_blocks=blocks,
            attention_resolutions=tuple(r for r, a in zip(res, attended, strict=True) if a),
            dropout=float(get("dropout", 0.0)),
            num_heads=heads,
            learn_sigma=cout == 2 * cin,
            groups=groups,
            downsample_padding=get("downsample_padding", 1),
            num_classes=classes,
        )
    except (ValueError, TypeError) as e:
        raise InteropError(f"{where}: {e}") from None


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _pairs(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """(kind, ddkit module, diffusers module) for every mapped module; kind is 'plain',
    'res' (a ResBlock) or 'attn'."""
    out = [
        ("plain", "conv_in", "conv_in"),
        ("plain", "time_embed.0", "time_embedding.linear_1"),
        ("plain", "time_embed.2", "time_embedding.linear_2"),
        ("plain", "norm_out", "conv_norm_out"),
        ("plain", "conv_out", "conv_out"),
    ]
    if cfg.num_classes:
        out.append(("plain", "label_emb", "class_embedding"))
    levels = len(cfg.channel_mult)
    attended = [r in cfg.attention_resolutions for r in cfg.resolutions()]
    k = 0
    for level in range(levels):
        for i in range(cfg.num_res_blocks):
            out.append(("res", f"down.{k}.0", f"down_blocks.{level}.resnets.{i}"))
            if attended[level]:
                out.append(("attn", f"down.{k}.1", f"down_blocks.{level}.attentions.{i}"))
            k += 1
        if level != levels - 1:
            out.append(("plain", f"down.{k}.0.conv", f"down_blocks.{level}.downsamplers.0.conv"))
            k += 1
    out += [
        ("res", "middle.0", "mid_block.resnets.0"),
        ("attn", "middle.1", "mid_block.attentions.0"),
        ("res", "middle.2", "mid_block.resnets.1"),
    ]
    k = 0
    for j, level in enumerate(reversed(range(levels))):
        for i in range(cfg.num_res_blocks + 1):
            out.append(("res", f"up.{k}.0", f"up_blocks.{j}.resnets.{i}"))
            if attended[level]:
                out.append(("attn", f"up.{k}.1", f"up_blocks.{j}.attentions.{i}"))
            if level != 0 and i == cfg.num_res_blocks:
                u = 2 if attended[level] else 1
                out.append(("plain", f"up.{k}.{u}.conv", f"up_blocks.{j}.upsamplers.0.conv"))
            k += 1
    return out


_RES = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("emb_proj", "time_emb_proj"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("skip", "conv_shortcut"),
)


def _names(kind: str, ours: str, theirs: str) -> list[tuple[str, str]]:
    """(ddkit parameter, diffusers parameter) of one module, qkv left out."""
    if kind == "res":
        mods = [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in _RES]
    elif kind == "attn":
        mods = [(f"{ours}.norm", f"{theirs}.group_norm"), (f"{ours}.proj", f"{theirs}.to_out.0")]
    else:
        mods = [(ours, theirs)]
    return [(f"{a}.{s}", f"{b}.{s}") for a, b in mods for s in ("weight", "bias")]


def state_from_diffusers(cfg: UNetConfig, theirs: dict, where: str = "weights") -> dict:
    """ddkit's U-Net state_dict from a ``UNet2DModel`` state_dict (new or original attention
    names); InteropError naming a missing or unexpected tensor."""
    bad = [k for k, v in theirs.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise InteropError(f"{where}: entry {short(bad[0])} is not a named tensor")
    theirs = {_new_name(k): v for k, v in theirs.items()}
    out, used = {}, set()
    for kind, ours, name in _pairs(cfg):
        for a, b in _names(kind, ours, name):
            if b in theirs:
                out[a], used = theirs[b], used | {b}
        if kind == "attn":
            for s in ("weight", "bias"):
                parts = [f"{name}.to_{q}.{s}" for q in "qkv"]
                missing = [p for p in parts if p not in theirs]
                if missing:
                    raise InteropError(f"{where}: tensor {missing[0]!r} is missing")
                out[f"{ours}.qkv.{s}"] = torch.cat([theirs[p] for p in parts])
                used |= set(parts)
    extra = sorted(set(theirs) - used)
    if extra:
        raise InteropError(f"{where}: tensor {extra[0]!r} has no place in the DDPM U-Net")
    return out


def state_to_diffusers(cfg: UNetConfig, ours: dict) -> dict:
    """The ``UNet2DModel`` state_dict of ddkit's U-Net state_dict ``ours``."""
    out = {}
    for kind, mine, name in _pairs(cfg):
        for a, b in _names(kind, mine, name):
            if a in ours:
                out[b] = ours[a]
        if kind == "attn":
            for s in ("weight", "bias"):
                for q, part in zip("qkv", ours[f"{mine}.qkv.{s}"].chunk(3), strict=True):
                    out[f"{name}.to_{q}.{s}"] = part.contiguous()
    return out


def _new_name(key: str) -> str:
    """An attention parameter name of the original diffusers checkpoints in today's form."""
    head, _, leaf = key.rpartition(".")
    module, _, last = head.rpartition(".")
    if ".attentions." in key and last in _DEPRECATED_ATTENTION:
        return f"{module}.{_DEPRECATED_ATTENTION[last]}.{leaf}"
    return key
