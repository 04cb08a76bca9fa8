"""Exact ground truth: Gaussian-mixture data and its optimal denoiser at every timestep.

If x0 ~ sum_k pi_k N(m_k, S_k), then under the VP forward process x_t = a x0 + s eps
(a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)) the marginal is again a mixture,

    p_t(x) = sum_k pi_k N(x; a m_k, C_k),    C_k = a^2 S_k + s^2 I,

and the MMSE denoiser is E[x0 | x_t] = sum_k r_k(x) (m_k + a S_k C_k^{-1} (x - a m_k)) with
responsibilities r_k proportional to pi_k N(x; a m_k, C_k).  With S_k = Q_k diag(l_k) Q_k^T, every
C_k shares Q_k, so each evaluation costs one projection per component.  All arithmetic is float64.

Two conditionals are again mixtures, which makes them exact answers too:
* labelled components (``classes``): p(x | c) is the sub-mixture of class c's components, so the
  exact class-conditional denoiser is that sub-mixture's (:meth:`class_model`);
* observed coordinates x_o: each component conditioned on x_o is Gaussian (mean
  m_u + S_uo S_oo^{-1} (x_o - m_o), covariance S_uu - S_uo S_oo^{-1} S_ou) and its weight becomes
  proportional to pi_k N(x_o; m_o, S_oo) (:meth:`condition`): the exact answer for inpainting.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.schedule import NoiseSchedule


class GaussianMixture:
    """sum_k weights[k] N(means[k], covs[k]) in R^d, with exact diffused densities and denoisers.

    ``classes``: optional [K] class index (0..C-1) of each component; every class needs one."""

    def __init__(self, weights, means, covs, classes=None):
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        m = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        c = torch.as_tensor(np.asarray(covs), dtype=torch.float64)
        if (
            w.ndim != 1
            or m.ndim != 2
            or c.ndim != 3
            or not (w.shape[0] == m.shape[0] == c.shape[0])
        ):
            raise ValueError(
                f"mixture shapes must be weights [K], means [K, d], covs [K, d, d]; got "
                f"{tuple(w.shape)}, {tuple(m.shape)}, {tuple(c.shape)}"
            )
        if c.shape[1:] != (m.shape[1], m.shape[1]):
            raise ValueError(
                f"covariances must be [K, {m.shape[1]}, {m.shape[1]}], got {tuple(c.shape)}"
            )
        if torch.any(w <= 0) or abs(float(w.sum()) - 1.0) > 1e-9:
            raise ValueError("mixture weights must be positive and sum to 1")
        if not torch.allclose(c, c.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        lam, Q = torch.linalg.eigh(c)
        if torch.any(lam <= 0):
            raise ValueError("covariances must be positive definite")
        self.weights, self.means, self.covs = w, m, c
        self.eigvals, self.eigvecs = lam, Q  # [K, d], [K, d, d]
        self.classes = None
        if classes is not None:
            cls = torch.as_tensor(np.asarray(classes), dtype=torch.long)
            if cls.shape != w.shape or cls.min() < 0:
                raise ValueError(f"classes must be [K] indices >= 0, got {tuple(cls.shape)}")
            if len(torch.unique(cls)) != int(cls.max()) + 1:
                raise ValueError("every class 0..C-1 needs at least one component")
            self.classes = cls
        self._class_mixtures: dict[int, GaussianMixture] = {}

    @property
    def n_classes(self) -> int:
        """C, the number of classes (0 when the components carry no classes)."""
        return 0 if self.classes is None else int(self.classes.max()) + 1

    def of_class(self, c: int) -> GaussianMixture:
        """p(x | c): the mixture of class ``c``'s components, weights renormalised."""
        if not 0 <= c < self.n_classes:
            raise ValueError(f"class {c!r} is not one of the {self.n_classes} classes")
        if c not in self._class_mixtures:
            keep = self.classes == c
            w = self.weights[keep]
            self._class_mixtures[c] = GaussianMixture(
                w / w.sum(), self.means[keep], self.covs[keep]
            )
        return self._class_mixtures[c]

    def condition(self, observed, values) -> GaussianMixture:
        """p(x_u | x_o = values) over the unobserved coordinates u (in increasing order), with
        ``observed`` the indices o: again a mixture, each component conditioned and reweighted by
        pi_k N(values; m_o, S_oo).  Component classes are kept."""
        o = torch.as_tensor(np.asarray(observed), dtype=torch.long)
        u = torch.tensor([i for i in range(self.dim) if i not in set(o.tolist())])
        if len(torch.unique(o)) != len(o) or len(u) == 0 or len(o) == 0:
            raise ValueError("observed must be distinct indices leaving some coordinates free")
        xo = torch.as_tensor(np.asarray(values), dtype=torch.float64)
        S = self.covs
        S_oo, S_uo, S_uu = S[:, o][:, :, o], S[:, u][:, :, o], S[:, u][:, :, u]
        gain = torch.linalg.solve(S_oo, S_uo.transpose(1, 2)).transpose(1, 2)  # S_uo S_oo^-1
        diff = xo[None] - self.means[:, o]  # [K, |o|]
        means = self.means[:, u] + torch.einsum("kij,kj->ki", gain, diff)
        covs = S_uu - gain @ S_uo.transpose(1, 2)
        covs = 0.5 * (covs + covs.transpose(1, 2))
        _, logdet = torch.linalg.slogdet(S_oo)
        maha = torch.einsum("ki,ki->k", diff, torch.linalg.solve(S_oo, diff[:, :, None])[..., 0])
        logw = torch.log(self.weights) - 0.5 * (maha + logdet + len(o) * math.log(2 * math.pi))
        w = torch.softmax(logw, 0)
        keep = w > 1e-300  # components with no mass at x_o drop out
        classes = None if self.classes is None else self.classes[keep]
        if classes is not None:  # renumber the classes that remain
            classes = torch.unique(classes, return_inverse=True)[1]
        return GaussianMixture(w[keep] / w[keep].sum(), means[keep], covs[keep], classes)

    @property
    def dim(self) -> int:
        """d, the dimension of the data."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """K, the number of components."""
        return int(self.weights.shape[0])

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32):
        """(x [n, d], component labels [n]) drawn exactly."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty_like(z)
        for j in torch.unique(k).tolist():  # m_j + Q_j diag(sqrt(l_j)) z, one component at a time
            rows = k == j
            x[rows] = self.means[j] + (z[rows] * self.eigvals[j].sqrt()) @ self.eigvecs[j].T
        return x.to(dtype), k

    # -- densities ------------------------------------------------------------------------------
    def _component_terms(self, x: torch.Tensor, alpha_bar: float):
        """Per-component log N(x; a m_k, C_k) [n, K], and the projections (Q^T (x - a m_k))
        [n, K, d] and eigenvalues of C_k [K, d]."""
        a2 = float(alpha_bar)
        a = math.sqrt(a2)
        x = x.to(torch.float64)
        diff = x[None, :, :] - a * self.means[:, None, :]  # [K, n, d]
        proj = torch.bmm(diff, self.eigvecs).transpose(0, 1)  # [n, K, d]: Q_k^T (x - a m_k)
        cvals = a2 * self.eigvals + (1.0 - a2)  # [K, d]
        maha = (proj**2 / cvals[None]).sum(-1)
        logdet = torch.log(cvals).sum(-1)
        logn = -0.5 * (maha + logdet[None] + self.dim * math.log(2 * math.pi))
        return logn, proj, cvals

    def log_prob(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p_t(x) [n] of the diffused mixture at alpha_bar (1: the data), float64."""
        logn, _, _ = self._component_terms(x, alpha_bar)
        return torch.logsumexp(logn + torch.log(self.weights)[None], dim=1)

    def responsibilities(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """r_k(x) [n, K]: the posterior probability of each component given x_t = x at
        alpha_bar, float64."""
        logn, _, _ = self._component_terms(x, alpha_bar)
        return torch.softmax(logn + torch.log(self.weights)[None], dim=1)

    def posterior_mean(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """E[x0 | x_t = x] at alpha_bar, [n, d] float64."""
        a2 = float(alpha_bar)
        a = math.sqrt(a2)
        logn, proj, cvals = self._component_terms(x, a2)
        r = torch.softmax(logn + torch.log(self.weights)[None], dim=1)  # [n, K]
        gain = a * self.eigvals / cvals  # eigenvalues of a S C^{-1}
        weighted = (proj * gain[None] * r[:, :, None]).transpose(0, 1)  # [K, n, d]
        corr = torch.bmm(weighted, self.eigvecs.transpose(1, 2)).sum(0)  # sum_k r_k Q_k (...)
        return r @ self.means + corr

    def posterior_sample(
        self, x: torch.Tensor, alpha_bar: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x0 ~ p(x0 | x_t = x) at alpha_bar exactly, [n, d] float64: a component k drawn with
        its responsibility r_k(x), then x0 from that component's Gaussian posterior, whose
        covariance has C_k's eigenvectors and eigenvalues l s^2 / (a^2 l + s^2)."""
        a2 = float(alpha_bar)
        a, s2 = math.sqrt(a2), 1.0 - a2
        x = x.to(torch.float64)
        k = torch.multinomial(self.responsibilities(x, a2), 1, generator=generator).squeeze(1)
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        out = torch.empty_like(x)
        for j in torch.unique(k).tolist():
            rows, lam, q = k == j, self.eigvals[j], self.eigvecs[j]
            proj = (x[rows] - a * self.means[j]) @ q  # in C_k's eigenbasis
            draw = (
                proj * (a * lam / (a2 * lam + s2)) + z[rows] * (lam * s2 / (a2 * lam + s2)).sqrt()
            )
            out[rows] = self.means[j] + draw @ q.T
        return out

    def score(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """grad log p_t(x) = (a E[x0|x] - x) / s^2, float64."""
        a2 = float(alpha_bar)
        return (math.sqrt(a2) * self.posterior_mean(x, a2) - x.to(torch.float64)) / (1.0 - a2)

    def gaussian_nll(self) -> float:
        """For a single Gaussian: its differential entropy in nats (= E[-log p(x0)])."""
        if self.n_components != 1:
            raise ValueError("closed-form entropy is only defined here for one component")
        return 0.5 * float(torch.log(self.eigvals[0]).sum()) + 0.5 * self.dim * (
            1 + math.log(2 * math.pi)
        )

    # -- the exact denoiser ---------------------------------------------------------------------
    def model(self, schedule: NoiseSchedule):
        """A network-like callable (x_t, t[N]) -> E[x0 | x_t], i.e. an exact x0-predictor."""
        ab_table = schedule.alphas_cumprod

        def predict_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t_vals = torch.unique(t)
            flat = x.reshape(x.shape[0], -1)
            if t_vals.numel() == 1:
                out = self.posterior_mean(flat, float(ab_table[int(t_vals)]))
            else:
                out = torch.empty(flat.shape, dtype=torch.float64, device=x.device)
                for tv in t_vals.tolist():
                    sel = t == tv
                    out[sel] = self.posterior_mean(flat[sel], float(ab_table[tv]))
            return out.to(x.dtype).reshape(x.shape)

        return predict_x0

    def class_model(self, schedule: NoiseSchedule):
        """A class-conditional network-like callable (x_t, t[N], y[N]) -> E[x0 | x_t, y]: the
        exact x0-predictor of class y's sub-mixture, and of the whole mixture at the null label
        y = C (as a network trained with label dropout is)."""
        if self.classes is None:
            raise ValueError("this mixture's components carry no classes")
        models = {c: self.of_class(c).model(schedule) for c in range(self.n_classes)}
        models[self.n_classes] = self.model(schedule)

        def predict_x0(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(x)
            for c in torch.unique(y).tolist():
                if c not in models:
                    raise ValueError(f"label {c} is not a class 0..{self.n_classes - 1} or null")
                sel = y == c
                out[sel] = models[c](x[sel], t[sel])
            return out

        return predict_x0

    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        """The Bayes-optimal denoiser for this data under ``schedule``."""
        return Denoiser(self.model(schedule), schedule, "x0")


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def mixture_2d() -> GaussianMixture:
    """The 2-D test mixture: five modes of unequal weight and size (std 0.05 to 0.3), some
    elongated, spread over [-1, 1]^2."""
    specs = [  # weight, mean, (std_major, std_minor), angle
        (0.35, (-0.5, -0.4), (0.30, 0.08), 0.6),
        (0.25, (0.6, 0.5), (0.10, 0.10), 0.0),
        (0.20, (0.5, -0.6), (0.20, 0.05), -0.9),
        (0.12, (-0.6, 0.6), (0.06, 0.06), 0.0),
        (0.08, (0.0, 0.05), (0.05, 0.05), 0.0),
    ]
    w = [s[0] for s in specs]
    means = [s[1] for s in specs]
    covs = []
    for _, _, (a, b), ang in specs:
        R = _rotation(ang)
        covs.append(R @ np.diag([a * a, b * b]) @ R.T)
    return GaussianMixture(w, means, np.stack(covs))


def mixture_lowrank(
    dim: int = 64, n_components: int = 4, rank: int = 4, seed: int = 0
) -> GaussianMixture:
    """A ``dim``-D mixture with low-rank-plus-diagonal covariances S_k = U_k U_k^T + diag(d_k):
    rank-``rank`` factors of scale ~0.3, diagonal std in [0.05, 0.15], means ~ N(0, 0.5^2 I),
    unequal weights.  Deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(n_components, 2.0))
    means = rng.normal(0.0, 0.5, size=(n_components, dim))
    covs = []
    for _ in range(n_components):
        U = rng.normal(0.0, 0.3 / math.sqrt(rank), size=(dim, rank)) * math.sqrt(rank)
        U /= math.sqrt(dim / 8)
        diag = rng.uniform(0.05, 0.15, size=dim) ** 2
        covs.append(U @ U.T + np.diag(diag))
    return GaussianMixture(w, means, np.stack(covs))
