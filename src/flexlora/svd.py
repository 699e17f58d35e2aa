"""Singular value decompositions of LoRA-shaped matrices, exact and fast.

A federated LoRA update is a product `dW = B @ A` of stacked factors, B (out, R) and
A (R, in). Three ways to get its leading singular triplets:

- factored (exact, R < min(out, in)): QR both factors and take the SVD of the R × R
  core. Costs O((out + in)·R²) and never forms the out × in matrix.
- dense exact (R >= min(out, in)): form dW with one GEMM, then the float64 Gram matrix
  of its smaller side (n × n, n = min(out, in)) and its top k eigenvectors only (a
  subset eigensolver on the CPU); they are one side's singular vectors, and one more
  GEMM gives the other side (`gram_topk_svd`). About n²·max(out, in) flops for the
  Gram's lower half, 4n³/3 for the tridiagonal reduction, 2n²k for the eigenvectors and
  2·n·max(out, in)·k for the other side: no out × in SVD.
- dense fast: form dW and run a randomised subspace iteration for the top k triplets
  (Halko, Martinsson & Tropp 2011, algorithm 4.4): a Gaussian sketch of k + oversample
  columns, `power_iters` re-orthonormalised power iterations, then an exact SVD of the
  small projected matrix. Its error falls as (σ_{k+p+1} / σ_k)^(2q+1) and can be large
  on flat spectra; `triplet_residual` and the captured energy measure it.

Every function works on whatever device the tensors are on and returns the dtype it was
given (the caller picks float32 or float64; the Gram path computes in float64 inside).
Singular values come in descending order.
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from flexlora.errors import FlexLoraError

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

SvdMode = Literal["auto", "exact", "fast"]
SvdPath = Literal["factored", "dense_exact", "dense_fast"]

DEFAULT_OVERSAMPLE = 16
DEFAULT_POWER_ITERS = 4


@dataclass(frozen=True)
class SvdInfo:
    """How `truncated_svd_of_product` got its answer.

    path: which algorithm ran ("factored", "dense_exact" or "dense_fast").
    stacked_rank: R, the inner dimension of the product.
    total_energy: ‖B @ A‖_F², computed exactly on every path.
    """

    path: SvdPath
    stacked_rank: int
    total_energy: float


def factored_svd(B: Tensor, A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact thin SVD of `B @ A` without forming it, via QR of both factors.

    B: (out, R), A: (R, in). Returns U (out, k), S (k,), Vh (k, in) with
    k = min(out, in, R) and `U @ diag(S) @ Vh == B @ A` to rounding. Efficient when
    R is well below min(out, in); correct for any R.
    """
    _check_factor_pair(B, A)
    Qb, Rb = torch.linalg.qr(B)  # (out, R) -> Q (out, kb), R (kb, R), kb = min(out, R)
    Qa, Ra = torch.linalg.qr(A.mT)  # (in, R) -> Q (in, ka), R (ka, R), ka = min(in, R)
    core = Rb @ Ra.mT  # (kb, R) @ (R, ka) -> (kb, ka): B @ A = Qb · core · Qaᵀ
    Uc, S, Vhc = torch.linalg.svd(core, full_matrices=False)  # (kb, k), (k,), (k, ka)
    U = Qb @ Uc  # (out, kb) @ (kb, k) -> (out, k)
    Vh = Vhc @ Qa.mT  # (k, ka) @ (ka, in) -> (k, in)
    return U, S, Vh


def factored_singular_values(B: Tensor, A: Tensor) -> Tensor:
    """All singular values of `B @ A` (descending), cheaply when R < min(out, in).

    B: (out, R), A: (R, in). Uses the R × R QR core when R < min(out, in), otherwise
    the dense product. Returns (min(out, in, R),).
    """
    _check_factor_pair(B, A)
    out, rank, inn = B.shape[0], B.shape[1], A.shape[1]
    if rank < min(out, inn):
        Rb = torch.linalg.qr(B, mode="r")[1]  # (R, R): B = Qb Rb
        Ra = torch.linalg.qr(A.mT, mode="r")[1]  # (R, R): Aᵀ = Qa Ra
        return torch.linalg.svdvals(Rb @ Ra.mT)  # (R, R) @ (R, R) -> (R, R)
    return torch.linalg.svdvals(B @ A)[: min(out, inn, rank)]  # (out, R) @ (R, in)


