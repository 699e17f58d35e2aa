"""FFA-LoRA (Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated
Learning"): A frozen at a shared seeded initialisation, only B trained and averaged.

Every client's A_k is the leading r_k rows of one shared A (out of `ffa_shared_A`), so
    dW = Σ p_k s_k B_k A_k = B̄ A_shared[:r_max],   B̄ = Σ p_k s_k pad(B_k)  (out, r_max)
is exact. A recipient of rank r and scaling s gets B = B̄[:, :r] / s and A = A_shared[:r].
The aggregation checks that the clients really share A (relative tolerance
`shared_a_rtol` on their common leading rows). With option `seed` set, the reference A
is regenerated with `ffa_shared_A` (and recipients above r_max get its further rows);
without it, the reference is the A of the client with the largest rank, and a recipient
above r_max gets zero rows (a warning: those components cannot train).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import (
    DtypeOptions,
    compute_dtype,
    fit_rank,
    global_spectrum,
    new_diagnostics,
    padded_average,
    parse_options,
    stable_seed,
    validate_inputs,
)
from flexlora.errors import FlexLoraError
from flexlora.lora import AdapterFactors, LoraFactors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FfaOptions(DtypeOptions):
    """Options of the ffa method."""

    shared_a_rtol: float = 1e-6
    """Relative Frobenius tolerance when checking that every client kept the shared A."""
    seed: int | None = None
    """The seed the shared A was drawn with (`ffa_shared_A`); None: take A from the clients."""

    def __post_init__(self) -> None:
        if not self.shared_a_rtol >= 0.0:
            raise FlexLoraError(f"ffa: shared_a_rtol must be >= 0, got {self.shared_a_rtol}")


def ffa_shared_A(shape_in: int, rank: int, seed: int, module_name: str) -> Tensor:
    """The shared frozen A (rank, in) of a module: PEFT's default kaiming-uniform init.

    Row i is drawn from U(-1/√in, 1/√in) (kaiming_uniform_ with a=√5, fan_in = in) by a
    CPU torch.Generator seeded from `stable_seed(seed, module_name, i)` (a blake2b hash,
    not Python's salted hash()): deterministic across
    processes and machines, and the rows of a rank-r A are the leading rows of any
    larger rank's, so clients of different ranks share their common rows. float32, CPU.
    """
    if shape_in < 1 or rank < 1:
        raise FlexLoraError(f"ffa_shared_A needs in >= 1 and rank >= 1, got {shape_in} and {rank}")
    bound = 1.0 / math.sqrt(shape_in)
    rows = []
    generator = torch.Generator()
    for i in range(rank):
        generator.manual_seed(stable_seed("ffa", seed, module_name, i))
        row = torch.rand(shape_in, generator=generator, dtype=torch.float32)  # U[0, 1)
        rows.append(row * (2 * bound) - bound)  # -> U[-bound, bound)
    return torch.stack(rows)  # (rank, in)


def aggregate(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
    options: Mapping[str, Any],
) -> AggregationResult:
    """Average the scaling-folded, zero-padded B; keep the shared A."""
    opts = parse_options(FfaOptions, options, "ffa")
    inputs = validate_inputs(clients, weights, targets)
    dtype = compute_dtype(opts.dtype)
    diagnostics = new_diagnostics("ffa")
    client_factors: dict[Hashable, dict[str, LoraFactors]] = {key: {} for key in targets}
    global_update: dict[str, GlobalUpdate] = {}
    for module in inputs.modules:
        r_max = max(client[module].rank for client in clients)
        r_needed = max([r_max, *(spec.ranks[module] for spec in targets.values())])
        shared = _reference_A(clients, module, opts, r_needed, dtype, inputs.device)
        _check_shared_A(clients, module, shared, opts.shared_a_rtol, dtype)
        B_avg, _ = padded_average(
            clients, module, inputs.probabilities, r_max, dtype, inputs.device
        )
        A_global = shared[:r_max]  # (r_max, in): B̄ A_global = dW exactly
        out_dtype = inputs.output_dtypes[module]
        for key, spec in targets.items():
            rank, scaling = spec.ranks[module], spec.scalings[module]
            if rank > shared.shape[0]:
                logger.warning(
                    "ffa: target %r asks rank %d on %s but the shared A has %d rows; "
                    "zero rows added (set option seed to regenerate them)",
                    key,
                    rank,
                    module,
                    shared.shape[0],
                )
            B, _ = fit_rank(B_avg / scaling, A_global, rank)  # (out, rank)
            A = _leading_rows(shared, rank)  # (rank, in): beyond r_max too when seeded
            client_factors[key][module] = LoraFactors(B.to(out_dtype), A.to(out_dtype), scaling)
        S, energies, global_rank = global_spectrum(B_avg, A_global, targets, module)
        global_update[module] = GlobalUpdate(B_avg.to(out_dtype), A_global.to(out_dtype), S)
        diagnostics["discarded_energy"][module] = energies
        diagnostics["global_rank"][module] = global_rank
    return AggregationResult(client_factors, global_update, False, diagnostics)


def _leading_rows(A: Tensor, rank: int) -> Tensor:
    """A[:rank] (rank, in), with zero rows appended when A has fewer."""
    if rank <= A.shape[0]:
        return A[:rank]
    return torch.cat([A, A.new_zeros(rank - A.shape[0], A.shape[1])])  # (rank, in)


def _reference_A(
    clients: Sequence[AdapterFactors],
    module: str,
    opts: FfaOptions,
    rank: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """The shared A every client should hold: regenerated from the seed, or the largest client's."""
    if opts.seed is not None:
        shape_in = int(clients[0][module].A.shape[1])
        return ffa_shared_A(shape_in, rank, opts.seed, module).to(device=device, dtype=dtype)
    largest = max(range(len(clients)), key=lambda k: clients[k][module].rank)
    return clients[largest][module].A.to(device=device, dtype=dtype)


def _check_shared_A(
    clients: Sequence[AdapterFactors], module: str, shared: Tensor, rtol: float, dtype: torch.dtype
) -> None:
    """Every client's A equals the shared A on its leading rows, within rtol (Frobenius)."""
    for k, client in enumerate(clients):
        A = client[module].A.to(device=shared.device, dtype=dtype)
        r = A.shape[0]
        reference = shared[:r]
        diff = float(torch.linalg.vector_norm(A - reference))
        scale = float(torch.linalg.vector_norm(reference))
        if diff > rtol * scale:
            relative = diff / scale if scale > 0 else math.inf
            raise FlexLoraError(
                f"ffa: client {k}, module {module!r}: A differs from the shared A on its "
                f"{r} rows (relative difference {relative:.3g} > {rtol:g}); FFA-LoRA clients "
                "must keep the shared frozen A"
            )
