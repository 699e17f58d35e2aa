"""flexlora.svd.top_eigenvectors (LAPACK's subset eigensolver) against known eigenvectors."""

from __future__ import annotations

import pytest
import scipy.linalg
import threadpoolctl
import torch

from flexlora.svd import top_eigenvectors


@pytest.fixture
def subset_solver_for_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests use small matrices: send them to LAPACK's subset solver anyway."""
    monkeypatch.setattr("flexlora.svd.SUBSET_MIN_SIZE", 1)


def _symmetric_with_distinct_eigenvalues(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    eigenvalues = 0.8 ** torch.arange(n, dtype=torch.float64)  # descending, gaps of 20 %
    return (Q * eigenvalues) @ Q.T, Q


@pytest.mark.usefixtures("subset_solver_for_any_size")
@pytest.mark.parametrize("k", [1, 5, 40, 60])
def test_top_eigenvectors_are_the_leading_ones_and_read_only_the_lower_triangle(k: int) -> None:
    # Prepare: known eigenvectors Q (columns by descending eigenvalue); garbage above the
    # diagonal, which the solver must not read
    G, Q = _symmetric_with_distinct_eigenvalues(40)
    G_lower = torch.tril(G) + torch.triu(torch.full_like(G, 7.0), diagonal=1)
    # Execute
    X = top_eigenvectors(G_lower.clone(), k)
    # Assert: the first min(k, n) columns of Q, up to sign
    top = min(k, 40)
    assert X.shape == (40, top)
    signs = torch.sign((X * Q[:, :top]).sum(dim=0))
    torch.testing.assert_close(X * signs, Q[:, :top], rtol=0, atol=1e-10)


def test_top_eigenvectors_of_float32_use_torch_and_agree() -> None:
    G, Q = _symmetric_with_distinct_eigenvalues(20)
    X = top_eigenvectors(G.float(), 3)
    assert X.dtype == torch.float32
    signs = torch.sign((X.double() * Q[:, :3]).sum(dim=0))
    torch.testing.assert_close(X.double() * signs, Q[:, :3], rtol=0, atol=1e-5)


@pytest.mark.usefixtures("subset_solver_for_any_size")
def test_scipy_blas_is_held_to_torch_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: record scipy's BLAS thread count while its eigensolver runs
    seen: list[int] = []
    real_eigh = scipy.linalg.eigh

    def recording_eigh(*args: object, **kwargs: object) -> object:
        seen.extend(
            pool["num_threads"]
            for pool in threadpoolctl.threadpool_info()
            if pool["user_api"] == "blas"
        )
        return real_eigh(*args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "eigh", recording_eigh)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Execute
        top_eigenvectors(_symmetric_with_distinct_eigenvalues(10)[0], 2)
    finally:
        torch.set_num_threads(threads)
    # Assert: every BLAS pool was held to one thread during the call
    assert seen and set(seen) == {1}


def test_small_matrices_use_torch_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Below SUBSET_MIN_SIZE scipy is never called, and the answer is the same
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("scipy's eigh called for a small matrix")

    monkeypatch.setattr(scipy.linalg, "eigh", forbidden)
    G, Q = _symmetric_with_distinct_eigenvalues(30)
    X = top_eigenvectors(G, 4)
    signs = torch.sign((X * Q[:, :4]).sum(dim=0))
    torch.testing.assert_close(X * signs, Q[:, :4], rtol=0, atol=1e-10)