def dense_topk_svd(
    M: Tensor,
    k: int,
    mode: Literal["exact", "fast"],
    generator: torch.Generator | None = None,
    oversample: int = DEFAULT_OVERSAMPLE,
    power_iters: int = DEFAULT_POWER_ITERS,
) -> tuple[Tensor, Tensor, Tensor]:
    """The top min(k, out, in) singular triplets of a dense M (out, in).

    mode "exact" runs `gram_topk_svd` (exact, no full SVD); "fast" runs randomised
    subspace iteration with a sketch of k + oversample columns drawn from `generator` (a
    fixed seed 0 on M's device when None), falling back to exact when that sketch would
    not be smaller than min(out, in). Returns U (out, k'), S (k',), Vh (k', in).
    """
    if M.ndim != 2:
        raise FlexLoraError(f"dense_topk_svd needs a 2-D matrix, got shape {tuple(M.shape)}")
    if k < 1:
        raise FlexLoraError(f"dense_topk_svd needs k >= 1, got {k}")
    if oversample < 0 or power_iters < 0:
        raise FlexLoraError(
            f"oversample and power_iters must be >= 0, got {oversample} and {power_iters}"
        )
    n_min = min(M.shape)
    k = min(k, n_min)
    sketch = k + oversample
    if mode == "exact" or sketch >= n_min:
        return gram_topk_svd(M, k)[:3]
    if mode != "fast":
        raise FlexLoraError(f"unknown SVD mode {mode!r}; expected 'exact' or 'fast'")
    return _randomized_svd(M, k, sketch, power_iters, generator)


