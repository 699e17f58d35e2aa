"""The flexlora method against a float64 dense reference (form dW, full SVD, truncate)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence

import pytest
import torch

from flexlora.aggregation import TargetSpec, get_aggregation
from flexlora.lora import LoraFactors, lora_scaling

OUT, IN = 24, 20
MODULES = ("q", "v")
# (rank, alpha, rslora): mixed ranks and scalings alpha/r and alpha/sqrt(r)
CLIENTS = ((2, 16.0, False), (3, 8.0, True), (5, 32.0, False))
WEIGHTS = (10.0, 30.0, 60.0)

flexlora = get_aggregation("flexlora").aggregate


def make_clients(
    specs: Sequence[tuple[int, float, bool]] = CLIENTS,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    shape: tuple[int, int] = (OUT, IN),
) -> list[dict[str, LoraFactors]]:
    g = torch.Generator().manual_seed(seed)
    clients = []
    for rank, alpha, rslora in specs:
        clients.append(
            {
                m: LoraFactors(
                    torch.randn(shape[0], rank, generator=g, dtype=torch.float64).to(dtype),
                    torch.randn(rank, shape[1], generator=g, dtype=torch.float64).to(dtype),
                    lora_scaling(alpha, rank, rslora),
                )
                for m in MODULES
            }
        )
    return clients


def targets_for(specs: Sequence[tuple[int, float, bool]]) -> dict[int, TargetSpec]:
    return {
        k: TargetSpec({m: r for m in MODULES}, {m: lora_scaling(alpha, r, rs) for m in MODULES})
        for k, (r, alpha, rs) in enumerate(specs)
    }


def reference_dW(clients, weights, module: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    total = sum(weights)
    dW = torch.zeros(clients[0][module].shape, dtype=torch.float64)
    for client, w in zip(clients, weights, strict=True):
        f = client[module]
        dW += (w / total) * f.scaling * (f.B.double() @ f.A.double())  # (out, r) @ (r, in)
    return dW


def truncate(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def effective(f: LoraFactors) -> torch.Tensor:
    return f.scaling * (f.B.double() @ f.A.double())


@pytest.mark.parametrize("split", ["sigma_to_b", "sqrt"])
def test_each_target_gets_the_eckart_young_truncation(split: str) -> None:
    # Prepare
    clients = make_clients()
    targets = targets_for(CLIENTS)
    # Execute
    result = flexlora(clients, WEIGHTS, targets, {"dtype": "float64", "split": split})
    # Assert: compare products (singular vector signs are arbitrary)
    assert result.client_factors is not None and not result.merge_into_base
    for module in MODULES:
        dW = reference_dW(clients, WEIGHTS, module)
        for key, spec in targets.items():
            f = result.client_factors[key][module]
            r = spec.ranks[module]
            assert f.B.shape == (OUT, r) and f.A.shape == (r, IN)
            assert f.scaling == spec.scalings[module]
            torch.testing.assert_close(effective(f), truncate(dW, r), rtol=0, atol=1e-10)


def test_sqrt_split_balances_the_factor_norms() -> None:
    clients = make_clients()
    result = flexlora(clients, WEIGHTS, targets_for(CLIENTS), {"dtype": "float64", "split": "sqrt"})
    f = result.client_factors[2]["q"]  # type: ignore[index]
    col_b = torch.linalg.vector_norm(f.B * f.scaling, dim=0)
    row_a = torch.linalg.vector_norm(f.A, dim=1)
    torch.testing.assert_close(col_b, row_a, rtol=1e-10, atol=0)


def test_global_update_is_dW_exactly_with_its_singular_values() -> None:
    # Prepare
    clients = make_clients()
    # Execute
    result = flexlora(clients, WEIGHTS, targets_for(CLIENTS), {"dtype": "float64"})
    # Assert: rank(dW) = 10 = Σ r_k for generic factors
    for module in MODULES:
        dW = reference_dW(clients, WEIGHTS, module)
        g = result.global_update[module]
        assert g.B.shape == (OUT, 10) and g.A.shape == (10, IN)
        torch.testing.assert_close(g.B @ g.A, dW, rtol=0, atol=1e-10)
        assert g.singular_values is not None
        torch.testing.assert_close(
            g.singular_values, torch.linalg.svdvals(dW)[:10], rtol=1e-10, atol=0
        )
        assert result.diagnostics["global_rank"][module] == 10
        assert result.diagnostics["svd_mode"][module] == "factored"


def test_targets_at_or_above_rank_of_dW_reproduce_dW() -> None:
    # Prepare: rank(dW) = 10 <= 12
    clients = make_clients()
    targets = {"big": TargetSpec({m: 12 for m in MODULES}, {m: 0.5 for m in MODULES})}
    # Execute
    result = flexlora(clients, WEIGHTS, targets, {"dtype": "float64"})
    # Assert
    for module in MODULES:
        f = result.client_factors["big"][module]  # type: ignore[index]
        assert f.B.shape == (OUT, 12)
        torch.testing.assert_close(
            effective(f), reference_dW(clients, WEIGHTS, module), rtol=0, atol=1e-10
        )
        assert result.diagnostics["discarded_energy"][module]["big"] == pytest.approx(
            0.0, abs=1e-12
        )


def test_identical_clients_get_their_own_product_back() -> None:
    # Prepare: three copies of one rank-4 client
    (client,) = make_clients([(4, 8.0, True)], seed=3)
    clients = [client, client, client]
    targets = targets_for([(4, 8.0, True)])
    # Execute
    result = flexlora(clients, [1.0, 5.0, 2.0], targets, {"dtype": "float64"})
    # Assert
    for module in MODULES:
        mine = result.client_factors[0][module]  # type: ignore[index]
        torch.testing.assert_close(effective(mine), effective(client[module]), rtol=0, atol=1e-10)


def test_scaling_is_folded_exactly_once() -> None:
    # Prepare: double client 0's alpha; its dW_0 doubles, so dW changes by p_0 · dW_0
    clients = make_clients()
    doubled = [dict(c) for c in clients]
    doubled[0] = {m: LoraFactors(f.B, f.A, f.scaling * 2.0) for m, f in clients[0].items()}
    targets = targets_for(CLIENTS)
    # Execute
    base = flexlora(clients, WEIGHTS, targets, {"dtype": "float64"})
    scaled = flexlora(doubled, WEIGHTS, targets, {"dtype": "float64"})
    # Assert
    p0 = WEIGHTS[0] / sum(WEIGHTS)
    for module in MODULES:
        dW0 = effective(clients[0][module])
        got = scaled.global_update[module]
        before = base.global_update[module]
        torch.testing.assert_close(
            got.B @ got.A, before.B @ before.A + p0 * dW0, rtol=0, atol=1e-10
        )
        # and the recipients' own scaling is divided out exactly once
        f = scaled.client_factors[2][module]  # type: ignore[index]
        torch.testing.assert_close(
            effective(f), truncate(reference_dW(doubled, WEIGHTS, module), 5), rtol=0, atol=1e-10
        )


def test_discarded_energy_matches_dense_reference() -> None:
    clients = make_clients()
    targets = targets_for(CLIENTS)
    result = flexlora(clients, WEIGHTS, targets, {"dtype": "float64"})
    for module in MODULES:
        S = torch.linalg.svdvals(reference_dW(clients, WEIGHTS, module))
        for key, (r, _, _) in enumerate(CLIENTS):
            expected = 1.0 - float((S[:r] ** 2).sum() / (S**2).sum())
            assert result.diagnostics["discarded_energy"][module][str(key)] == pytest.approx(
                expected, abs=1e-12
            )


def test_zero_update_gives_zero_energy_and_zero_factors() -> None:
    (client,) = make_clients([(3, 8.0, False)])
    zero = {m: LoraFactors(torch.zeros_like(f.B), f.A, f.scaling) for m, f in client.items()}
    result = flexlora([zero], [1.0], targets_for([(3, 8.0, False)]), {"dtype": "float64"})
    assert result.diagnostics["discarded_energy"]["q"]["0"] == 0.0
    assert result.diagnostics["global_rank"]["q"] == 3  # all R components are kept, zero here
    assert float(result.global_update["q"].B.abs().max()) == 0.0
    assert float(result.client_factors[0]["q"].B.abs().max()) == 0.0  # type: ignore[index]


@pytest.mark.parametrize("svd", ["exact", "fast", "auto"])
def test_dense_path_matches_reference(svd: str) -> None:
    # Prepare: 60 × 50 with R = 30 + 25 + 20 = 75 >= 50, so dW is formed; the fast
    # sketch r_max + oversample = 4 + 10 = 14 fits below 50; "auto" is exact
    specs = [(30, 16.0, False), (25, 8.0, True), (20, 4.0, False)]
    clients = make_clients(specs, seed=5, shape=(60, 50))
    targets = {
        "low": TargetSpec({m: 2 for m in MODULES}, {m: 1.0 for m in MODULES}),
        "mid": TargetSpec({m: 4 for m in MODULES}, {m: 0.25 for m in MODULES}),
    }
    options = {"dtype": "float64", "svd": svd, "oversample": 10, "power_iters": 30}
    # Execute
    result = flexlora(clients, [1.0, 1.0, 2.0], targets, options)
    # Assert
    expected_mode = "dense_exact" if svd == "auto" else f"dense_{svd}"
    for module in MODULES:
        dW = reference_dW(clients, [1.0, 1.0, 2.0], module)
        assert result.diagnostics["svd_mode"][module] == expected_mode
        g = result.global_update[module]
        torch.testing.assert_close(g.B @ g.A, dW, rtol=0, atol=1e-10)
        for key, spec in targets.items():
            f = result.client_factors[key][module]  # type: ignore[index]
            r = spec.ranks[module]
            # random dense spectra have small gaps; 30 power iterations make it converge
            torch.testing.assert_close(effective(f), truncate(dW, r), rtol=0, atol=1e-8)
        S = torch.linalg.svdvals(dW)
        energy = 1.0 - float((S[:4] ** 2).sum() / (S**2).sum())
        assert result.diagnostics["discarded_energy"][module]["mid"] == pytest.approx(
            energy, abs=1e-10
        )


def test_dense_fast_global_is_the_stacked_factors() -> None:
    specs = [(30, 16.0, False), (25, 8.0, True)]
    clients = make_clients(specs, seed=6, shape=(60, 50))
    targets = {"t": TargetSpec({m: 3 for m in MODULES}, {m: 1.0 for m in MODULES})}
    result = flexlora(
        clients, [1.0, 3.0], targets, {"dtype": "float64", "svd": "fast", "oversample": 5}
    )
    g = result.global_update["q"]
    assert g.B.shape == (60, 55) and g.A.shape == (55, 50)
    assert g.singular_values is not None and g.singular_values.shape == (3,)
    assert result.diagnostics["global_rank"]["q"] == 55


def test_target_rank_above_min_shape_is_zero_padded() -> None:
    # Prepare: min(out, in) = 20; the dense path runs (R = 25 >= 20)
    specs = [(25, 16.0, False)]
    clients = make_clients(specs, seed=7)
    targets = {"huge": TargetSpec({m: 32 for m in MODULES}, {m: 0.5 for m in MODULES})}
    # Execute
    result = flexlora(clients, [1.0], targets, {"dtype": "float64", "svd": "exact"})
    # Assert
    f = result.client_factors["huge"]["q"]  # type: ignore[index]
    assert f.B.shape == (OUT, 32) and f.A.shape == (32, IN)
    assert float(f.B[:, 20:].abs().max()) == 0.0 and float(f.A[20:].abs().max()) == 0.0
    torch.testing.assert_close(effective(f), effective(clients[0]["q"]), rtol=0, atol=1e-10)


def test_float32_default_and_output_dtype() -> None:
    # Prepare: float32 and bfloat16 clients
    clients32 = make_clients(dtype=torch.float32)
    clients_bf16 = make_clients(dtype=torch.bfloat16)
    targets = targets_for(CLIENTS)
    # Execute
    r32 = flexlora(clients32, WEIGHTS, targets, {})
    rbf = flexlora(clients_bf16, WEIGHTS, targets, {})
    r64_in_32 = flexlora(make_clients(), WEIGHTS, targets, {"dtype": "float32"})
    # Assert
    f32 = r32.client_factors[1]["q"]  # type: ignore[index]
    assert f32.B.dtype == torch.float32 and r32.global_update["q"].A.dtype == torch.float32
    assert rbf.client_factors[1]["q"].B.dtype == torch.bfloat16  # type: ignore[index]
    assert r64_in_32.client_factors[1]["q"].B.dtype == torch.float64  # type: ignore[index]
    dW = reference_dW(clients32, WEIGHTS, "q")
    expected = truncate(dW, 3)
    error = float((effective(f32) - expected).norm() / expected.norm())
    assert error < 1e-4


def test_targets_may_be_rank_classes() -> None:
    clients = make_clients()
    targets = {
        "small": TargetSpec({"q": 1, "v": 2}, {"q": 2.0, "v": 1.0}),
        "large": TargetSpec({"q": 6, "v": 8}, {"q": 1.0 / math.sqrt(6), "v": 0.25}),
    }
    result = flexlora(clients, WEIGHTS, targets, {"dtype": "float64"})
    assert set(result.client_factors) == {"small", "large"}  # type: ignore[arg-type]
    assert result.client_factors["large"]["v"].B.shape == (OUT, 8)  # type: ignore[index]
    assert set(result.diagnostics["discarded_energy"]["v"]) == {"small", "large"}


def clients_with_spectrum(
    sigma: torch.Tensor, shape: tuple[int, int], ranks: Sequence[int], seed: int
) -> tuple[list[dict[str, LoraFactors]], list[float], torch.Tensor]:
    """Clients whose aggregate dW (float64) has exactly the singular values `sigma`.

    dW = U diag(σ) Vᵀ is cut into consecutive blocks of components, one block per
    client, each hidden behind a random invertible mixing M_k (B_k = U_k Σ_k M_k / c_k,
    A_k = M_k⁻¹ V_kᵀ) and divided by c_k = p_k s_k so that Σ p_k s_k B_k A_k = dW. A
    client whose block runs past len(σ) carries zero components; R = Σ ranks.
    """
    g = torch.Generator().manual_seed(seed)
    n = int(sigma.shape[0])
    U = torch.linalg.qr(torch.randn(shape[0], n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(shape[1], n, generator=g, dtype=torch.float64))[0]
    weights = [float(w) for w in range(1, len(ranks) + 1)]
    total = sum(weights)
    clients, start = [], 0
    for rank, weight in zip(ranks, weights, strict=True):
        Uk = torch.zeros(shape[0], rank, dtype=torch.float64)
        Vk = torch.zeros(shape[1], rank, dtype=torch.float64)
        Sk = torch.zeros(rank, dtype=torch.float64)
        live = max(0, min(rank, n - start))
        block = torch.arange(start, start + live)
        Uk[:, :live], Vk[:, :live], Sk[:live] = U[:, block], V[:, block], sigma[block]
        start += rank
        mix = torch.eye(rank, dtype=torch.float64) + 0.3 * torch.randn(
            rank, rank, generator=g, dtype=torch.float64
        )
        scaling = lora_scaling(16.0, rank)
        c = weight / total * scaling
        B = (Uk * Sk) @ mix / c  # (out, r) @ (r, r) -> (out, r)
        A = torch.linalg.solve(mix, Vk.T)  # (r, r)⁻¹ (r, in) -> (r, in)
        clients.append({m: LoraFactors(B, A, scaling) for m in MODULES})
    dW = (U * sigma) @ V.T  # (out, n) · (n,) @ (n, in) -> (out, in)
    return clients, weights, dW


def relative_to(f: LoraFactors, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(effective(f) - exact) / torch.linalg.matrix_norm(exact))


def rank_targets(ranks: Sequence[int]) -> dict[Hashable, TargetSpec]:
    return {
        f"r{r}": TargetSpec({m: r for m in MODULES}, {m: lora_scaling(16.0, r) for m in MODULES})
        for r in ranks
    }


# σ_i = 0.85^i: 15 % gaps, down to 6e-5 at i = 60 (σ_45² ≈ 4e-7 σ_1², below float32's
# resolution of a Gram matrix, so recipients of rank 45 need the float64 Gram).
GAPPED = 0.85 ** torch.arange(60, dtype=torch.float64)


@pytest.mark.parametrize("svd", ["auto", "exact"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(60, 80), (90, 60)])
def test_exact_modes_are_within_1e_5_of_the_float64_truncation_when_R_is_large(
    svd: str, dtype: str, shape: tuple[int, int]
) -> None:
    # Prepare: R = 30 + 20 + 20 = 70 >= min(out, in) = 60, so dW is formed
    clients, weights, dW = clients_with_spectrum(GAPPED, shape, [30, 20, 20], seed=30)
    targets = rank_targets([1, 8, 30, 45, 60])
    # Execute
    result = flexlora(clients, weights, targets, {"svd": svd, "dtype": dtype})
    # Assert
    tolerance = 1e-5 if dtype == "float32" else 1e-10
    for module in MODULES:
        assert result.diagnostics["svd_mode"][module] == "dense_exact"
        assert module not in result.diagnostics["svd_residual"]  # only the fast path has one
        for key, spec in targets.items():
            f = result.client_factors[key][module]  # type: ignore[index]
            assert relative_to(f, truncate(dW, spec.ranks[module])) < tolerance, key
        assert result.diagnostics["svd_captured_energy"][module] == pytest.approx(1.0, abs=1e-6)


def test_exact_mode_with_a_tie_at_the_cut_discards_the_optimal_energy() -> None:
    # Prepare: σ_10 = σ_11 (a tie at the rank-11 cut), R = 40 >= min = 30
    sigma = 0.8 ** torch.arange(30, dtype=torch.float64)
    sigma[10] = sigma[11] = sigma[10]
    clients, weights, dW = clients_with_spectrum(sigma, (40, 30), [20, 20], seed=31)
    targets = rank_targets([11])
    # Execute
    result = flexlora(clients, weights, targets, {"svd": "exact", "dtype": "float64"})
    # Assert: which of the tied pair is kept is arbitrary; the error is Eckart–Young's
    f = result.client_factors["r11"]["q"]  # type: ignore[index]
    optimum = float(sigma[11:].square().sum())
    error = float(torch.linalg.matrix_norm(dW - effective(f)) ** 2)
    assert error == pytest.approx(optimum, rel=1e-9)
    discarded = result.diagnostics["discarded_energy"]["q"]["r11"]
    assert discarded == pytest.approx(optimum / float(sigma.square().sum()), rel=1e-9)


@pytest.mark.parametrize(
    ("ranks", "path"), [((10, 10), "factored"), ((30, 30), "dense_exact"), ((30, 30), "fast")]
)
def test_global_update_keeps_tiny_singular_values(ranks: tuple[int, int], path: str) -> None:
    # Prepare: float32 compute; dW has five singular values at 3e-6 σ_1, below the old
    # cut max(out, in) · eps · σ_1 (6e-5 · 1.2e-7 ≈ 7e-6) but real in float64
    sigma = torch.cat([0.7 ** torch.arange(12.0), torch.full((5,), 3e-6)]).double()
    clients, weights, dW = clients_with_spectrum(sigma, (60, 50), list(ranks), seed=32)
    svd = "fast" if path == "fast" else "exact"
    # Execute
    result = flexlora(clients, weights, rank_targets([4]), {"svd": svd, "oversample": 4})
    # Assert: the tiny components survive in the global update (each u_iᵀ G v_i = 3e-6)
    U, _, Vh = torch.linalg.svd(dW, full_matrices=False)
    g = result.global_update["q"]
    G = g.B.double() @ g.A.double()  # (out, g) @ (g, in) -> (out, in)
    tiny = torch.einsum("oi,oi->i", U[:, 12:17], G @ Vh[12:17].T)  # u_iᵀ G v_i
    torch.testing.assert_close(tiny, torch.full((5,), 3e-6, dtype=torch.float64), rtol=0.05, atol=0)
    assert relative_to(LoraFactors(g.B, g.A, 1.0), dW) < 1e-6
    expected_path = "dense_fast" if path == "fast" else path
    assert result.diagnostics["svd_mode"]["q"] == expected_path


def test_fast_mode_reports_its_captured_energy_and_residual() -> None:
    # Prepare: a slowly decaying spectrum (2 % gaps): a 20 + 4 column sketch without power
    # iterations misses much of the top 20; R = 120 + 100 >= min(out, in) = 150
    sigma = 0.98 ** torch.arange(150, dtype=torch.float64)
    clients, weights, dW = clients_with_spectrum(sigma, (200, 150), [120, 100], seed=33)
    targets = rank_targets([5, 20])
    fast_options = {"svd": "fast", "dtype": "float64", "oversample": 4, "power_iters": 0}
    # Execute
    fast = flexlora(clients, weights, targets, fast_options)
    exact = flexlora(clients, weights, targets, {"svd": "exact", "dtype": "float64"})
    # Assert: the exact captured energy is the optimum Σ_{i<20} σ_i² / ‖dW‖²
    optimum = float(sigma[:20].square().sum() / sigma.square().sum())
    assert exact.diagnostics["svd_captured_energy"]["q"] == pytest.approx(optimum, rel=1e-10)
    # the fast one is what its rank-20 recipient holds, and visibly short of the optimum
    f = fast.client_factors["r20"]["q"]  # type: ignore[index]
    held = float(torch.linalg.matrix_norm(effective(f)) ** 2 / torch.linalg.matrix_norm(dW) ** 2)
    captured = fast.diagnostics["svd_captured_energy"]["q"]
    assert captured == pytest.approx(held, rel=1e-8)
    assert captured < optimum - 0.01
    # its residual ‖dW V − U Σ‖_F / ‖Σ‖_F, recomputed from the recipient (B = U Σ / s, A = Vᵀ)
    residual = torch.linalg.matrix_norm(dW @ f.A.T - f.scaling * f.B) / math.sqrt(
        float(torch.linalg.matrix_norm(effective(f)) ** 2)
    )
    assert fast.diagnostics["svd_residual"]["q"] == pytest.approx(float(residual), rel=1e-8)
    assert fast.diagnostics["svd_residual"]["q"] > 0.05
    assert fast.diagnostics["svd_mode"]["q"] == "dense_fast"


def reference_rank_partitioned_dW(clients, weights, module: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Segment by segment, by hand: columns (l, h] of every client of rank >= h, weighted
    by its share of the data among those clients."""
    total = sum(weights)
    p = [w / total for w in weights]
    ranks = [c[module].rank for c in clients]
    bounds = [0, *sorted(set(ranks))]
    dW = torch.zeros(clients[0][module].shape, dtype=torch.float64)
    for low, high in itertools.pairwise(bounds):
        holders = [k for k, r in enumerate(ranks) if r >= high]
        share = sum(p[k] for k in holders)
        for k in holders:
            f = clients[k][module]
            # (out, h - l) @ (h - l, in): this client's segment of its update
            dW += (p[k] / share) * f.scaling * (f.B[:, low:high].double() @ f.A[low:high].double())
    return dW


