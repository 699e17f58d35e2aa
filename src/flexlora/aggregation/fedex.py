"""FedEx-LoRA (Singhal et al., ACL 2025, "FedEx-LoRA: Exact Aggregation for Federated and
Efficient Fine-Tuning of Foundation Models"): FedAvg of A and B, plus the exact residual
folded into the frozen base weights.

Per module, with one rank r shared by every client and recipient and each client's
scaling folded into its B once:
    B̄ = Σ p_k s_k B_k   (out, r)          Ā = Σ p_k A_k   (r, in)
    dW = Σ p_k s_k B_k A_k                (the exact aggregate)
    residual = dW − B̄ Ā = Σ p_k s_k B_k (A_k − Ā)
A recipient with scaling s_j gets B = B̄ / s_j, A = Ā (so s_j · B A = B̄ Ā whatever the
clients' alphas or rsLoRA), and the residual goes into the frozen base weights
(`AggregationResult.base_update`), so that every recipient's model is
W0 + residual + B̄ Ā = W0 + dW exactly. The global update is dW itself, as the stacked
factors [p_1 s_1 B_1, …, p_K s_K B_K] and [A_1; …; A_K] (rank ≤ R = K r, exact).

What the residual costs: in the original method it is a full-size (out × in) matrix that
every client must add to its copy of the base weights each round, a full-size transfer
per module per round that costs what sending dW itself costs. flexlora represents it
exactly as stacked factors, B = [p_1 s_1 B_1, …, p_K s_K B_K] (out, R) and
A = [A_1 − Ā; …; A_K − Ā] (R, in), of rank ≤ R (not R + r: the columns of B̄ already lie
in the span of the stacked B). That is R (out + in) numbers against out · in, smaller
while R = K r < out · in / (out + in) (2048 for a 4096 × 4096 layer); in a real
deployment every client would still have to receive it each round.

Mixed ranks are an error: averaging factors of different shapes has no meaning (use
flexlora or zeropad). Diagnostics: diagnostics["residual_relative_norm"][module] =
‖dW − B̄Ā‖_F / ‖dW‖_F (0 when dW = 0), how far plain FedAvg of the factors (fedit) would
be from dW; diagnostics["discarded_energy"] is 0 for every recipient, since the
recipient's model (base with the residual, plus its factors) carries all of dW.

The `flexlora aggregate` command writes the global update (dW, residual included) to
global/ and each client's B̄ / s_j, Ā to client-<i>/; a client adapter alone, loaded on
the original base, gives W0 + B̄Ā (fedit's inexact average), because an adapter folder
cannot carry a change of base weights. diagnostics["note"] says so in summary.json. An
engine must fold `base_update` into its base weights and then take B̄Ā (not dW again) as
the global model's update on top of that base; see `AggregationResult.base_update`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    common_rank,
    compute_dtype,
    global_spectrum,
    new_diagnostics,
    padded_average,
    parse_options,
    stack_scaled_factors,
    validate_inputs,
)
from flexlora.lora import AdapterFactors, LoraFactors
from flexlora.svd import factored_singular_values

NOTE = (
    "fedex: the residual dW - mean(sB)·mean(A) is folded into the frozen base weights "
    "(base_update); each recipient's factors continue on top of that base. An adapter "
    "holding a recipient's factors alone, on the original base, gives W0 + mean(sB)·mean(A), "
    "not W0 + dW; the global update (dW) includes the residual."
)


@dataclass(frozen=True)
class FedExOptions(DtypeOptions):
    """Options of the fedex method."""


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """FedAvg of the (scaling-folded) B and of A, the exact residual into the base."""
    opts = parse_options(FedExOptions, options, "fedex")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    diagnostics = new_diagnostics("fedex")
    diagnostics["rank"] = {}
    diagnostics["residual_relative_norm"] = {}
    diagnostics["residual_rank"] = {}
    diagnostics["note"] = NOTE
    client_factors: dict[Hashable, dict[str, LoraFactors]] = {key: {} for key in targets}
    global_update: dict[str, GlobalUpdate] = {}
    base_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        rank = common_rank(
            clients,
            targets,
            module,
            "fedex needs one rank per module (it averages B and A entrywise)",
            "; use flexlora or zeropad for mixed ranks",
        )
        Bc, Ac = stack_scaled_factors(clients, module, inputs.probabilities, dtype, inputs.device)
        B_avg, A_avg = padded_average(
            clients, module, inputs.probabilities, rank, dtype, inputs.device
        )  # (out, r), (r, in)
        # dW − B̄Ā = Σ p_k s_k B_k (A_k − Ā) = Bc @ (Ac − [Ā; …; Ā]): exact, rank ≤ R.
        A_res = Ac - A_avg.repeat(len(clients), 1)  # (R, in) − (K·r, in) -> (R, in)
        out_dtype = inputs.output_dtypes[module]
        for key, spec in targets.items():
            scaling = spec.scalings[module]
            client_factors[key][module] = LoraFactors(
                (B_avg / scaling).to(out_dtype), A_avg.to(out_dtype), scaling
            )
        S, _, global_rank = global_spectrum(Bc, Ac, targets, module)
        global_update[module] = GlobalUpdate(Bc.to(out_dtype), Ac.to(out_dtype), S)
        base_update[module] = GlobalUpdate(Bc.to(out_dtype), A_res.to(out_dtype))
        diagnostics["discarded_energy"][module] = {str(key): 0.0 for key in targets}
        diagnostics["global_rank"][module] = global_rank
        diagnostics["rank"][module] = rank
        diagnostics["residual_rank"][module] = int(A_res.shape[0])
        diagnostics["residual_relative_norm"][module] = _relative_norm(Bc, A_res, S)
    return AggregationResult(client_factors, global_update, False, diagnostics, base_update)


def _relative_norm(B: torch.Tensor, A: torch.Tensor, dW_singular_values: torch.Tensor) -> float:
    """‖B @ A‖_F / ‖dW‖_F, from the factors' small QR core (no out × in product when
    R < min(out, in), and no cancellation of Gram products); 0 when dW = 0."""
    total = float(dW_singular_values.double().square().sum())
    if total <= 0.0:
        return 0.0
    residual = float(factored_singular_values(B, A).double().square().sum())
    return math.sqrt(residual / total)