def gram_topk_svd(M: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """Exact top-k singular triplets of a dense M (out, in) without an out × in SVD.

    With n = min(out, in), take the Gram matrix of the smaller side, G = M Mᵀ = U Σ² Uᵀ
    (out <= in) or G = Mᵀ M = V Σ² Vᵀ, in float64, and its eigendecomposition. The top-k
    eigenvectors X (n, k) are one side's singular vectors; the other side is
    W = Mᵀ X = V_k Σ_k (or M X = U_k Σ_k), so σ_i = ‖W_i‖ and V_k = W / σ. Then
    U_k Σ_k V_kᵀ = X Xᵀ M exactly: the truncation is M projected on span(X), whatever σ.

    Precision (why float64): the Gram squares the condition number. Its eigenvalues
    carry an absolute error of about n · eps · σ_1², so eigenvectors i and i+1 mix by an
    angle of about n · eps · σ_1² / (σ_i² − σ_{i+1}²), which moves the truncation by
    σ_i times that angle: with a relative gap g = 1 − σ_{i+1}/σ_i, about
    n · eps · σ_1² / (2 g σ_i). For n = 2048, g = 1 %, σ_i = 1e-3 σ_1 that is ~6 σ_1 in
    float32 (eps 6e-8: nothing left for rank-200 recipients) and 1e-8 σ_1 in float64
    (eps 1.1e-16), so the Gram and its eigh run in float64 and no refinement step is
    needed. Components with σ_i below ~1e-7 σ_1 are not resolved, but whatever
    direction X_i takes, X_i (Mᵀ X_i)ᵀ is an exact projection, off from the true
    component by at most 2σ_i ≤ 2e-7 σ_1: below 1e-5 of the truncation's norm (≥ σ_1)
    while fewer than 2,500 of them. σ_i = ‖W_i‖ rather than √λ_i, which is accurate to
    about eps·σ_1 rather than eps·σ_1²/σ_i.
    The other side W needs no float64: it enters the result linearly (X Wᵀ), so a
    float32 M, whose own entries carry float32 rounding, gets W in float32 (X rounded
    to float32, one `linear_product`: 0.03 s against 0.12-0.14 s in float64 for a
    5504 × 2048 M and k = 200, one thread). Its error, about eps₃₂ · ‖M‖ per column, is
    float32 rounding of the result: ~4e-7 relative to a float64 truncation in the tests,
    5.7e-7 at worst at 1.3B shapes (docs/benchmarks/aggregation.md). Other dtypes:
    float64.
    A zero σ_i (W_i = 0) gets a zero singular vector: its component is zero anyway.

    Returns U (out, k'), S (k',), Vh (k', in) in M's dtype, k' = min(k, out, in), and
    ‖M‖_F² in float64: the Gram's trace, free where a separate pass over M is not.
    """
    if M.ndim != 2:
        raise FlexLoraError(f"gram_topk_svd needs a 2-D matrix, got shape {tuple(M.shape)}")
    out, inn = int(M.shape[0]), int(M.shape[1])
    k = min(k, out, inn)
    wide = out <= inn
    side = M if wide else M.mT  # (n, m), m = max(out, in): G = side @ sideᵀ
    # The eigensolver reads the lower triangle only, so only that half is computed.
    G = lower_gram(side, chunk=CAST_CHUNK)  # (n, n) float64: U Σ² Uᵀ (wide), V Σ² Vᵀ (tall)
    total_energy = float(G.diagonal().sum())  # read before the eigensolver overwrites G
    X = top_eigenvectors(G, k)  # (n, k), eigenvalues descending
    # wide: Mᵀ X = V_k Σ_k (in, k); tall: M X = U_k Σ_k (out, k); both are sideᵀ X
    if side.dtype == torch.float32:
        # Xᵀ side (k, n) @ (n, m) -> (k, m), read as its transpose (m, k)
        W = linear_product(X.to(torch.float32).mT, side.mT).mT
    else:
        W = _transposed_product_f64(side, X, CAST_CHUNK)  # (m, n) @ (n, k) -> (m, k)
    S = torch.linalg.vector_norm(W, dim=0)  # (k,)
    # Rounding can swap nearly equal σ_i; sort so that S descends as promised.
    S, order = torch.sort(S, descending=True, stable=True)
    X, W = X[:, order], W[:, order]
    other = W / torch.where(S > 0, S, torch.ones_like(S))  # (·, k) / (k,): unit or zero columns
    U, V = (X, other) if wide else (other, X)
    return U.to(M.dtype), S.to(M.dtype), V.mT.to(M.dtype), total_energy


# Below this size torch's full eigh takes milliseconds (n = 256: 5.5 ms against the
# subset solver's 9 ms), and calling scipy's BLAS between torch's small ops costs more
# than it saves: the offline default's aggregation (64-wide modules) took 0.9-1.1 s
# with the subset solver and 0.5-0.6 s without (docs/benchmarks.md).
SUBSET_MIN_SIZE = 512


def top_eigenvectors(G: Tensor, k: int) -> Tensor:
    """Eigenvectors of the k largest eigenvalues of a symmetric G (n, n), descending.

    Reads only G's lower triangle and may overwrite G. A float64 CPU matrix goes to
    LAPACK's MRRR solver for that subset only (`dsyevr` through scipy): a Householder
    tridiagonal reduction, k eigenvectors of the tridiagonal matrix and their back
    transformation, about 0.4 of a full `torch.linalg.eigh` for n = 2048 and k = 200
    (torch has no subset solver). Below `SUBSET_MIN_SIZE`, on other devices and in other
    dtypes, torch's full eigh. Eigenvectors of a repeated eigenvalue are any orthonormal
    basis of its eigenspace.
    """
    n = int(G.shape[0])
    k = min(k, n)
    if n >= SUBSET_MIN_SIZE and G.device.type == "cpu" and G.dtype == torch.float64:
        from scipy.linalg import eigh  # imported here: the CLI starts without scipy

        # scipy's LAPACK has its own thread pool: hold it to torch's thread count, so
        # that torch.set_num_threads governs all of flexlora's linear algebra.
        with _blas_threads().limit(limits=torch.get_num_threads(), user_api="blas"):
            # G is C-ordered, so G.numpy().T is its transpose in Fortran order, no copy:
            # G's lower triangle is that view's upper one (and G is symmetric).
            vectors = eigh(
                G.numpy().T,
                lower=False,
                subset_by_index=[n - k, n - 1],
                driver="evr",
                overwrite_a=True,
                check_finite=False,
            )[1]  # (n, k), ascending
        return torch.from_numpy(vectors).flip(-1)
    return torch.linalg.eigh(G, UPLO="L")[1][:, -k:].flip(-1)  # (n, k), ascending, reversed


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The thread pools of the BLAS libraries loaded so far (scipy's among them)."""
    import scipy.linalg  # noqa: F401  (loaded first, so that its BLAS is found)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


GRAM_BLOCKS = 8
# Columns of a float32 matrix cast to float64 at a time: a float64 copy of a whole
# 5504 × 2048 dW would add 90 MB to the peak; 1024 columns of 2048 rows add 16 MB.
CAST_CHUNK = 1024


def lower_gram(X: Tensor, blocks: int = GRAM_BLOCKS, chunk: int = CAST_CHUNK) -> Tensor:
    """X Xᵀ in float64 for X (n, m), computed on and below its diagonal blocks only.

    Its lower triangle is exact (zeros above the diagonal blocks), which is all
    eigh(·, UPLO="L") reads. Block row i is X_i (X_1 … X_i)ᵀ, so the GEMMs cost
    (blocks + 1) / (2 · blocks) of the full product: 56 % for 8 blocks (a symmetric
    rank-k update, which torch lacks). X is cast to float64 `chunk` columns at a time,
    G = Σ_c X[:, c] X[:, c]ᵀ.
    """
    n, m = int(X.shape[0]), int(X.shape[1])
    G = torch.zeros(n, n, dtype=torch.float64, device=X.device)
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    for start in range(0, m, chunk):
        Xc = X[:, start : start + chunk].to(torch.float64)  # (n, c)
        for low, high in itertools.pairwise(edges):
            G[low:high, :high] += Xc[low:high] @ Xc[:high].mT  # (b, c) @ (c, high)
    return G


def _transposed_product_f64(X: Tensor, Y: Tensor, chunk: int = CAST_CHUNK) -> Tensor:
    """Xᵀ Y in float64 for X (n, m) of any float dtype and Y (n, k) float64, casting X
    `chunk` columns at a time (rows of the result)."""
    # Yᵀ X_c rather than X_cᵀ Y: the cast chunk stays the GEMM's untransposed operand.
    columns = [
        Y.mT @ X[:, start : start + chunk].to(torch.float64)  # (k, n) @ (n, c) -> (k, c)
        for start in range(0, int(X.shape[1]), chunk)
    ]
    return torch.cat(columns, dim=1).mT  # (k, m) -> (m, k)


# Below about 128³ multiply-adds oneDNN's per-call cost outweighs its faster kernels
# (one thread, 64³: 0.022 ms against torch.matmul's 0.009 ms; 128³: 0.042 against
# 0.051 ms; 256³: 0.19 against 0.40 ms); the threshold keeps a margin above that.
ONEDNN_MIN_MACS = 256**3


def dense_product(B: Tensor, A: Tensor) -> Tensor:
    """dW = B @ A for B (out, R) and A (R, in), through oneDNN for large float32 CPU products.

    See `linear_product`: there the (5504, 3482) @ (3482, 2048) product took 0.51 s
    against 0.92 s through torch.matmul, one thread (benchmarks/dense_product.py).
    """
    _check_factor_pair(B, A)
    return linear_product(B, A.mT)  # (out, R) @ (in, R)ᵀ -> (out, in)


def linear_product(x: Tensor, w: Tensor) -> Tensor:
    """x @ wᵀ for x (a, b) and w (c, b): oneDNN's inner product when both are large
    float32 CPU matrices, torch.matmul otherwise.

    torch's CPU matmul calls MKL, which ran AVX2 kernels on the AVX-512 AMD EPYC of
    docs/benchmarks; oneDNN, also inside torch, picks its kernels by instruction set
    and reads strided (e.g. transposed) operands without copying them. Both sum in
    float32, each in its own order: they agree to float32 rounding, not bit for bit.
    Other devices, dtypes, products under `ONEDNN_MIN_MACS`, torch builds without oneDNN
    or whose oneDNN op fails its probe (`_onednn_works`), and oneDNN switched off
    (`torch.backends.mkldnn.flags(enabled=False)`): torch.matmul.
    Only that AMD CPU was measured: where MKL already runs AVX-512 (Intel CPUs), expect
    little gain. On CUDA, torch's float32 matmul settings apply (TF32 where the user
    allowed it), as for any float32 product there.
    """
    rows, inner, cols = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
    if (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and rows * inner * cols >= ONEDNN_MIN_MACS
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled  # a user who switched oneDNN off keeps it off
        and _onednn_works()
    ):
        return _onednn_inner_product(x, w)  # (a, b), (c, b) -> (a, c)
    return x @ w.mT  # (a, b) @ (b, c) -> (a, c)


def _onednn_inner_product(x: Tensor, w: Tensor) -> Tensor:
    """x @ wᵀ by oneDNN, on ordinary (strided) tensors: no conversion to its layout."""
    # The fused linear that torch.compile emits for CPU; "none": no activation after it.
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


@functools.cache
def _onednn_works() -> bool:
    """Whether `_onednn_inner_product` runs and is right here, probed once per process.

    It calls a private torch op (present with this signature since torch 2.0): should a
    release rename or change it, flexlora logs why and keeps torch.matmul instead of
    failing. The probe's small integers are exact in float32, so the answers must agree
    bit for bit.
    """
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)  # (2, 3)
    w = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # (4, 3)
    try:
        agrees = torch.equal(_onednn_inner_product(x, w), x @ w.mT)  # (2, 4)
    except (AttributeError, RuntimeError, TypeError) as error:
        logger.warning("oneDNN's inner product failed (%s): using torch.matmul", error)
        return False
    if not agrees:
        logger.warning("oneDNN's inner product gave a wrong answer: using torch.matmul")
    return agrees


def triplet_residual(M: Tensor, U: Tensor, S: Tensor, Vh: Tensor) -> float:
    """‖M V − U Σ‖_F / ‖Σ‖_F: how far (U, S, Vh) is from being M's singular triplets.

    Zero for exact triplets; for a randomised SVD it measures what the subspace missed
    (each residual column is the part of M v_i outside span(U)). 0.0 when S is all zero.
    """
    norm = float(torch.linalg.vector_norm(S, dtype=torch.float64))
    if norm == 0.0:
        return 0.0
    residual = M @ Vh.mT - U * S  # (out, in) @ (in, k) - (out, k) · (k,) -> (out, k)
    return float(torch.linalg.vector_norm(residual, dtype=torch.float64)) / norm


def _randomized_svd(
    M: Tensor, k: int, sketch: int, power_iters: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Randomised subspace iteration: top-k triplets of M (out, in) from a sketch of width l."""
    if generator is None:
        generator = torch.Generator(device=M.device).manual_seed(0)
    # Draw on the generator's device, then move: a CPU generator still works for CUDA M.
    omega = torch.randn(M.shape[1], sketch, generator=generator, device=generator.device)
    omega = omega.to(device=M.device, dtype=M.dtype)  # (in, l)
    # Re-orthonormalise after every product: plain powers of M would lose everything
    # below σ_1 · eps^(1/(2q+1)) to rounding.
    Q = torch.linalg.qr(M @ omega)[0]  # (out, in) @ (in, l) -> (out, l)
    for _ in range(power_iters):
        Z = torch.linalg.qr(M.mT @ Q)[0]  # (in, out) @ (out, l) -> (in, l)
        Q = torch.linalg.qr(M @ Z)[0]  # (out, in) @ (in, l) -> (out, l)
    small = Q.mT @ M  # (l, out) @ (out, in) -> (l, in): M ≈ Q · small
    Us, S, Vh = torch.linalg.svd(small, full_matrices=False)  # (l, l), (l,), (l, in)
    U = Q @ Us[:, :k]  # (out, l) @ (l, k) -> (out, k)
    return U, S[:k], Vh[:k]


def choose_svd_path(
    shape: tuple[int, int], stacked_rank: int, k: int, mode: SvdMode, oversample: int
) -> SvdPath:
    """Which algorithm `truncated_svd_of_product` runs for a product of this size.

    factored whenever R < min(out, in) (exact and cheapest, whatever the mode);
    otherwise dense_fast for mode "fast" when the sketch k + oversample is smaller than
    min(out, in), and dense_exact (`gram_topk_svd`) for "auto", "exact" and a sketch too
    large to save anything. Only an explicit "fast" is ever approximate.
    """
    if mode not in ("auto", "exact", "fast"):
        raise FlexLoraError(f"unknown SVD mode {mode!r}; expected 'auto', 'exact' or 'fast'")
    n_min = min(shape)
    if stacked_rank < n_min:
        return "factored"
    sketch = min(k, n_min) + oversample
    if mode == "fast" and sketch < n_min:
        return "dense_fast"
    return "dense_exact"


def truncated_svd_of_product(
    B: Tensor,
    A: Tensor,
    k: int,
    mode: SvdMode = "auto",
    generator: torch.Generator | None = None,
    oversample: int = DEFAULT_OVERSAMPLE,
    power_iters: int = DEFAULT_POWER_ITERS,
) -> tuple[Tensor, Tensor, Tensor, SvdInfo]:
    """Top-k singular triplets of `B @ A`, by the cheapest path that suits its shape.

    B: (out, R), A: (R, in). Returns U (out, k'), S (k',), Vh (k', in) with
    k' = min(k, out, in, R), and an SvdInfo naming the path (see `choose_svd_path`).
    Only the dense_fast path is approximate.
    """
    _check_factor_pair(B, A)
    if k < 1:
        raise FlexLoraError(f"truncated_svd_of_product needs k >= 1, got {k}")
    shape = (int(B.shape[0]), int(A.shape[1]))
    stacked_rank = int(B.shape[1])
    path = choose_svd_path(shape, stacked_rank, k, mode, oversample)
    if path == "factored":
        U, S, Vh = factored_svd(B, A)
        total = float(S.double().square().sum())
        return U[:, :k], S[:k], Vh[:k], SvdInfo(path, stacked_rank, total)
    dense = dense_product(B, A)  # (out, R) @ (R, in) -> (out, in)
    if path == "dense_exact":
        U, S, Vh, total = gram_topk_svd(dense, k)
    else:
        total = squared_norm(dense)
        U, S, Vh = dense_topk_svd(dense, k, "fast", generator, oversample, power_iters)
    return U, S, Vh, SvdInfo(path, stacked_rank, total)


def squared_norm(M: Tensor) -> float:
    """‖M‖_F², accumulated in float64."""
    return float(torch.linalg.vector_norm(M, dtype=torch.float64) ** 2)


def numerical_rank(singular_values: Tensor, shape: tuple[int, int]) -> int:
    """How many singular values exceed max(out, in) · eps(dtype) · σ_max.

    The tolerance is numpy's `matrix_rank` default: below it a singular value is
    indistinguishable from rounding in the matrix it came from. Zero for a zero matrix.
    """
    if singular_values.numel() == 0:
        return 0
    sigma_max = float(singular_values.max())
    if sigma_max == 0.0:
        return 0
    eps = torch.finfo(singular_values.dtype).eps
    tolerance = max(shape) * eps * sigma_max
    return int((singular_values > tolerance).sum())


def _check_factor_pair(B: Tensor, A: Tensor) -> None:
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise FlexLoraError(
            "expected factors B (out, R) and A (R, in), "
            f"got B {tuple(B.shape)} and A {tuple(A.shape)}"
        )
