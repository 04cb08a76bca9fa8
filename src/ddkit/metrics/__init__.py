"""Sample-quality metrics. ``samples``: two-sample distances and mixture-aware statistics;
``fid``: Fréchet distance of feature statistics and KID."""

from .fid import FeatureStats, FIDWarning, KIDResult, feature_stats, frechet_distance, kid
from .samples import dispersion, energy_distance, loglik_gap, mmd_rbf

__all__ = [
    "FIDWarning",
    "FeatureStats",
    "KIDResult",
    "dispersion",
    "energy_distance",
    "feature_stats",
    "frechet_distance",
    "kid",
    "loglik_gap",
    "mmd_rbf",
]
