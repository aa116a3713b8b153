"""Scores of how well fixed features suit a labelled task, computed without training a network.

- :func:`logme`: LogME (You et al., ICML 2021), the maximised log evidence of Bayesian linear
  regression from the features to each class's one-hot target, per image, averaged over classes.
- :func:`h_score`: H-score (Bao et al., ICIP 2019), ``tr(cov(f)^-1 cov(E[f | y]))``.
- :func:`linear_probe`: a closed-form ridge regression from standardised features to one-hot
  targets, its ridge chosen on validation features, scored by top-1 on test features.

All work in float64 on NumPy arrays (images x features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Ledoit-Wolf shrinkage toward a scaled identity (the regularised H-score of Ibrahim et al. 2022)
_SHRINK = "ledoit-wolf"


def _features(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        f = f.reshape(f.shape[0], -1)
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f


def _labels(labels: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.shape != (count,):
        raise ValueError(f"{y.shape[0] if y.ndim else 0} labels for {count} images")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError("labels must be non-negative integers (class indices)")
    return y.astype(np.int64), int(y.max()) + 1


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


# ------------------------------------------------------------------------------------------ LogME


@dataclass(frozen=True)
class Spectrum:
    """What LogME needs of the features F (N x D): the non-zero squared singular values of F and
    the targets' coordinates in F's left singular vectors (computed per target by :meth:`project`)."""

    sigma2: np.ndarray  # (r,)
    u: np.ndarray  # (N, r) left singular vectors
    n: int
    d: int

    @classmethod
    def of(cls, f: np.ndarray) -> Spectrum:
        n, d = f.shape
        # the eigen-decomposition of the smaller Gram matrix (the SVD trick: cost min(N,D)^2 max(N,D))
        if n <= d:
            sigma2, u = np.linalg.eigh(f @ f.T)
        else:
            sigma2, v = np.linalg.eigh(f.T @ f)
            keep = sigma2 > sigma2.max(initial=0.0) * 1e-12
            u = (f @ v[:, keep]) / np.sqrt(sigma2[keep])
            sigma2 = sigma2[keep]
            return cls(sigma2, u, n, d)
        keep = sigma2 > sigma2.max(initial=0.0) * 1e-12
        return cls(sigma2[keep], u[:, keep], n, d)


def _terms(alpha: float, beta: float, spectrum: Spectrum, z: np.ndarray, y_norm2: float) -> tuple[float, float, float]:
    """gamma, |m|^2 and |y - F m|^2 at (alpha, beta), written with ``t_i = b s_i / (a + b s_i)`` in
    [0, 1] so that nothing overflows when alpha or beta grows large."""
    s = spectrum.sigma2
    lam = alpha / beta
    t = s / (lam + s)
    gamma = float(np.sum(t))
    m2 = float(np.sum(t**2 * z**2 / s))
    res2 = max(y_norm2 - float(z @ z), 0.0) + float(np.sum(((1.0 - t) * z) ** 2))
    return gamma, m2, res2


def log_evidence(alpha: float, beta: float, spectrum: Spectrum, z: np.ndarray, y_norm2: float) -> float:
    """Log evidence ``log p(y | F, alpha, beta)`` of Bayesian linear regression with prior
    ``w ~ N(0, I/alpha)`` and noise precision ``beta``, from the spectrum of F and ``z = U'y``::

        D/2 log a + N/2 log b - N/2 log 2pi - b/2 |y - F m|^2 - a/2 |m|^2 - 1/2 log|a I + b F'F|
    """
    s, n, d = spectrum.sigma2, spectrum.n, spectrum.d
    _, m2, res2 = _terms(alpha, beta, spectrum, z, y_norm2)
    logdet = float(np.sum(np.log(alpha / beta + s))) + len(s) * math.log(beta) + (d - len(s)) * math.log(alpha)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)


def maximize_evidence(spectrum: Spectrum, y: np.ndarray, *, tol: float = 1e-10,
                      max_iter: int = 1000) -> tuple[float, float, float]:
    """MacKay's fixed-point updates (as in LogME): with ``gamma = sum b s_i / (a + b s_i)``,
    ``a <- gamma / |m|^2`` and ``b <- (N - gamma) / |y - F m|^2``, until both change by less than
    ``tol`` (relative). Returns ``(log evidence / N, alpha, beta)``."""
    n = spectrum.n
    z = spectrum.u.T @ y
    y_norm2 = float(y @ y)
    alpha, beta = 1.0, 1.0
    tiny, huge = 1e-150, 1e150
    for _ in range(max_iter):
        gamma, m2, res2 = _terms(alpha, beta, spectrum, z, y_norm2)
        new_alpha = min(max(gamma, tiny) / max(m2, tiny), huge)
        new_beta = min(max(n - gamma, tiny) / max(res2, tiny), huge)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = max(new_alpha, tiny), max(new_beta, tiny)
        if done:
            break
    return log_evidence(alpha, beta, spectrum, z, y_norm2) / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N x D) for class ``labels`` (N,): the mean over classes of the
    maximised log evidence per image of the regression to that class's one-hot indicator.

    Higher is better. Invariant to rotations and to isotropic scaling of the features; features
    are used as given (no centring, as in the original).
    """
    f = _features(features)
    y, k = _labels(labels, f.shape[0])
    if f.shape[0] < 2:
        raise ValueError("LogME needs at least 2 images")
    spectrum = Spectrum.of(f)
    targets = _one_hot(y, k)
    return float(np.mean([maximize_evidence(spectrum, targets[:, c])[0] for c in range(k)]))


