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
    """What LogME needs of the features F (N x D): the non-zero squared singular values ``s`` of
    F, and a way to write a target in F's left singular vectors U (:meth:`project`). U itself is
    kept only where it is the smaller factor (N <= D, from the eigenvectors of F F'); with more
    images than features, U = F V s^-1/2 is never formed (an N x D x D product): F and the
    eigenvectors V of F'F serve instead."""

    sigma2: np.ndarray  # (r,)
    n: int
    d: int
    u: np.ndarray | None = None  # (N, r) left singular vectors (N <= D)
    f: np.ndarray | None = None  # (N, D) the features (N > D)
    v: np.ndarray | None = None  # (D, r) right singular vectors (N > D)

    @classmethod
    def of(cls, f: np.ndarray) -> Spectrum:
        n, d = f.shape
        # the eigen-decomposition of the smaller Gram matrix (the SVD trick: cost min(N,D)^2 max(N,D))
        sigma2, vecs = np.linalg.eigh(f @ f.T if n <= d else f.T @ f)
        keep = sigma2 > sigma2.max(initial=0.0) * 1e-12
        if n <= d:
            return cls(sigma2[keep], n, d, u=vecs[:, keep])
        return cls(sigma2[keep], n, d, f=f, v=vecs[:, keep])

    @property
    def full_row_rank(self) -> bool:
        """U is square: every target lies in F's column space."""
        return len(self.sigma2) == self.n

    def project(self, y: np.ndarray) -> tuple[np.ndarray, float]:
        """``z = U'y`` and ``|y - U U'y|^2``, the part of ``y`` outside F's column space: exactly 0
        when F has full row rank (U is square), else summed directly, never as ``|y|^2 - |z|^2``
        (whose rounding error, about 1e-16 |y|^2 and of either sign depending on the BLAS kernels,
        beta would multiply)."""
        if self.u is not None:
            z = self.u.T @ y
            return z, 0.0 if self.full_row_rank else float(np.sum((y - self.u @ z) ** 2))
        scale = np.sqrt(self.sigma2)
        z = (self.v.T @ (self.f.T @ y)) / scale  # U'y = s^-1/2 V'F'y
        if self.full_row_rank:
            return z, 0.0
        return z, float(np.sum((y - self.f @ (self.v @ (z / scale))) ** 2))  # U U'y = F V s^-1/2 z


