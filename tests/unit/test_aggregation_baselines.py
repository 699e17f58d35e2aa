"""fedit, zeropad, hetlora, flora and ffa against float64 references built by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from flexlora.aggregation import TargetSpec, get_aggregation
from flexlora.aggregation.ffa import ffa_shared_A
from flexlora.aggregation.hetlora import hetlora_prune_rank, hetlora_regularizer
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling

OUT, IN = 24, 20
MODULES = ("q", "v")
MIXED = ((2, 16.0, False), (3, 8.0, True), (5, 32.0, False))
WEIGHTS = (10.0, 30.0, 60.0)
F64 = {"dtype": "float64"}


def make_clients(
    specs: Sequence[tuple[int, float, bool]], seed: int = 0
) -> list[dict[str, LoraFactors]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            m: LoraFactors(
                torch.randn(OUT, r, generator=g, dtype=torch.float64),
                torch.randn(r, IN, generator=g, dtype=torch.float64),
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


def padded_reference(
    clients: list[dict[str, LoraFactors]], weights: Sequence[float], module: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ w_k pad(s_k B_k), Σ w_k pad(A_k) with w normalised: the zero-padding average."""
    total = sum(weights)
    r_max = max(c[module].rank for c in clients)
    B = torch.zeros(OUT, r_max, dtype=torch.float64)
    A = torch.zeros(r_max, IN, dtype=torch.float64)
    for c, w in zip(clients, weights, strict=True):
        f = c[module]
        B[:, : f.rank] += (w / total) * f.scaling * f.B
        A[: f.rank] += (w / total) * f.A
    return B, A


def effective(f: LoraFactors) -> torch.Tensor:
    return f.scaling * (f.B @ f.A)


def energy_of(M: torch.Tensor, r: int) -> float:
    S = torch.linalg.svdvals(M)
    return 1.0 - float((S[:r] ** 2).sum() / (S**2).sum())


# --- fedit ---------------------------------------------------------------------------


