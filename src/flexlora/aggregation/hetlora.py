"""HetLoRA (Cho et al., EMNLP 2024, "Heterogeneous LoRA for Federated Fine-tuning of
On-Device Foundation Models").

Server side (`aggregate`): zero-pad every client to the largest rank, average the padded
factors with sparsity weights, and truncate to each recipient's rank. Client k's weight
on a module is S_k / Σ_j S_j with S_k = ‖s_k B_k A_k‖_F, the Frobenius norm of its
effective update (option weighting="sparsity", the paper's), or p_k S_k / Σ_j p_j S_j
(weighting="sparsity_x_data"). If every client's update on a module is zero the weights
fall back to the data weights p_k (the average of A still matters then).

Client side (called by the engine during and after local training):
- `hetlora_regularizer(B, A, gamma)`: ‖B[:, ⌊γr⌋:]‖_F · ‖A[⌊γr⌋:, :]‖_F, added to the local
  loss with weight `reg_lambda` so the trailing components shrink;
- `hetlora_prune_rank(...)`: rank self-pruning to ⌊γr⌋ when the trailing components are
  weak (criterion in its docstring).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from flexlora.aggregation.base import AggregationResult, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    compute_dtype,
    parse_options,
    validate_inputs,
)
from flexlora.aggregation.zeropad import padded_aggregate
from flexlora.errors import FlexLoraError
from flexlora.lora import AdapterFactors

logger = logging.getLogger(__name__)

# ⌊γ·r⌋ is computed with this slack so that e.g. γ = 0.29, r = 100 gives 29, not 28
# (0.29 * 100 == 28.999999999999996 in binary floating point).
_FLOOR_SLACK = 1e-9


@dataclass(frozen=True)
class HetLoraClientOptions:
    """HETLoRA's client side: the regulariser and the rank self-pruning (the hetlora
    recipe reads these; see `hetlora_regularizer` and `hetlora_prune_rank`)."""

    gamma: float = 0.99
    """Decay ratio γ in (0, 1]: pruning keeps ⌊γ r⌋ components; the regulariser hits the rest."""
    reg_lambda: float = 0.01
    """Weight λ of the tail-norm regulariser in the local loss; 0 switches the regulariser
    and the self-pruning off. HETLoRA's text gives no value we could confirm; 0.01 is what
    public reimplementations use, with γ = 0.99 (docs/methods.md)."""
    min_rank: int = 1
    """Self-pruning never goes below this rank."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise FlexLoraError(f"hetlora: gamma must be in (0, 1], got {self.gamma}")
        if self.reg_lambda < 0.0 or not math.isfinite(self.reg_lambda):
            raise FlexLoraError(
                f"hetlora: reg_lambda must be finite and >= 0, got {self.reg_lambda}"
            )
        if self.min_rank < 1:
            raise FlexLoraError(f"hetlora: min_rank must be >= 1, got {self.min_rank}")


@dataclass(frozen=True)
class HetLoraOptions(DtypeOptions, HetLoraClientOptions):
    """Options of the hetlora method: the server's weighting and dtype, and the client
    side's (the method `hetlora` takes all of them in one mapping)."""

    weighting: Literal["sparsity", "sparsity_x_data"] = "sparsity"
    """sparsity: S_k / Σ S_j (the paper); sparsity_x_data: p_k S_k / Σ p_j S_j."""


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """Zero-padding + sparsity-weighted average + truncation per recipient."""
    opts = parse_options(HetLoraOptions, options, "hetlora")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    weights_by_module: dict[str, list[float]] = {}
    for module in inputs.modules:
        norms = [
            update_norm(
                client[module].B.to(inputs.device, dtype), client[module].A.to(inputs.device, dtype)
            )
            * abs(client[module].scaling)
            for client in clients
        ]
        weights_by_module[module] = sparsity_weights(
            norms, inputs.probabilities, opts.weighting, module
        )
    result = padded_aggregate(clients, targets, inputs, weights_by_module, opts.dtype, "hetlora")
    result.diagnostics["hetlora_weights"] = weights_by_module
    return result