def _profile(x: np.ndarray, s: np.ndarray, z2: np.ndarray, rest2: float, n: int) -> np.ndarray:
    """The log evidence ``log p(y | F, alpha, beta)`` of Bayesian linear regression (prior
    ``w ~ N(0, I/alpha)``, noise precision ``beta``), maximised over beta with
    ``lam = alpha/beta = exp(x)`` held fixed, for an array of x; ``z2 = (U'y)^2``, ``rest2 = |y - U U'y|^2``.

    It is written as the Gaussian ``y ~ N(0, I/beta + F F'/alpha)`` in F's left singular vectors,
    where the variances are ``(1 + s_i/lam)/beta`` (``1/beta`` outside F's column space), rather
    than the textbook ``D/2 log a + N/2 log b - N/2 log 2pi - b/2 |y - F m|^2 - a/2 |m|^2 -
    1/2 log|a I + b F'F|``: every term is a sum of positive numbers and nothing cancels. The best
    beta is ``N/Q`` with ``Q = sum z_i^2 lam/(lam + s_i) + rest2``, where the evidence is
    ``N/2 (log(N/Q) - log 2pi - 1) - 1/2 sum log(1 + s_i/lam)``."""
    out = np.empty(len(x))
    rows = max(1, 2**20 // max(len(s), 1))  # bounded memory for wide spectra
    for i in range(0, len(x), rows):
        lam = np.exp(x[i:i + rows])[:, None]
        q = np.sum(z2 * (lam / (lam + s)), axis=1) + rest2
        out[i:i + rows] = (n / 2 * (np.log(n / q) - math.log(2 * math.pi) - 1)
                           - 0.5 * np.sum(np.log1p(s / lam), axis=1))
    return out


def maximize_evidence(spectrum: Spectrum, y: np.ndarray, *, step: float = 0.25,
                      refine: int = 4) -> tuple[float, float, float]:
    """The largest log evidence over ``alpha, beta > 0``, with the limits ``alpha -> inf`` (the
    features unused) and, where F has full row rank (N <= D), ``beta -> inf`` (exact
    interpolation), whose values are finite. Returns ``(log evidence / N, alpha, beta)``, either of
    which may be ``inf`` when the supremum is such a limit.

    The evidence is maximised over beta in closed form (:func:`_profile`) and over
    ``log(alpha/beta)`` on a grid of ``step`` from 1e-12 below the smallest to 1e12 above the
    largest squared singular value; the ``refine`` best local maxima of the grid are polished by
    Brent's method. (The evidence's features in ``log(alpha/beta)`` are a unit or more wide: on 3800
    random spectra and targets, a step of 1 found the same maximum as one of 0.005.) Unlike MacKay's
    fixed-point updates (the original LogME's), this finds the largest of several local maxima, and
    it has no iteration whose course rounding can change: the fixed point walks toward a limit in
    steps whose size and stopping point depended on the last bits of ``N - gamma`` and
    ``|y|^2 - |U'y|^2``, so on the same data (13 x 30 Gaussian features) OpenBLAS's SkylakeX kernels
    stopped near ``beta -> inf`` and its Haswell ones fell back toward ``alpha -> inf``, 0.22 apart
    per image."""
    from scipy.optimize import minimize_scalar

    s, n = spectrum.sigma2, spectrum.n
    z, rest2 = spectrum.project(y)
    y2 = float(y @ y)
    if not y2 > 0:
        raise ValueError("the target is zero for every image")
    log2pi = math.log(2 * math.pi)
    best = (n / 2 * (math.log(n / y2) - log2pi - 1), math.inf, n / y2)  # alpha -> inf
    if len(s) == 0:
        return best[0] / n, best[1], best[2]
    z2 = z**2
    if len(s) == n:  # beta -> inf: y ~ N(0, F F'/alpha), best at alpha = N / sum z_i^2/s_i
        a = n / float(np.sum(z2 / s))
        limit = n / 2 * (math.log(a) - log2pi - 1) - 0.5 * float(np.sum(np.log(s)))
        best = max(best, (limit, a, math.inf), key=lambda c: c[0])
    lo, hi = math.log(float(s.min())) - 28.0, math.log(float(s.max())) + 28.0
    x = np.linspace(lo, hi, int((hi - lo) / step) + 2)
    p = _profile(x, s, z2, rest2, n)
    padded = np.concatenate(([-np.inf], p, [-np.inf]))
    peaks = np.flatnonzero((p >= padded[:-2]) & (p >= padded[2:]))
    for i in peaks[np.argsort(p[peaks])[::-1][:refine]]:
        res = minimize_scalar(lambda t: -_profile(np.array([t]), s, z2, rest2, n)[0], method="bounded",
                              bounds=(x[max(i - 1, 0)], x[min(i + 1, len(x) - 1)]), options={"xatol": 1e-10})
        t = float(res.x) if -res.fun >= p[i] else float(x[i])
        lam = math.exp(t)
        beta = n / (float(np.sum(z2 * (lam / (lam + s)))) + rest2)
        best = max(best, (float(_profile(np.array([t]), s, z2, rest2, n)[0]), lam * beta, beta), key=lambda c: c[0])
    return best[0] / n, best[1], best[2]


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N x D) for class ``labels`` (N,): the mean over the classes present
    of the maximised log evidence per image of the regression to that class's one-hot indicator
    (:func:`maximize_evidence`).

    Higher is better. Invariant to rotations and to isotropic scaling of the features; features
    are used as given (no centring, as in the original).
    """
    f = _features(features)
    y, k = _labels(labels, f.shape[0])
    if f.shape[0] < 2:
        raise ValueError("LogME needs at least 2 images")
    spectrum = Spectrum.of(f)
    targets = _one_hot(y, k)
    return float(np.mean([maximize_evidence(spectrum, targets[:, c])[0] for c in np.unique(y)]))


# ---------------------------------------------------------------------------------------- H-score


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score ``tr(cov(f)^+ cov(E[f | y]))`` (Bao et al. 2019); higher is better.

    ``shrinkage`` (default): the feature covariance is shrunk toward a scaled identity by the
    Ledoit-Wolf estimate (the regularised H-score of Ibrahim et al. 2022), because a cut point's
    features can have about as many dimensions as there are images, where the plain estimate is
    dominated by its smallest, noisiest eigenvalues. ``shrinkage=False`` is Bao et al.'s original
    with a pseudo-inverse (eigenvalues below 1e-10 of the largest are dropped).

    Computed in the smaller of two equivalent forms: with more images N than features D, on the
    D x D covariance; otherwise (a conv layer's 2048 features of 100 images) on the N x N Gram
    matrix of the centred features, whose eigenvectors span every direction the class means lie
    in (:func:`_h_score_gram`): cost ``min(N, D)^2 max(N, D)`` instead of ``D^3``."""
    f = _features(features)
    y, k = _labels(labels, f.shape[0])
    f = f - f.mean(0)
    n, d = f.shape
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    if n < d:
        return _h_score_gram(f, y, counts, present, shrinkage)
    cov = f.T @ f / n
    if shrinkage:
        a, mu = _ledoit_wolf(np.sum(f**2, axis=1), float(np.sum(cov**2)) * n**2, float(np.trace(cov)) * n, n, d)
        cov *= 1.0 - a
        cov.flat[:: d + 1] += a * mu
    means = np.zeros((k, d))
    np.add.at(means, y, f)
    means[present] /= counts[present, None]
    weights = counts[present] / n
    if shrinkage and a * mu > 1e-10 * float(np.trace(cov)):
        # every eigenvalue (>= a mu) is above the pseudo-inverse's cut (1e-10 of the largest, which is
        # below the trace): C is positive definite and C^+ = C^-1, so one Cholesky factor does
        # (tr(C^-1 sum_c p_c m_c m_c') = sum_c p_c |L^-1 m_c|^2), a sixth of an eigen-decomposition
        from scipy.linalg import cho_factor, solve_triangular

        chol, lower = cho_factor(cov, lower=True, check_finite=False)
        w = solve_triangular(chol, means[present].T, lower=lower, check_finite=False)
        return float(np.sum(w**2 * weights))
    between = (means[present].T * weights) @ means[present]
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ between))


