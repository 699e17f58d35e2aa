"""The fedex method against float64 dense references: W0 + residual + s_j B_j A_j = W0 + dW."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from flexlora.aggregation import TargetSpec, get_aggregation
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling

OUT, IN = 24, 20
MODULES = ("q", "v")
# (rank, alpha, rslora): one rank, different alphas and rsLoRA, so the scalings differ
EQUAL = ((4, 16.0, False), (4, 8.0, True), (4, 32.0, False))
WEIGHTS = (10.0, 30.0, 60.0)
F64 = {"dtype": "float64"}

fedex = get_aggregation("fedex").aggregate


def make_clients(
    specs: Sequence[tuple[int, float, bool]] = EQUAL, seed: int = 0
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


def reference_dW(clients, weights, module: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Σ p_k s_k B_k A_k in float64: (out, r) @ (r, in) -> (out, in)."""
    total = sum(weights)
    return sum(
        (
            (w / total) * c[module].scaling * (c[module].B.double() @ c[module].A.double())
            for c, w in zip(clients, weights, strict=True)
        ),
        start=torch.zeros(OUT, IN, dtype=torch.float64),
    )


def reference_averages(clients, weights, module: str) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """B̄ = Σ p_k s_k B_k, Ā = Σ p_k A_k in float64."""
    p = [w / sum(weights) for w in weights]
    B = sum(pk * c[module].scaling * c[module].B.double() for c, pk in zip(clients, p, strict=True))
    A = sum(pk * c[module].A.double() for c, pk in zip(clients, p, strict=True))
    return B, A  # type: ignore[return-value]


def effective(f: LoraFactors) -> torch.Tensor:
    return f.scaling * (f.B.double() @ f.A.double())


def product(update) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return update.B.double() @ update.A.double()  # (out, R) @ (R, in) -> (out, in)


def test_base_plus_recipient_factors_is_the_exact_aggregate() -> None:
    # Prepare: recipients with the clients' scalings and one with a scaling of its own
    clients = make_clients()
    targets = targets_for(EQUAL)
    targets["other"] = TargetSpec({m: 4 for m in MODULES}, {m: 0.37 for m in MODULES})
    W0 = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    # Execute
    result = fedex(clients, WEIGHTS, targets, F64)
    # Assert
    assert result.client_factors is not None and result.base_update is not None
    assert not result.merge_into_base
    for module in MODULES:
        exact = W0 + reference_dW(clients, WEIGHTS, module)
        folded = W0 + product(result.base_update[module])
        for key, spec in targets.items():
            f = result.client_factors[key][module]
            assert f.scaling == spec.scalings[module] and f.B.shape == (OUT, 4)
            torch.testing.assert_close(folded + effective(f), exact, rtol=0, atol=1e-10)


def test_global_update_is_dW_as_stacked_factors() -> None:
    clients = make_clients()
    result = fedex(clients, WEIGHTS, targets_for(EQUAL), F64)
    for module in MODULES:
        dW = reference_dW(clients, WEIGHTS, module)
        g = result.global_update[module]
        assert g.B.shape == (OUT, 12) and g.A.shape == (12, IN)  # R = K r
        torch.testing.assert_close(product(g), dW, rtol=0, atol=1e-10)
        assert g.singular_values is not None
        torch.testing.assert_close(
            g.singular_values, torch.linalg.svdvals(dW)[:12], rtol=1e-10, atol=0
        )
        assert result.diagnostics["global_rank"][module] == 12


def test_recipients_get_the_folded_averages_and_the_base_the_residual() -> None:
    # Prepare
    clients = make_clients(seed=1)
    targets = targets_for(EQUAL)
    # Execute
    result = fedex(clients, WEIGHTS, targets, F64)
    # Assert
    assert result.base_update is not None
    for module in MODULES:
        B_ref, A_ref = reference_averages(clients, WEIGHTS, module)
        for key, spec in targets.items():
            f = result.client_factors[key][module]  # type: ignore[index]
            torch.testing.assert_close(f.B, B_ref / spec.scalings[module], rtol=0, atol=1e-12)
            torch.testing.assert_close(f.A, A_ref, rtol=0, atol=1e-12)
        dW = reference_dW(clients, WEIGHTS, module)
        residual = dW - B_ref @ A_ref  # (out, r) @ (r, in) -> (out, in)
        res = result.base_update[module]
        assert res.B.shape == (OUT, 12) and res.A.shape == (12, IN)  # rank <= R, not R + r
        torch.testing.assert_close(product(res), residual, rtol=0, atol=1e-10)
        assert result.diagnostics["residual_rank"][module] == 12
        assert result.diagnostics["rank"][module] == 4
        expected = float(torch.linalg.matrix_norm(residual) / torch.linalg.matrix_norm(dW))
        assert expected > 0.1  # random clients: FedAvg of the factors is far from dW
        assert result.diagnostics["residual_relative_norm"][module] == pytest.approx(
            expected, rel=1e-10
        )
        assert result.diagnostics["discarded_energy"][module] == {"0": 0.0, "1": 0.0, "2": 0.0}
    assert "base" in result.diagnostics["note"]


