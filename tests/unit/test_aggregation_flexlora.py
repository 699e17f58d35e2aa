"""The flexlora method against a float64 dense reference (form dW, full SVD, truncate)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from flexlora.aggregation import TargetSpec, get_method
from flexlora.lora import LoraFactors, lora_scaling

OUT, IN = 24, 20
MODULES = ("q", "v")
# (rank, alpha, rslora): mixed ranks and scalings alpha/r and alpha/sqrt(r)
CLIENTS = ((2, 16.0, False), (3, 8.0, True), (5, 32.0, False))
WEIGHTS = (10.0, 30.0, 60.0)

flexlora = get_method("flexlora")


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
    assert result.diagnostics["global_rank"]["q"] == 1  # one zero component keeps shapes valid
    assert float(result.global_update["q"].B.abs().max()) == 0.0
    assert float(result.client_factors[0]["q"].B.abs().max()) == 0.0  # type: ignore[index]


@pytest.mark.parametrize("svd", ["exact", "fast", "auto"])
def test_dense_path_matches_reference(svd: str) -> None:
    # Prepare: 60 × 50 with R = 30 + 25 + 20 = 75 >= 50, so dW is formed; the fast
    # sketch r_max + oversample = 4 + 10 = 14 fits below 50 but not below 50/4 ("auto")
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