# ---------------------------------------------------------------------------------------- H-score


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score ``tr(cov(f)^+ cov(E[f | y]))`` (Bao et al. 2019); higher is better.

    ``shrinkage`` (default): the feature covariance is shrunk toward a scaled identity by the
    Ledoit-Wolf estimate (the regularised H-score of Ibrahim et al. 2022), because a cut point's
    features can have about as many dimensions as there are images, where the plain estimate is
    dominated by its smallest, noisiest eigenvalues. ``shrinkage=False`` is Bao et al.'s original
    with a pseudo-inverse."""
    f = _features(features)
    y, k = _labels(labels, f.shape[0])
    f = f - f.mean(0)
    n = f.shape[0]
    if shrinkage:
        from sklearn.covariance import ledoit_wolf

        cov, _ = ledoit_wolf(f, assume_centered=True)
    else:
        cov = f.T @ f / n
    means = np.zeros((k, f.shape[1]))
    np.add.at(means, y, f)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    means[present] /= counts[present, None]
    between = (means[present].T * (counts[present] / n)) @ means[present]
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ between))


# ---------------------------------------------------------------------------------- linear probe


@dataclass(frozen=True)
class ProbeResult:
    top1: float  # on the test features
    val_top1: float  # of the chosen ridge, on the validation features
    ridge: float  # the chosen ridge (relative to the largest squared singular value)


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], ridges: np.ndarray | None = None) -> ProbeResult:
    """Ridge regression from standardised features to one-hot targets, in closed form (one SVD).

    Each ridge in ``ridges`` (relative to the largest squared singular value of the training
    features; default 1e-6..10) is fitted on ``train``; the one with the best validation top-1 is
    scored once on ``test``. Each argument is (features, labels)."""
    xtr, ytr = _features(train[0]), np.asarray(train[1])
    y, k = _labels(ytr, xtr.shape[0])
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-12] = 1.0

    def prep(x: np.ndarray) -> np.ndarray:
        return (_features(x) - mean) / std

    xtr = prep(xtr)
    targets = _one_hot(y, k)
    t_mean = targets.mean(0)
    u, s, vt = np.linalg.svd(xtr, full_matrices=False)
    proj = u.T @ (targets - t_mean)  # (r, k)
    grid = np.logspace(-6, 1, 15) if ridges is None else np.asarray(ridges, dtype=np.float64)
    scale = float(s[0] ** 2) if s.size and s[0] > 0 else 1.0

    def predict(x: np.ndarray, ridge: float) -> np.ndarray:
        coef = vt.T @ ((s / (s**2 + ridge * scale))[:, None] * proj)
        return np.argmax(x @ coef + t_mean, axis=1)

    xv, yv = prep(val[0]), np.asarray(val[1])
    scores = [float(np.mean(predict(xv, r) == yv)) for r in grid]
    best = int(np.argmax(scores))  # ties: the smallest ridge
    xt, yt = prep(test[0]), np.asarray(test[1])
    return ProbeResult(float(np.mean(predict(xt, grid[best]) == yt)), scores[best], float(grid[best]))
