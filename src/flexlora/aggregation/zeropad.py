"""Zero-padding: the naive heterogeneous-rank baseline.

Per module, with r_max the largest client rank, every client is zero-padded to r_max
(zero columns of B, zero rows of A) with its scaling folded into B, and the padded
factors are averaged with the data weights:
    B̄ = Σ p_k s_k pad(B_k)   (out, r_max)
    Ā = Σ p_k pad(A_k)       (r_max, in)
A recipient of rank r and scaling s takes the leading r columns / rows: B = B̄[:, :r] / s,
A = Ā[:r] (zero-padded further when r > r_max). The global update is B̄ Ā at rank r_max.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    ValidatedInputs,
    compute_dtype,
    fit_rank,
    global_spectrum,
    new_diagnostics,
    padded_average,
    parse_options,
    validate_inputs,
)
from flexlora.lora import AdapterFactors, LoraFactors


@dataclass(frozen=True)
class ZeroPadOptions(DtypeOptions):
    """Options of the zeropad method."""


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """Zero-pad to the largest rank, data-weighted average, truncate per recipient."""
    opts = parse_options(ZeroPadOptions, options, "zeropad")
    inputs = validate_inputs(clients, weights, targets)
    weights_by_module = {module: inputs.probabilities for module in inputs.modules}
    return padded_aggregate(clients, targets, inputs, weights_by_module, opts.dtype, "zeropad")


def padded_aggregate(
    clients: Sequence[AdapterFactors],
    targets: Mapping[Hashable, TargetSpec],
    inputs: ValidatedInputs,
    weights_by_module: Mapping[str, Sequence[float]],
    dtype_name: str,
    method: str,
) -> AggregationResult:
    """Zero-pad, average with per-module weights (summing to 1), truncate per recipient.

    Shared by zeropad (data weights) and hetlora (sparsity weights).
    """
    dtype = compute_dtype(dtype_name)
    diagnostics = new_diagnostics(method)
    client_factors: dict[Hashable, dict[str, LoraFactors]] = {key: {} for key in targets}
    global_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        r_max = max(client[module].rank for client in clients)
        B_avg, A_avg = padded_average(
            clients, module, weights_by_module[module], r_max, dtype, inputs.device
        )  # (out, r_max), (r_max, in)
        out_dtype = inputs.output_dtypes[module]
        for key, spec in targets.items():
            B, A = truncate_for_recipient(B_avg, A_avg, spec.ranks[module], spec.scalings[module])
            client_factors[key][module] = LoraFactors(
                B.to(out_dtype), A.to(out_dtype), spec.scalings[module]
            )
        S, energies, global_rank = global_spectrum(B_avg, A_avg, targets, module)
        global_update[module] = GlobalUpdate(B_avg.to(out_dtype), A_avg.to(out_dtype), S)
        diagnostics["discarded_energy"][module] = energies
        diagnostics["global_rank"][module] = global_rank
    return AggregationResult(client_factors, global_update, False, diagnostics)


def truncate_for_recipient(
    B_folded: Tensor, A: Tensor, rank: int, scaling: float
) -> tuple[Tensor, Tensor]:
    """Leading `rank` components of scaling-folded factors, unfolded for the recipient.

    B_folded (out, r), A (r, in) -> B (out, rank) = B_folded[:, :rank] / scaling,
    A (rank, in), zero-padded when rank > r.
    """
    return fit_rank(B_folded / scaling, A, rank)
