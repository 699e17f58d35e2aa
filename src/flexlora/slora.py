"""SLoRA's sparse first stage (Babakniya et al., 2023), as pure functions.

For `sparse_rounds` rounds every client trains the full weights of the LoRA target
modules, but only the entries of one random mask shared by every client (density d,
drawn per module from a seed); the server averages the clients' sparse updates with
their data weights, ΔW_s = Σ p_k ΔW_k, and the global model is W0 + ΔW_s. Then LoRA
starts from the SVD of the accumulated sparse update: a client at rank r with scaling s
gets B = U_r Σ_r / s, A = V_rᵀ, so s B A is the best rank-r approximation of ΔW_s, and the
base goes back to W0 (the LoRA factors carry the sparse stage from then on).

Where flexlora differs from the FlexLoRA authors' SLoRA code, and why:
- the mask covers the LoRA target modules only (theirs: every parameter, embeddings and
  norms included): what the sparse stage learns must be what LoRA can carry on with;
- one mask shared by every client and kept for the stage, from a seed (theirs: redrawn
  per client and round by the global RNG), as SLoRA describes it; the sparse updates of
  different clients then sum entry by entry;
- the update is exactly sparse: entries outside the mask get no gradient and no weight
  decay (their AdamW applied its default decay to every entry);
- after the stage the base is W0 (their homogeneous path also kept ΔW_s in the base, so
  the first LoRA round counted it twice), and each client's truncation is at its own
  rank (their heterogeneous path discarded the sparse stage).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flexlora.aggregation.common import stable_seed
from flexlora.errors import FlexLoraError


@functools.lru_cache(maxsize=4096)  # one mask per module for a run: drawn once per process
def sparse_mask(shape: tuple[int, int], density: float, seed: int, module: str) -> Tensor:
    """Sorted flat indices (k,) of the entries a module trains in the sparse stage:
    k = max(1, round(d · out · in)) of them, drawn without replacement from a CPU
    generator seeded by (seed, module), the same on every machine."""
    if not 0.0 < density <= 1.0:
        raise FlexLoraError(f"slora: density must be in (0, 1], got {density}")
    size = shape[0] * shape[1]
    count = max(1, round(density * size))
    generator = torch.Generator().manual_seed(stable_seed("slora-mask", seed, module))
    return torch.randperm(size, generator=generator)[:count].sort().values


def average_sparse(
    updates: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> dict[str, Tensor]:
    """Σ_k p_k v_k per module, p_k = w_k / Σ w_j, over the clients' masked values (k,)."""
    if not updates or len(updates) != len(weights):
        raise FlexLoraError("average_sparse needs one weight per update, and an update")
    total = float(sum(weights))
    if not total > 0:
        raise FlexLoraError(f"average_sparse: the weights sum to {total}")
    out: dict[str, Tensor] = {}
    for name in updates[0]:
        acc = torch.zeros_like(updates[0][name], dtype=torch.float64)
        for values, w in zip(updates, weights, strict=True):
            acc += (w / total) * values[name].double()
        out[name] = acc.float()
    return out


def dense_update(values: Tensor, indices: Tensor, shape: tuple[int, int]) -> Tensor:
    """The (out, in) matrix holding `values` at the flat `indices`, zero elsewhere."""
    dense = torch.zeros(shape[0] * shape[1], dtype=values.dtype)
    dense[indices] = values
    return dense.view(shape)
