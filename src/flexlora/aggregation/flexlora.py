"""FlexLoRA (Bai et al., NeurIPS 2024): average full-size updates, SVD, redistribute.

Per module: dW = Σ p_k s_k B_k A_k, dW = U Σ Vᵀ, and recipient j with rank r and
scaling s gets B_j = U_r Σ_r / s, A_j = V_rᵀ, so that s · B_j A_j = T_r(dW), the best
rank-r approximation of dW (Eckart–Young). The global update is dW itself.

How the SVD is computed (see flexlora.svd): from the R × R QR core of the stacked
factors when R = Σ r_k < min(out, in) (exact, never forms out × in); otherwise dW is
formed with one GEMM and its top r_max triplets come from the float64 eigendecomposition
of its min(out, in)-sided Gram matrix (svd="auto" or "exact": exact, no full SVD), or,
only when asked with svd="fast", from a randomised subspace iteration whose error is
reported in the diagnostics: `svd_captured_energy` (Σ_{i ≤ r_max} σ_i² / ‖dW‖_F², on
every path; the fast path's is at most the exact one, short by its error in energy)
and `svd_residual` (‖dW V − U Σ‖_F / ‖Σ‖_F of the fast triplets, which is 0 for exact
ones; recorded for the fast path only).

The global update is exact on every path, tiny singular values included: all R
components U Σ, Vᵀ of the factored SVD, or the stacked factors themselves when dW was
formed. A recipient rank above what is available gets zero-padded components.

Rank collapse and its remedy (option `weighting`). With data weights, component i of a
client's update reaches dW with weight p_k, but only clients of rank ≥ i hold a
component i: the higher components of dW are the lower-weighted ones, and round after
round the energy of dW drifts into the smallest shared rank (reported by raFLoRA, Wu et
al., 2026). `weighting="rank-partitioned"` weights each rank segment by the clients that
can hold it: with the clients' distinct ranks r_(1) < … < r_(M) and r_(0) = 0, columns
(r_(m-1), r_(m)] of client k (r_k ≥ r_(m)) get p_k / Σ_{j: r_j ≥ r_(m)} p_j, so every
segment's weights sum to 1:

    dW = Σ_m Σ_{k: r_k ≥ r_(m)} (p_k / P_m) s_k B_k[:, seg_m] A_k[seg_m, :]

It changes dW (no longer the data-weighted average of the clients' updates) and keeps
the factored path exact (a column scaling of the stacked B). The collapse shows in
`diagnostics["energy_in_smallest_rank"][module]`, the share of ‖dW‖_F² in the top r_min
components (r_min the smallest recipient rank).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    compute_dtype,
    energy_by_target,
    fit_rank,
    new_diagnostics,
    parse_options,
    stable_seed,
    stack_scaled_factors,
    validate_inputs,
)
from flexlora.errors import FlexLoraError
from flexlora.lora import AdapterFactors, LoraFactors
from flexlora.svd import (
    DEFAULT_OVERSAMPLE,
    DEFAULT_POWER_ITERS,
    SvdMode,
    choose_svd_path,
    dense_product,
    dense_topk_svd,
    factored_svd,
    gram_topk_svd,
    squared_norm,
    triplet_residual,
)


@dataclass(frozen=True)
class FlexLoraOptions(DtypeOptions):
    """Options of the flexlora method."""

    svd: SvdMode = "auto"
    """How to decompose dW when R >= min(out, in): auto and exact (float64 Gram
    eigendecomposition, exact), fast (randomised; its error goes to the diagnostics)."""
    split: Literal["sigma_to_b", "sqrt"] = "sigma_to_b"
    """sigma_to_b: B = U Σ / s, A = Vᵀ (the authors'); sqrt: B = U √Σ / s, A = √Σ Vᵀ."""
    oversample: int = DEFAULT_OVERSAMPLE
    """Extra sketch columns of the fast SVD beyond r_max."""
    power_iters: int = DEFAULT_POWER_ITERS
    """Power iterations of the fast SVD; its error falls as (σ_{k+p+1}/σ_k)^(2q+1)."""
    seed: int = 0
    """Seed of the fast SVD's Gaussian sketch (combined with the module name)."""
    weighting: Literal["data", "rank-partitioned"] = "data"
    """data: p_k for every component (the paper's); rank-partitioned: each rank segment
    weighted by the clients that hold it (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.oversample < 0:
            raise FlexLoraError(f"flexlora: oversample must be >= 0, got {self.oversample}")
        if self.power_iters < 0:
            raise FlexLoraError(f"flexlora: power_iters must be >= 0, got {self.power_iters}")


@dataclass(frozen=True)
class _ModuleSvd:
    """One module's decomposition: leading triplets, all the energy, and the global update."""

    U: Tensor  # (out, k)
    S: Tensor  # (k,)
    Vh: Tensor  # (k, in)
    total_energy: float
    global_B: Tensor  # (out, g)
    global_A: Tensor  # (g, in)
    global_singular_values: Tensor
    path: str
    residual: float | None = None  # the fast path's ‖dW V − U Σ‖_F / ‖Σ‖_F


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """FlexLoRA aggregation; see the module docstring and `FlexLoraOptions`."""
    opts = parse_options(FlexLoraOptions, options, "flexlora")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    diagnostics = new_diagnostics("flexlora")
    diagnostics["svd_mode"] = {}
    diagnostics["svd_captured_energy"] = {}
    diagnostics["svd_residual"] = {}
    diagnostics["energy_in_smallest_rank"] = {}
    diagnostics["weighting"] = opts.weighting
    client_factors: dict[Hashable, dict[str, LoraFactors]] = {key: {} for key in targets}
    global_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        Bc, Ac = stack_scaled_factors(clients, module, inputs.probabilities, dtype, inputs.device)
        if opts.weighting == "rank-partitioned":
            ranks = [client[module].rank for client in clients]
            column_weights = rank_partitioned_weights(ranks, inputs.probabilities)
            # each column of Bc carries p_k already: rescale it to p_k / P_m
            Bc = Bc * torch.cat(column_weights).to(Bc)[None, :]  # (out, R) * (1, R)
        r_max = max((spec.ranks[module] for spec in targets.values()), default=1)
        svd = _decompose(Bc, Ac, r_max, opts, module)
        out_dtype = inputs.output_dtypes[module]
        for key, spec in targets.items():
            B, A = _recipient_factors(svd, spec.ranks[module], spec.scalings[module], opts.split)
            client_factors[key][module] = LoraFactors(
                B.to(out_dtype), A.to(out_dtype), spec.scalings[module]
            )
        global_update[module] = GlobalUpdate(
            svd.global_B.to(out_dtype), svd.global_A.to(out_dtype), svd.global_singular_values
        )
        diagnostics["discarded_energy"][module] = energy_by_target(
            svd.S, svd.total_energy, targets, module
        )
        diagnostics["global_rank"][module] = int(svd.global_A.shape[0])
        diagnostics["svd_mode"][module] = svd.path
        diagnostics["svd_captured_energy"][module] = captured_energy(svd.S, svd.total_energy)
        r_min = min((spec.ranks[module] for spec in targets.values()), default=1)
        diagnostics["energy_in_smallest_rank"][module] = captured_energy(
            svd.S[:r_min], svd.total_energy
        )
        if svd.residual is not None:
            diagnostics["svd_residual"][module] = svd.residual
    return AggregationResult(client_factors, global_update, False, diagnostics)


def rank_partitioned_weights(ranks: Sequence[int], probabilities: Sequence[float]) -> list[Tensor]:
    """Per client k, a factor (r_k,) for each of its columns: 1 / P_m for the columns in
    segment m, P_m = Σ_{j: r_j ≥ r_(m)} p_j, so that p_k times it is the segment's weight.

    Segments are delimited by the clients' distinct ranks: (r_(m-1), r_(m)].
    """
    bounds = sorted(set(ranks))
    holders = {  # segment end -> the data weight of the clients that reach it
        end: sum(p for r, p in zip(ranks, probabilities, strict=True) if r >= end) for end in bounds
    }
    factors = []
    for rank in ranks:
        column = torch.empty(rank, dtype=torch.float64)
        start = 0
        for end in bounds:
            if end > rank:
                break
            # nobody with weight reaches this segment: it stays out, as with data weights
            column[start:end] = 1.0 / holders[end] if holders[end] > 0 else 0.0
            start = end
        factors.append(column)
    return factors


def _decompose(
    Bc: Tensor, Ac: Tensor, r_max: int, opts: FlexLoraOptions, module: str
) -> _ModuleSvd:
    """SVD of dW = Bc @ Ac (out, R) @ (R, in) by the path that suits its size."""
    shape = (int(Bc.shape[0]), int(Ac.shape[1]))
    path = choose_svd_path(shape, int(Bc.shape[1]), r_max, opts.svd, opts.oversample)
    if path == "factored":
        U, S, Vh = factored_svd(Bc, Ac)  # (out, R), (R,), (R, in)
        total = float(S.double().square().sum())
        # All R components, however small: U Σ Vᵀ = dW to rounding. (Dropping those below
        # max(out, in)·eps·σ_1 changed dW by ~1e-4 relative on attention modules.)
        global_B = U * S  # (out, R) · (R,) -> (out, R)
        return _ModuleSvd(U[:, :r_max], S[:r_max], Vh[:r_max], total, global_B, Vh, S, path)
    dense = dense_product(Bc, Ac)  # (out, R) @ (R, in) -> (out, in)
    # On both dense paths the global update is the stacked factors: exactly dW, for free.
    if path == "dense_exact":
        U, S, Vh, total = gram_topk_svd(dense, r_max)  # (out, k), (k,), (k, in), ‖dW‖²
        return _ModuleSvd(U, S, Vh, total, Bc, Ac, S, path)
    total = squared_norm(dense)
    generator = torch.Generator(device=dense.device)
    # Per-module seed: the same sketch for a module whatever the module order.
    generator.manual_seed(stable_seed("flexlora-sketch", opts.seed, module))
    U, S, Vh = dense_topk_svd(dense, r_max, "fast", generator, opts.oversample, opts.power_iters)
    residual = triplet_residual(dense, U, S, Vh)
    return _ModuleSvd(U, S, Vh, total, Bc, Ac, S, path, residual)


def captured_energy(singular_values: Tensor, total_energy: float) -> float:
    """Σ σ_i² / ‖dW‖_F² over the triplets a module kept (1.0 when dW = 0).

    On the exact paths this is the largest share any r_max components can hold
    (Eckart–Young). The fast path's Ritz values are each at most the true σ_i, so its
    share is at most that optimum: the shortfall is its error, in energy.
    """
    if total_energy <= 0.0:
        return 1.0
    return float(singular_values.double().square().sum()) / total_energy


def _recipient_factors(
    svd: _ModuleSvd, rank: int, scaling: float, split: str
) -> tuple[Tensor, Tensor]:
    """B (out, rank), A (rank, in) with scaling · B @ A = T_rank(dW)."""
    r = min(rank, int(svd.S.shape[0]))
    U, S, Vh = svd.U[:, :r], svd.S[:r], svd.Vh[:r]
    if split == "sqrt":
        root = S.sqrt()
        B = U * (root / scaling)  # (out, r) · (r,) -> (out, r)
        A = root[:, None] * Vh  # (r, 1) · (r, in) -> (r, in)
    else:
        B = U * (S / scaling)  # (out, r) · (r,) -> (out, r)
        A = Vh
    return fit_rank(B, A, rank)
