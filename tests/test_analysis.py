"""Tests of transferscope.analysis: CKA, LogME / H-score / linear probe, convergence, freeze or
fine-tune by target size, the reading, comparing studies, and the whole analysis of a tiny study.

The maths is checked against independent computations: HSIC_1 against Song et al.'s U-statistic
summed over every 4-tuple of images, minibatch CKA against the biased full-batch formula on many
images, LogME's maximised evidence against a brute-force maximisation of the log evidence written
out with explicit matrices and a Cholesky factor.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import cho_solve, solve_triangular
from scipy.optimize import minimize
from scipy import stats as sps

from transferscope.record import RunRecord
from transferscope.analysis import convergence as conv
from transferscope.analysis import recommend as rec
from transferscope.analysis.cka import (
    HsicTerms,
    MinibatchCKA,
    SmallBatchError,
    UndefinedCKAError,
    gram_centred,
    gram_linear,
    hsic_unbiased,
    linear_cka,
    minibatches,
)
from transferscope.report.reading import compare_frames, reading
from transferscope.analysis.transferability import Spectrum, h_score, linear_probe, logme, maximize_evidence
from transferscope.errors import UserError

TINY = ["train.epochs=2", "treatments.replicates=2", "model.options={widths=[8,16],fc=[16]}",
        "treatments.cut_points=[1,2]", "execution.workers=1", "treatments.target_sizes=[0.2]"]


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _rng(seed)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 7, generator=g, dtype=torch.float64)
    y = x @ torch.randn(12, 7, generator=g, dtype=torch.float64) + 0.7 * noise
    return x, y


# ------------------------------------------------------------------------------------------ CKA


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x, _ = _pair()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    conv_map = torch.randn(20, 3, 4, 4, generator=_rng(1))  # (B, C, H, W) is flattened per image
    assert linear_cka(conv_map, conv_map) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_orthogonal_transform_isotropic_scaling_and_shift() -> None:
    x, y = _pair()
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=_rng(2), dtype=torch.float64))
    ref = linear_cka(x, y)
    assert 0.2 < ref < 0.95  # related, not identical: a meaningful value to preserve
    # float64; the shift costs most: Gram entries of 200 against a centred spread of 12, so HSIC's
    # terms cancel and 4e-13 is left, on every OpenBLAS/MKL kernel tried; 1e-10 is a margin
    assert linear_cka(x, y @ q) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x * 37.5, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, y * 1e-3) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x + 4.0, y - 2.0) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    # but not to an anisotropic rescaling of the features
    assert abs(linear_cka(x * torch.linspace(0.1, 10, 12, dtype=torch.float64), y) - ref) > 1e-3


def _hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012): HSIC_1 is the U-statistic of h(i,j,q,r) = k_ij l_ij + k_ij l_qr - 2 k_ij l_iq
    averaged over all ordered 4-tuples of distinct images (symmetrised over their 24 orders, which
    the average over all ordered tuples already does)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


@pytest.mark.parametrize("n", [4, 5, 7])
def test_unbiased_hsic_equals_the_u_statistic(n: int) -> None:
    x, y = _pair(n, seed=n)
    k, l = gram_linear(x), gram_linear(y)
    # float64 on 4-7 images: 2e-16 relative on every kernel tried; rel 1e-10 is a margin
    assert hsic_unbiased(k, l) == pytest.approx(_hsic_u_statistic(k.numpy(), l.numpy()), rel=1e-10, abs=1e-12)


def _biased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s feature-space formula: |Y'X|_F^2 / (|X'X|_F |Y'Y|_F), centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_minibatch_cka_agrees_with_the_biased_full_batch_formula_on_many_images() -> None:
    x, y = _pair(4000, seed=3)
    x, y = x[:, :3], y[:, :2]  # few features: the biased estimator's bias is small
    acc = MinibatchCKA(1, 1)
    for idx in minibatches(4000, 400, seed=0):
        acc.update([x[idx]], [y[idx]])
    assert acc.batches == 10 and acc.images == 4000
    assert acc.value()[0, 0] == pytest.approx(_biased_cka(x, y), abs=0.01)


def test_minibatch_cka_with_one_batch_is_the_single_batch_value() -> None:
    x, y = _pair(50)
    acc = MinibatchCKA(2, 2)
    acc.update([x, x**2], [y, x])
    values = acc.value()
    # the same float64 HSIC formula, on Gram stacks of 2 instead of 1 (another matmul shape): 0 here,
    # 3e-16 with MKL_CBWR=COMPATIBLE; 1e-12 is a margin
    assert values[0, 0] == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert values[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert values[1, 0] == pytest.approx(linear_cka(x**2, y), abs=1e-12)


def test_batches_too_small_are_errors_never_nan() -> None:
    x, y = _pair(3)
    with pytest.raises(SmallBatchError, match="at least 4 images"):
        linear_cka(x, y)
    assert issubclass(SmallBatchError, ValueError) and issubclass(SmallBatchError, UserError)
    with pytest.raises(ValueError, match="at least 4"):
        MinibatchCKA(1, 1).update([x], [y])
    with pytest.raises(ValueError, match="batch size 2"):
        minibatches(100, 2)
    with pytest.raises(ValueError, match="at least 4 images"):
        minibatches(3, 256)
    # a remainder never forms a tiny last batch
    sizes = [len(b) for b in minibatches(1030, 256)]
    assert sum(sizes) == 1030 and min(sizes) >= 256
    assert linear_cka(*_pair(4)) == linear_cka(*_pair(4))  # n = 4 works
    assert math.isfinite(linear_cka(*_pair(4)))


def test_constant_representation_is_undefined_not_nan() -> None:
    x, _ = _pair(20)
    dead = torch.zeros(20, 5, dtype=torch.float64)
    with pytest.raises(UndefinedCKAError, match="no variance"):
        linear_cka(x, dead)
    acc = MinibatchCKA(1, 2)
    acc.update([x], [x, dead])
    with pytest.raises(UndefinedCKAError):
        acc.value()
    values = acc.value(strict=False)
    assert values[0, 0] == pytest.approx(1.0) and math.isnan(values[0, 1])
    assert acc.undefined() == ([], [1])


def test_trained_network_is_less_similar_to_a_random_one_than_to_itself(tiny_study_dir) -> None:
    from transferscope.analysis.networks import layer_outputs, load_network, random_network
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(tiny_study_dir)
    study = Study.prepare(store.load_config(), splits=store.load_splits())
    trained = load_network(store, study, "r0-baseB", 0, "B")
    untrained = random_network(study, 0, "B", seed=123)
    task = study.task(0, "B")
    x = task.test.x
    layers = trained.num_layers
    vs_self, vs_random = MinibatchCKA(layers, layers), MinibatchCKA(layers, layers)
    for idx in minibatches(len(x), 64, seed=0):
        a = next(layer_outputs(trained, x[idx], task, batch_size=len(idx)))
        b = next(layer_outputs(untrained, x[idx], task, batch_size=len(idx)))
        vs_self.update(a, a)
        vs_random.update(a, b)
    same, random = np.diag(vs_self.value()), np.diag(vs_random.value())
    assert same == pytest.approx(np.ones(layers), abs=1e-9)
    assert (random < same - 0.05).all(), random


def test_a_study_s_gram_matrices_and_folded_networks_give_the_same_cka(tiny_study_dir) -> None:
    """What study_similarity runs (BatchNorm folded into the convolutions, Gram matrices of
    centred float32 features) against the plain forms (the network as trained, float64 Gram
    matrices of the raw features)."""
    from transferscope.analysis.networks import for_inference, layer_outputs, load_network
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(tiny_study_dir)
    study = Study.prepare(store.load_config(), splits=store.load_splits())
    net = load_network(store, study, "r0-baseB", 0, "B")
    folded = for_inference(net)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is unchanged
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    task = study.task(0, "B")
    x = task.test.x[:64]
    plain, fast = next(layer_outputs(net, x, task)), next(layer_outputs(folded, x, task))
    for a, b in zip(plain, fast):
        # the same function in float32 with the BatchNorm's scale inside the convolution: rounding,
        # about 1e-6 of the largest value (any kernels); 1e-4 is a margin
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    for a, b in zip(plain, fast):
        exact = HsicTerms(gram_linear(a)[None])
        quick = HsicTerms(gram_centred(b)[None])
        # HSIC_1 is unchanged by centring; float32 sums over up to 2048 values per image carry about
        # 1e-6 relative error into CKA (measured: 3e-7 here); 1e-4 is a margin
        assert float(exact.itself()[0]) == pytest.approx(float(quick.itself()[0]), rel=1e-4)
    cka_plain = MinibatchCKA(len(plain), len(plain))
    cka_plain.update(plain, plain[::-1])
    cka_fast = MinibatchCKA(len(fast), len(fast))
    cka_fast.update_terms(HsicTerms(torch.stack([gram_centred(h) for h in fast])),
                          HsicTerms(torch.stack([gram_centred(h) for h in fast[::-1]])))
    assert np.abs(cka_plain.value() - cka_fast.value()).max() < 1e-4


def test_hsic_is_unchanged_by_centring_the_features() -> None:
    x, y = _pair(64, seed=5)
    x, y = x + 5.0, y.abs() + 3.0  # a large common component, as ReLU outputs have
    for kx, ky in ((gram_linear(x), gram_linear(y)), (gram_linear(x - x.mean(0)), gram_linear(y - y.mean(0)))):
        # float64: the uncentred form loses about 1e-11 to the common component's cancellation
        assert hsic_unbiased(kx, ky) == pytest.approx(hsic_unbiased(gram_linear(x), gram_linear(y)), rel=1e-9)
    assert float(HsicTerms(gram_centred(x)[None]).with_(HsicTerms(gram_centred(y)[None]))[0, 0]) == pytest.approx(
        hsic_unbiased(gram_linear(x), gram_linear(y)), rel=1e-5)  # float32 Gram: about 1e-7 here


# ---------------------------------------------------------------------------------------- LogME


def _log_evidence_direct(alpha: float, beta: float, f: np.ndarray, y: np.ndarray) -> float:
    """Bayesian linear regression evidence ``log p(y | F, alpha, beta)`` (prior ``w ~ N(0, I/alpha)``,
    noise precision ``beta``) written out with explicit matrices and a Cholesky factor, in whichever
    of its two textbook forms has the smaller matrix; ``alpha`` or ``beta`` may be infinite.

    Well-conditioned wherever it is evaluated, for any alpha and beta, because that matrix's
    condition number is at most cond(F F') = cond(F'F) on the non-zero spectrum (2.5 for 40 x 5, 17
    for 12 x 25, 42 for 7 x 6, 2.2e4 for 30 x 30; F has full rank in these tests), so Cholesky's
    error is at most about N eps cond, 1e-10 per image, and in practice 1e-15:

    - N <= D: ``y ~ N(0, C)``, ``C = I/beta + F F'/alpha`` (N x N), eigenvalues ``1/beta + s_i/alpha``,
      so cond(C) <= s_max/s_min even at ``beta -> inf`` (interpolation), where the supremum often lies.
    - N > D: with ``k = beta/alpha``, ``B = I + k F'F`` (D x D, eigenvalues ``1 + k s_i``),
      ``m = k B^-1 F'y`` and ``log p = N/2 log(beta/2pi) - 1/2 log|B| - beta/2 |y - F m|^2 - alpha/2 |m|^2``;
      ``y - F m`` keeps the part of y outside F's D-dimensional column space (at least 1% of |y|
      in these tests), so it does not cancel.

    The D x D form used at N < D (as this test once did) has D - N eigenvalues ``alpha`` and N of
    ``alpha + beta s_i``: condition ``1 + beta s_max/alpha``, 1e18 near the 12 x 25 case's supremum
    (beta/alpha 3e14), where ``y - F m`` is also a difference of nearly equal vectors multiplied by
    beta (1.7e16): under OpenBLAS's Haswell kernels it read -2.93 per image where the evidence is -0.81."""
    n, d = f.shape
    if n <= d:
        c = np.eye(n) / beta + f @ f.T / alpha
        chol = np.linalg.cholesky(c)
        w = solve_triangular(chol, y, lower=True)
        return -n / 2 * np.log(2 * np.pi) - np.sum(np.log(np.diag(chol))) - w @ w / 2
    k = beta / alpha
    chol = np.linalg.cholesky(np.eye(d) + k * f.T @ f)
    v = cho_solve((chol, True), f.T @ y)  # m = k v, so alpha |m|^2 = beta k |v|^2
    return (n / 2 * np.log(beta / (2 * np.pi)) - np.sum(np.log(np.diag(chol)))
            - beta / 2 * np.sum((y - f @ (k * v)) ** 2) - beta * k / 2 * v @ v)


