"""FedIT (Zhang et al., "Towards Building the Federated GPT", ICASSP 2024): FedAvg of A and B.

Per module, with equal ranks r across clients and recipients:
    B̄ = Σ p_k s_k B_k   (out, r)   each client's scaling folded into its B once
    Ā = Σ p_k A_k       (r, in)
A recipient with scaling s gets B = B̄ / s, A = Ā. With equal scalings this is plain
FedAvg of B and A; folding makes mixed alphas (or rsLoRA) average the effective B·s.
The global update is B̄ Ā, which is *not* Σ p_k s_k B_k A_k: averaging the factors
separately is FedIT's known inexactness.

Mixed ranks are an error: FedAvg of factors of different shapes has no meaning.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    common_rank,
    compute_dtype,
    global_spectrum,
    new_diagnostics,
    padded_average,
    parse_options,
    validate_inputs,
)
from flexlora.lora import AdapterFactors, LoraFactors


@dataclass(frozen=True)
class FedItOptions(DtypeOptions):
    """Options of the fedit method."""


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """FedAvg of the (scaling-folded) B and of A, separately; equal ranks only."""
    opts = parse_options(FedItOptions, options, "fedit")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    diagnostics = new_diagnostics("fedit")
    client_factors: dict[Hashable, dict[str, LoraFactors]] = {key: {} for key in targets}
    global_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        rank = common_rank(clients, targets, module, "fedit needs equal ranks")
        B_avg, A_avg = padded_average(
            clients, module, inputs.probabilities, rank, dtype, inputs.device
        )
        out_dtype = inputs.output_dtypes[module]
        for key, spec in targets.items():
            scaling = spec.scalings[module]
            client_factors[key][module] = LoraFactors(
                (B_avg / scaling).to(out_dtype), A_avg.to(out_dtype), scaling
            )
        S, energies, global_rank = global_spectrum(B_avg, A_avg, targets, module)
        global_update[module] = GlobalUpdate(B_avg.to(out_dtype), A_avg.to(out_dtype), S)
        diagnostics["discarded_energy"][module] = energies
        diagnostics["global_rank"][module] = global_rank
        diagnostics.setdefault("rank", {})[module] = rank
    return AggregationResult(client_factors, global_update, False, diagnostics)