def _ledoit_wolf(row_norms2: np.ndarray, frob2: float, trace: float, n: int, d: int) -> tuple[float, float]:
    """The Ledoit-Wolf shrinkage of centred features F (N x D) and ``mu = tr(F'F/N) / D``, as
    scikit-learn's ``ledoit_wolf_shrinkage`` computes them term by term, from the squared norm of
    each image's features (``row_norms2``), ``|F'F|_F^2 = |F F'|_F^2`` (``frob2``) and
    ``tr(F'F) = tr(F F')`` (``trace``): either form gives them (scikit-learn's sum of the entries
    of ``(F^2)'(F^2)`` is the sum over images of their squared norm squared)."""
    if d == 1:
        return 0.0, trace / n  # scikit-learn: one feature is not shrunk
    mu = trace / n / d
    beta_ = float(np.sum(row_norms2**2))
    delta_ = frob2 / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace / n + d * mu**2) / d
    beta = min(beta, delta)
    return (0.0 if beta == 0 else beta / delta), mu


def _h_score_gram(f: np.ndarray, y: np.ndarray, counts: np.ndarray, present: np.ndarray, shrinkage: bool) -> float:
    """The H-score of centred features ``f`` (N < D) in N x N form.

    With ``F F' = U diag(s) U'``, F's row space is spanned by ``v_i = F'u_i / sqrt(s_i)``, where the
    (shrunk) covariance ``C = (1 - a) F'F/N + a mu I`` has eigenvalues ``lam_i = (1 - a) s_i/N + a mu``
    (and ``a mu`` on the rest of the D dimensions). Every class mean ``m_c`` is an average of rows of
    F, so it lies in that row space, where ``m_c'v_i = sqrt(s_i) (Y'u_i)_c / count_c``; hence
    ``tr(C^+ sum_c p_c m_c m_c') = sum_i (s_i / lam_i) sum_c (Y'u_i)_c^2 / (N count_c)``, summed
    over the ``lam_i`` that the D x D pseudo-inverse keeps (above 1e-10 of the largest)."""
    n, d = f.shape
    gram = f @ f.T
    a, mu = (_ledoit_wolf(np.diag(gram), float(np.sum(gram**2)), float(np.trace(gram)), n, d) if shrinkage
               else (0.0, 0.0))
    s, u = np.linalg.eigh(gram)
    s = np.clip(s, 0.0, None)  # a Gram matrix is positive semi-definite; rounding may dip below 0
    lam = (1.0 - a) * s / n + a * mu
    largest = max(float(lam.max(initial=0.0)), a * mu)  # the D - N other eigenvalues are a mu
    keep = lam > 1e-10 * largest
    if not keep.any():
        return 0.0
    sums = np.zeros((len(counts), int(keep.sum())))
    np.add.at(sums, y, u[:, keep])  # (Y'u_i)_c
    per_class = (sums[present] ** 2 / counts[present, None]).sum(0) / n
    return float(np.sum(s[keep] / lam[keep] * per_class))