def test_fedit_averages_folded_B_and_A_separately() -> None:
    # Prepare: equal ranks, different alphas (scalings folded into B)
    specs = [(4, 16.0, False), (4, 8.0, False), (4, 8.0, True)]
    clients = make_clients(specs, seed=1)
    targets = targets_for(specs)
    # Execute
    result = get_aggregation("fedit").aggregate(clients, WEIGHTS, targets, F64)
    # Assert
    for module in MODULES:
        B_ref, A_ref = padded_reference(clients, WEIGHTS, module)
        g = result.global_update[module]
        torch.testing.assert_close(g.B, B_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(g.A, A_ref, rtol=0, atol=1e-12)
        for key, spec in targets.items():
            f = result.client_factors[key][module]  # type: ignore[index]
            torch.testing.assert_close(f.B, B_ref / spec.scalings[module], rtol=0, atol=1e-12)
            torch.testing.assert_close(f.A, A_ref, rtol=0, atol=1e-12)
        assert result.diagnostics["discarded_energy"][module]["0"] == pytest.approx(
            energy_of(B_ref @ A_ref, 4), abs=1e-12
        )


def test_fedit_equal_scalings_is_plain_fedavg() -> None:
    specs = [(3, 8.0, False)] * 3
    clients = make_clients(specs, seed=2)
    result = get_aggregation("fedit").aggregate(clients, [1.0, 1.0, 2.0], targets_for(specs), F64)
    f = result.client_factors[0]["q"]  # type: ignore[index]
    expected_B = (clients[0]["q"].B + clients[1]["q"].B + 2 * clients[2]["q"].B) / 4
    torch.testing.assert_close(f.B, expected_B, rtol=0, atol=1e-12)


def test_fedit_mixed_ranks_names_the_clients() -> None:
    clients = make_clients(MIXED)
    with pytest.raises(FlexLoraError) as info:
        get_aggregation("fedit").aggregate(clients, WEIGHTS, targets_for(MIXED), F64)
    assert str(info.value) == (
        "fedit needs equal ranks: module 'q' has rank 2 for clients [0], "
        "rank 3 for clients [1] and rank 5 for clients [2]"
    )


def test_fedit_target_rank_must_match() -> None:
    specs = [(3, 8.0, False)] * 2
    clients = make_clients(specs)
    targets = {"x": TargetSpec({m: 4 for m in MODULES}, {m: 1.0 for m in MODULES})}
    with pytest.raises(FlexLoraError, match="target 'x' asks rank 4 for module 'q'"):
        get_aggregation("fedit").aggregate(clients, [1.0, 1.0], targets, F64)


# --- zeropad -------------------------------------------------------------------------


def test_zeropad_pads_averages_and_truncates() -> None:
    # Prepare
    clients = make_clients(MIXED, seed=3)
    targets = targets_for(MIXED)
    targets["big"] = TargetSpec({m: 7 for m in MODULES}, {m: 0.5 for m in MODULES})
    # Execute
    result = get_aggregation("zeropad").aggregate(clients, WEIGHTS, targets, F64)
    # Assert
    for module in MODULES:
        B_ref, A_ref = padded_reference(clients, WEIGHTS, module)
        g = result.global_update[module]
        assert g.B.shape == (OUT, 5)
        torch.testing.assert_close(g.B @ g.A, B_ref @ A_ref, rtol=0, atol=1e-12)
        for key, (r, a, rs) in enumerate(MIXED):
            f = result.client_factors[key][module]  # type: ignore[index]
            s = lora_scaling(a, r, rs)
            torch.testing.assert_close(f.B, B_ref[:, :r] / s, rtol=0, atol=1e-12)
            torch.testing.assert_close(f.A, A_ref[:r], rtol=0, atol=1e-12)
        big = result.client_factors["big"][module]  # type: ignore[index]
        assert big.B.shape == (OUT, 7) and float(big.A[5:].abs().max()) == 0.0
        assert result.diagnostics["global_rank"][module] == 5
        assert result.diagnostics["discarded_energy"][module]["1"] == pytest.approx(
            energy_of(B_ref @ A_ref, 3), abs=1e-12
        )


# --- hetlora -------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["sparsity", "sparsity_x_data"])
def test_hetlora_weights_by_update_norm(weighting: str) -> None:
    # Prepare
    clients = make_clients(MIXED, seed=4)
    targets = targets_for(MIXED)
    # Execute
    result = get_aggregation("hetlora").aggregate(
        clients, WEIGHTS, targets, {**F64, "weighting": weighting}
    )
    # Assert
    for module in MODULES:
        norms = [float(effective(c[module]).norm()) for c in clients]
        if weighting == "sparsity_x_data":
            norms = [n * w for n, w in zip(norms, WEIGHTS, strict=True)]
        expected_w = [n / sum(norms) for n in norms]
        assert result.diagnostics["hetlora_weights"][module] == pytest.approx(expected_w, rel=1e-12)
        B_ref, A_ref = padded_reference(clients, expected_w, module)
        for key, (r, a, rs) in enumerate(MIXED):
            f = result.client_factors[key][module]  # type: ignore[index]
            torch.testing.assert_close(
                f.B, B_ref[:, :r] / lora_scaling(a, r, rs), rtol=0, atol=1e-12
            )
            torch.testing.assert_close(f.A, A_ref[:r], rtol=0, atol=1e-12)
        g = result.global_update[module]
        torch.testing.assert_close(g.B @ g.A, B_ref @ A_ref, rtol=0, atol=1e-12)


def test_hetlora_all_zero_updates_fall_back_to_data_weights() -> None:
    clients = make_clients(MIXED, seed=5)
    zeroed = [
        {m: LoraFactors(torch.zeros_like(f.B), f.A, f.scaling) for m, f in c.items()}
        for c in clients
    ]
    result = get_aggregation("hetlora").aggregate(zeroed, WEIGHTS, targets_for(MIXED), F64)
    assert result.diagnostics["hetlora_weights"]["q"] == pytest.approx([0.1, 0.3, 0.6])
    _, A_ref = padded_reference(zeroed, WEIGHTS, "q")
    torch.testing.assert_close(result.client_factors[2]["q"].A, A_ref, rtol=0, atol=1e-12)  # type: ignore[index]


def test_hetlora_regularizer_value_and_gradient() -> None:
    # Prepare: r = 10, gamma = 0.8 -> tail is components 8 and 9
    g = torch.Generator().manual_seed(6)
    B = torch.randn(OUT, 10, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(10, IN, generator=g, dtype=torch.float64, requires_grad=True)
    # Execute
    value = hetlora_regularizer(B, A, 0.8)
    value.backward()
    # Assert
    expected = B.detach()[:, 8:].norm() * A.detach()[8:].norm()
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-12)
    assert B.grad is not None and A.grad is not None
    assert float(B.grad[:, :8].abs().max()) == 0.0 and float(B.grad[:, 8:].abs().max()) > 0.0
    torch.testing.assert_close(
        B.grad[:, 8:], B.detach()[:, 8:] / B.detach()[:, 8:].norm() * A.detach()[8:].norm()
    )


def test_hetlora_regularizer_edge_cases() -> None:
    B = torch.zeros(OUT, 4, requires_grad=True)
    A = torch.ones(4, IN)
    value = hetlora_regularizer(B, A, 0.5)
    value.backward()
    assert (
        float(value.detach()) == 0.0 and B.grad is not None and bool(torch.isfinite(B.grad).all())
    )
    # gamma = 1 keeps every component: nothing to penalise
    assert float(hetlora_regularizer(torch.ones(3, 4), torch.ones(4, 2), 1.0)) == 0.0
    # ⌊0.29 · 100⌋ = 29 despite 0.29 * 100 == 28.999999999999996
    B100, A100 = torch.ones(2, 100), torch.ones(100, 2)
    assert float(hetlora_regularizer(B100, A100, 0.29)) == pytest.approx(math.sqrt(71 * 2) ** 2)


def test_hetlora_prune_rank_criteria() -> None:
    # Prepare: rank 10 with gamma 0.8 -> candidate 8; head strong, tail weak or strong
    g = torch.Generator().manual_seed(7)
    B = torch.randn(OUT, 10, generator=g)
    A = torch.randn(10, IN, generator=g)
    weak_tail_B = B.clone()
    weak_tail_B[:, 8:] *= 1e-3
    # Execute / Assert: head-vs-tail criterion
    assert hetlora_prune_rank(weak_tail_B, A, 0.8, 10) == 8
    strong_tail_B = B.clone()
    strong_tail_B[:, 8:] *= 100.0
    assert hetlora_prune_rank(strong_tail_B, A, 0.8, 10) == 10
    # tail_norm_before: prune iff the tail shrank during local training
    tail = float(hetlora_regularizer(B, A, 0.8))
    assert hetlora_prune_rank(B, A, 0.8, 10, tail_norm_before=tail * 1.01) == 8
    assert hetlora_prune_rank(B, A, 0.8, 10, tail_norm_before=tail * 0.99) == 10
    # min_rank and a current rank below the tensor's rank
    assert hetlora_prune_rank(weak_tail_B, A, 0.5, 10, min_rank=9) == 9
    assert hetlora_prune_rank(weak_tail_B, A, 0.99, 10) == 9  # ⌊0.99 · 10⌋ = 9
    assert hetlora_prune_rank(weak_tail_B, A, 1.0, 10) == 10  # ⌊1 · 10⌋ = 10: nothing to prune
    assert hetlora_prune_rank(B, A, 0.99, 1) == 1  # ⌊0.99⌋ = 0 < min_rank
    assert hetlora_prune_rank(weak_tail_B, A, 0.5, 9) == 4  # only the leading 9 are active
    with pytest.raises(FlexLoraError, match="current_rank 11"):
        hetlora_prune_rank(B, A, 0.8, 11)


def test_hetlora_options_validated() -> None:
    clients = make_clients(MIXED)
    with pytest.raises(FlexLoraError, match="gamma must be in"):
        get_aggregation("hetlora").aggregate(clients, WEIGHTS, targets_for(MIXED), {"gamma": 1.5})
    with pytest.raises(FlexLoraError, match="weighting='norm' is not one of"):
        get_aggregation("hetlora").aggregate(
            clients, WEIGHTS, targets_for(MIXED), {"weighting": "norm"}
        )


# --- flora ---------------------------------------------------------------------------


def test_flora_stacks_exactly_and_merges() -> None:
    # Prepare
    clients = make_clients(MIXED, seed=8)
    targets = targets_for(MIXED)
    # Execute
    result = get_aggregation("flora").aggregate(clients, WEIGHTS, targets, F64)
    # Assert
    assert result.client_factors is None and result.merge_into_base
    for module in MODULES:
        dW = sum((w / 100.0) * effective(c[module]) for c, w in zip(clients, WEIGHTS, strict=True))
        g = result.global_update[module]
        assert g.B.shape == (OUT, 10) and g.A.shape == (10, IN)
        torch.testing.assert_close(g.B @ g.A, dW, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            g.B[:, :2], 0.1 * clients[0][module].scaling * clients[0][module].B
        )
        assert result.diagnostics["global_rank"][module] == 10
        assert result.diagnostics["discarded_energy"][module]["2"] == pytest.approx(
            energy_of(dW, 5), abs=1e-12
        )


# --- ffa -----------------------------------------------------------------------------


def ffa_clients(ranks: Sequence[int], seed: int) -> list[dict[str, LoraFactors]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            m: LoraFactors(
                torch.randn(OUT, r, generator=g, dtype=torch.float64),
                ffa_shared_A(IN, r, seed=42, module_name=m).double(),
                lora_scaling(16.0, r),
            )
            for m in MODULES
        }
        for r in ranks
    ]