def test_rank_partitioned_weights_weigh_each_segment_by_its_holders() -> None:
    # Prepare: ranks 2, 3, 5 with different scalings; recipients at every rank
    clients = make_clients()
    targets = targets_for(CLIENTS)

    # Execute
    result = flexlora(
        clients, WEIGHTS, targets, {"weighting": "rank-partitioned", "dtype": "float64"}
    )

    # Assert: dW is the segment-weighted sum; each recipient is its best approximation
    for module in MODULES:
        expected = reference_rank_partitioned_dW(clients, WEIGHTS, module)
        g = result.global_update[module]
        torch.testing.assert_close(g.B @ g.A, expected, rtol=1e-10, atol=1e-12)
        U, S, Vh = torch.linalg.svd(expected)
        for key, spec in targets.items():
            r = spec.ranks[module]
            f = result.client_factors[key][module]  # type: ignore[index]
            best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]  # (out, r) (r, r) (r, in)
            torch.testing.assert_close(f.scaling * (f.B @ f.A), best, rtol=1e-8, atol=1e-10)
        share = float((S[:2] ** 2).sum() / (S**2).sum())  # smallest recipient rank: 2
        assert math.isclose(
            result.diagnostics["energy_in_smallest_rank"][module], share, rel_tol=1e-9
        )
    assert result.diagnostics["weighting"] == "rank-partitioned"


