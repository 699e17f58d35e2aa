"""FLoRA (Wang et al., NeurIPS 2024, "FLoRA: Federated Fine-Tuning Large Language Models
with Heterogeneous Low-Rank Adaptations"): stack the factors, which is exact.

Per module the global update is
    B = [p_1 s_1 B_1, …, p_K s_K B_K]   (out, R)
    A = [A_1; …; A_K]                   (R, in)
with R = Σ r_k, so B @ A = Σ p_k s_k B_k A_k exactly. The engine merges it into the
frozen base weights (merge_into_base=True) and every client starts a fresh LoRA at its
own rank next round, so there are no client factors to hand back.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    compute_dtype,
    global_spectrum,
    new_diagnostics,
    parse_options,
    stack_scaled_factors,
    validate_inputs,
)
from flexlora.lora import AdapterFactors


@dataclass(frozen=True)
class FloraOptions(DtypeOptions):
    """Options of the flora method."""


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """Stacked factors as the global update; no client factors; merge into the base.

    The diagnostics still report, per target, the energy a rank-r truncation of the
    stacked update would discard, for comparison with the other methods.
    """
    opts = parse_options(FloraOptions, options, "flora")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    diagnostics = new_diagnostics("flora")
    global_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        Bc, Ac = stack_scaled_factors(clients, module, inputs.probabilities, dtype, inputs.device)
        S, energies, global_rank = global_spectrum(Bc, Ac, targets, module)
        out_dtype = inputs.output_dtypes[module]
        global_update[module] = GlobalUpdate(Bc.to(out_dtype), Ac.to(out_dtype), S)
        diagnostics["discarded_energy"][module] = energies
        diagnostics["global_rank"][module] = global_rank
    return AggregationResult(None, global_update, True, diagnostics)
