"""``ddkit features``: train (or show) ddkit's own FID feature network for a data set."""

from __future__ import annotations

from ..cli_checks import positive_int, random_seed


def _cmd_features(args) -> int:
    from ..evaluation.quality import train_or_show_classifier

    train_or_show_classifier(
        args.data,
        path=args.path,
        cache_dir=args.cache,
        retrain=args.retrain,
        epochs=args.epochs,
        seed=args.seed,
    )
    return 0


def add_features_command(sub) -> None:
    """``features`` as a subcommand of the parser's ``sub``."""
    f = sub.add_parser(
        "features", help="train (or show) ddkit's FID feature network for a data set"
    )
    f.add_argument("--data", required=True, help="digits, mnist5k or fashion_mnist")
    f.add_argument("--path", help="folder of the data set's files, where it has one")
    f.add_argument("--epochs", type=positive_int, default=4)
    f.add_argument("--seed", type=random_seed, default=0)
    f.add_argument("--retrain", action="store_true", help="replace a cached network")
    f.add_argument("--cache", help="cache folder (default $DDKIT_CACHE or ~/.cache/ddkit)")
    f.set_defaults(func=_cmd_features)
