"""Aggregation methods, chosen by name.

Every method is a pure function with the signature of `base.AggregateFn`:

    aggregate(clients, weights, targets, options) -> AggregationResult

`METHODS` maps a name to its function, `get_method(name)` looks one up, and
`method_options[name]` is the dataclass documenting (and validating) its options:
an unknown option key, or a value of the wrong type or outside its choices, is a
FlexLoraError.
"""

from __future__ import annotations

from flexlora.aggregation import fedex, fedit, ffa, flexlora, flora, florist, hetlora, zeropad
from flexlora.aggregation.base import AggregateFn, AggregationResult, GlobalUpdate, TargetSpec
from flexlora.errors import FlexLoraError

METHODS: dict[str, AggregateFn] = {
    "flexlora": flexlora.aggregate,
    "fedit": fedit.aggregate,
    "zeropad": zeropad.aggregate,
    "hetlora": hetlora.aggregate,
    "flora": flora.aggregate,
    "ffa": ffa.aggregate,
    "florist": florist.aggregate,
    "fedex": fedex.aggregate,
}

method_options: dict[str, type] = {
    "flexlora": flexlora.FlexLoraOptions,
    "fedit": fedit.FedItOptions,
    "zeropad": zeropad.ZeroPadOptions,
    "hetlora": hetlora.HetLoraOptions,
    "flora": flora.FloraOptions,
    "ffa": ffa.FfaOptions,
    "florist": florist.FloristOptions,
    "fedex": fedex.FedExOptions,
}


def get_method(name: str) -> AggregateFn:
    """The aggregation function called `name`; FlexLoraError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise FlexLoraError(
            f"unknown aggregation method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


__all__ = [
    "METHODS",
    "AggregateFn",
    "AggregationResult",
    "GlobalUpdate",
    "TargetSpec",
    "get_method",
    "method_options",
]