# ---------------------------------------------------------------------------------- linear probe


@dataclass(frozen=True)
class ProbeResult:
    top1: float  # on the test features
    val_top1: float  # of the chosen ridge, on the validation features
    ridge: float  # the chosen ridge (relative to the largest squared singular value)


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], ridges: np.ndarray | None = None) -> ProbeResult:
    """Ridge regression from standardised features to one-hot targets, in closed form: one
    eigen-decomposition of the smaller Gram matrix (X'X, D x D, or XX', N x N) serves every ridge.

    Each ridge in ``ridges`` (relative to the largest squared singular value of the training
    features; default 1e-6..10) is fitted on ``train``; the one with the best validation top-1 is
    scored once on ``test``. Each argument is (features, labels)."""
    xtr, ytr = _features(train[0]), np.asarray(train[1])
    y, k = _labels(ytr, xtr.shape[0])
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-12] = 1.0
    xtr = (xtr - mean) / std
    targets = _one_hot(y, k)
    t_mean = targets.mean(0)
    centred = targets - t_mean
    # with X = U S V': coef(ridge) = V (S^2 + ridge)^-1 V' X'T = X' U (S^2 + ridge)^-1 U'T, the SVD's
    # V S/(S^2 + ridge) U'T written with the eigenvectors of whichever Gram matrix is smaller
    primal = xtr.shape[0] >= xtr.shape[1]
    s2, vecs = np.linalg.eigh(xtr.T @ xtr if primal else xtr @ xtr.T)
    s2 = np.clip(s2, 0.0, None)
    proj = vecs.T @ (xtr.T @ centred if primal else centred)  # (r, k)
    grid = np.logspace(-6, 1, 15) if ridges is None else np.asarray(ridges, dtype=np.float64)
    scale = float(s2.max()) if s2.size and s2.max() > 0 else 1.0

    def predict(x: np.ndarray, ridge: float) -> np.ndarray:
        coef = vecs @ (proj / (s2 + ridge * scale)[:, None])
        if not primal:
            coef = xtr.T @ coef
        # ((x - mean)/std) @ coef, with the standardisation folded into the coefficients: the
        # validation and test features are used as they are, never copied to standardise them
        coef = coef / std[:, None]
        return np.argmax(x @ coef + (t_mean - mean @ coef), axis=1)

    xv, yv = _features(val[0]), np.asarray(val[1])
    scores = [float(np.mean(predict(xv, r) == yv)) for r in grid]
    best = int(np.argmax(scores))  # ties: the smallest ridge
    xt, yt = _features(test[0]), np.asarray(test[1])
    return ProbeResult(float(np.mean(predict(xt, grid[best]) == yt)), scores[best], float(grid[best]))
