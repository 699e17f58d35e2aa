"""Every bad input is a one-line FlexLoraError naming the client / module / option at fault,
for every method alike (they share flexlora.aggregation.common)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from flexlora.aggregation import AGGREGATIONS, TargetSpec, get_aggregation
from flexlora.aggregation.ffa import ffa_shared_A
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors

OUT, IN, RANK = 12, 10, 3
MODULES = ("q", "v")


def make_clients(n: int = 3) -> list[dict[str, LoraFactors]]:
    """Equal ranks and the FFA shared A, so that only the injected fault can fail."""
    g = torch.Generator().manual_seed(0)
    return [
        {
            m: LoraFactors(torch.randn(OUT, RANK, generator=g), ffa_shared_A(IN, RANK, 0, m), 2.0)
            for m in MODULES
        }
        for _ in range(n)
    ]


def make_targets(n: int = 3) -> dict[int, TargetSpec]:
    return {k: TargetSpec({m: RANK for m in MODULES}, {m: 2.0 for m in MODULES}) for k in range(n)}


def replace(
    clients: list[dict[str, LoraFactors]], k: int, module: str, **changes: Any
) -> list[dict[str, LoraFactors]]:
    f = clients[k][module]
    fields = {"B": f.B, "A": f.A, "scaling": f.scaling, **changes}
    out = [dict(c) for c in clients]
    out[k][module] = LoraFactors(fields["B"], fields["A"], fields["scaling"])
    return out


def raises(method: str, clients: Any, weights: Any, targets: Any, options: Any = None) -> str:
    with pytest.raises(FlexLoraError) as info:
        get_aggregation(method).aggregate(clients, weights, targets, options or {})
    message = str(info.value)
    assert "\n" not in message
    return message


ALL = sorted(AGGREGATIONS)


@pytest.mark.parametrize("method", ALL)
def test_valid_inputs_pass(method: str) -> None:
    result = get_aggregation(method).aggregate(make_clients(), [1, 2, 3], make_targets(), {})
    assert set(result.global_update) == set(MODULES)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("factor", ["B", "A"])
def test_non_finite_factor_names_client_and_module(method: str, bad: float, factor: str) -> None:
    clients = make_clients()
    tensor = getattr(clients[1]["v"], factor).clone()
    tensor[0, 0] = bad
    message = raises(
        method, replace(clients, 1, "v", **{factor: tensor}), [1, 1, 1], make_targets()
    )
    assert message == f"client 1, module 'v': {factor} contains NaN or Inf"


@pytest.mark.parametrize("method", ALL)
def test_mismatched_shapes(method: str) -> None:
    clients = make_clients()
    bad = replace(clients, 2, "q", B=torch.randn(OUT + 1, RANK))
    message = raises(method, bad, [1, 1, 1], make_targets())
    assert message == (
        "client 2, module 'q': update shape (out, in) = (13, 10) differs from client 0's (12, 10)"
    )


@pytest.mark.parametrize("method", ALL)
def test_missing_and_extra_module(method: str) -> None:
    clients = make_clients()
    missing = [dict(c) for c in clients]
    del missing[1]["v"]
    assert raises(method, missing, [1, 1, 1], make_targets()) == (
        "client 1: module 'v' is missing (client 0 has it)"
    )
    extra = [dict(c) for c in clients]
    extra[2]["k"] = clients[2]["q"]
    assert (
        raises(method, extra, [1, 1, 1], make_targets())
        == "client 2: module 'k' is not in client 0"
    )


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([1, 0, 1], "client 1: weight is zero (a client with no data cannot be aggregated)"),
        ([1, 1, -2], "client 2: weight -2.0 is negative"),
        ([1, math.nan, 1], "client 1: weight nan is not finite"),
        ([math.inf, 1, 1], "client 0: weight inf is not finite"),
        ([1, 1], "got 2 weights for 3 clients"),
        ([1, 1, 1, 1], "got 4 weights for 3 clients"),
        ([0, 0, 0], "client 0: weight is zero (a client with no data cannot be aggregated)"),
        ([1, "x", 1], "client 1: weight 'x' is not a number"),
    ],
)
def test_bad_weights(method: str, weights: list[Any], expected: str) -> None:
    assert raises(method, make_clients(), weights, make_targets()) == expected


@pytest.mark.parametrize("method", ALL)
def test_no_clients(method: str) -> None:
    assert raises(method, [], [], {}) == "no clients to aggregate"


@pytest.mark.parametrize("method", ALL)
def test_targets_must_name_every_module_with_valid_rank_and_scaling(method: str) -> None:
    clients = make_clients()
    missing = {0: TargetSpec({"q": RANK}, {"q": 2.0, "v": 2.0})}
    assert (
        raises(method, clients, [1, 1, 1], missing) == "target 0: no rank or scaling for module 'v'"
    )
    zero_rank = {"c": TargetSpec({m: 0 for m in MODULES}, {m: 2.0 for m in MODULES})}
    assert (
        raises(method, clients, [1, 1, 1], zero_rank)
        == "target 'c', module 'q': rank must be an int >= 1, got 0"
    )
    bad_scaling = {0: TargetSpec({m: RANK for m in MODULES}, {m: 0.0 for m in MODULES})}
    assert "scaling must be finite and non-zero" in raises(method, clients, [1, 1, 1], bad_scaling)


@pytest.mark.parametrize("method", ALL)
def test_non_finite_client_scaling(method: str) -> None:
    bad = replace(make_clients(), 0, "q", scaling=math.nan)
    assert (
        raises(method, bad, [1, 1, 1], make_targets())
        == "client 0, module 'q': scaling nan is not finite"
    )


@pytest.mark.parametrize("method", ALL)
def test_unknown_option_lists_known_ones(method: str) -> None:
    message = raises(method, make_clients(), [1, 1, 1], make_targets(), {"bogus": 1})
    known = sorted(f for f in get_aggregation(method).options.__dataclass_fields__)
    assert message == f"{method}: unknown option(s) ['bogus']; known options are {known}"


@pytest.mark.parametrize("method", ALL)
def test_bad_dtype_option(method: str) -> None:
    message = raises(method, make_clients(), [1, 1, 1], make_targets(), {"dtype": "float16"})
    assert message == f"{method}: option dtype='float16' is not one of ['float32', 'float64']"


def test_ill_typed_options() -> None:
    clients, targets = make_clients(), make_targets()
    assert raises("flexlora", clients, [1, 1, 1], targets, {"power_iters": 2.5}) == (
        "flexlora: option power_iters must be an integer, got 2.5"
    )
    assert raises("flexlora", clients, [1, 1, 1], targets, {"oversample": True}) == (
        "flexlora: option oversample must be an integer, got True"
    )
    assert raises("flexlora", clients, [1, 1, 1], targets, {"oversample": -1}) == (
        "flexlora: oversample must be >= 0, got -1"
    )
    assert raises("flexlora", clients, [1, 1, 1], targets, {"svd": "lapack"}) == (
        "flexlora: option svd='lapack' is not one of ['auto', 'exact', 'fast']"
    )
    assert raises("hetlora", clients, [1, 1, 1], targets, {"gamma": "high"}) == (
        "hetlora: option gamma must be a number, got 'high'"
    )
    # an int where a float is expected is fine
    get_aggregation("hetlora").aggregate(clients, [1, 1, 1], targets, {"gamma": 1})


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(FlexLoraError) as info:
        get_aggregation("fedavg")
    assert str(info.value) == (
        "unknown aggregation method 'fedavg'; "
        "known methods: fedex, fedit, ffa, flexlora, flora, florist, hetlora, zeropad"
    )


def test_method_options_document_every_method() -> None:
    from flexlora.methods import NAMED

    assert set(NAMED) == set(AGGREGATIONS)  # every aggregation runs in the engines by name
    for cls in (a.options for a in AGGREGATIONS.values()):
        cls()  # defaults are valid
        assert "dtype" in cls.__dataclass_fields__