def test_ffa_shared_A_is_deterministic_nested_and_kaiming() -> None:
    a8 = ffa_shared_A(1000, 8, seed=1, module_name="layers.0.q_proj")
    a3 = ffa_shared_A(1000, 3, seed=1, module_name="layers.0.q_proj")
    assert a8.shape == (8, 1000) and a8.dtype == torch.float32
    assert torch.equal(a8[:3], a3)
    assert torch.equal(a8, ffa_shared_A(1000, 8, seed=1, module_name="layers.0.q_proj"))
    assert not torch.equal(a8, ffa_shared_A(1000, 8, seed=2, module_name="layers.0.q_proj"))
    assert not torch.equal(a8, ffa_shared_A(1000, 8, seed=1, module_name="layers.0.v_proj"))
    bound = 1.0 / math.sqrt(1000)
    assert float(a8.abs().max()) <= bound
    # U(-b, b) has variance b²/3
    assert float(a8.var()) == pytest.approx(bound**2 / 3, rel=0.05)


def test_ffa_averages_B_and_keeps_shared_A() -> None:
    # Prepare
    ranks = [2, 3, 5]
    clients = ffa_clients(ranks, seed=9)
    targets = {
        k: TargetSpec({m: r for m in MODULES}, {m: lora_scaling(16.0, r) for m in MODULES})
        for k, r in enumerate(ranks)
    }
    # Execute
    result = get_aggregation("ffa").aggregate(clients, WEIGHTS, targets, F64)
    # Assert
    for module in MODULES:
        shared = ffa_shared_A(IN, 5, seed=42, module_name=module).double()
        B_ref, _ = padded_reference(clients, WEIGHTS, module)
        dW = sum((w / 100.0) * effective(c[module]) for c, w in zip(clients, WEIGHTS, strict=True))
        g = result.global_update[module]
        torch.testing.assert_close(g.B @ g.A, dW, rtol=0, atol=1e-12)  # exact
        for key, r in enumerate(ranks):
            f = result.client_factors[key][module]  # type: ignore[index]
            torch.testing.assert_close(f.A, shared[:r], rtol=0, atol=1e-12)
            torch.testing.assert_close(
                f.B, B_ref[:, :r] / lora_scaling(16.0, r), rtol=0, atol=1e-12
            )


