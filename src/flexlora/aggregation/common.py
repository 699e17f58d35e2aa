"""What every aggregation method shares: input validation, options, stacking, energy.

Each method calls `validate_inputs` first, so every method rejects the same bad input
with the same one-line message naming the client and module at fault, and
`parse_options` so that an unknown or ill-typed option is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import torch
from torch import Tensor

from flexlora.aggregation.base import TargetSpec
from flexlora.errors import FlexLoraError
from flexlora.lora import AdapterFactors, LoraFactors
from flexlora.svd import factored_singular_values, numerical_rank

ComputeDtype = Literal["float32", "float64"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class DtypeOptions:
    """The option every method has; each method's options class extends it."""

    dtype: ComputeDtype = "float32"
    """Compute dtype; results are cast back to the clients' dtype."""


OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class ValidatedInputs:
    """Checked inputs, in the form the methods compute with.

    modules: module names in client 0's order.
    shapes: module -> (out, in), equal across clients.
    probabilities: p_k = n_k / Σ n_j, one per client.
    device: where the computation runs (client 0's first tensor's device).
    output_dtypes: module -> the dtype results are cast back to (promoted across clients).
    """

    modules: list[str]
    shapes: dict[str, tuple[int, int]]
    probabilities: list[float]
    device: torch.device
    output_dtypes: dict[str, torch.dtype]


def compute_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `dtype` option ("float32" or "float64")."""
    if name not in _DTYPES:
        raise FlexLoraError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def parse_options(cls: type[OptionsT], options: Mapping[str, Any], method: str) -> OptionsT:
    """Build an options dataclass from a plain mapping, rejecting unknown keys and bad types.

    Literal fields must take one of their listed values; int fields an int (not a
    bool); float fields any real number; bool fields a bool. A field absent from the
    mapping keeps its default.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise FlexLoraError(
            f"{method}: unknown option(s) {unknown}; known options are {sorted(fields)}"
        )
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in options.items():
        values[key] = _coerce_option(method, key, value, hints[key])
    return cls(**values)


