"""The class-conditional sampling options and the editing commands: ``ddkit inpaint`` and
``ddkit edit`` (:mod:`ddkit.edit`)."""

from __future__ import annotations

import argparse

from ..cli_checks import finite_float, positive_int, random_seed


def add_guidance_options(p: argparse.ArgumentParser) -> None:
    """--class, --guidance and --guidance-interval, for class-conditional models."""
    p.add_argument(
        "--class",
        dest="class_label",
        metavar="CLASS",
        help="class index or name (class-conditional models; default for sample: every class, "
        "one grid row each)",
    )
    _guidance(p)


def add_eval_guidance_options(p: argparse.ArgumentParser) -> None:
    """--guidance and --guidance-interval for --fid and --sweep, and --guidance-sweep."""
    _guidance(p)
    p.add_argument(
        "--guidance-sweep",
        type=finite_float(0.0),
        nargs="+",
        metavar="W",
        help="FID and class accuracy of --sampler's samples at each guidance scale W "
        "(class-conditional models; guidance.md, guidance.png)",
    )


def _guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--guidance",
        type=finite_float(0.0),
        default=0.0,
        help="classifier-free guidance scale w >= 0: eps_c + w (eps_c - eps_u); 0 is the "
        "conditional model (diffusers' guidance_scale = 1 + w)",
    )
    p.add_argument(
        "--guidance-interval",
        type=finite_float(0.0),
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="guide only at noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) in (LOW, HIGH]",
    )


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("checkpoint", help="a checkpoint file, run folder or diffusers folder")
    p.add_argument("--image", required=True, help="the image file (the model's size and channels)")
    p.add_argument("--num", type=positive_int, default=8, help="results drawn from the image")
    p.add_argument("--seed", type=random_seed, default=0)
    p.add_argument("--weights", default="ema", help="ema or online")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=out, help="folder for the PNG, .npz and .json")
    add_guidance_options(p)


def _shared(args) -> dict:
    """The options inpaint and edit share, as keyword arguments."""
    keys = ("num", "steps", "class_label", "guidance", "guidance_interval", "seed", "weights")
    return {k: getattr(args, k) for k in (*keys, "device")}


def _cmd_inpaint(args) -> int:
    from ..edit import inpaint_to_folder

    inpaint_to_folder(
        args.checkpoint,
        args.image,
        args.mask,
        args.out,
        jump_length=args.jump_length,
        resample=args.resample,
        **_shared(args),
    )
    return 0


def _cmd_edit(args) -> int:
    from ..edit import edit_to_folder

    edit_to_folder(
        args.checkpoint,
        args.image,
        args.out,
        strength=args.strength,
        sampler=args.sampler,
        **_shared(args),
    )
    return 0


def add_commands(sub) -> None:
    """``inpaint`` and ``edit`` as subcommands of the parser's ``sub``."""
    i = sub.add_parser(
        "inpaint", help="fill the black part of a mask in an image (replacement or RePaint)"
    )
    _common(i, "inpaint-out")
    i.add_argument("--mask", required=True, help="mask image of the same size: white = keep")
    i.add_argument("--steps", type=positive_int, default=100, help="DDPM timesteps")
    i.add_argument(
        "--jump-length", type=positive_int, default=10, help="RePaint: steps per resampled block"
    )
    i.add_argument(
        "--resample",
        type=positive_int,
        default=5,
        help="RePaint: walks down each block (1: plain replacement); costs resample x steps",
    )
    i.set_defaults(func=_cmd_inpaint)

    e = sub.add_parser("edit", help="SDEdit: noise an image part-way and denoise it")
    _common(e, "edit-out")
    e.add_argument(
        "--strength",
        type=finite_float(0.0, 1.0, low_open=True),
        default=0.5,
        help="noise level to start from, in (0, 1]: 1 ignores the image",
    )
    e.add_argument("--sampler", default="ddim", help="any sampler of ddkit sample")
    e.add_argument(
        "--steps", type=positive_int, default=50, help="timesteps over the whole schedule"
    )
    e.set_defaults(func=_cmd_edit)