def test_rank_partitioned_equals_data_weights_when_every_rank_is_the_same() -> None:
    specs = ((4, 16.0, False), (4, 8.0, True), (4, 32.0, False))
    clients = make_clients(specs, seed=3)
    targets = targets_for(specs)
    plain = flexlora(clients, WEIGHTS, targets, {"dtype": "float64"})
    partitioned = flexlora(
        clients, WEIGHTS, targets, {"dtype": "float64", "weighting": "rank-partitioned"}
    )
    for module in MODULES:
        a, b = plain.global_update[module], partitioned.global_update[module]
        torch.testing.assert_close(a.B @ a.A, b.B @ b.A, rtol=1e-12, atol=1e-14)


def test_rank_partitioned_weights_keep_energy_out_of_the_smallest_rank() -> None:
    """Orthogonal components of equal size: with data weights the components only a
    rank-8 client holds are scaled by its 1/4 share, with rank-partitioned weights not."""
    eye = torch.eye(16, dtype=torch.float64)
    low = {"q": LoraFactors(eye[:, :2].clone(), eye[:2].clone(), 1.0)}  # components 0, 1
    high = {"q": LoraFactors(eye[:, :8].clone(), eye[:8].clone(), 1.0)}  # components 0..7
    clients = [low, low, low, high]
    targets = {0: TargetSpec({"q": 2}, {"q": 1.0}), 1: TargetSpec({"q": 8}, {"q": 1.0})}
    weights = [1.0, 1.0, 1.0, 1.0]
    plain = flexlora(clients, weights, targets, {"dtype": "float64"})
    fixed = flexlora(
        clients, weights, targets, {"dtype": "float64", "weighting": "rank-partitioned"}
    )
    # data weights: σ = 1 for components 0, 1 and 1/4 for 2..7 -> 2 / (2 + 6/16) of the energy
    assert math.isclose(plain.diagnostics["energy_in_smallest_rank"]["q"], 2 / 2.375, rel_tol=1e-9)
    # rank-partitioned: every component at σ = 1 -> 2 of 8
    assert math.isclose(fixed.diagnostics["energy_in_smallest_rank"]["q"], 0.25, rel_tol=1e-9)
