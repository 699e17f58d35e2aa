"""Aggregation methods, chosen by name: one registry.

Every method is a pure function with the signature of `base.AggregateFn`:

    aggregate(clients, weights, targets, options) -> AggregationResult

`AGGREGATIONS[name]` holds that function with the dataclass documenting (and validating)
its options: an unknown option key, or a value of the wrong type or outside its choices,
is a FlexLoraError. `get_aggregation(name)` looks one up.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexlora.aggregation import fedex, fedit, ffa, flexlora, flora, florist, hetlora, zeropad
from flexlora.aggregation.base import AggregateFn, AggregationResult, GlobalUpdate, TargetSpec
from flexlora.errors import FlexLoraError


@dataclass(frozen=True)
class Aggregation:
    """One server-side method: its function, its options dataclass, what it assumes."""

    name: str
    aggregate: AggregateFn
    options: type
    single_rank: bool = False
    """It averages factors: every client must hold one and the same rank."""
    shared_A: bool = False
    """It averages B over an A every client keeps frozen at a shared seeded draw."""


AGGREGATIONS: dict[str, Aggregation] = {
    a.name: a
    for a in (
        Aggregation("flexlora", flexlora.aggregate, flexlora.FlexLoraOptions),
        Aggregation("fedit", fedit.aggregate, fedit.FedItOptions, single_rank=True),
        Aggregation("zeropad", zeropad.aggregate, zeropad.ZeroPadOptions),
        Aggregation("hetlora", hetlora.aggregate, hetlora.HetLoraOptions),
        Aggregation("flora", flora.aggregate, flora.FloraOptions),
        Aggregation("ffa", ffa.aggregate, ffa.FfaOptions, shared_A=True),
        Aggregation("florist", florist.aggregate, florist.FloristOptions),
        Aggregation("fedex", fedex.aggregate, fedex.FedExOptions, single_rank=True),
    )
}


def get_aggregation(name: str) -> Aggregation:
    """The aggregation called `name`; FlexLoraError listing the known ones otherwise."""
    try:
        return AGGREGATIONS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATIONS))
        raise FlexLoraError(
            f"unknown aggregation method {name!r}; known methods: {known}"
        ) from None


__all__ = [
    "AGGREGATIONS",
    "AggregateFn",
    "Aggregation",
    "AggregationResult",
    "GlobalUpdate",
    "TargetSpec",
    "get_aggregation",
]
