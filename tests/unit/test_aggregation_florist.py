"""The florist method against float64 dense references (form dW, full SVD, threshold, truncate)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from flexlora.aggregation import TargetSpec, get_aggregation
from flexlora.aggregation.florist import threshold_rank
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling

OUT, IN = 24, 20
MODULES = ("q", "v")
# (rank, alpha, rslora): mixed ranks and scalings alpha/r and alpha/sqrt(r)
CLIENTS = ((2, 16.0, False), (3, 8.0, True), (5, 32.0, False))
WEIGHTS = (10.0, 30.0, 60.0)
F64 = {"dtype": "float64"}

florist = get_aggregation("florist").aggregate


def make_clients(
    specs: Sequence[tuple[int, float, bool]] = CLIENTS,
    seed: int = 0,
    shape: tuple[int, int] = (OUT, IN),
) -> list[dict[str, LoraFactors]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            m: LoraFactors(
                torch.randn(shape[0], r, generator=g, dtype=torch.float64),
                torch.randn(r, shape[1], generator=g, dtype=torch.float64),
                lora_scaling(alpha, r, rs),
            )
            for m in MODULES
        }
        for r, alpha, rs in specs
    ]


def targets_for(specs: Sequence[tuple[int, float, bool]]) -> dict[int, TargetSpec]:
    return {
        k: TargetSpec({m: r for m in MODULES}, {m: lora_scaling(a, r, rs) for m in MODULES})
        for k, (r, a, rs) in enumerate(specs)
    }


def reference_dW(clients, weights, module: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Σ p_k s_k B_k A_k in float64: (out, r_k) @ (r_k, in) -> (out, in)."""
    total = sum(weights)
    dW = torch.zeros(clients[0][module].shape, dtype=torch.float64)
    for client, w in zip(clients, weights, strict=True):
        f = client[module]
        dW += (w / total) * f.scaling * (f.B.double() @ f.A.double())
    return dW


