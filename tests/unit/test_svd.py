"""flexlora.svd against float64 dense references."""

from __future__ import annotations

import pytest
import torch

import flexlora.svd
from flexlora.errors import FlexLoraError
from flexlora.svd import (
    ONEDNN_MIN_MACS,
    choose_svd_path,
    dense_product,
    dense_topk_svd,
    factored_singular_values,
    factored_svd,
    gram_topk_svd,
    lower_gram,
    numerical_rank,
    triplet_residual,
    truncated_svd_of_product,
)


def _factors(out: int, rank: int, inn: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(out, rank, generator=g, dtype=torch.float64)
    A = torch.randn(rank, inn, generator=g, dtype=torch.float64)
    return B, A


def _decaying(out: int, inn: int, seed: int, ratio: float = 0.7) -> torch.Tensor:
    """A dense (out, in) float64 matrix with singular values ratio**i (clear gaps)."""
    g = torch.Generator().manual_seed(seed)
    n = min(out, inn)
    U = torch.linalg.qr(torch.randn(out, n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(inn, n, generator=g, dtype=torch.float64))[0]
    S = ratio ** torch.arange(n, dtype=torch.float64)
    return (U * S) @ V.T


def _with_spectrum(out: int, inn: int, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """A dense (out, in) float64 matrix with the given singular values (random vectors)."""
    g = torch.Generator().manual_seed(seed)
    n = int(sigma.shape[0])
    U = torch.linalg.qr(torch.randn(out, n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(inn, n, generator=g, dtype=torch.float64))[0]
    return (U * sigma) @ V.T  # (out, n) · (n,) @ (n, in) -> (out, in)


def _relative(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(got.double() - exact) / torch.linalg.matrix_norm(exact))


def _truncation(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_factored_svd_reproduces_product_and_singular_values() -> None:
    # Prepare
    B, A = _factors(24, 6, 20, seed=0)
    dense = B @ A
    # Execute
    U, S, Vh = factored_svd(B, A)
    # Assert
    assert U.shape == (24, 6) and S.shape == (6,) and Vh.shape == (6, 20)
    torch.testing.assert_close((U * S) @ Vh, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(S, torch.linalg.svdvals(dense)[:6], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Vh @ Vh.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_factored_svd_is_correct_when_stacked_rank_exceeds_shape() -> None:
    # Prepare: R = 30 > min(out, in) = 20
    B, A = _factors(24, 30, 20, seed=1)
    # Execute
    U, S, Vh = factored_svd(B, A)
    # Assert
    assert S.shape == (20,)
    torch.testing.assert_close((U * S) @ Vh, B @ A, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rank", [5, 30])
def test_factored_singular_values_match_dense(rank: int) -> None:
    # Prepare
    B, A = _factors(24, rank, 20, seed=2)
    # Execute
    S = factored_singular_values(B, A)
    # Assert
    expected = torch.linalg.svdvals(B @ A)[: min(rank, 20)]
    torch.testing.assert_close(S, expected, rtol=1e-10, atol=1e-10)


def test_dense_topk_exact_matches_full_svd() -> None:
    # Prepare
    M = _decaying(30, 20, seed=3)
    # Execute
    U, S, Vh = dense_topk_svd(M, 4, "exact")
    # Assert
    assert U.shape == (30, 4) and S.shape == (4,) and Vh.shape == (4, 20)
    torch.testing.assert_close((U * S) @ Vh, _truncation(M, 4), rtol=0, atol=1e-12)


def test_dense_topk_fast_matches_exact_truncation_on_a_gapped_spectrum() -> None:
    # Prepare: 200 × 150, top 5 wanted; sketch 5 + 16 = 21 < 150 so the fast path runs
    M = _decaying(200, 150, seed=4, ratio=0.5)
    g = torch.Generator().manual_seed(7)
    # Execute
    U, S, Vh = dense_topk_svd(M, 5, "fast", generator=g, oversample=16, power_iters=2)
    # Assert: (σ_22/σ_5)^5 = 2^-85: exact to rounding
    torch.testing.assert_close((U * S) @ Vh, _truncation(M, 5), rtol=0, atol=1e-12)
    torch.testing.assert_close(S, 0.5 ** torch.arange(5, dtype=torch.float64), rtol=1e-12, atol=0)


def test_dense_topk_fast_is_deterministic_for_a_seed() -> None:
    # Prepare
    M = _decaying(80, 60, seed=5, ratio=0.95)
    # Execute
    first = dense_topk_svd(M, 4, "fast", torch.Generator().manual_seed(3), 4, 0)
    second = dense_topk_svd(M, 4, "fast", torch.Generator().manual_seed(3), 4, 0)
    default_a = dense_topk_svd(M, 4, "fast", None, 4, 0)
    default_b = dense_topk_svd(M, 4, "fast", None, 4, 0)
    # Assert
    assert torch.equal(first[1], second[1]) and torch.equal(first[0], second[0])
    assert torch.equal(default_a[1], default_b[1])


def test_dense_topk_fast_falls_back_to_exact_when_sketch_is_not_smaller() -> None:
    # Prepare: k + oversample = 18 + 16 >= 20
    M = _decaying(24, 20, seed=6, ratio=0.99)
    # Execute
    U, S, Vh = dense_topk_svd(M, 18, "fast")
    # Assert
    torch.testing.assert_close((U * S) @ Vh, _truncation(M, 18), rtol=0, atol=1e-12)


def test_dense_topk_clips_k_to_shape() -> None:
    M = _decaying(12, 10, seed=8)
    U, S, Vh = dense_topk_svd(M, 50, "exact")
    assert U.shape == (12, 10) and S.shape == (10,) and Vh.shape == (10, 10)


@pytest.mark.parametrize(
    ("shape", "stacked", "k", "mode", "expected"),
    [
        ((4096, 4096), 304, 64, "auto", "factored"),
        ((4096, 4096), 304, 64, "exact", "factored"),
        ((4096, 4096), 304, 64, "fast", "factored"),
        ((5504, 2048), 3000, 200, "auto", "dense_exact"),  # auto is always exact
        ((5504, 2048), 3000, 200, "exact", "dense_exact"),
        ((5504, 2048), 3000, 200, "fast", "dense_fast"),
        ((24, 20), 24, 5, "auto", "dense_exact"),
        ((24, 20), 24, 5, "fast", "dense_exact"),  # sketch 21 >= 20
        ((240, 200), 240, 5, "fast", "dense_fast"),
        ((240, 200), 240, 5, "auto", "dense_exact"),
    ],
)
def test_choose_svd_path(
    shape: tuple[int, int], stacked: int, k: int, mode: str, expected: str
) -> None:
    assert choose_svd_path(shape, stacked, k, mode, 16) == expected  # type: ignore[arg-type]


def test_truncated_svd_of_product_paths_agree_with_reference() -> None:
    # Prepare: a factored case and a dense case (R = 250 >= 200)
    small_B, small_A = _factors(60, 8, 50, seed=9)
    M = _decaying(240, 200, seed=10, ratio=0.6)
    dense_B, dense_A = torch.linalg.qr(M)[0], torch.linalg.qr(M)[1]  # (240, 200), (200, 200)
    dense_B = torch.cat([dense_B, torch.zeros(240, 50, dtype=torch.float64)], dim=1)
    dense_A = torch.cat([dense_A, torch.zeros(50, 200, dtype=torch.float64)], dim=0)
    # Execute
    U1, S1, V1, info1 = truncated_svd_of_product(small_B, small_A, 3)
    U2, S2, V2, info2 = truncated_svd_of_product(dense_B, dense_A, 3, mode="fast")
    U3, S3, V3, info3 = truncated_svd_of_product(dense_B, dense_A, 3, mode="exact")
    # Assert
    assert (info1.path, info2.path, info3.path) == ("factored", "dense_fast", "dense_exact")
    assert info2.stacked_rank == 250
    torch.testing.assert_close(
        (U1 * S1) @ V1, _truncation(small_B @ small_A, 3), rtol=0, atol=1e-10
    )
    for U, S, V in ((U2, S2, V2), (U3, S3, V3)):
        torch.testing.assert_close((U * S) @ V, _truncation(M, 3), rtol=0, atol=1e-10)
    expected_energy = float(torch.linalg.matrix_norm(M) ** 2)
    assert info2.total_energy == pytest.approx(expected_energy, rel=1e-12)
    assert info1.total_energy == pytest.approx(float((small_B @ small_A).norm() ** 2), rel=1e-12)


def test_numerical_rank() -> None:
    # Prepare: rank-3 product in float64 padded with 5 exactly dependent columns
    B, A = _factors(30, 3, 25, seed=11)
    B8 = torch.cat([B, B[:, :1].repeat(1, 5)], dim=1)
    A8 = torch.cat([A, A[:1].repeat(5, 1)], dim=0)
    # Execute
    S = factored_singular_values(B8, A8)
    # Assert
    assert S.shape == (8,)
    assert numerical_rank(S, (30, 25)) == 3
    assert numerical_rank(torch.zeros(4, dtype=torch.float64), (30, 25)) == 0
    assert numerical_rank(torch.zeros(0), (30, 25)) == 0


def test_bad_inputs_raise() -> None:
    B, A = _factors(10, 3, 8, seed=12)
    with pytest.raises(FlexLoraError, match="expected factors"):
        factored_svd(B, A[:2])
    with pytest.raises(FlexLoraError, match="k >= 1"):
        truncated_svd_of_product(B, A, 0)
    with pytest.raises(FlexLoraError, match="unknown SVD mode"):
        truncated_svd_of_product(B, A, 2, mode="slow")  # type: ignore[arg-type]
    with pytest.raises(FlexLoraError, match="2-D"):
        dense_topk_svd(torch.zeros(3), 1, "exact")


# A spectrum from 1 down to 1e-5 with 15 % gaps between neighbours (σ_i = 0.85^i): the
# small singular values that rank-40+ recipients keep have σ² below float32's resolution
# of the Gram (σ_45² ≈ 4e-7 σ_1², float32 eps · n ≈ 3e-6), so only a float64 Gram works.
GAPPED = 0.85 ** torch.arange(60, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(60, 80), (90, 60)])
@pytest.mark.parametrize("k", [1, 8, 30, 45, 60])
def test_gram_topk_matches_float64_truncation(shape: tuple[int, int], k: int) -> None:
    # Prepare: wide (Gram M Mᵀ) and tall (Gram Mᵀ M) matrices with a gapped spectrum
    M = _with_spectrum(*shape, GAPPED, seed=20)
    # Execute: from float64 and from float32 input (the aggregation's default dtype)
    U, S, Vh, total = gram_topk_svd(M, k)
    U32, S32, Vh32, total32 = gram_topk_svd(M.float(), k)
    # Assert
    exact = _truncation(M, k)
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
    assert _relative((U * S) @ Vh, exact) < 1e-10
    torch.testing.assert_close(S, GAPPED[:k], rtol=1e-9, atol=0)
    # The eigenvector side is orthonormal to rounding; the other side (W / σ) to about
    # eps · σ_1 / σ_k (σ_60 ≈ 7e-5 here), which the product does not depend on.
    eye = torch.eye(k, dtype=torch.float64)
    gram_side, other_side = (U.T @ U, Vh @ Vh.T) if shape[0] <= shape[1] else (Vh @ Vh.T, U.T @ U)
    torch.testing.assert_close(gram_side, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(other_side, eye, rtol=0, atol=1e-7)
    assert S32.dtype == torch.float32
    assert _relative((U32 * S32) @ Vh32, exact) < 1e-5
    # ‖M‖_F² from the Gram's trace: Σ σ_i² of the whole spectrum, whatever k
    assert total == pytest.approx(float(GAPPED.square().sum()), rel=1e-12)
    assert total32 == pytest.approx(float(M.float().double().square().sum()), rel=1e-12)


def test_float32_gram_would_not_be_accurate_enough() -> None:
    # The reason gram_topk_svd works in float64: the same recipe in float32 misses the
    # rank-45 truncation of GAPPED by far more than 1e-5 (this guards the test above).
    M = _with_spectrum(60, 80, GAPPED, seed=20).float()
    X = torch.linalg.eigh(M @ M.T)[1][:, -45:]  # float32 Gram and eigh
    projected = X @ (X.T @ M)  # (60, 45) @ (45, 80): the truncation it would give
    assert _relative(projected, _truncation(M.double(), 45)) > 1e-5


def test_gram_topk_keeps_tiny_and_handles_zero_singular_values() -> None:
    # Prepare: rank 5 with σ down to 1e-9, then exact zeros; ask for 12 triplets
    sigma = torch.tensor([1.0, 0.5, 1e-3, 1e-6, 1e-9], dtype=torch.float64)
    M = _with_spectrum(40, 30, sigma, seed=21)
    # Execute
    U, S, Vh, _ = gram_topk_svd(M, 12)
    # Assert: finite; σ down to 1e-6 resolved; the 1e-9 one is below the Gram's
    # resolution (~n · eps · σ_1 ≈ 1e-8), so it may be lost, but by no more than itself
    assert bool(torch.isfinite(U).all() and torch.isfinite(Vh).all())
    torch.testing.assert_close(S[:4], sigma[:4], rtol=1e-8, atol=0)
    assert float(torch.linalg.matrix_norm((U * S) @ Vh - M)) < 2e-9
    assert float(S[4:].max()) < 2e-9


def test_gram_topk_with_a_tie_at_the_cut_captures_the_optimal_energy() -> None:
    # Prepare: σ_3 = σ_4 exactly, cut at k = 4: T_4 is not unique, its energy is
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    M = _with_spectrum(30, 24, sigma, seed=22)
    # Execute
    U, S, Vh, _ = gram_topk_svd(M, 4)
    approx = (U * S) @ Vh
    # Assert: a rank-4 matrix whose error is Eckart–Young's optimum Σ_{i>4} σ_i²
    optimum = float(sigma[4:].square().sum())
    assert float(torch.linalg.matrix_norm(M - approx) ** 2) == pytest.approx(optimum, rel=1e-10)
    assert float(S.square().sum()) == pytest.approx(float(sigma[:4].square().sum()), rel=1e-12)
    assert int(torch.linalg.matrix_rank(approx)) == 4


def test_dense_topk_exact_uses_no_full_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a full SVD of the out × in matrix would raise here
    M = _decaying(50, 40, seed=23)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("full SVD called")

    monkeypatch.setattr(torch.linalg, "svd", forbidden)
    # Execute
    U, S, Vh = dense_topk_svd(M, 6, "exact")
    # Assert
    monkeypatch.undo()
    assert _relative((U * S) @ Vh, _truncation(M, 6)) < 1e-10


def test_triplet_residual_is_zero_for_exact_and_large_for_wrong_triplets() -> None:
    M = _decaying(40, 30, seed=24, ratio=0.9)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    assert triplet_residual(M, U[:, :5], S[:5], Vh[:5]) < 1e-13
    # The right vectors tilted by 0.1 towards the next five: residual ≈ 0.1 · σ_{i+5} / σ_i
    tilted = Vh[:5] + 0.1 * Vh[5:10]  # (5, 30)
    tilted = tilted / torch.linalg.vector_norm(tilted, dim=1, keepdim=True)
    residual = triplet_residual(M, U[:, :5], S[:5], tilted)
    assert 0.03 < residual < 0.15
    assert triplet_residual(M, U[:, :2], torch.zeros(2, dtype=torch.float64), Vh[:2]) == 0.0


@pytest.mark.parametrize(("blocks", "chunk"), [(1, 1024), (3, 16), (8, 70), (8, 7)])
def test_lower_gram_is_exact_on_and_below_the_diagonal(blocks: int, chunk: int) -> None:
    # float32 input: the Gram is float64 and exact for the float32 values
    X = torch.randn(50, 70, generator=torch.Generator().manual_seed(25))
    G = lower_gram(X, blocks, chunk)
    X64 = X.double()
    assert G.dtype == torch.float64
    torch.testing.assert_close(torch.tril(G), torch.tril(X64 @ X64.T), rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [5, 64, 4096])
def test_gram_topk_casts_in_chunks_without_changing_the_result(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chunked float64 products are the same products: results agree to rounding
    M = _with_spectrum(70, 40, GAPPED[:40], seed=26).float()
    monkeypatch.setattr("flexlora.svd.CAST_CHUNK", chunk)
    U, S, Vh, _ = gram_topk_svd(M, 10)
    monkeypatch.undo()
    U0, S0, Vh0, _ = gram_topk_svd(M, 10)
    torch.testing.assert_close((U * S) @ Vh, (U0 * S0) @ Vh0, rtol=0, atol=1e-6)
    assert _relative((U * S) @ Vh, _truncation(M.double(), 10)) < 1e-6


def test_gram_topk_of_a_zero_matrix_is_zero_and_finite() -> None:
    U, S, Vh, _ = gram_topk_svd(torch.zeros(12, 9, dtype=torch.float64), 4)
    assert float(S.abs().max()) == 0.0
    assert bool(torch.isfinite(U).all() and torch.isfinite(Vh).all())
    assert float(((U * S) @ Vh).abs().max()) == 0.0


def _count_onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Spy on flexlora's call into oneDNN: the shapes of x @ wᵀ, one entry per call."""
    calls: list[tuple[int, ...]] = []
    original = flexlora.svd._onednn_inner_product
    flexlora.svd._onednn_works()  # the once-per-process probe runs now, unseen by the spy

    def counting(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append((*x.shape, int(w.shape[0])))
        return original(x, w)

    monkeypatch.setattr(flexlora.svd, "_onednn_inner_product", counting)
    return calls


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_dense_product_of_large_float32_factors_goes_through_onednn_and_is_accurate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    B, A = (t.float() for t in _factors(300, 280, 260, seed=40))
    assert ONEDNN_MIN_MACS <= 300 * 280 * 260
    calls = _count_onednn_calls(monkeypatch)
    got = dense_product(B, A)
    assert calls == [(300, 280, 260)]
    assert got.dtype == torch.float32 and got.shape == (300, 260) and got.layout == torch.strided
    exact = B.double() @ A.double()
    assert _relative(got, exact) < 1e-6
    # a different summation order from torch's matmul, the same answer to float32 rounding
    assert _relative(B @ A, exact) < 1e-6
    # non-contiguous factors: B as every other column of a wider matrix, A transposed
    strided_B = torch.stack([B, torch.zeros_like(B)], dim=2).flatten(1)[:, ::2]
    A_t = A.mT.contiguous().mT
    assert not strided_B.is_contiguous() and not A_t.is_contiguous()
    assert _relative(dense_product(strided_B, A_t), exact) < 1e-6


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_gram_topk_of_large_float32_takes_the_other_side_from_onednn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: float32 matrices, wide and tall, whose other-side GEMM (k·n·m) is large;
    # the spectrum spans 1 to 4e-3 (gapped), so recipients keep small components
    spectrum = 0.9 ** torch.arange(52, dtype=torch.float64)
    for shape in [(520, 700), (700, 520)]:
        M = _with_spectrum(*shape, spectrum, seed=27)
        calls = _count_onednn_calls(monkeypatch)
        # Execute
        U, S, Vh, _ = gram_topk_svd(M.float(), 50)
        # Assert: one oneDNN product, Xᵀ (k, n) against the larger side (m, n)
        assert calls == [(50, 520, 700)]
        assert U.dtype == S.dtype == Vh.dtype == torch.float32
        assert _relative((U * S) @ Vh, _truncation(M, 50)) < 1e-5
        torch.testing.assert_close(S.double(), spectrum[:50], rtol=1e-5, atol=0)
        monkeypatch.undo()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_linear_product_keeps_torch_matmul_when_onednn_does_not_work(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    # Prepare: the private oneDNN op as a future torch might break it
    def replacement(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if broken == "raises":
            raise RuntimeError("mkldnn::_linear_pointwise() expected 7 arguments")
        return torch.zeros(int(x.shape[0]), int(w.shape[0]))

    monkeypatch.setattr(flexlora.svd, "_onednn_inner_product", replacement)
    flexlora.svd._onednn_works.cache_clear()
    x, w = (t.float() for t in _factors(300, 280, 260, seed=43))
    try:
        # Execute
        with caplog.at_level("WARNING", logger="flexlora.svd"):
            got = flexlora.svd.linear_product(x, w.mT)
            again = flexlora.svd.linear_product(x, w.mT)
    finally:
        flexlora.svd._onednn_works.cache_clear()  # later tests probe the real op
    # Assert: torch.matmul's answer, and one warning (the probe runs once)
    assert torch.equal(got, x @ w) and torch.equal(again, x @ w)
    assert len(caplog.records) == 1 and "using torch.matmul" in caplog.records[0].message


def test_dense_product_keeps_torch_matmul_for_small_float64_and_without_onednn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _count_onednn_calls(monkeypatch)
    B, A = _factors(40, 30, 20, seed=41)
    assert torch.equal(dense_product(B, A), B @ A)  # float64
    B32, A32 = B.float(), A.float()
    assert torch.equal(dense_product(B32, A32), B32 @ A32)  # below ONEDNN_MIN_MACS
    big_B, big_A = (t.float() for t in _factors(300, 280, 260, seed=42))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # switched off by the user
    assert torch.equal(dense_product(big_B, big_A), big_B @ big_A)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # not built in
    assert torch.equal(dense_product(big_B, big_A), big_B @ big_A)
    assert calls == []
    with pytest.raises(FlexLoraError, match="expected factors"):
        dense_product(B, A.mT)