def test_equal_scalings_match_the_papers_residual() -> None:
    # FedEx-LoRA with one scaling s: residual = s (Σ p_k B_k A_k − (Σ p_k B_k)(Σ p_k A_k)).
    specs = [(3, 8.0, False)] * 3
    clients = make_clients(specs, seed=2)
    result = fedex(clients, [1.0, 1.0, 2.0], targets_for(specs), F64)
    p = [0.25, 0.25, 0.5]
    for module in MODULES:
        Bs = [c[module].B for c in clients]
        As = [c[module].A for c in clients]
        mean_BA = sum(pk * (B @ A) for pk, B, A in zip(p, Bs, As, strict=True))
        mean_B = sum(pk * B for pk, B in zip(p, Bs, strict=True))
        mean_A = sum(pk * A for pk, A in zip(p, As, strict=True))
        expected = 8.0 / 3 * (mean_BA - mean_B @ mean_A)  # type: ignore[operator]
        torch.testing.assert_close(
            product(result.base_update[module]),  # type: ignore[index]
            expected,
            rtol=0,
            atol=1e-10,
        )
        f = result.client_factors[0][module]  # type: ignore[index]
        torch.testing.assert_close(f.B, mean_B, rtol=0, atol=1e-12)  # plain FedAvg of B


def test_identical_clients_leave_no_residual() -> None:
    (client,) = make_clients([(4, 8.0, True)], seed=3)
    targets = targets_for([(4, 8.0, True)])
    result = fedex([client, client, client], [1.0, 5.0, 2.0], targets, F64)
    assert result.base_update is not None
    for module in MODULES:
        assert float(product(result.base_update[module]).abs().max()) < 1e-12
        assert result.diagnostics["residual_relative_norm"][module] < 1e-12
        mine = result.client_factors[0][module]  # type: ignore[index]
        torch.testing.assert_close(effective(mine), effective(client[module]), rtol=0, atol=1e-12)


def test_zero_update_has_zero_relative_residual() -> None:
    (client,) = make_clients([(2, 4.0, False)])
    zero = {m: LoraFactors(torch.zeros_like(f.B), f.A, f.scaling) for m, f in client.items()}
    result = fedex([zero, zero], [1.0, 1.0], targets_for([(2, 4.0, False)]), F64)
    assert result.diagnostics["residual_relative_norm"]["q"] == 0.0
    assert float(result.client_factors[0]["q"].B.abs().max()) == 0.0  # type: ignore[index]


def test_float32_returns_the_clients_dtype() -> None:
    clients = [{m: f.to(dtype=torch.float32) for m, f in c.items()} for c in make_clients()]
    result = fedex(clients, WEIGHTS, targets_for(EQUAL), {})
    assert result.base_update is not None
    f = result.client_factors[1]["v"]  # type: ignore[index]
    assert f.B.dtype == torch.float32 and result.base_update["v"].A.dtype == torch.float32
    total = product(result.base_update["v"]) + effective(f)
    torch.testing.assert_close(total, reference_dW(clients, WEIGHTS, "v"), rtol=0, atol=1e-4)


def test_mixed_ranks_are_refused_with_the_way_out() -> None:
    specs = [(2, 16.0, False), (3, 8.0, True), (2, 32.0, False)]
    with pytest.raises(FlexLoraError) as info:
        fedex(make_clients(specs), WEIGHTS, targets_for(specs), F64)
    assert str(info.value) == (
        "fedex needs one rank per module (it averages B and A entrywise): module 'q' has "
        "rank 2 for clients [0, 2] and rank 3 for clients [1]; use flexlora or zeropad "
        "for mixed ranks"
    )


def test_target_rank_must_match_the_clients() -> None:
    clients = make_clients()
    targets = {"x": TargetSpec({m: 6 for m in MODULES}, {m: 1.0 for m in MODULES})}
    with pytest.raises(FlexLoraError) as info:
        fedex(clients, WEIGHTS, targets, F64)
    message = str(info.value)
    assert "target 'x' asks rank 6 for module 'q' but the clients have rank 4" in message
    assert "flexlora or zeropad" in message and "\n" not in message
