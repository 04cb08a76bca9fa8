"""Two-sample and ground-truth statistics for low-dimensional samples [n, d]."""

from __future__ import annotations

import torch


def _mean_pairwise(x: torch.Tensor, y: torch.Tensor, *, same: bool, chunk: int = 2048, fn=None):
    """Mean of fn(||x_i - y_j||) over all pairs (i != j when ``same``), chunked, float64."""
    total = x.new_zeros((), dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk].double(), y.double())
        total += (fn(d) if fn is not None else d).sum()
    n_pairs = x.shape[0] * (y.shape[0] - 1) if same else x.shape[0] * y.shape[0]
    if same and fn is not None:  # remove the diagonal, where d = 0
        total -= x.shape[0] * fn(x.new_zeros((), dtype=torch.float64))
    return total / n_pairs


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"samples must be [n, d] with equal d, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("each sample set needs at least 2 points")


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo); 0 iff the
    distributions are equal.  Returned as the (signed) U-statistic; its noise floor is ~1/n."""
    _check(x, y)
    return float(
        2 * _mean_pairwise(x, y, same=False)
        - _mean_pairwise(x, x, same=True)
        - _mean_pairwise(y, y, same=True)
    )


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD with the Gaussian kernel exp(-|a - b|^2 / (2 bandwidth^2))."""
    _check(x, y)
    if not bandwidth > 0:
        raise ValueError(f"bandwidth={bandwidth!r} must be > 0")

    def k(d):
        return torch.exp(-(d**2) / (2 * bandwidth**2))

    return float(
        _mean_pairwise(x, x, same=True, fn=k)
        + _mean_pairwise(y, y, same=True, fn=k)
        - 2 * _mean_pairwise(x, y, same=False, fn=k)
    )


def dispersion(x: torch.Tensor, mixture) -> float:
    """Within-mode dispersion: mean over samples of the squared Mahalanobis distance to the
    sample's most likely component, divided by d.  About 1 for true samples of well-separated
    modes; below 1 means under-dispersed modes, above 1 over-dispersed."""
    k = mixture.responsibilities(x).argmax(1)
    x = x.double()
    total = 0.0
    for j in torch.unique(k).tolist():  # one component at a time: no [n, d, d] gather
        proj = (x[k == j] - mixture.means[j]) @ mixture.eigvecs[j]
        total += float((proj**2 / mixture.eigvals[j]).sum())
    return total / (len(x) * mixture.dim)


def loglik_gap(x: torch.Tensor, reference: torch.Tensor, mixture) -> float:
    """Mean log-density of ``x`` under the true mixture minus that of ``reference`` (nats)."""
    return float(mixture.log_prob(x).mean() - mixture.log_prob(reference).mean())