def _logme_brute_force(f: np.ndarray, labels: np.ndarray) -> float:
    """Maximise the evidence over (log alpha, log beta): a grid of e^-6 .. e^30 in steps of e, then
    Nelder-Mead from the grid's four best local maxima (the evidence can have several). Its
    supremum can lie at alpha or beta -> infinity, which the evidence approaches like 1/alpha or
    1/beta: Nelder-Mead moves on while it gains more than ``fatol`` and stops about e^37 out, within
    about 1e-15 per image of the limit."""
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)

        def negative(p: np.ndarray, y: np.ndarray = y) -> float:
            with np.errstate(over="ignore", divide="ignore"):
                value = _log_evidence_direct(np.exp(p[0]), np.exp(p[1]), f, y)
            return -value if np.isfinite(value) else np.inf

        grid = np.arange(-6.0, 31.0)
        values = np.array([[-negative(np.array([a, b])) for b in grid] for a in grid])
        padded = np.pad(values, 1, constant_values=-np.inf)
        peak = np.ones_like(values, dtype=bool)
        for da, db in [(0, 1), (2, 1), (1, 0), (1, 2)]:
            peak &= values >= padded[da:da + len(grid), db:db + len(grid)]
        starts = sorted(zip(*np.nonzero(peak)), key=lambda ij: -values[ij])[:4]
        best = min(minimize(negative, (grid[i], grid[j]), method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000, "maxfev": 20000}).fun
                   for i, j in starts)
        out.append(-best / len(y))
    return float(np.mean(out))


# a worked example: 9 images, 3 features, 3 classes of 3
WORKED_F = np.array([[1.0, 0.2, -0.5], [0.8, -0.1, 0.3], [1.2, 0.4, 0.1], [-0.9, 0.3, 0.2], [-1.1, -0.2, 0.4],
                     [-0.7, 0.1, -0.3], [0.1, 1.0, 0.9], [0.3, 1.2, -0.8], [-0.2, 0.9, 0.5]])
WORKED_Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
WORKED_LOGME = -0.6535496  # brute-force maximisation (below) agrees to 1e-7


def test_logme_worked_reference_value() -> None:
    brute = _logme_brute_force(WORKED_F, WORKED_Y)
    assert brute == pytest.approx(WORKED_LOGME, abs=1e-6)  # the constant has 7 decimals
    # both well-conditioned (cond(F'F) = 3), agreeing to 1e-15 on any BLAS kernels: 1e-9 is a margin
    assert logme(WORKED_F, WORKED_Y) == pytest.approx(brute, abs=1e-9)


# (40, 5): interior maxima; class 1 of (30, 30) and class 0 of (12, 25): suprema at alpha -> inf;
# class 1 of (12, 25): at beta -> inf (the case whose value, and MacKay's fixed point, once depended
# on the BLAS kernels); (7, 6): class 0 has two local maxima, and the larger is not the one MacKay's
# fixed point from alpha = beta = 1 reaches
@pytest.mark.parametrize("n,d", [(40, 5), (30, 30), (12, 25), (7, 6)])
def test_logme_matches_brute_force_evidence_maximisation(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d))
    labels = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    # the brute force reaches each maximum (or supremum, see there) to about 1e-15 per image, on
    # well-conditioned evaluations; 1e-9 is a margin, far below the 1e-4..1e-1 between local maxima
    assert logme(f, labels) == pytest.approx(_logme_brute_force(f, labels), abs=1e-9)
    spectrum = Spectrum.of(f)
    grid = [(math.exp(a), math.exp(b)) for a in range(-6, 31, 3) for b in range(-6, 31, 3)]
    for c in (0, 1):
        y = (labels == c).astype(float)
        value, alpha, beta = maximize_evidence(spectrum, y)
        # both forms are well-conditioned (cond <= 2.2e4, see _log_evidence_direct), so they agree
        # to 1e-10 per image at worst on any BLAS kernels (1e-15 measured); 1e-9 is a margin
        assert value == pytest.approx(_log_evidence_direct(alpha, beta, f, y) / n, abs=1e-9)
        # a maximum: no point next to it (an infinite alpha or beta stays infinite) nor on a grid
        # of e^-6 .. e^30 has a larger evidence, beyond the same 1e-9
        near = [(alpha * da, beta * db) for da, db in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)]]
        assert max(_log_evidence_direct(a, b, f, y) for a, b in near + grid) / n <= value + 1e-9


def test_logme_prefers_features_that_separate_the_labels() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    centres = rng.normal(size=(4, 16)) * 3
    separable = centres[labels] + rng.normal(size=(300, 16))
    noise = rng.normal(size=(300, 16))
    assert logme(separable, labels) > logme(noise, labels) + 0.1
    assert h_score(separable, labels) > h_score(noise, labels) + 1.0


def test_logme_invariant_to_rotation_scaling_and_image_order() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 120)
    f = rng.normal(size=(120, 10)) + labels[:, None] * rng.normal(size=10)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    ref = logme(f, labels)
    # the evidence is well-conditioned in the spectrum (cond(F'F) = 29 here) and the maximiser
    # has no kernel-dependent course: 2e-16 apart on every kernel tried; the bounds are margins
    assert logme(f @ q, labels) == pytest.approx(ref, abs=1e-7)
    assert logme(f * 250.0, labels) == pytest.approx(ref, abs=1e-7)
    perm = rng.permutation(120)
    assert logme(f[perm], labels[perm]) == pytest.approx(ref, abs=1e-9)


