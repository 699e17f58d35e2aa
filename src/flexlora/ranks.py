"""Rank types and resource distributions (the paper's heterogeneous client resources).

A *rank type* is what one class of clients can afford: an int (the same rank for every
target module) or a mapping from a module group ("attention", "mlp") or a module name
("q_proj") to a rank. Each client draws its type once from a *distribution* over the
types and keeps it for the whole run.

The paper's four types (DESIGN.md) and its distributions are the defaults of the
configs/paper presets. The authors' released code never applied per-client ranks and
its "normal" sampling put the mass on the wrong types; flexlora does what the paper
describes: the normal distribution concentrates on the middle types.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from flexlora.config import MODULE_GROUPS
from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

RankType = int | Mapping[str, int]

PAPER_RANK_TYPES: list[RankType] = [
    {"attention": 8, "mlp": 8},
    {"attention": 30, "mlp": 30},
    {"attention": 30, "mlp": 200},
    {"attention": 200, "mlp": 200},
]

# Probabilities over the paper's four types, lowest resource first.
# heavy-tail-light follows the authors' code (80/5/5/10); their text says 85% at type 1.
PAPER_DISTRIBUTIONS: dict[str, list[float]] = {
    "uniform": [0.25, 0.25, 0.25, 0.25],
    "heavy-tail-light": [0.80, 0.05, 0.05, 0.10],
    "heavy-tail-strong": [0.05, 0.05, 0.10, 0.80],
    "normal": [0.10, 0.40, 0.40, 0.10],
    "extreme": [0.50, 0.0, 0.0, 0.50],
}
DISTRIBUTION_NAMES = tuple(PAPER_DISTRIBUTIONS)


def distribution_probabilities(distribution: str | Sequence[float], num_types: int) -> list[float]:
    """Probabilities of each rank type, lowest resource first.

    Named distributions over four types are the paper's; for another number of types
    they keep their shape: heavy tails put 80% on one end and spread the rest, normal is
    a discretised Gaussian over the type index, extreme splits the two ends.
    """
    if num_types < 1:
        raise FlexLoraError("ranks.types must list at least one rank type")
    if not isinstance(distribution, str):
        probs = [float(p) for p in distribution]
        if len(probs) != num_types:
            raise FlexLoraError(
                f"ranks.distribution has {len(probs)} probabilities for {num_types} rank types"
            )
        if any(not math.isfinite(p) or p < 0 for p in probs) or not math.isclose(
            sum(probs), 1.0, abs_tol=1e-6
        ):
            raise FlexLoraError(
                f"ranks.distribution must be non-negative and sum to 1, got {probs}"
            )
        return probs
    if distribution not in PAPER_DISTRIBUTIONS:
        raise FlexLoraError(
            f"unknown ranks.distribution {distribution!r} (known: {', '.join(DISTRIBUTION_NAMES)})"
        )
    if num_types == 4:
        return list(PAPER_DISTRIBUTIONS[distribution])
    if num_types == 1:
        return [1.0]
    n = num_types
    if distribution == "uniform":
        return [1.0 / n] * n
    if distribution in ("heavy-tail-light", "heavy-tail-strong"):
        probs = [0.2 / (n - 1)] * n
        probs[0 if distribution == "heavy-tail-light" else -1] = 0.8
        return probs
    if distribution == "extreme":
        return [0.5] + [0.0] * (n - 2) + [0.5]
    # normal: Gaussian over the type index centred on the middle, sd = n / 4.
    centre, sd = (n - 1) / 2, n / 4
    weights = [math.exp(-0.5 * ((i - centre) / sd) ** 2) for i in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


def assign_rank_types(
    client_ids: Sequence[str], probabilities: Sequence[float], rng: np.random.Generator
) -> dict[str, int]:
    """Draw each client's rank type index once (sorted ids, so the draw is order-free)."""
    ids = sorted(client_ids)
    draws = rng.choice(len(probabilities), size=len(ids), p=np.asarray(probabilities))
    return {cid: int(t) for cid, t in zip(ids, draws, strict=True)}


def module_group(module_name: str) -> str | None:
    """The group ("attention" / "mlp") of a module by the last part of its name."""
    leaf = module_name.rsplit(".", 1)[-1]
    for group, leaves in MODULE_GROUPS.items():
        if leaf in leaves:
            return group
    return None


def rank_for_module(rank_type: RankType, module_name: str) -> int:
    """The rank a type gives one module: exact leaf name first, then its group."""
    if isinstance(rank_type, int):
        return rank_type
    leaf = module_name.rsplit(".", 1)[-1]
    if leaf in rank_type:
        return int(rank_type[leaf])
    group = module_group(module_name)
    if group is not None and group in rank_type:
        return int(rank_type[group])
    raise FlexLoraError(
        f"rank type {dict(rank_type)} gives no rank for module {module_name} "
        f"(give its name {leaf!r} or its group)"
    )


def resolve_rank_type(
    rank_type: RankType, module_shapes: Mapping[str, tuple[int, int]]
) -> dict[str, int]:
    """Per-module ranks of a type, capped at min(out, in) with a warning.

    A mapping key that is neither a module group nor the name of a module is refused:
    ignoring it would train with ranks the user did not ask for.
    """
    if not isinstance(rank_type, int):
        leaves = {name.rsplit(".", 1)[-1] for name in module_shapes}
        for key in rank_type:
            if key not in MODULE_GROUPS and key not in leaves:
                raise FlexLoraError(
                    f"rank type {dict(rank_type)}: {key!r} is neither a module group "
                    f"({', '.join(MODULE_GROUPS)}) nor a target module "
                    f"({', '.join(sorted(leaves))})"
                )
    ranks: dict[str, int] = {}
    capped: set[tuple[str, int, int]] = set()
    for name, (out_f, in_f) in module_shapes.items():
        r = rank_for_module(rank_type, name)
        cap = min(out_f, in_f)
        if r > cap:
            capped.add((name.rsplit(".", 1)[-1], r, cap))
            r = cap
        ranks[name] = r
    for leaf, r, cap in sorted(capped):
        logger.warning("rank %d for %s exceeds min(out, in) = %d: capped at %d", r, leaf, cap, cap)
    return ranks


def rank_type_label(rank_type: RankType) -> str:
    """A short stable name for a type: '8', or 'attention30-mlp200'."""
    if isinstance(rank_type, int):
        return str(rank_type)
    return "-".join(f"{k}{v}" for k, v in rank_type.items())