def _coerce_option(method: str, key: str, value: Any, hint: Any) -> Any:
    """Check one option value against its annotation; return it (floats as float)."""
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise FlexLoraError(f"{method}: option {key}={value!r} is not one of {list(allowed)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise FlexLoraError(f"{method}: option {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FlexLoraError(f"{method}: option {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FlexLoraError(f"{method}: option {key} must be a number, got {value!r}")
        return float(value)
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce_option(method, key, value, args[0])
    return value


def normalise_weights(weights: Sequence[float], n_clients: int) -> list[float]:
    """p_k = n_k / Σ n_j; every n_k must be finite and > 0, one per client."""
    if n_clients == 0:
        raise FlexLoraError("no clients to aggregate")
    if len(weights) != n_clients:
        raise FlexLoraError(f"got {len(weights)} weights for {n_clients} clients")
    values: list[float] = []
    for k, w in enumerate(weights):
        try:
            value = float(w)
        except (TypeError, ValueError):
            raise FlexLoraError(f"client {k}: weight {w!r} is not a number") from None
        if not math.isfinite(value):
            raise FlexLoraError(f"client {k}: weight {value} is not finite")
        if value < 0:
            raise FlexLoraError(f"client {k}: weight {value} is negative")
        if value == 0:
            raise FlexLoraError(
                f"client {k}: weight is zero (a client with no data cannot be aggregated)"
            )
        values.append(value)
    total = math.fsum(values)
    return [v / total for v in values]


def validate_clients(clients: Sequence[AdapterFactors]) -> dict[str, tuple[int, int]]:
    """Check module sets, shapes, ranks, scalings and finiteness; return module -> (out, in)."""
    if len(clients) == 0:
        raise FlexLoraError("no clients to aggregate")
    reference = list(clients[0])
    reference_set = set(reference)
    if not reference:
        raise FlexLoraError("client 0 has no LoRA modules")
    shapes: dict[str, tuple[int, int]] = {}
    for k, client in enumerate(clients):
        missing = [m for m in reference if m not in client]
        if missing:
            raise FlexLoraError(f"client {k}: module {missing[0]!r} is missing (client 0 has it)")
        extra = [m for m in client if m not in reference_set]
        if extra:
            raise FlexLoraError(f"client {k}: module {extra[0]!r} is not in client 0")
        for module in reference:
            shape = _check_factors(client[module], k, module)
            if module not in shapes:
                shapes[module] = shape
            elif shapes[module] != shape:
                raise FlexLoraError(
                    f"client {k}, module {module!r}: update shape (out, in) = {shape} "
                    f"differs from client 0's {shapes[module]}"
                )
    return shapes


def _check_factors(factors: LoraFactors, client: int, module: str) -> tuple[int, int]:
    """One client's factors for one module: 2-D, matching rank >= 1, finite, finite scaling."""
    where = f"client {client}, module {module!r}"
    B, A = factors.B, factors.A
    if B.ndim != 2 or A.ndim != 2:
        raise FlexLoraError(
            f"{where}: factors must be 2-D, got B {tuple(B.shape)}, A {tuple(A.shape)}"
        )
    if B.shape[1] != A.shape[0]:
        raise FlexLoraError(
            f"{where}: B {tuple(B.shape)} and A {tuple(A.shape)} disagree on the rank"
        )
    if A.shape[0] < 1:
        raise FlexLoraError(f"{where}: rank is 0")
    if not math.isfinite(factors.scaling):
        raise FlexLoraError(f"{where}: scaling {factors.scaling} is not finite")
    for name, tensor in (("B", B), ("A", A)):
        if not tensor.is_floating_point():
            raise FlexLoraError(f"{where}: {name} has non-float dtype {tensor.dtype}")
        if not _all_finite(tensor):
            raise FlexLoraError(f"{where}: {name} contains NaN or Inf")
    return int(B.shape[0]), int(A.shape[1])


def _all_finite(tensor: Tensor) -> bool:
    """True when no entry is NaN or ±Inf: one min/max pass (NaN propagates through both),
    without the full-size boolean temporary of torch.isfinite."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def validate_targets(targets: Mapping[Hashable, TargetSpec], modules: Sequence[str]) -> None:
    """Every target names every module with a rank >= 1 and a finite non-zero scaling."""
    for key, spec in targets.items():
        for module in modules:
            if module not in spec.ranks or module not in spec.scalings:
                raise FlexLoraError(f"target {key!r}: no rank or scaling for module {module!r}")
            rank, scaling = spec.ranks[module], spec.scalings[module]
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise FlexLoraError(
                    f"target {key!r}, module {module!r}: rank must be an int >= 1, got {rank!r}"
                )
            if not math.isfinite(scaling) or scaling == 0:
                raise FlexLoraError(
                    f"target {key!r}, module {module!r}: scaling must be finite and non-zero, "
                    f"got {scaling!r}"
                )


def validate_inputs(
    clients: Sequence[AdapterFactors],
    weights: Sequence[float],
    targets: Mapping[Hashable, TargetSpec],
) -> ValidatedInputs:
    """All checks every method runs first; see the functions it calls."""
    probabilities = normalise_weights(weights, len(clients))
    shapes = validate_clients(clients)
    modules = list(shapes)
    validate_targets(targets, modules)
    device = clients[0][modules[0]].B.device
    output_dtypes: dict[str, torch.dtype] = {}
    for module in modules:
        dtype = clients[0][module].B.dtype
        for client in clients:
            dtype = torch.promote_types(dtype, client[module].B.dtype)
            dtype = torch.promote_types(dtype, client[module].A.dtype)
        output_dtypes[module] = dtype
    return ValidatedInputs(modules, shapes, probabilities, device, output_dtypes)


def common_rank(
    clients: Sequence[AdapterFactors],
    targets: Mapping[Hashable, TargetSpec],
    module: str,
    requirement: str,
    hint: str = "",
) -> int:
    """The one rank every client and recipient has for `module` (methods that average
    factors entrywise need it); else a FlexLoraError opening with `requirement`, naming
    the clients of each rank or the target that differs, and ending with `hint`."""
    by_rank: dict[int, list[int]] = {}
    for k, client in enumerate(clients):
        by_rank.setdefault(client[module].rank, []).append(k)
    if len(by_rank) > 1:
        groups = [f"rank {r} for clients {ks}" for r, ks in sorted(by_rank.items())]
        listing = ", ".join(groups[:-1]) + " and " + groups[-1]
        raise FlexLoraError(f"{requirement}: module {module!r} has {listing}{hint}")
    (rank,) = by_rank
    for key, spec in targets.items():
        if spec.ranks[module] != rank:
            raise FlexLoraError(
                f"{requirement}: target {key!r} asks rank {spec.ranks[module]} for module "
                f"{module!r} but the clients have rank {rank}{hint}"
            )
    return rank


def stack_scaled_factors(
    clients: Sequence[AdapterFactors],
    module: str,
    probabilities: Sequence[float],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Bc = [p_1 s_1 B_1, …, p_K s_K B_K] (out, R) and Ac = [A_1; …; A_K] (R, in).

    Bc @ Ac = Σ p_k s_k B_k A_k = dW exactly: each client's scaling is folded in once, here.
    """
    Bs = [
        client[module].B.to(device=device, dtype=dtype) * (p * client[module].scaling)
        for client, p in zip(clients, probabilities, strict=True)
    ]
    As = [client[module].A.to(device=device, dtype=dtype) for client in clients]
    return torch.cat(Bs, dim=1), torch.cat(As, dim=0)  # (out, R), (R, in)


def padded_average(
    clients: Sequence[AdapterFactors],
    module: str,
    weights: Sequence[float],
    rank: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Zero-pad every client to `rank` and average: B̄ = Σ w_k s_k B_k, Ā = Σ w_k A_k.

    Returns B̄ (out, rank) and Ā (rank, in); client k contributes to the leading r_k
    columns of B̄ and rows of Ā only (its padding is zero). Each client's scaling is
    folded into its B once, here. `rank` must be at least every client's rank.
    """
    first = clients[0][module]
    B_avg = torch.zeros(first.B.shape[0], rank, dtype=dtype, device=device)  # (out, rank)
    A_avg = torch.zeros(rank, first.A.shape[1], dtype=dtype, device=device)  # (rank, in)
    for client, w in zip(clients, weights, strict=True):
        factors = client[module]
        r = factors.rank
        B_avg[:, :r] += factors.B.to(device=device, dtype=dtype) * (w * factors.scaling)
        A_avg[:r] += factors.A.to(device=device, dtype=dtype) * w
    return B_avg, A_avg


def fit_rank(B: Tensor, A: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncate or zero-pad factors B (out, r), A (r, in) to exactly `rank` components.

    Padding adds zero columns to B and zero rows to A, so B @ A is unchanged. Note that a
    component that is zero in both factors gets zero gradients and stays zero in training.
    """
    current = int(A.shape[0])
    if rank <= current:
        return B[:, :rank], A[:rank]
    pad = rank - current
    B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)  # (out, r) -> (out, rank)
    A = torch.cat([A, A.new_zeros(pad, A.shape[1])], dim=0)  # (r, in) -> (rank, in)
    return B, A


def discarded_energy(singular_values: Tensor, total_energy: float, rank: int) -> float:
    """1 − ‖T_r(dW)‖² / ‖dW‖² from dW's leading singular values and ‖dW‖_F².

    `singular_values` must hold at least the leading min(rank, available) values. 0.0 when
    dW = 0. Clamped to [0, 1] against rounding.
    """
    if total_energy <= 0.0:
        return 0.0
    kept = float(singular_values[:rank].double().square().sum())
    return min(1.0, max(0.0, 1.0 - kept / total_energy))


def energy_by_target(
    singular_values: Tensor,
    total_energy: float,
    targets: Mapping[Hashable, TargetSpec],
    module: str,
) -> dict[str, float]:
    """str(target key) -> the share of dW's energy that truncation to its rank discards."""
    return {
        str(key): discarded_energy(singular_values, total_energy, spec.ranks[module])
        for key, spec in targets.items()
    }


def global_spectrum(
    B: Tensor, A: Tensor, targets: Mapping[Hashable, TargetSpec], module: str
) -> tuple[Tensor, dict[str, float], int]:
    """Spectrum figures of a factored global update B (out, R) @ A (R, in).

    Returns its singular values (descending), the discarded energy per target and its
    numerical rank. The singular values come from the R × R QR core when
    R < min(out, in), so the out × in matrix is formed only when R is large.
    """
    S = factored_singular_values(B, A)
    total = float(S.double().square().sum())
    shape = (int(B.shape[0]), int(A.shape[1]))
    rank = numerical_rank(S, shape)
    energies = energy_by_target(S, total, targets, module)
    return S, energies, rank


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text, the same in every process (unlike hash()).

    Well mixed in its low 32 bits too, which is all a CPU torch.Generator uses.
    """
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def new_diagnostics(method: str) -> dict[str, Any]:
    """The diagnostics skeleton every method fills in."""
    return {"method": method, "discarded_energy": {}, "global_rank": {}}