def test_logme_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        logme(np.ones((5, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((5, 2), np.nan), np.zeros(5, dtype=int))


def test_h_score_reference_values() -> None:
    # one-hot features carry all the label information: H = tr(cov^+ cov) = rank = K - 1
    labels = np.random.default_rng(2).integers(0, 4, 200)
    onehot = np.eye(4)[labels]
    # float64; the covariance's null direction (about 1e-16) is far below pinv's cut (1e-10 of the
    # largest eigenvalue), so 3e-15 is left on every kernel tried, here and for the formula below
    assert h_score(onehot, labels, shrinkage=False) == pytest.approx(3.0, abs=1e-9)
    # the direct formula, written out
    rng = np.random.default_rng(3)
    f = rng.normal(size=(200, 5)) + labels[:, None]
    fc = f - f.mean(0)
    means = np.stack([fc[labels == c].mean(0) for c in range(4)])
    g = means[labels]
    direct = np.trace(np.linalg.pinv(fc.T @ fc / 200) @ (g.T @ g / 200))
    assert h_score(f, labels, shrinkage=False) == pytest.approx(direct, rel=1e-9)
    # with many images per feature, shrinkage changes little
    assert h_score(f, labels) == pytest.approx(h_score(f, labels, shrinkage=False), rel=0.05)


def _h_score_covariance(f: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """The H-score as transferscope computed it before it had an N x N form: scikit-learn's
    Ledoit-Wolf estimate of the D x D covariance and its pseudo-inverse (cost D^3: a minute at
    D = 2048), kept here as the reference the fast form must reproduce."""
    from sklearn.covariance import ledoit_wolf

    f = f - f.mean(0)
    n, k = len(f), int(labels.max()) + 1
    cov = ledoit_wolf(f, assume_centered=True)[0] if shrinkage else f.T @ f / n
    means = np.zeros((k, f.shape[1]))
    np.add.at(means, labels, f)
    counts = np.bincount(labels, minlength=k).astype(float)
    present = counts > 0
    means[present] /= counts[present, None]
    between = (means[present].T * (counts[present] / n)) @ means[present]
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ between))


# fewer images than features (the N x N form: 20 x 500 is a cut point's features of a few images per
# class; 40 x 41 the edge), more (the D x D form, unchanged), features of low rank, and a class absent
@pytest.mark.parametrize("n,d,rank", [(60, 300, None), (20, 500, None), (40, 41, None), (300, 40, None),
                                      (50, 200, 12)])
@pytest.mark.parametrize("shrinkage", [True, False])
def test_h_score_gram_form_equals_the_covariance_form(n: int, d: int, rank: int | None, shrinkage: bool) -> None:
    rng = np.random.default_rng(n * d)
    labels = rng.choice([0, 2, 3, 4], size=n)  # class 1 has no image
    f = rng.normal(size=(n, rank or d))
    if rank:
        f = f @ rng.normal(size=(rank, d))
    f += 0.5 * labels[:, None] * rng.normal(size=d)
    f[:, : d // 4] = np.abs(f[:, : d // 4]) ** 3 * 40.0  # skewed features on another scale
    # Both forms eigen-decompose a positive semi-definite matrix (F'F or FF') with a backward-stable
    # solver and sum positive terms s_i / lam_i (...); the kept eigenvalues here span at most 1e5
    # (shrunk: lam_max / (a mu); unshrunk: the cut at 1e-10 drops only the centring's null direction,
    # about 1e-16 of the largest), so the two agree to about eps * 1e5 * (N + D), 1e-8 relative, on
    # any BLAS kernels (AMD or Intel, any OpenBLAS core type; 1e-13 measured): rel=1e-7 is a margin
    # that still fails on any term missed or counted twice (each is 1/K or more of the total).
    assert h_score(f, labels, shrinkage) == pytest.approx(_h_score_covariance(f, labels, shrinkage), rel=1e-7)


#: the H-score of test_h_score_of_many_features_and_few_images's data by the covariance form
H_SCORE_2048 = 4.291335074207733


def test_h_score_of_many_features_and_few_images() -> None:
    """The case that made the report slow (2048 features of 100 images): the N x N form gives what
    the covariance form gives on fixed data. The reference value was computed by the covariance
    form (:func:`_h_score_covariance`, a minute here) with OpenBLAS's Haswell kernels; the tolerance
    is the one above."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 20)
    f = rng.normal(size=(100, 2048)) + 0.5 * labels[:, None] * rng.normal(size=2048)
    assert h_score(f, labels) == pytest.approx(H_SCORE_2048, rel=1e-7)
    # with every image its own feature direction, the unshrunk score is K - 1 (the class means
    # span K - 1 directions of the N - 1 left after centring, all inside the row space)
    assert h_score(f, labels, shrinkage=False) == pytest.approx(4.0, rel=1e-7)


def test_linear_probe_separable_and_noise() -> None:
    rng = np.random.default_rng(4)

    def data(n: int, separable: bool) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 8)) + (4 * np.eye(3, 8)[y] if separable else 0)
        return x, y

    good = linear_probe(data(150, True), data(60, True), data(90, True))
    assert good.top1 > 0.9 and good.val_top1 > 0.9
    bad = linear_probe(data(150, False), data(60, False), data(300, False))
    assert bad.top1 < 0.5  # chance is 1/3


def _probe_by_svd(train, val, test, grid=np.logspace(-6, 1, 15)):
    """The probe as it was written first (one SVD of the standardised training features): the
    reference the Gram-matrix form must match."""
    xtr, ytr = np.asarray(train[0], dtype=np.float64), np.asarray(train[1])
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-12] = 1.0
    xtr = (xtr - mean) / std
    targets = np.eye(int(ytr.max()) + 1)[ytr]
    u, s, vt = np.linalg.svd(xtr, full_matrices=False)
    proj = u.T @ (targets - targets.mean(0))
    scale = float(s[0] ** 2)
    coefs = [vt.T @ ((s / (s**2 + r * scale))[:, None] * proj) for r in grid]

    def top1(part, coef):
        return float(np.mean(np.argmax((part[0] - mean) / std @ coef + targets.mean(0), axis=1) == part[1]))

    scores = [top1(val, c) for c in coefs]
    best = int(np.argmax(scores))
    return top1(test, coefs[best]), scores[best], float(grid[best])


@pytest.mark.parametrize(("n", "d"), [(300, 40), (60, 200), (120, 120), (80, 300)])
def test_the_probe_in_gram_form_equals_the_svd_form(n: int, d: int) -> None:
    """Fewer images than features (the N x N form), more (D x D), square; features of low rank
    (d = 300 built from 50 directions): the chosen ridge and both accuracies are the SVD form's."""
    rng = np.random.default_rng(n + d)
    basis = rng.normal(size=(min(d, 50), d)) if d == 300 else np.eye(d)

    def part(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, m)
        z = rng.normal(size=(m, basis.shape[0])) + 1.5 * np.eye(4, basis.shape[0])[y]
        return z @ basis, y

    train, val, test = part(n), part(n // 2), part(n)
    got = linear_probe(train, val, test)
    assert (got.top1, got.val_top1, got.ridge) == pytest.approx(_probe_by_svd(train, val, test), abs=0, rel=1e-12)


# ------------------------------------------------------------------------- features and filters


def test_reduce_features_flattens_or_pools() -> None:
    from transferscope.analysis.networks import reduce_features

    h = torch.arange(2 * 4 * 6 * 6, dtype=torch.float32).reshape(2, 4, 6, 6)
    assert reduce_features(h, 144).shape == (2, 144)  # fits: flattened as it is
    torch.testing.assert_close(reduce_features(h, 144), h.reshape(2, -1))
    pooled = reduce_features(h, 100)  # 4 * g^2 <= 100: g = 5 -> (2, 100)
    assert pooled.shape == (2, 100)
    assert reduce_features(h, 20).shape == (2, 16)  # g = 2
    gap = reduce_features(h, 3)  # fewer than the channels: global average pooling
    torch.testing.assert_close(gap, h.mean((2, 3)))
    tokens = torch.randn(2, 10, 8)
    torch.testing.assert_close(reduce_features(tokens, 16), tokens.mean(1))


def test_filter_grid_normalises_each_filter() -> None:
    from transferscope.analysis.filters import filter_grid

    w = torch.stack([torch.full((3, 2, 2), 5.0), torch.arange(12.0).reshape(3, 2, 2) * -7])
    image = filter_grid(w, columns=2, pad=1)
    assert image.shape == (1 * 3 + 1, 2 * 3 + 1, 3)
    assert (image[1:3, 1:3] == 0.5).all()  # a constant filter: mid grey, not NaN
    second = image[1:3, 4:6]
    assert second.min() == 0.0 and second.max() == 1.0
    assert (image[0] == 1.0).all()  # white separators
    grey = filter_grid(torch.randn(5, 1, 3, 3))
    assert np.isfinite(grey).all() and (grey[..., 0] == grey[..., 1]).all()


# ---------------------------------------------------------------------------------- convergence


def test_tail_slope_and_budget() -> None:
    assert conv.tail_length(2) == 2 and conv.tail_length(10) == 3 and conv.tail_length(40) == 8
    slope, k = conv.tail_slope([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert k == 3 and slope == pytest.approx(0.1)
    assert math.isnan(conv.tail_slope([0.5, 0.6])[0])
    assert conv.suggest_epochs(20, 0.01) == 100  # 20 * 0.01 / 0.002
    assert conv.suggest_epochs(20, 0.003) == 40  # at least twice
    assert conv.suggest_epochs(20, 0.001) == 20


def test_check_convergence_flags_rising_curves() -> None:
    def record(key: str, curve: list[float], role: str = "base", size=None) -> RunRecord:
        return RunRecord(key=key, replicate=0, treatment="baseB" if role == "base" else "AnB", role=role, target="B",
                         n=0 if role == "base" else 1, status="done", target_size=size,
                         history=tuple({"epoch": i + 1, "val_top1": v} for i, v in enumerate(curve)))

    flat = [0.2, 0.5, 0.7, 0.8, 0.85, 0.86, 0.86, 0.861, 0.86, 0.86]
    rising = [0.1 + 0.03 * i for i in range(10)]
    result = conv.check_convergence([record("r0-baseA", flat), record("r0-baseB", rising),
                                     record("r0-AnB-n1", rising, role="transfer")], epochs=10)
    assert list(result.networks["key"]) == ["r0-baseA", "r0-baseB"]  # base networks only
    assert list(result.flagged["key"]) == ["r0-baseB"]
    assert result.networks.set_index("key").loc["r0-baseB", "slope"] == pytest.approx(0.03)
    assert result.suggested_epochs == 150  # 10 * 0.03 / 0.002
    # on 400 validation images a rise of 2 x 0.005 over the last 3 epochs is within noise
    # (2 sqrt(0.87 * 0.13 / 400) = 0.034); the other curve's 2 x 0.03 is not (0.048)
    noisy = flat[:-3] + [0.85, 0.86, 0.865, 0.87]
    result = conv.check_convergence([record("r0-baseA", noisy), record("r0-baseB", rising)], epochs=10,
                                    val_images={(0, "B"): 400})
    row = result.networks.set_index("key").loc["r0-baseA"]
    assert row["slope_above"] and not row["still_improving"]
    assert row["noise"] == pytest.approx(2 * math.sqrt(0.87 * 0.13 / 400))
    assert result.networks.set_index("key").loc["r0-baseB", "still_improving"]


def _cosine_record(key: str, curve: list[float]) -> RunRecord:
    epochs = len(curve)
    lrs = [0.05 * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    return RunRecord(key=key, replicate=0, treatment="baseB", role="base", target="B", n=0, status="done",
                     history=tuple({"epoch": e + 1, "lr": lr, "val_top1": v} for e, (lr, v) in enumerate(zip(lrs, curve))))


def test_a_cosine_run_cut_short_is_flagged_though_its_end_is_flat() -> None:
    # 20 epochs of cosine: the rate is at least half its peak for the first 11 epochs (0-based epoch
    # 10 runs at exactly half); a curve still climbing 2 points per epoch over the last half of those
    # (epochs 5-10) and flat only at the end, where the rate vanishes, was cut short
    climbing = [0.30 + 0.02 * e for e in range(16)] + [0.61, 0.611, 0.611, 0.611]
    plateaued = [min(0.9, 0.3 + 0.3 * e) for e in range(16)] + [0.9] * 4  # flat from epoch 2 on
    result = conv.check_convergence([_cosine_record("r0-baseA", climbing), _cosine_record("r0-baseB", plateaued)],
                                    epochs=20, val_images={(0, "B"): 2000})
    rows = result.networks.set_index("key")
    assert not rows.loc["r0-baseA", "rising_end"] and rows.loc["r0-baseA", "cut_short"]
    assert rows.loc["r0-baseA", "still_improving"] and rows.loc["r0-baseA", "high_epochs"] == 11
    assert rows.loc["r0-baseA", "high_slope"] == pytest.approx(0.02)
    assert rows.loc["r0-baseA", "high_rise"] == pytest.approx(0.02 * 5)  # over the last 6 of the 11 epochs
    assert not rows.loc["r0-baseB", "still_improving"] and not rows.loc["r0-baseB", "cut_short"]
    assert list(result.flagged["key"]) == ["r0-baseA"]
    assert result.suggested_epochs == 40  # cut short, not rising at the end: twice the epochs
    # the same climb on a small validation set (20 images) is within the noise of one measurement
    small = conv.check_convergence([_cosine_record("r0-baseA", climbing)], epochs=20, val_images={(0, "B"): 20})
    assert not small.networks["cut_short"].iloc[0]
    # and so it is where the curve jumps by more than its climb from one epoch to the next (a high
    # rate's scatter: its successive changes alternate +0.12 / -0.08 around the +0.02 trend)
    jumpy = [c + (0.05 if e % 2 else -0.05) for e, c in enumerate(climbing[:16])] + climbing[16:]
    assert conv.scatter_floor(jumpy[:11]) == pytest.approx(2 * 1.4826 * 0.1 / math.sqrt(2))
    assert not conv.check_convergence([_cosine_record("r0-baseA", jumpy)], epochs=20,
                                      val_images={(0, "B"): 2000}).networks["cut_short"].iloc[0]
    # with a constant rate the two windows are one: no separate cut-short reading
    constant = RunRecord(key="r0-baseA", replicate=0, treatment="baseA", role="base", target="A", n=0, status="done",
                         history=tuple({"epoch": e + 1, "lr": 0.05, "val_top1": v} for e, v in enumerate(plateaued)))
    row = conv.check_convergence([constant], epochs=20).networks.iloc[0]
    assert row["high_epochs"] == 20 and math.isnan(row["high_slope"]) and not row["cut_short"]


def test_the_head_start_check_reads_the_replicate_level_interval() -> None:
    frame = _frame()
    assert conv.head_start(frame.iloc[0:0]) is None
    hs = conv.head_start(frame)  # BnB sits at base - coadaptation (0 at n = 1) + noise
    assert hs.n == 1 and hs.replicates == 3 and not hs.detected
    bnb = (frame["role"] == "selffer") & (frame["n"] == 1)
    frame.loc[bnb, "test_top1"] += 0.05
    hs = conv.head_start(frame)
    # each replicate's difference is the mean of its two directions; the interval is over the 3 replicates
    per_rep = [np.mean([0.05 + NOISE[(r, t)] for t in "AB"]) for r in range(3)]
    assert hs.mean == pytest.approx(np.mean(per_rep))
    half = sps.t.ppf(0.975, 2) * np.std(per_rep, ddof=1) / math.sqrt(3)
    assert (hs.ci_low, hs.ci_high) == pytest.approx((np.mean(per_rep) - half, np.mean(per_rep) + half))
    assert hs.detected


# ----------------------------------------------------------------- synthetic run tables (reading)

BASE = {(r, t): 0.60 + 0.05 * r + (0.02 if t == "B" else 0) for r in range(3) for t in "AB"}
NOISE = {(r, t): 0.004 * ((r * 7 + (t == "B") * 3) % 5 - 2) for r in range(3) for t in "AB"}  # small, unequal
COADAPT = {1: 0.0, 2: 0.03, 3: 0.06, 4: 0.01}
SPECIFIC = {1: 0.0, 2: 0.0, 3: 0.04, 4: 0.10}
GAIN = 0.02


def _frame(specific: dict[int, float] = SPECIFIC, replicates: int = 3) -> pd.DataFrame:
    rows = []
    for (r, t), base in BASE.items():
        if r >= replicates:
            continue
        rows.append({"key": f"r{r}-base{t}", "replicate": r, "treatment": f"base{t}", "role": "base", "target": t,
                     "source": None, "n": 0, "status": "done", "test_top1": base, "target_size": np.nan})
        e = NOISE[(r, t)]
        for n, coadapt in COADAPT.items():
            values = {"selffer": base - coadapt + e, "transfer": base - coadapt - specific[n] + 2 * e,
                      "transfer+": base + GAIN + e, "selffer+": base + e, "random": base - 0.1 * n + e}
            for role, v in values.items():
                rows.append({"key": f"r{r}-{role}{t}-n{n}", "replicate": r, "treatment": role, "role": role,
                             "target": t, "source": None, "n": n, "status": "done", "test_top1": v,
                             "target_size": np.nan})
    return pd.DataFrame(rows)


def test_reading_states_supported_claims_only() -> None:
    text = "\n".join(reading(_frame()))
    assert "**Specificity** (BnB - AnB, paired) is first significantly above zero at n = 3" in text
    assert "below it (n = 1, 2) the data cannot tell the layers from general" in text
    mean_noise = np.mean(list(NOISE.values()))
    assert (f"**Co-adaptation** (base - BnB; Holm-corrected over 4 cut points) costs most at n = 3: "
            f"{COADAPT[3] - mean_noise:+.3f} [") in text
    assert "(3 replicates); significant." in text
    # every AnB+ cell excludes zero on its own (p about 0.02 each), none after Holm's correction for 4
    # cut points; the reading says both, and the average over cut points carries the claim
    assert ("the data cannot tell it from training from scratch at n = 1, 2, 3, 4 (per cell, the intervals at "
            "n = 1, 2, 3, 4 exclude zero: not significant after the correction") in text
    assert f"Averaged over the cut points (one value per replicate): {GAIN + mean_noise:+.3f} [" in text
    assert "The data cannot tell whether the frozen selffer beats its base at n = 1" in text
    assert "does not" not in text
    assert "**Few replicates.** With 3 replicates a 95% interval spans +-4.3 standard errors" in text
    two = "\n".join(reading(_frame(replicates=2)))
    assert "**Few replicates.** With 2 replicates a 95% interval spans +-12.7 standard errors" in two
    # one replicate per direction only: no interval anywhere, so no significance claim
    one = "\n".join(reading(_frame(replicates=1).query("target == 'B'")))
    assert "significant" not in one.replace("not significantly", "")
    assert "**No confidence intervals.**" in one


def test_reading_flags_head_start() -> None:
    frame = _frame()
    bnb = (frame["role"] == "selffer") & (frame["n"] == 1)
    frame.loc[bnb, "test_top1"] += 0.05
    assert "The frozen selffer beats its own base network at n = 1" in "\n".join(reading(frame))


def test_reading_says_when_the_data_cannot_tell() -> None:
    """One replicate, BnB above base in one direction and below in the other: no claim either way
    (the held-out study of the issue was told "does not beat its base ... as in the paper")."""
    frame = _frame(replicates=1)
    bnb = (frame["role"] == "selffer") & (frame["n"] == 1)
    frame.loc[bnb, "test_top1"] += np.where(frame.loc[bnb, "target"] == "A", 0.2, -0.17)
    text = "\n".join(reading(frame))
    assert "With one replicate the data cannot tell whether the frozen selffer beats its base at n = 1" in text
    assert "does not" not in text and "as in the paper" not in text
    # three replicates with a small, noisy positive BnB - base: not significant, and the reading names
    # how many replicates would resolve a difference of that size at that spread
    frame = _frame()
    bnb = (frame["role"] == "selffer") & (frame["n"] == 1)
    frame.loc[bnb, "test_top1"] += 0.004 + 0.01 * frame.loc[bnb, "replicate"]
    text = "\n".join(reading(frame))
    assert "The data cannot tell whether the frozen selffer beats its base at n = 1" in text
    assert "would need about" in text and "replicates for its interval to exclude zero" in text
    # AnB better than BnB at n = 3: no specificity anywhere, and negative where it is significant
    text = reading(_frame({1: 0.0, 2: 0.0, 3: -0.05, 4: 0.0}))[0]
    assert text.startswith("**Specificity** (BnB - AnB, paired): no cut point shows it significantly above zero")
    assert "it is significantly below zero at n = 3" in text and "cannot tell it from zero at any" not in text


def test_score_correlations_are_per_replicate() -> None:
    """Replicate 0's score follows the measured curve, replicate 1's reverses it, replicate 2's
    follows it: the mean rho over the 3 replicates is 1/3, its interval over replicates."""
    from transferscope.analysis.estimate import score_correlations

    rows, runs = [], []
    for r, sign in enumerate((1, -1, 1)):
        for t in "AB":
            for n in (1, 2, 3, 4):
                measured = 0.9 - 0.1 * n
                rows.append({"replicate": r, "target": t, "n": n, "logme": sign * measured, "h_score": measured,
                             "probe_top1": float(n == 2), "stitch_top1": -measured,
                             "short_top1": measured - 0.2})
                runs.append({"replicate": r, "target": t, "n": n, "status": "done", "role": "transfer",
                             "test_top1": measured + (0.01 if t == "A" else 0.0), "target_size": np.nan})
    corr = score_correlations(pd.DataFrame(rows), pd.DataFrame(runs)).set_index("score")
    logme_row = corr.loc["logme"]
    assert logme_row["rho"] == pytest.approx(1 / 3) and logme_row["replicates"] == 3
    assert (logme_row["rho_low"], logme_row["rho_high"]) == (-1.0, 1.0)  # truncated: t(2) * 1.155 / sqrt(3)
    assert corr.loc["h_score", "rho"] == pytest.approx(1.0) and corr.loc["h_score", "rho_low"] == pytest.approx(1.0)
    assert corr.loc["h_score", "rho_means"] == pytest.approx(1.0) and corr.loc["h_score", "cut_points"] == 4
    assert corr.loc["short_top1", "rho"] == pytest.approx(1.0)  # a rank correlation: the offset does not matter
    assert corr.loc["stitch_top1", "rho"] == pytest.approx(-1.0)


def test_compare_frames_welch_difference() -> None:
    random_split = _frame()
    dissimilar = _frame({1: 0.0, 2: 0.05, 3: 0.15, 4: 0.25})
    c = compare_frames(random_split, dissimilar, "random", "natural-vs-manmade")
    t = c.table.set_index("n")
    assert t.loc[1, "diff"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc[4, "diff"] == pytest.approx(-0.15, abs=1e-12)
    assert t.loc[4, "diff_high"] < 0 and t.loc[1, "diff_low"] < 0 < t.loc[1, "diff_high"]
    sentence = c.sentence()
    assert "falls significantly further below base in natural-vs-manmade at n = 2, 3, 4" in sentence
    assert "the data cannot tell the two apart at n = 1" in sentence
    assert (t["a_count"] == 3).all() and (t["b_count"] == 3).all()  # replicates, not networks
    assert [line.split("|")[1].strip() for line in c.markdown().splitlines()[2:]] == ["1", "2", "3", "4"]


# --------------------------------------------------------------------------- target sizes


def _size_frame() -> tuple[pd.DataFrame, dict]:
    """Sizes 5 per class and full: at 5 per class AnB+ n=1 is far better than scratch; at full size
    everything is within noise of scratch."""
    rows, classes = [], {}
    rng = np.random.default_rng(5)
    for r in range(3):
        for t in "AB":
            classes[(r, t)] = 5
            for size, images, base in ((5, 25, 0.30), (np.nan, 450, 0.80)):
                b = base + 0.02 * r
                rows.append({"key": f"b{r}{t}{size}", "replicate": r, "role": "base", "target": t, "n": 0,
                             "status": "done", "test_top1": b, "target_size": size, "train_images": images})
                for n in (1, 2):
                    for role in ("transfer", "transfer+"):
                        gain = (0.20 if (role, n) == ("transfer+", 1) else 0.05) if size == 5 else 0.0
                        v = b + gain + rng.normal(0, 0.01)
                        rows.append({"key": f"{role}{r}{t}{n}{size}", "replicate": r, "role": role, "target": t,
                                     "n": n, "status": "done", "test_top1": v, "target_size": size,
                                     "train_images": images})
    return pd.DataFrame(rows), classes


def test_recommendation_by_target_size() -> None:
    frame, classes = _size_frame()
    runs = rec.size_runs(frame, classes)
    assert set(runs["size_label"]) == {"5 per class", "full"}
    assert sorted(set(runs["per_class"])) == [5.0, 90.0]
    recs = {r.size_label: r for r in rec.recommend(runs)}
    small = recs["5 per class"]
    assert small.best == "AnB+ n=1 (fine-tune)"
    assert small.vs_scratch == pytest.approx(0.20, abs=0.02) and small.vs_low > 0
    assert small.verdict == "better than training from scratch"
    assert "train from scratch" not in small.indistinguishable
    full = recs["full"]
    assert "train from scratch" in full.indistinguishable or full.best == "train from scratch"
    assert full.verdict in ("the data cannot tell it from training from scratch",
                            "train from scratch (no transfer treatment has a higher mean)")


def test_the_freeze_or_fine_tune_map_against_hand_computation() -> None:
    """A pretrained study's table of 3 replicates, one target T, two sizes, n = 2: every number of
    the map computed by hand (t multiplier for 2 degrees of freedom: 4.302653)."""
    t2 = 4.302652729911275
    acc = {  # (role, size) -> per replicate test top-1
        ("base", 5): [0.30, 0.34, 0.32], ("pretrained", 5): [0.50, 0.46, 0.48], ("pretrained+", 5): [0.40, 0.38, 0.45],
        ("probe", 5): [0.52, 0.50, 0.51], ("base", None): [0.80, 0.82, 0.84],
        ("pretrained", None): [0.70, 0.69, 0.74], ("pretrained+", None): [0.85, 0.86, 0.84],
        ("probe", None): [0.66, 0.70, 0.68]}
    params = {"base": (1000, 1000), "pretrained": (200, 1000), "pretrained+": (1000, 1000), "probe": (50, 850)}
    rows = []
    for (role, size), values in acc.items():
        for r, v in enumerate(values):
            trainable, total = params[role]
            rows.append({"key": f"{role}{r}{size}", "replicate": r, "role": role, "target": "T",
                         "n": 0 if role == "base" else 2, "status": "done", "test_top1": v, "target_size": size,
                         "train_images": 50 if size else 300, "trainable_params": trainable, "total_params": total,
                         "wall_time_s": 1.0 + r + (role == "pretrained+")})
    runs = rec.size_runs(pd.DataFrame(rows), {(r, "T"): 10 for r in range(3)})
    summary = rec.size_summary(runs).set_index(["size_label", "role"])
    cell = summary.loc[("5 per class", "pretrained")]
    assert cell["mean"] == pytest.approx(0.48) and cell["per_class"] == 5.0
    sd = np.std([0.50, 0.46, 0.48], ddof=1)
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((0.48 - t2 * sd / 3**0.5, 0.48 + t2 * sd / 3**0.5))
    margin = np.array([0.50, 0.46, 0.48]) - np.array([0.30, 0.34, 0.32])
    assert cell["vs_scratch"] == pytest.approx(margin.mean())
    assert cell["vs_high"] - cell["vs_scratch"] == pytest.approx(t2 * margin.std(ddof=1) / 3**0.5)
    assert cell["trainable_params"] == 200 and cell["train_time_s"] == pytest.approx(2.0)
    assert summary.loc[("full", "pretrained+"), "train_time_s"] == pytest.approx(3.0)
    assert summary.loc[("5 per class", "probe"), "candidate"] == "probe n=2 (linear probe)"
    diff = rec.finetune_minus_freeze(runs).set_index("size_label")
    assert list(diff["frozen"]) == ["PnT", "PnT"] and list(diff["fine_tuned"]) == ["PnT+", "PnT+"]
    for label, size in (("5 per class", 5), ("full", None)):
        d = np.array(acc["pretrained+", size]) - np.array(acc["pretrained", size])
        row = diff.loc[label]
        assert row["mean"] == pytest.approx(d.mean()) and row["replicates"] == 3 and row["n"] == 2
        assert row["ci_high"] - row["mean"] == pytest.approx(t2 * d.std(ddof=1) / 3**0.5)
        assert row["copied_params"] == 800  # total - trainable of the frozen runs
    # small data: freezing wins (-0.07 [-0.19, +0.05]), the data cannot tell; full data: fine-tuning (+0.14)
    assert diff.loc["5 per class", "mean"] == pytest.approx(-0.07, abs=1e-9)
    assert diff.loc["full", "ci_low"] > 0
    recs = {r.size_label: r for r in rec.recommend(runs)}
    assert recs["5 per class"].best == "probe n=2 (linear probe)" and recs["full"].best == "PnT+ n=2 (fine-tune)"
    assert recs["5 per class"].verdict == "better than training from scratch"


# ------------------------------------------------------------------------------- tiny study


@pytest.fixture(scope="module")
def tiny_study_dir(tmp_path_factory):
    from transferscope.config import load_config
    from transferscope.driver import run_study

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny") / "study"
    run_study(load_config(None, TINY), out, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def tiny_analysis(tiny_study_dir):
    from transferscope.report import analyze_study

    return analyze_study(tiny_study_dir, out_dir=tiny_study_dir / "report")


def test_analyze_study_sections_and_files(tiny_study_dir, tiny_analysis) -> None:
    a = tiny_analysis
    assert a.notes == []
    titles = [s.title for s in a.sections]
    assert titles == ["Was the study trained long enough?", "Representation similarity (CKA)",
                      "Predicting the curve without training", "First-layer filters",
                      "Freeze or fine-tune, by target size"]
    report = tiny_study_dir / "report"
    for name in ("cka_layers.png", "cka_heatmap.png", "estimate.png", "filters.png", "target_sizes.png",
                 "cka.csv", "estimate.csv", "target_sizes.csv", "convergence.csv"):
        assert (report / name).stat().st_size > 0, name
    # 2 epochs: too few to judge convergence, and the report says so
    assert "cannot be assessed" in a.sections[0].body
    assert a.reading and "**Specificity**" in a.reading[0]
    assert "config.toml" in a.provenance.body and "torch" in a.provenance.body


def test_study_cka_tables(tiny_analysis) -> None:
    bases = tiny_analysis.tables["cka_bases"]
    assert len(bases) == 2 * 2 * 4 * 4  # replicates x targets x layers x layers
    assert bases["cka"].notna().all()
    ft = tiny_analysis.tables["cka_finetuned"]
    # BnB+/AnA+ and AnB+/BnA+ at n = 1, 2, for each replicate and target, 4 layers; AnB+ also vs baseB
    assert set(ft["role"]) == {"selffer+", "transfer+"}
    assert len(ft.query("reference == 'source'")) == 2 * 2 * 2 * 2 * 4
    copied = ft.query("reference == 'source' and layer <= n")
    assert (copied["cka"] > 0.8).all()  # fine-tuning two epochs moves copied layers little


def test_estimate_scores_every_cut_point(tiny_study_dir, tiny_analysis) -> None:
    from transferscope.analysis.estimate import Estimate, estimate
    from transferscope.report import format_estimate

    scores = tiny_analysis.tables["estimate"]
    assert len(scores) == 2 * 2 * 2  # replicates x targets x cut points
    assert set(scores["source"]) == {"A", "B"} and (scores["source"] != scores["target"]).all()
    assert np.isfinite(scores[["logme", "h_score", "probe_top1", "stitch_top1"]].to_numpy()).all()
    assert scores["stitch_top1"].between(0, 1).all() and (scores["stitch_seconds"] > 0).all()
    short = ["short_top1", "short_steps", "full_steps", "short_seconds"]
    assert scores[short].isna().all().all()  # the short AnB is opt-in: the report trains none
    corr = tiny_analysis.tables["estimate_correlations"]
    assert set(corr["score"]) == {"logme", "h_score", "probe_top1", "stitch_top1"} and (corr["cut_points"] == 2).all()
    assert corr["rho"].isna().all()  # a rank correlation over 2 cut points per replicate is undefined
    assert "short AnB" not in format_estimate(Estimate(scores, 2048, [])).splitlines()[0]  # no column
    again = estimate(tiny_study_dir, short=0.08, out=tiny_study_dir / "est.csv")  # the CLI's path with --short
    assert (again.scores["short_steps"] < again.scores["full_steps"]).all() and (again.scores["short_steps"] >= 1).all()
    assert again.scores["short_top1"].between(0, 1).all()
    timed = ["seconds", "stitch_seconds"]  # the rest is deterministic
    pd.testing.assert_frame_equal(again.scores.drop(columns=timed + short), scores.drop(columns=timed + short))
    text = format_estimate(again)
    assert "LogME" in text and "conv1" in text and "short AnB" in text


def test_a_short_anb_at_its_full_budget_is_the_recorded_anb_run(tiny_study_dir) -> None:
    """The short AnB trains the very network AnB trains (copied and frozen layers, initialisation,
    data order, augmented feature views, schedule): at fraction 1 with the study's views it gives
    the recorded run's accuracies exactly (same kernels and thread count), at a fraction fewer
    steps, and with a salt the same network from other seeds (a re-run, not the record)."""
    from transferscope.precision import torch_threads
    from transferscope.analysis.short_transfer import anb_spec, short_transfer
    from transferscope.runner import Runner
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(tiny_study_dir)
    study = Study.open(store)
    records = {r.key: r for r in store.records()}
    runner = Runner(study, store.load_weights)
    with torch_threads(study.config.execution.threads):
        runs = short_transfer(runner, 0, "B", (1, 2), records, fractions=(1.0, 0.5), views=None)
        again = short_transfer(runner, 0, "B", (1, 2), records, fractions=(1.0,), views=None, salt="retest")
    full = [r for r in runs if r.fraction == 1.0]
    assert [r.n for r in full] == [1, 2]
    for run in full:
        record = records[anb_spec(0, "B", run.n).key]
        assert run.steps == run.full_steps == record.steps_run
        assert (run.test_top1, run.val_top1) == (record.metrics["test_top1"], record.metrics["val_top1"])
    assert [r.steps for r in runs if r.fraction == 0.5] == [round(r.full_steps * 0.5) for r in full]
    assert [r.steps for r in again] == [r.steps for r in full]
    assert [(r.test_top1, r.val_top1) for r in again] != [(r.test_top1, r.val_top1) for r in full]


def test_a_stitch_recovers_an_affine_map_of_channels() -> None:
    """Conv maps whose channels are an exact affine map of another's: the fitted 1x1 stitch gives
    them back (a ridge of 1e-10 of the Gram matrix's scale changes them by far less than the 1e-4
    allowed), whatever the batches the rows came in; a ReLU'd target is clipped at 0."""
    from transferscope.analysis.stitching import Stitch, rows

    g = torch.Generator().manual_seed(0)
    source = torch.randn(12, 5, 4, 3, generator=g)
    a, b = torch.randn(5, 7, generator=g), torch.randn(7, generator=g)
    target = (source.permute(0, 2, 3, 1) @ a + b).permute(0, 3, 1, 2)
    stitch = Stitch(ridge=1e-10)
    for i in range(0, 12, 5):  # three batches of rows
        stitch.add(rows(source[i : i + 5]), rows(target[i : i + 5]))
    assert not stitch.nonnegative
    torch.testing.assert_close(stitch.fit()(source), target, rtol=1e-4, atol=1e-4)
    relu = Stitch(ridge=1e-10)
    relu.add(rows(source), rows(target.clamp_min(0)))
    assert relu.nonnegative and (relu.fit()(source) >= 0).all()


def test_a_network_stitched_to_itself_scores_its_own_accuracy(tiny_study_dir) -> None:
    """Layer n of baseB mapped into baseB is the identity map: at every cut point the stitched top-1
    is baseB's own test top-1 (a ridge of 1e-10 may move a logit by ~1e-6, so an image whose two
    best logits tie to that precision may flip: at most one image of difference is allowed)."""
    from transferscope.analysis.networks import for_inference, layer_outputs, load_network, part_images
    from transferscope.analysis.stitching import stitch_scores
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(tiny_study_dir)
    study = Study.open(store)
    net = for_inference(load_network(store, study, "r0-baseB", 0, "B"))
    task = study.task(0, "B")
    (xtr, ytr), (xte, yte) = part_images(task.train), part_images(task.test)
    own = torch.cat([outs[-1] for outs in layer_outputs(net, xte, task)]).argmax(1)
    accuracy = float((own == yte).float().mean())
    scores = stitch_scores(net, net, task, xtr, ytr, xte, yte, tuple(study.cut_points), study.config.train,
                           epochs=0, ridge=1e-10)
    assert set(scores) == set(study.cut_points)
    for n, top1 in scores.items():
        assert abs(top1 - accuracy) <= 1 / len(yte) + 1e-12, (n, top1, accuracy)


def test_fine_tuning_a_stitch_trains_a_copy_of_the_target_top(tiny_study_dir) -> None:
    """The stitch from an untrained network into baseB, fine-tuned: its training loss falls from
    the first epoch to the last, the BatchNorm statistics are those of the mapped outputs, and
    baseB itself is left as it was (the top is a copy)."""
    from transferscope.analysis.networks import layer_outputs, load_network, part_images, random_network
    from transferscope.analysis.stitching import Stitch, StitchedTop, fine_tune, recompute_batchnorm, rows
    from transferscope.precision import Numerics
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(tiny_study_dir)
    study = Study.open(store)
    own = load_network(store, study, "r0-baseB", 0, "B")
    before = {k: v.clone() for k, v in own.state_dict().items()}
    source = random_network(study, 0, "A", seed=3)
    task = study.task(0, "B")
    x, y = part_images(task.train)
    hs = torch.cat([outs[0] for outs in layer_outputs(source, x, task, 1)])
    ht = torch.cat([outs[0] for outs in layer_outputs(own, x, task, 1)])
    stitch = Stitch()
    stitch.add(rows(hs), rows(ht))
    model = StitchedTop(stitch.fit(), own.blocks[1:])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms  # the tiny convnet's conv block has BatchNorm
    whole = hs[: len(hs) // 7 * 7]  # equal batches: their average of batch means is the mean
    recompute_batchnorm(model, whole, batch_size=7)
    with torch.no_grad():  # the statistics of what the first BatchNorm sees: the mapped outputs, through conv2
        conv = model.top[0][0](stitch(whole))
    # float32 both ways; the two passes differ only in memory layout (the model's is channels-last) and
    # summation order, which move a mean by ~1e-6 relative on any kernel; a wrong statistic (the old
    # running mean, a momentum-weighted one) is off by far more than 1e-4
    torch.testing.assert_close(norms[0].running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    cfg = study.config.train.model_copy(update={"lr": study.config.train.lr * 10})  # a tiny set: few steps
    losses = fine_tune(model, hs, y, cfg, epochs=6, numerics=Numerics(torch.device("cpu"), None, True), seed=0)
    # measured 1.07 -> 0.08 (AMD EPYC, float32): the 0.9 bound is far from any kernel's rounding,
    # and a step that does not train (zero learning rate, frozen parameters) fails it
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    assert not model.training
    for k, v in own.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_a_short_budget_keeps_the_plateau_drops_at_the_same_fractions() -> None:
    from transferscope.analysis.short_transfer import short_budget
    from transferscope.train import Budget

    b = short_budget(Budget(40, 400, "steps", (200, 300), "r0-baseB"), 0.1, images=640, batch_size=64)
    assert (b.steps, b.epochs, b.drops) == (40, 4, (20, 30))
    b = short_budget(Budget(12, 120, "epochs"), 0.08, images=640, batch_size=64)
    assert (b.steps, b.epochs, b.drops) == (10, 1, None)
    assert short_budget(Budget(2, 2, "epochs"), 0.08, images=10, batch_size=64).steps == 1  # at least one step


def test_estimate_needs_base_weights(tmp_path) -> None:
    import shutil

    from transferscope.analysis.estimate import estimate
    from transferscope.config import load_config
    from transferscope.store import Store

    store = Store(tmp_path / "empty")
    store.init(load_config(None, TINY), {}, [])
    with pytest.raises(UserError, match="train the base networks first"):
        estimate(store)
    shutil.rmtree(tmp_path / "empty")


def test_analysis_without_weights_or_runs_degrades_gracefully(tiny_study_dir, tmp_path, capsys) -> None:
    import shutil

    from transferscope.report import analyze_study

    copy = tmp_path / "copy"
    shutil.copytree(tiny_study_dir, copy, ignore=shutil.ignore_patterns("weights", "report"))
    a = analyze_study(copy)
    titles = [s.title for s in a.sections]
    assert "Was the study trained long enough?" in titles and "Freeze or fine-tune, by target size" in titles
    assert any("estimate: not computed (UserError" in n for n in a.notes)
    # a condition, not a fault: one line on the terminal, nothing in errors.log
    err = capsys.readouterr().err
    assert "transferscope analysis 'estimate' not computed: UserError:" in err and "Traceback" not in err
    assert not (copy / "errors.log").exists()
    cka = next(s for s in a.sections if s.title == "Representation similarity (CKA)")
    assert "Not computed: no replicate has the weights of both its base networks" in cka.body
    assert "replicate 1: r1-baseA is done but its weights file weights/r1-baseA.safetensors is missing" in cka.body
    filters = next(s for s in a.sections if s.title == "First-layer filters")
    assert filters.body.startswith("No filters to show: neither base network of replicate 0 has weights")
    shutil.rmtree(copy / "runs")
    empty = analyze_study(copy, out_dir=copy / "fresh-report")
    assert empty.sections == [] and not (copy / "fresh-report").exists()


def test_compare_studies_with_itself(tiny_study_dir) -> None:
    from transferscope.report import compare_studies

    c = compare_studies(tiny_study_dir, tiny_study_dir)
    assert c.label_a != c.label_b and "random 5/5" in c.label_a
    assert (c.table["diff"].abs() < 1e-12).all()
    assert "the data cannot tell the two apart at n = 1, 2" in c.sentence()


def test_report_with_analysis(tiny_study_dir, tiny_analysis) -> None:
    from transferscope.report import ReportMeta, write_report
    from transferscope.store import Store

    frame = Store(tiny_study_dir).frame()
    meta = ReportMeta(dataset="digits", split="random 5/5", arch="convnet", replicates=2, num_layers=4,
                      cut_points=(1, 2))
    path = write_report(frame[frame["target_size"].isna()], meta, tiny_study_dir / "report", analysis=tiny_analysis)
    text = path.read_text()
    for heading in ("## Reading", "## Was the study trained long enough?", "## Representation similarity (CKA)",
                    "## Predicting the curve without training", "## First-layer filters",
                    "## Freeze or fine-tune, by target size", "## Provenance"):
        assert heading in text, heading
    assert text.index("## Reading") < text.index("## Figures")
    assert (tiny_study_dir / "report" / "report.html").stat().st_size > 100_000


# ------------------------------------------------------- a study whose data or networks are gone


def _folder_study(tmp_path, replicates: int = 1):
    """A tiny study on an image folder of 4 classes x 12 RGB 8x8 images in ``tmp_path``: (study
    directory, image folder)."""
    from PIL import Image

    from transferscope.config import load_config
    from transferscope.driver import run_study

    torch.set_num_threads(1)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(4):
        (images / f"class{c}").mkdir(parents=True)
        for i in range(12):
            pixels = (rng.integers(0, 60, (8, 8, 3)) + 50 * c).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"class{c}" / f"{i:02d}.png")
    config = load_config(None, ["data.dataset=imagefolder", f"data.root={images}", f"data.cache_dir={tmp_path / 'cache'}",
                                "train.epochs=2", f"treatments.replicates={replicates}", "treatments.cut_points=[1]",
                                "model.options={widths=[4,8],fc=[8]}", "execution.workers=1", "train.batch_size=8"])
    out = tmp_path / "study"
    run_study(config, out, progress=False, report=False)
    return out, images


def _diverge(study, key: str) -> None:
    """What a diverged base network leaves: its record says so, and it has no weights."""
    import json

    path = study / "runs" / f"{key}.json"
    record = json.loads(path.read_text())
    record.update(status="diverged", diverged_epoch=2, error="loss is nan")
    path.write_text(json.dumps(record))
    (study / "weights" / f"{key}.safetensors").unlink()


def test_report_on_a_study_whose_dataset_is_gone(tmp_path) -> None:
    """The dataset folder removed (a study copied to another machine): `report` exits 0 and writes
    the report; CKA and the estimate, which need the images, say why they are missing; the sections
    that need only weights and records are there."""
    from typer.testing import CliRunner

    from transferscope.cli import app

    study, images = _folder_study(tmp_path)
    images.rename(tmp_path / "moved")
    result = CliRunner().invoke(app, ["report", str(study)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "failed" not in result.output
    text = (study / "report" / "report.md").read_text()
    reason = f"the images are needed and the dataset cannot be loaded here: data.root: folder not found: {images}"
    assert f"CKA: not computed: {reason}" in text
    assert f"estimate: not computed: {reason}" in text
    for heading in ("## Reading", "## Figures", "## Per-layer table", "## Was the study trained long enough?",
                    "## First-layer filters", "## Freeze or fine-tune, by target size", "## Provenance"):
        assert heading in text, heading
    assert "## Representation similarity (CKA)" not in text and "## Predicting the curve" not in text
    assert (study / "report" / "filters.png").stat().st_size > 0
    assert (study / "report" / "report.html").is_file()


def test_convergence_without_the_images_says_the_noise_floor_is_not_applied() -> None:
    from transferscope.report.sections import Analysis, _convergence_section

    class NoImages:  # what Study.open gives where the dataset is gone
        data, missing = None, "the dataset cannot be loaded here: data.root: folder not found: /gone"
        config = type("C", (), {"train": type("T", (), {"epochs": 10, "schedule": "constant", "budget": "fixed"})()})()

        def task(self, *args):
            raise AssertionError("the images are not there")

    rising = [0.1 + 0.03 * i for i in range(10)]
    records = [RunRecord(key="r0-baseB", replicate=0, treatment="baseB", role="base", target="B", n=0, status="done",
                         history=tuple({"epoch": i + 1, "val_top1": v} for i, v in enumerate(rising)))]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as out:
        analysis = Analysis()
        section = _convergence_section(records, NoImages(), pd.DataFrame(), Path(out), "t", analysis)
    assert ("The validation set sizes are not known here (they are counted from the dataset, and the dataset cannot "
            "be loaded here: data.root: folder not found: /gone): the noise floor is not applied") in section.body
    assert "**1 of 1 base networks was still improving" in section.body
    frame = _frame(replicates=3)
    text = "\n".join(reading(frame, analysis.convergence))
    assert "not checked against noise: the validation set sizes are not known here" in text
    assert "beyond noise" not in text


def test_one_diverged_base_is_named_not_called_missing_weights(tmp_path) -> None:
    """Replicate 0's baseA diverged (so it has no weights); baseB's weights are there. CKA names the
    network and its status, per replicate, and compares replicate 1; the filters show baseB only,
    and their caption names only what is drawn."""
    from transferscope.report import analyze_study

    study, _ = _folder_study(tmp_path, replicates=2)
    _diverge(study, "r0-baseA")
    a = analyze_study(study, estimate=False)
    cka = next(s for s in a.sections if s.title == "Representation similarity (CKA)")
    assert "No base network weights" not in cka.body
    assert "Not compared (1 of 2 replicates)" in cka.body
    assert "- replicate 0: r0-baseA diverged at epoch 2 (loss is nan), so it has no weights\n" in cka.body
    assert "replicate 1" not in cka.body.split("Not compared")[1]
    assert set(a.tables["cka_bases"]["replicate"]) == {1}
    filters = next(s for s in a.sections if s.title == "First-layer filters")
    assert "one row per base network shown (baseB, BnA+ n=1)" in filters.body
    assert "![First-layer filters of baseB and of fine-tuned networks that copied layer 1 from baseB]" in filters.body
    assert "Not shown: baseA: r0-baseA diverged at epoch 2 (loss is nan)." in filters.body
    assert "baseA and baseB" not in filters.body and "AnB+" not in filters.body
    # both bases of a replicate gone: CKA says which and why, for every replicate
    _diverge(study, "r1-baseB")
    a = analyze_study(study, cka=True, estimate=False)
    cka = next(s for s in a.sections if s.title == "Representation similarity (CKA)")
    assert cka.body.startswith("Not computed: no replicate has the weights of both its base networks.")
    assert "- replicate 1: r1-baseB diverged at epoch 2 (loss is nan), so it has no weights" in cka.body


def test_reading_counts_replicates_and_networks_per_cell() -> None:
    """The paragraph on missing intervals follows the counts: one replicate with two directions
    (two networks per cell, one value), one direction only (one network), and two replicates that
    never share a cell."""
    both = "\n".join(reading(_frame(replicates=1)))
    assert ("Transfer runs have finished in one replicate only (replicate 0), so each cell has one replicate (up to 2 "
            "networks per cell: the directions of a replicate share its split and base networks, so they give one "
            "value, not 2)") in both
    assert "one network per cell" not in both.lower() and "With one replicate there are" not in both
    one = "\n".join(reading(_frame(replicates=1).query("target == 'B'")))
    assert "so each cell has one replicate; an interval needs at least 2 replicates" in one
    frame = _frame(replicates=2)
    frame = frame.loc[(frame["role"] == "base") | (frame["n"] == frame["replicate"] + 1)]  # r0: n=1, r1: n=2
    apart = "\n".join(reading(frame))
    assert "Transfer runs have finished in 2 replicates, but each cell has values from only one of them" in apart
    # two replicates per cell: intervals, and the note on their width instead
    two = "\n".join(reading(_frame(replicates=2)))
    assert "No confidence intervals" not in two and "**Few replicates.** With 2 replicates" in two


def test_a_failed_analysis_is_one_line_with_its_traceback_in_errors_log(tiny_study_dir, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    import shutil

    from transferscope.report import analyze_study
    from transferscope.report import sections as analyze_module

    copy = tmp_path / "copy"
    shutil.copytree(tiny_study_dir, copy, ignore=shutil.ignore_patterns("report"))

    def broken(*args, **kwargs):
        raise RuntimeError("filters broke\nsecond line of the message")

    monkeypatch.setattr(analyze_module, "study_filters", broken)
    a = analyze_study(copy, cka=False, estimate=False)
    err = capsys.readouterr().err
    assert err == (f"transferscope analysis 'filters' failed: RuntimeError: filters broke; traceback in "
                   f"{copy / 'errors.log'}\n")
    assert "filters: not computed (RuntimeError: filters broke; traceback in errors.log)" in a.notes
    log = (copy / "errors.log").read_text()
    assert "report:filters" in log and "Traceback (most recent call last)" in log and "in broken" in log
    assert "second line of the message" in log
    assert "First-layer filters" not in [s.title for s in a.sections]
    assert "Freeze or fine-tune, by target size" in [s.title for s in a.sections]  # the others still run


def test_estimate_says_where_a_score_was_weak_on_the_validation_sets(tmp_path, monkeypatch) -> None:
    import json

    import transferscope.report.tables as tables
    from transferscope.analysis.estimate import SCORES, validation

    def entry(name: str, rho: dict[str, float]) -> dict:
        return {"name": name, "scores": {k: {"rho": v} for k, v in rho.items()}}

    path = tmp_path / "validation.json"
    path.write_text(json.dumps([entry("cifar10-convnet", {"logme": -0.31, "short_top1": 0.93, "h_score": 0.85}),
                                entry("omniglot-convnet", {"logme": 0.95, "short_top1": 0.88})]))
    found = {v.score: v for v in validation(path)}
    assert set(found) == set(SCORES)
    assert found["logme"].weak_on == ["cifar10-convnet"] and found["short_top1"].weak_on == []
    assert found["h_score"].weak_on == ["omniglot-convnet"]  # not measured there: not trusted there
    assert validation(tmp_path / "absent.json") == []
    monkeypatch.setattr(tables, "validation", lambda: validation(path))
    lines = tables.validation_lines()
    logme = next(line for line in lines if line.strip().startswith("LogME"))
    assert "cifar10-convnet -0.31" in logme and "weak on 1 of 2 sets: do not choose layers on it alone" in logme
    short = next(line for line in lines if line.strip().startswith("short AnB"))
    assert "tracked it on every validation set" in short