def truncate(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def effective(f: LoraFactors) -> torch.Tensor:
    return f.scaling * (f.B.double() @ f.A.double())


def reference_rank(M: torch.Tensor, energy: float) -> int:
    """The threshold rank by a plain loop over the float64 spectrum."""
    squares = [float(s) ** 2 for s in torch.linalg.svdvals(M)]
    total, running = sum(squares), 0.0
    for r, sq in enumerate(squares, start=1):
        running += sq
        if running >= energy * total:
            return r
    raise AssertionError("threshold never reached")


# --- a spectrum built by hand --------------------------------------------------------

SIGMAS = (10.0, 5.0, 1.0, 0.1)
# σ² = 100, 25, 1, 0.01; Σ = 126.01. Partial sums 100, 125, 126, 126.01, so
# τ = 0.5 -> 1 (100 >= 63.005); τ = 0.9 -> 2 (100 < 113.409 <= 125);
# τ = 0.99 -> 2 (125 >= 124.7499); τ = 0.995 -> 3 (125 < 125.38 <= 126);
# τ = 0.9999 -> 3 (126 >= 125.9974); τ = 1 -> 4.
BY_HAND = [(0.5, 1), (0.9, 2), (0.99, 2), (0.995, 3), (0.9999, 3), (1.0, 4)]


def constructed_clients() -> tuple[list[dict[str, LoraFactors]], torch.Tensor]:
    """Two clients (ranks 1 and 3, different alphas) whose dW has singular values SIGMAS.

    Client 0 holds component 0, client 1 components 1..3: B_k = U_k Σ_k / (p_k s_k),
    A_k = V_kᵀ, so Σ p_k s_k B_k A_k = U Σ Vᵀ exactly.
    """
    g = torch.Generator().manual_seed(7)
    U = torch.linalg.qr(torch.randn(OUT, 4, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(IN, 4, generator=g, dtype=torch.float64))[0]
    S = torch.tensor(SIGMAS, dtype=torch.float64)
    p = (0.25, 0.75)
    s = (lora_scaling(16.0, 1), lora_scaling(8.0, 3, True))
    parts = (slice(0, 1), slice(1, 4))
    clients = [
        {
            m: LoraFactors(U[:, part] * S[part] / (p[k] * s[k]), V[:, part].mT.contiguous(), s[k])
            for m in MODULES
        }
        for k, part in enumerate(parts)
    ]
    return clients, (U * S) @ V.mT  # (out, 4) @ (4, in)


@pytest.mark.parametrize(("energy", "expected"), BY_HAND)
def test_threshold_picks_the_rank_computed_by_hand(energy: float, expected: int) -> None:
    # Prepare
    clients, dW = constructed_clients()
    targets = {"wide": TargetSpec({m: 6 for m in MODULES}, {m: 2.0 for m in MODULES})}
    # Execute
    result = florist(clients, [1.0, 3.0], targets, {**F64, "energy": energy})
    # Assert
    squares = [s**2 for s in SIGMAS]
    kept = 1.0 - sum(squares[:expected]) / sum(squares)
    for module in MODULES:
        assert result.diagnostics["global_rank"][module] == expected
        assert result.diagnostics["global_discarded_energy"][module] == pytest.approx(
            kept, abs=1e-12
        )
        # A rank-6 recipient holds all of T_{r*}(dW), so it discards the same energy.
        assert result.diagnostics["discarded_energy"][module]["wide"] == pytest.approx(
            kept, abs=1e-12
        )
        g = result.global_update[module]
        assert g.B.shape == (OUT, expected) and g.A.shape == (expected, IN)
        torch.testing.assert_close(g.B @ g.A, truncate(dW, expected), rtol=0, atol=1e-12)
        assert g.singular_values is not None
        expected_S = torch.tensor(SIGMAS[:expected], dtype=torch.float64)
        torch.testing.assert_close(g.singular_values, expected_S, rtol=1e-12, atol=0)
    assert result.diagnostics["energy_threshold"] == energy
    assert result.diagnostics["svd_mode"]["q"] == "factored"


@pytest.mark.parametrize(("energy", "expected"), BY_HAND)
def test_threshold_rank_on_the_spectrum_alone(energy: float, expected: int) -> None:
    S = torch.tensor(SIGMAS, dtype=torch.float64)
    assert threshold_rank(S, energy, (OUT, IN)) == expected


def test_threshold_rank_stops_at_the_numerical_rank() -> None:
    # Two real components and two at rounding level: energy 1 keeps the real ones only.
    S = torch.tensor([3.0, 2.0, 1e-18, 1e-19], dtype=torch.float64)
    assert threshold_rank(S, 1.0, (OUT, IN)) == 2
    assert threshold_rank(torch.zeros(4, dtype=torch.float64), 0.9, (OUT, IN)) == 1


# --- mixed ranks and scalings against the dense reference ------------------------------


@pytest.mark.parametrize("energy", [0.6, 0.9, 0.97])
def test_recipients_get_the_truncation_at_min_of_their_rank_and_r_star(energy: float) -> None:
    # Prepare: recipients below, at and above r*
    clients = make_clients()
    targets = targets_for(CLIENTS)
    targets["one"] = TargetSpec({m: 1 for m in MODULES}, {m: 0.5 for m in MODULES})
    targets["big"] = TargetSpec({m: 12 for m in MODULES}, {m: 3.0 for m in MODULES})
    # Execute
    result = florist(clients, WEIGHTS, targets, {**F64, "energy": energy})
    # Assert
    assert result.client_factors is not None and not result.merge_into_base
    assert result.base_update is None
    for module in MODULES:
        dW = reference_dW(clients, WEIGHTS, module)
        r_star = reference_rank(dW, energy)
        assert 1 < r_star < 10  # the test means something: R = 10 and generic factors
        assert result.diagnostics["global_rank"][module] == r_star
        S = torch.linalg.svdvals(dW)
        total = float((S**2).sum())
        for key, spec in targets.items():
            f = result.client_factors[key][module]
            r = spec.ranks[module]
            kept = min(r, r_star)
            assert f.B.shape == (OUT, r) and f.A.shape == (r, IN)
            assert f.scaling == spec.scalings[module]
            torch.testing.assert_close(effective(f), truncate(dW, kept), rtol=0, atol=1e-10)
            if r > r_star:  # zero-padded above r*
                assert float(f.B[:, r_star:].abs().max()) == 0.0
                assert float(f.A[r_star:].abs().max()) == 0.0
            expected = 1.0 - float((S[:kept] ** 2).sum()) / total
            assert result.diagnostics["discarded_energy"][module][str(key)] == pytest.approx(
                expected, abs=1e-12
            )
        g = result.global_update[module]
        torch.testing.assert_close(g.B @ g.A, truncate(dW, r_star), rtol=0, atol=1e-10)
        expected = 1.0 - float((S[:r_star] ** 2).sum()) / total
        assert result.diagnostics["global_discarded_energy"][module] == pytest.approx(
            expected, abs=1e-12
        )


def test_recipient_factors_put_sigma_in_B_and_divide_their_own_scaling() -> None:
    clients = make_clients()
    targets = targets_for(CLIENTS)
    result = florist(clients, WEIGHTS, targets, {**F64, "energy": 0.9})
    for key, spec in targets.items():
        f = result.client_factors[key]["q"]  # type: ignore[index]
        kept = min(spec.ranks["q"], result.diagnostics["global_rank"]["q"])
        # A = Vᵀ has orthonormal rows; the columns of s·B are σ_i u_i.
        torch.testing.assert_close(
            f.A[:kept] @ f.A[:kept].mT, torch.eye(kept, dtype=torch.float64), rtol=0, atol=1e-12
        )
        S = torch.linalg.svdvals(reference_dW(clients, WEIGHTS, "q"))
        torch.testing.assert_close(
            torch.linalg.vector_norm(f.B[:, :kept] * f.scaling, dim=0), S[:kept], rtol=1e-10, atol=0
        )


def test_energy_one_keeps_dW_whole() -> None:
    clients = make_clients()
    result = florist(clients, WEIGHTS, targets_for(CLIENTS), {**F64, "energy": 1.0})
    for module in MODULES:
        g = result.global_update[module]
        assert result.diagnostics["global_rank"][module] == 10  # rank(dW) = Σ r_k
        torch.testing.assert_close(
            g.B @ g.A, reference_dW(clients, WEIGHTS, module), rtol=0, atol=1e-10
        )
        assert result.diagnostics["global_discarded_energy"][module] == pytest.approx(0, abs=1e-12)


def test_dense_path_when_the_stack_is_wider_than_the_matrix() -> None:
    # Prepare: R = 12 + 10 = 22 >= min(out, in) = 20, so dW is formed and decomposed.
    specs = [(12, 16.0, False), (10, 8.0, True)]
    clients = make_clients(specs, seed=2)
    targets = targets_for(specs)
    # Execute
    result = florist(clients, [2.0, 1.0], targets, {**F64, "energy": 0.8})
    # Assert
    dW = reference_dW(clients, [2.0, 1.0], "v")
    r_star = reference_rank(dW, 0.8)
    assert result.diagnostics["svd_mode"]["v"] == "dense_exact"
    assert result.diagnostics["global_rank"]["v"] == r_star
    for key, (r, _, _) in enumerate(specs):
        f = result.client_factors[key]["v"]  # type: ignore[index]
        torch.testing.assert_close(effective(f), truncate(dW, min(r, r_star)), rtol=0, atol=1e-10)


def test_float32_computation_returns_the_clients_dtype() -> None:
    clients = [{m: f.to(dtype=torch.float32) for m, f in c.items()} for c in make_clients()]
    result = florist(clients, WEIGHTS, targets_for(CLIENTS), {})
    dW = reference_dW(clients, WEIGHTS, "q")
    r_star = reference_rank(dW, 0.9)  # the default threshold
    assert result.diagnostics["global_rank"]["q"] == r_star
    f = result.client_factors[2]["q"]  # type: ignore[index]
    assert f.B.dtype == torch.float32 and f.A.dtype == torch.float32
    torch.testing.assert_close(effective(f), truncate(dW, min(5, r_star)), rtol=0, atol=1e-4)


def test_zero_update_gives_rank_one_zero_factors() -> None:
    (client,) = make_clients([(3, 8.0, False)])
    zero = {m: LoraFactors(torch.zeros_like(f.B), f.A, f.scaling) for m, f in client.items()}
    result = florist([zero], [1.0], targets_for([(3, 8.0, False)]), F64)
    assert result.diagnostics["global_rank"]["q"] == 1
    assert result.diagnostics["discarded_energy"]["q"]["0"] == 0.0
    assert result.diagnostics["global_discarded_energy"]["q"] == 0.0
    assert float(result.global_update["q"].B.abs().max()) == 0.0
    f = result.client_factors[0]["q"]  # type: ignore[index]
    assert f.B.shape == (OUT, 3) and float(f.B.abs().max()) == 0.0


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_energy_outside_zero_one_is_refused(energy: float) -> None:
    with pytest.raises(FlexLoraError) as info:
        florist(make_clients(), WEIGHTS, targets_for(CLIENTS), {"energy": energy})
    assert str(info.value) == f"florist: energy must be in (0, 1], got {energy}"


def test_energy_must_be_a_number() -> None:
    with pytest.raises(FlexLoraError, match="florist: option energy must be a number, got 'high'"):
        florist(make_clients(), WEIGHTS, targets_for(CLIENTS), {"energy": "high"})
    # an int is a number: energy=1 keeps everything
    florist(make_clients(), WEIGHTS, targets_for(CLIENTS), {"energy": 1})