def test_ffa_seed_option_extends_A_beyond_the_largest_client() -> None:
    clients = ffa_clients([2, 3], seed=10)
    targets = {"big": TargetSpec({m: 6 for m in MODULES}, {m: 1.0 for m in MODULES})}
    seeded = get_aggregation("ffa").aggregate(
        clients, [1.0, 1.0], targets, {**F64, "seed": 42, "shared_a_rtol": 1e-6}
    )
    f = seeded.client_factors["big"]["v"]  # type: ignore[index]
    torch.testing.assert_close(f.A, ffa_shared_A(IN, 6, 42, "v").double(), rtol=0, atol=0)
    unseeded = get_aggregation("ffa").aggregate(clients, [1.0, 1.0], targets, F64)
    assert float(unseeded.client_factors["big"]["v"].A[3:].abs().max()) == 0.0  # type: ignore[index]


def test_ffa_rejects_a_client_with_a_different_A() -> None:
    clients = ffa_clients([2, 3, 5], seed=11)
    f = clients[1]["v"]
    clients[1] = {**clients[1], "v": LoraFactors(f.B, f.A * (1 + 1e-3), f.scaling)}
    with pytest.raises(
        FlexLoraError, match=r"ffa: client 1, module 'v': A differs from the shared A"
    ):
        get_aggregation("ffa").aggregate(clients, WEIGHTS, targets_for(MIXED), F64)
    with pytest.raises(FlexLoraError, match="client 0, module 'q'"):
        get_aggregation("ffa").aggregate(clients, WEIGHTS, targets_for(MIXED), {**F64, "seed": 7})
