"""Linear CKA with the unbiased HSIC estimator, in minibatches.

Centred kernel alignment (Kornblith et al. 2019) compares two representations of the same
images: ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels
``K = X X^T`` and ``L = Y Y^T`` (rows are images; X and Y may have different widths). It is 1 for
a representation with itself and unchanged by orthogonal transforms and isotropic scaling of
either side.

HSIC is estimated without bias by Song et al. (2012)'s U-statistic ``HSIC_1``, which needs at
least 4 images. Over many images, CKA is computed in minibatches as Nguyen, Raghu & Kornblith
(2021) do: ``mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) * mean_b HSIC_1(L_b, L_b))``.
Each minibatch term is unbiased, so the average converges to the full-data value as minibatches
accumulate, while memory stays at one batch's Gram matrices. Minibatches must be random samples
of the images (a batch of one class estimates a different quantity): :func:`minibatches` draws
them from a seeded permutation.

Everything is computed in float64. A batch of fewer than 4 images is an error
(:class:`SmallBatchError`), never a NaN; a representation with no variance in a batch set
(a dead layer) makes CKA undefined, which is also an error rather than a NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from transferscope.errors import UserError

#: the fewest images the unbiased estimator is defined for
MIN_BATCH = 4


class SmallBatchError(UserError, ValueError):
    """A batch too small for the unbiased HSIC estimator (fewer than 4 images)."""


class UndefinedCKAError(ValueError):
    """CKA is undefined: one of the representations has no variance over the images."""


def _as_rows(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.reshape(t.shape[0], -1).to(torch.float64)


def gram_linear(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``X X^T`` (float64) of a batch, each row one image's flattened representation."""
    rows = _as_rows(x)
    return rows @ rows.T


