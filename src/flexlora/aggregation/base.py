"""The contract every aggregation method follows.

A method is a pure function

    aggregate(clients, weights, targets, options) -> AggregationResult

over tensors. It knows nothing of models, files or rounds; engines and the
`flexlora aggregate` command only call it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from flexlora.lora import AdapterFactors, LoraFactors


@dataclass(frozen=True)
class TargetSpec:
    """What one recipient of the aggregate should receive: a rank and a scaling per module.

    A recipient is a client (the `aggregate` command) or a rank class shared by many
    clients (the engine). `ranks[m]` and `scalings[m]` exist for every module m.
    """

    ranks: Mapping[str, int]
    scalings: Mapping[str, float]


@dataclass(frozen=True)
class GlobalUpdate:
    """One module's global update `dW = B @ A` (scaling folded in: B (out, R), A (R, in)).

    `singular_values` holds dW's singular values in descending order when the method
    computed them (all of them, or at least the leading ones), else None.
    """

    B: Tensor
    A: Tensor
    singular_values: Tensor | None = None


@dataclass
class AggregationResult:
    """What a method hands back.

    client_factors: for every target key, the factors that recipient starts the next
        round from (module -> LoraFactors at the target's rank and scaling), or None for
        methods whose clients start a fresh LoRA each round (FLoRA).
    global_update: module -> the global update dW (never truncated, except by florist,
        whose global model is the rank-r* truncation by design).
    merge_into_base: True when the engine must fold `global_update` into the frozen base
        weights after this round (FLoRA); False when the global model is W0 + dW.
    diagnostics: JSON-serialisable figures; at least
        diagnostics["discarded_energy"][module][str(target_key)] = 1 - ||T_r(dW)||² / ||dW||²
    base_update: module -> an update the engine folds into the frozen base weights after
        this round, before the recipients continue from `client_factors` (FedEx-LoRA's
        residual dW − B̄Ā); None for methods without one. It is part of `global_update`,
        not added to it: the global model is base + global_update, which equals
        (base + base_update) + a recipient's scaling · B @ A. So once it is folded, the
        global model's update on top of the new base is global_update − base_update
        (fedex: B̄Ā, any recipient's scaling · B @ A), not global_update again. An engine
        or writer that drops it leaves every recipient short of the global model by it.
    """

    client_factors: dict[Hashable, dict[str, LoraFactors]] | None
    global_update: dict[str, GlobalUpdate]
    merge_into_base: bool = False
    diagnostics: dict[str, Any] = field(default_factory=dict)
    base_update: dict[str, GlobalUpdate] | None = None


AggregateFn = Callable[
    [Sequence[AdapterFactors], Sequence[float], Mapping[Hashable, TargetSpec], Mapping[str, Any]],
    AggregationResult,
]
