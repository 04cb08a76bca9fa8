"""Sample-quality metrics. ``samples``: two-sample distances and mixture-aware statistics."""

from .samples import dispersion, energy_distance, loglik_gap, mmd_rbf

__all__ = ["energy_distance", "mmd_rbf", "dispersion", "loglik_gap"]