def gram_centred(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The Gram matrix of a batch's features centred over the batch, computed in float32 and
    returned as float64: what a study's CKA uses for its (wide) layer outputs.

    ``HSIC_1`` is unchanged by centring the features (it replaces ``K`` by ``HKH``, which differs
    from ``K`` by terms ``a1' + 1a' + c11'`` that the unbiased estimator cancels exactly), and
    centring removes the large common component of ReLU features that would otherwise dominate
    every entry; what is left, summed in float32, carries a relative error of about 1e-6 into
    CKA, where float64 features would cost a copy of every layer output and a matmul at half the
    speed."""
    rows = torch.as_tensor(x)
    if rows.dim() == 4 and not rows.is_contiguous() and rows.is_contiguous(memory_format=torch.channels_last):
        rows = rows.permute(0, 2, 3, 1)  # flattened in memory order, without a copy: a Gram matrix sums
        # over each image's values, whatever their order
    rows = rows.reshape(rows.shape[0], -1).float()
    rows = rows - rows.mean(0, keepdim=True)
    return (rows @ rows.T).double()


def _check_batch(n: int) -> None:
    if n < MIN_BATCH:
        raise SmallBatchError(f"the unbiased HSIC estimator needs at least {MIN_BATCH} images per batch, got {n}; "
                              "use a larger batch")


class HsicTerms:
    """What ``HSIC_1`` needs of a stack of (k, n, n) Gram matrices, computed once however many
    others they are compared with: the Gram matrices with zeroed diagonals (flattened), their row
    sums and totals, and (on first use) each one's HSIC with itself."""

    def __init__(self, grams: torch.Tensor):
        k, n, _ = grams.shape
        _check_batch(n)
        g = grams.to(torch.float64, copy=True)
        g.diagonal(dim1=1, dim2=2).zero_()
        self.n, self.flat, self.rows, self.totals = n, g.reshape(k, n * n), g.sum(2), g.sum((1, 2))
        self._self: torch.Tensor | None = None

    def with_(self, other: HsicTerms) -> torch.Tensor:
        """``HSIC_1`` between each of these Gram matrices and each of ``other``'s: (k, k_other).

        With ``K~``, ``L~`` the Gram matrices with zeroed diagonals and ``1`` the vector of ones::

            HSIC_1 = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))
        """
        n = self.n
        if other.n != n:
            raise ValueError(f"Gram matrices of {n} and {other.n} images: both sides need the same images")
        trace = self.flat @ other.flat.T  # tr(K~ L~) = sum_ij K~_ij L~_ij (both symmetric)
        middle = torch.outer(self.totals, other.totals) / ((n - 1) * (n - 2))
        last = (self.rows @ other.rows.T) * (2.0 / (n - 2))  # 1'K~L~1 = (K~1).(L~1)
        return (trace + middle - last) / (n * (n - 3))

    def itself(self) -> torch.Tensor:
        """``HSIC_1`` of each Gram matrix with itself: (k,), the diagonal of ``self.with_(self)``."""
        if self._self is None:
            n = self.n
            trace = (self.flat * self.flat).sum(1)
            last = (self.rows * self.rows).sum(1) * (2.0 / (n - 2))
            self._self = (trace + self.totals**2 / ((n - 1) * (n - 2)) - last) / (n * (n - 3))
        return self._self


def hsic_unbiased_matrix(grams_x: torch.Tensor, grams_y: torch.Tensor) -> torch.Tensor:
    """``HSIC_1`` (Song et al. 2012) between every Gram matrix of ``grams_x`` (p, n, n) and every
    one of ``grams_y`` (q, n, n): a (p, q) matrix (see :meth:`HsicTerms.with_`)."""
    _check_batch(grams_x.shape[-1])
    return HsicTerms(grams_x).with_(HsicTerms(grams_y))


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:
    """``HSIC_1`` of two (n, n) Gram matrices."""
    return float(hsic_unbiased_matrix(k[None], l[None])[0, 0])


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor, strict: bool = True) -> np.ndarray:
    """``xy / sqrt(xx yy)``; where a self-similarity is not positive, an error (``strict``) or NaN."""
    if not strict:
        ok = torch.outer(xx > 0, yy > 0)
        safe = torch.sqrt(torch.outer(xx.clamp_min(1e-300), yy.clamp_min(1e-300)))
        return torch.where(ok, xy / safe, torch.full_like(xy, float("nan"))).numpy()
    for name, self_terms in (("first", xx), ("second", yy)):
        bad = (self_terms <= 0).nonzero().flatten().tolist()
        if bad:
            raise UndefinedCKAError(
                f"CKA is undefined: the {name} representation has no variance over these images "
                f"(HSIC with itself is {float(self_terms[bad[0]]):.3g} at index {bad[0]}); "
                "a layer whose outputs are constant (e.g. dead ReLUs) cannot be compared")
    return (xy / torch.sqrt(torch.outer(xx, yy))).numpy()


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA of two representations of the same n >= 4 images (rows), unbiased HSIC, one batch.

    >>> import torch; x = torch.randn(50, 10)
    >>> round(linear_cka(x, 3 * x), 12)
    1.0
    """
    kx, ky = gram_linear(x)[None], gram_linear(y)[None]
    if kx.shape[-1] != ky.shape[-1]:
        raise ValueError(f"x has {kx.shape[-1]} rows and y {ky.shape[-1]}: CKA compares representations of the "
                         "same images")
    _check_batch(kx.shape[-1])
    tx, ty = HsicTerms(kx), HsicTerms(ky)
    return float(_ratio(tx.with_(ty), tx.itself(), ty.itself())[0, 0])


class MinibatchCKA:
    """Accumulates linear CKA between every layer of one network (p layers) and every layer of
    another (q layers), one minibatch at a time (Nguyen et al. 2021).

    >>> acc = MinibatchCKA(2, 2)
    >>> for xb in torch.randn(3, 64, 5).unbind():   # three batches of 64 images
    ...     acc.update([xb, xb ** 2], [xb, -xb])
    >>> acc.value().round(6)[0].tolist()
    [1.0, 1.0]
    """

    def __init__(self, p: int, q: int):
        self.p, self.q = p, q
        self.xy = torch.zeros(p, q, dtype=torch.float64)
        self.xx = torch.zeros(p, dtype=torch.float64)
        self.yy = torch.zeros(q, dtype=torch.float64)
        self.batches = 0
        self.images = 0

    def update_grams(self, grams_x: torch.Tensor, grams_y: torch.Tensor) -> None:
        """Add one minibatch, given its Gram matrices: (p, n, n) and (q, n, n)."""
        self.update_terms(HsicTerms(grams_x), HsicTerms(grams_y))

    def update_terms(self, x: HsicTerms, y: HsicTerms) -> None:
        """Add one minibatch, given its Gram matrices' :class:`HsicTerms` (computed once per
        network and batch where a network is compared with several others)."""
        if x.flat.shape[0] != self.p or y.flat.shape[0] != self.q:
            raise ValueError(f"expected {self.p} and {self.q} Gram matrices, got {x.flat.shape[0]} and "
                             f"{y.flat.shape[0]}")
        self.xy += x.with_(y)
        self.xx += x.itself()
        self.yy += y.itself()
        self.batches += 1
        self.images += x.n

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        """Add one minibatch, given each layer's representation of its images (rows = images)."""
        self.update_grams(torch.stack([gram_linear(x) for x in xs]), torch.stack([gram_linear(y) for y in ys]))

    def value(self, strict: bool = True) -> np.ndarray:
        """The (p, q) matrix of CKA values (each ratio of minibatch means). Where a layer has no
        variance CKA is undefined: an :class:`UndefinedCKAError`, or with ``strict=False`` NaN in
        exactly those cells (see :meth:`undefined`)."""
        if self.batches == 0:
            raise ValueError("no minibatch was added")
        return _ratio(self.xy, self.xx, self.yy, strict)

    def undefined(self) -> tuple[list[int], list[int]]:
        """Indices of the layers (first network, second network) whose CKA is undefined."""
        return (self.xx <= 0).nonzero().flatten().tolist(), (self.yy <= 0).nonzero().flatten().tolist()


def minibatches(count: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Indices of ``count`` images in random minibatches of about ``batch_size`` (never fewer than
    4 images: the remainder is spread over the batches instead of forming a ragged last one)."""
    if batch_size < MIN_BATCH:
        raise SmallBatchError(f"CKA batch size {batch_size}: the unbiased HSIC estimator needs at least {MIN_BATCH}")
    _check_batch(count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    parts = max(1, round(count / batch_size))
    return list(torch.tensor_split(order, parts))