def update_norm(B: Tensor, A: Tensor) -> float:
    """‖B @ A‖_F without forming it: ‖BA‖_F² = Σ (BᵀB) ⊙ (AAᵀ), both (r, r)."""
    gram_b = B.mT @ B  # (r, out) @ (out, r) -> (r, r)
    gram_a = A @ A.mT  # (r, in) @ (in, r) -> (r, r)
    squared = float((gram_b * gram_a).sum())
    return math.sqrt(max(squared, 0.0))  # rounding can make a tiny norm² negative


def sparsity_weights(
    norms: Sequence[float], probabilities: Sequence[float], weighting: str, module: str
) -> list[float]:
    """Normalised aggregation weights from the clients' update norms S_k (see module doc)."""
    if weighting == "sparsity_x_data":
        raw = [s * p for s, p in zip(norms, probabilities, strict=True)]
    else:
        raw = list(norms)
    total = math.fsum(raw)
    if total <= 0.0:
        logger.warning(
            "hetlora: every client's update on module %s is zero; using the data weights", module
        )
        return list(probabilities)
    return [w / total for w in raw]


def pruned_rank(rank: int, gamma: float) -> int:
    """⌊γ · rank⌋: how many leading components HetLoRA keeps."""
    if not 0.0 < gamma <= 1.0:
        raise FlexLoraError(f"hetlora: gamma must be in (0, 1], got {gamma}")
    return math.floor(gamma * rank + _FLOOR_SLACK)


def hetlora_regularizer(B: Tensor, A: Tensor, gamma: float) -> Tensor:
    """The tail-norm regulariser ‖B[:, ⌊γr⌋:]‖_F · ‖A[⌊γr⌋:, :]‖_F (differentiable, 0-d).

    B: (out, r), A: (r, in). Zero when ⌊γr⌋ = r (nothing to penalise).
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise FlexLoraError(
            "hetlora_regularizer needs B (out, r) and A (r, in), "
            f"got {tuple(B.shape)} and {tuple(A.shape)}"
        )
    keep = pruned_rank(int(A.shape[0]), gamma)
    # vector_norm has a zero (sub)gradient at 0, so an all-zero tail does not give NaN.
    tail_b = torch.linalg.vector_norm(B[:, keep:])
    tail_a = torch.linalg.vector_norm(A[keep:, :])
    return tail_b * tail_a


def hetlora_prune_rank(
    B: Tensor,
    A: Tensor,
    gamma: float,
    current_rank: int,
    min_rank: int = 1,
    tail_norm_before: float | None = None,
) -> int:
    """Rank self-pruning: the rank a client keeps after local training, ⌊γ r⌋ or r.

    Only the leading `current_rank` components of B (out, ≥r) and A (≥r, in) are active;
    the tail is components ⌊γ r⌋ … r−1 and its size is t = ‖B_tail‖_F · ‖A_tail‖_F (the
    regulariser's value).

    Criterion: with `tail_norm_before` (t measured on the factors the client started the
    round from), prune when local training shrank the tail, t < tail_norm_before: the
    regulariser won against the loss, so those components carry little. Without it,
    prune when the average tail component is weaker than the average head component:
    t / (r − ⌊γ r⌋) < h / ⌊γ r⌋ with h = ‖B_head‖_F · ‖A_head‖_F (a norm product over m
    comparable components grows like m, hence the division). Never below `min_rank`.
    """
    if current_rank < 1 or current_rank > A.shape[0] or current_rank > B.shape[1]:
        raise FlexLoraError(
            f"hetlora_prune_rank: current_rank {current_rank} "
            f"outside 1..{min(A.shape[0], B.shape[1])}"
        )
    keep = max(min_rank, pruned_rank(current_rank, gamma))
    if keep >= current_rank:
        return current_rank
    with torch.no_grad():
        tail_b = torch.linalg.vector_norm(B[:, keep:current_rank])
        tail = float(tail_b * torch.linalg.vector_norm(A[keep:current_rank]))
        if tail_norm_before is not None:
            return keep if tail < tail_norm_before else current_rank
        head = float(torch.linalg.vector_norm(B[:, :keep]) * torch.linalg.vector_norm(A[:keep]))
    return keep if tail / (current_rank - keep) < head / keep else current_rank
