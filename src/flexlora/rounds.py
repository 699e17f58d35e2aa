"""The server side of a round, shared by every engine: pure functions over `ServerState`.

    clients = sample_clients(server, state)
    tasks   = make_tasks(server, state, clients)          --> client.local_update, each
    state, result, record = aggregate_round(server, state, tasks, replies)
    (the engine folds base_change(result), if any, into its base weights: FLoRA, FedEx)
    (the engine evaluates W0 + state.global_update)

Every random draw is seeded from (run seed, stream, round, client id), never from a
client's position in the round or from a generator carried between rounds, so any
engine, in any order, draws the same numbers, and a resumed run the same as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from flexlora.aggregation import get_aggregation
from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.common import stable_seed
from flexlora.aggregation.hetlora import update_norm
from flexlora.client import ClientReply, ClientTask
from flexlora.config import ExperimentConfig
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors, lora_scaling, peft_default_A
from flexlora.methods import Method, get_federated_method
from flexlora.ranks import (
    RankType,
    assign_rank_types,
    distribution_probabilities,
    rank_type_label,
    resolve_rank_type,
)
from flexlora.slora import average_sparse, dense_update, sparse_mask

logger = logging.getLogger(__name__)


@dataclass
class RankClass:
    """Clients that share one rank type share one adapter and one set of start factors."""

    key: str
    """Adapter name and output folder suffix, e.g. 'rank-8' or 'rank-attention30-mlp200'."""
    type_indices: list[int]
    ranks: dict[str, int]


def build_rank_classes(
    types: Sequence[RankType], shapes: Mapping[str, tuple[int, int]]
) -> tuple[list[RankClass], dict[int, str]]:
    """Resolve every rank type to per-module ranks; types that cap to the same ranks merge."""
    classes: dict[tuple[tuple[str, int], ...], RankClass] = {}
    type_to_class: dict[int, str] = {}
    for index, rank_type in enumerate(types):
        ranks = resolve_rank_type(rank_type, shapes)
        signature = tuple(sorted(ranks.items()))
        if signature not in classes:
            classes[signature] = RankClass(f"rank-{rank_type_label(rank_type)}", [], ranks)
        classes[signature].type_indices.append(index)
        type_to_class[index] = classes[signature].key
    return list(classes.values()), type_to_class


@dataclass
class ServerState:
    """Everything the server carries from one round to the next."""

    round: int
    """Rounds completed."""
    client_class: dict[str, str]
    """client id -> rank class key (drawn once, kept for the run)."""
    class_factors: dict[str, dict[str, LoraFactors]] | None
    """rank class -> the factors its clients start the next round from (None: fresh LoRA)."""
    global_update: dict[str, GlobalUpdate] | None
    """The current global update dW (W0 + dW is the global model); None before round 1."""
    merged: list[dict[str, GlobalUpdate]] = field(default_factory=list)
    """Updates already folded into the base weights (FLoRA's rounds, FedEx-LoRA's
    residuals), in order."""
    client_ranks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per-client ranks below the class rank (HETLoRA's self-pruning), module -> rank."""
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    """Evaluation of the base model before round 1 (None when not asked for)."""
    sparse_delta: dict[str, torch.Tensor] | None = None
    """SLoRA's sparse stage: module -> the accumulated sparse update at the mask (k,)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers, strings, lists and dicts only: `torch.load(weights_only=True)`
        reads it back without unpickling any class."""
        return {
            "round": self.round,
            "client_class": dict(self.client_class),
            "class_factors": None
            if self.class_factors is None
            else {
                key: {m: {"B": f.B, "A": f.A, "scaling": f.scaling} for m, f in factors.items()}
                for key, factors in self.class_factors.items()
            },
            "global_update": _updates_to_dict(self.global_update),
            "merged": [_updates_to_dict(u) for u in self.merged],
            "client_ranks": self.client_ranks,
            "history": self.history,
            "baseline": self.baseline,
            "sparse_delta": self.sparse_delta,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ServerState:
        factors = state["class_factors"]
        return cls(
            round=int(state["round"]),
            client_class=dict(state["client_class"]),
            class_factors=None
            if factors is None
            else {
                key: {m: LoraFactors(f["B"], f["A"], float(f["scaling"])) for m, f in fs.items()}
                for key, fs in factors.items()
            },
            global_update=_updates_from_dict(state["global_update"]),
            merged=[u for u in map(_updates_from_dict, state["merged"]) if u is not None],
            client_ranks=dict(state["client_ranks"]),
            history=list(state["history"]),
            baseline=state.get("baseline"),
            sparse_delta=state.get("sparse_delta"),
        )


def _updates_to_dict(
    updates: Mapping[str, GlobalUpdate] | None,
) -> dict[str, dict[str, torch.Tensor | None]] | None:
    if updates is None:
        return None
    return {m: {"B": u.B, "A": u.A, "S": u.singular_values} for m, u in updates.items()}


def _updates_from_dict(
    updates: Mapping[str, Mapping[str, torch.Tensor | None]] | None,
) -> dict[str, GlobalUpdate] | None:
    if updates is None:
        return None
    return {m: GlobalUpdate(u["B"], u["A"], u["S"]) for m, u in updates.items()}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Server:
    """The fixed parts of a run the server functions read: config, method, rank classes,
    the target modules' shapes and the clients that can be sampled."""

    config: ExperimentConfig
    shapes: Mapping[str, tuple[int, int]]
    """Target module -> (out, in)."""
    classes: Sequence[RankClass]
    client_ids: Sequence[str]
    """The seen clients, sampled from."""
    method: Method
    recipe_options: Mapping[str, Any]
    """The recipe's options, as every client gets them."""
    aggregation_options: Mapping[str, Any]
    """The aggregation's options."""

    @classmethod
    def build(
        cls,
        config: ExperimentConfig,
        shapes: Mapping[str, tuple[int, int]],
        client_ids: Sequence[str],
    ) -> Server:
        method = get_federated_method(config.method)
        classes, _ = build_rank_classes(config.ranks.types, shapes)
        if method.single_rank and len(classes) > 1:
            raise FlexLoraError(
                f"method {method.name} trains one homogeneous rank: give a single rank type "
                "(e.g. --set 'ranks.types=[8]')"
            )
        wanted = config.federation.clients_per_round
        if wanted is not None and wanted > len(client_ids):
            raise FlexLoraError(
                f"federation.clients_per_round={wanted} but the data has only "
                f"{len(client_ids)} seen clients"
            )
        recipe_options, aggregation_options = method.resolve_options(
            config.method_options, config.recipe_options, config.seed
        )
        return cls(
            config=config,
            shapes=dict(shapes),
            classes=classes,
            client_ids=sorted(client_ids),
            method=method,
            recipe_options=recipe_options,
            aggregation_options=aggregation_options,
        )

    def class_ranks(self, key: str) -> dict[str, int]:
        return next(c.ranks for c in self.classes if c.key == key)

    def scalings(self, key: str) -> dict[str, float]:
        lora = self.config.lora
        return {
            n: lora_scaling(lora.alpha, r, lora.rslora) for n, r in self.class_ranks(key).items()
        }

    def seed(self, stream: str, *parts: object) -> int:
        """A seed for one stream of draws, from the run's seed and the given parts."""
        return stable_seed(stream, self.config.seed, *parts)

    @property
    def recipe_parsed(self) -> Any:
        """The recipe's options as its options dataclass."""
        return self.method.recipe.options(self.recipe_options)

    @property
    def sparse_rounds(self) -> int:
        """Rounds of the recipe's sparse first stage (SLoRA); 0 for none."""
        return self.method.recipe.sparse_rounds(self.recipe_parsed)

    def sparse_masks(self) -> dict[str, torch.Tensor]:
        """Module -> the sparse stage's shared mask (flat indices)."""
        options = self.recipe_parsed
        return {
            n: sparse_mask(shape, options.density, options.seed, n)
            for n, shape in self.shapes.items()
        }


# -- set-up ---------------------------------------------------------------------------


def initial_state(server: Server) -> ServerState:
    """Round 0: every seen client's rank class drawn from the distribution (or given by
    ranks.assign); the start factors are drawn when round 1's tasks are made."""
    cfg = server.config
    probs = distribution_probabilities(cfg.ranks.distribution, len(cfg.ranks.types))
    assign_rng = np.random.default_rng(server.seed("rank-types"))
    type_of = assign_rank_types(list(server.client_ids), probs, assign_rng)
    unknown = sorted(set(cfg.ranks.assign) - set(type_of))
    if unknown:
        raise FlexLoraError(f"ranks.assign names {unknown[0]!r}, which is not a seen client")
    type_of.update(cfg.ranks.assign)  # drawn first all the same: the others keep their draw
    _, type_to_class = build_rank_classes(cfg.ranks.types, server.shapes)
    return ServerState(
        round=0,
        client_class={cid: type_to_class[t] for cid, t in type_of.items()},
        class_factors=None,
        global_update=None,
    )


def type_for_capacity(
    types: Sequence[RankType], shapes: Mapping[str, tuple[int, int]], max_rank: int
) -> int:
    """The index of the largest rank type (by total rank) whose every module's rank, after
    capping at the module's shape, is at most `max_rank`: what a client that declares it
    can hold at most. FlexLoraError when not even the smallest type fits."""
    fitting = []
    for index, rank_type in enumerate(types):
        ranks = resolve_rank_type(rank_type, shapes)
        if max(ranks.values()) <= max_rank:
            fitting.append((sum(ranks.values()), index))
    if not fitting:
        raise FlexLoraError(
            f"a client declares max-rank {max_rank}, below every rank type in ranks.types"
        )
    return max(fitting)[1]


def fresh_factors(server: Server, round_index: int) -> dict[str, dict[str, LoraFactors]]:
    """Every class's start factors from one draw at the largest rank, sliced per class.

    PEFT's default initialisation (A ~ U(±1/√in), B = 0) from a generator seeded by the
    round, or the method's own A (FFA-LoRA's shared frozen draw). Slicing one draw gives
    every class the same leading rows of A, which FFA-LoRA needs and costs the others
    nothing.
    """
    max_ranks = {n: max(c.ranks[n] for c in server.classes) for n in server.shapes}
    generator = torch.Generator().manual_seed(server.seed("init", round_index))
    recipe = server.method.recipe
    chosen_A = recipe.initial_A(server.shapes, max_ranks, recipe.options(server.recipe_options))
    widest: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in sorted(server.shapes):  # sorted: the draw order must not depend on dict order
        out_f, in_f = server.shapes[name]
        A = peft_default_A(max_ranks[name], in_f, generator)  # (r, in)
        if chosen_A is not None:
            A = chosen_A[name].to(A.dtype)
        widest[name] = (torch.zeros(out_f, max_ranks[name]), A)  # B (out, r) = 0
    out = {}
    for c in server.classes:
        s = server.scalings(c.key)
        out[c.key] = {
            n: LoraFactors(B=B[:, : c.ranks[n]], A=A[: c.ranks[n]], scaling=s[n])
            for n, (B, A) in widest.items()
        }
    return out


# -- one round ------------------------------------------------------------------------


def sample_clients(server: Server, state: ServerState) -> list[str]:
    """The clients of round `state.round + 1`: a seeded draw without replacement."""
    fed = server.config.federation
    ids = list(server.client_ids)
    count = fed.clients_per_round or max(1, round(fed.fraction * len(ids)))
    count = min(count, len(ids))
    rng = np.random.default_rng(server.seed("sample", state.round + 1))
    chosen = sorted(rng.choice(len(ids), size=count, replace=False).tolist())
    return [ids[i] for i in chosen]


def make_tasks(server: Server, state: ServerState, client_ids: Sequence[str]) -> list[ClientTask]:
    """The tasks of the sampled clients: each its class's start factors and its own ranks
    (fresh factors, drawn once for the round, before round 1 and after each FLoRA merge)."""
    if state.round < server.sparse_rounds:
        return _sparse_tasks(server, state, client_ids)
    starts = state.class_factors
    if starts is None:
        starts = fresh_factors(server, state.round)
    tasks = []
    for client_id in client_ids:
        key = state.client_class[client_id]
        own = state.client_ranks.get(client_id, {})
        tasks.append(
            ClientTask(
                client_id=client_id,
                round=state.round + 1,
                rank_class=key,
                ranks={n: own.get(n, r) for n, r in server.class_ranks(key).items()},
                start=dict(starts[key]),
                seed=server.seed("train", state.round + 1, client_id),
                recipe=server.method.recipe.name,
                recipe_options=dict(server.recipe_options),
            )
        )
    return tasks


def _sparse_tasks(
    server: Server, state: ServerState, client_ids: Sequence[str]
) -> list[ClientTask]:
    """Tasks of SLoRA's sparse stage: the accumulated sparse update, no factors."""
    delta = state.sparse_delta
    if delta is None:
        delta = {n: torch.zeros(len(m)) for n, m in server.sparse_masks().items()}
    return [
        ClientTask(
            client_id=client_id,
            round=state.round + 1,
            rank_class=state.client_class[client_id],
            ranks={},
            start={},
            seed=server.seed("train", state.round + 1, client_id),
            recipe=server.method.recipe.name,
            recipe_options=dict(server.recipe_options),
            sparse=dict(delta),
        )
        for client_id in client_ids
    ]


def check_reply(server: Server, task: ClientTask, reply: ClientReply) -> str | None:
    """Why a reply cannot enter the aggregation, or None when it can.

    A reply must come from the client it was asked of, hold every target module at the
    shape and rank of its task, be finite, and (when federation.max_update_norm is set)
    have an update ‖s B A‖_F within that bound on every module.
    """
    if reply.error is not None:
        return reply.error
    if reply.client_id != task.client_id:
        return f"reply from {reply.client_id} to the task of {task.client_id}"
    if reply.num_examples < 1:
        return f"num_examples is {reply.num_examples}"
    if task.sparse is not None:
        return _check_sparse(server, task.sparse, reply.sparse)
    if reply.factors is None:
        return "no factors in the reply"
    if set(reply.factors) != set(task.start):
        missing = sorted(set(task.start) ^ set(reply.factors))
        return f"the reply's modules differ from the task's (first: {missing[0]})"
    bound = server.config.federation.max_update_norm
    for name, f in reply.factors.items():
        expected = task.start[name]
        if f.B.shape != expected.B.shape or f.A.shape != expected.A.shape:
            return (
                f"{name}: factors of shape B {tuple(f.B.shape)}, A {tuple(f.A.shape)}; "
                f"the task's are B {tuple(expected.B.shape)}, A {tuple(expected.A.shape)}"
            )
        if not math.isclose(f.scaling, expected.scaling, rel_tol=1e-6):
            return f"{name}: scaling {f.scaling}, the task's is {expected.scaling}"
        if not (bool(torch.isfinite(f.B).all()) and bool(torch.isfinite(f.A).all())):
            return f"{name}: the update is not finite"
        if bound is not None:
            norm = _update_norm(f)
            if norm > bound:
                return f"{name}: update norm {norm:.3g} exceeds federation.max_update_norm={bound}"
    return None


def _check_sparse(
    server: Server, sent: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor] | None
) -> str | None:
    """Why a sparse-stage reply cannot be averaged, or None."""
    if got is None:
        return "no sparse update in the reply"
    if set(got) != set(sent):
        return (
            f"the reply's modules differ from the task's (first: {sorted(set(got) ^ set(sent))[0]})"
        )
    bound = server.config.federation.max_update_norm
    for name, values in got.items():
        if values.shape != sent[name].shape:
            return f"{name}: {tuple(values.shape)} sparse values, the mask has {len(sent[name])}"
        if not bool(torch.isfinite(values).all()):
            return f"{name}: the update is not finite"
        norm = float(torch.linalg.vector_norm(values.double() - sent[name].double()))
        if bound is not None and norm > bound:
            return f"{name}: update norm {norm:.3g} exceeds federation.max_update_norm={bound}"
    return None


def _update_norm(f: LoraFactors) -> float:
    """‖s B A‖_F without forming B A (in float64: a diverging client's can be large)."""
    return abs(f.scaling) * update_norm(f.B.double(), f.A.double())


class RoundFailure(FlexLoraError):
    """Too few clients of a round could be aggregated: the run stops here, resumable."""


def aggregate_round(
    server: Server,
    state: ServerState,
    tasks: Sequence[ClientTask],
    replies: Sequence[ClientReply],
) -> tuple[ServerState, AggregationResult, dict[str, Any]]:
    """Aggregate the replies that pass `check_reply` and hand out the next start factors.

    Returns the state after the round, the aggregation's result and the round's record
    (without evaluation). Raises RoundFailure when fewer than federation.min_replies
    clients could be aggregated.
    """
    by_client = {r.client_id: r for r in replies}
    accepted: list[ClientReply] = []
    failed: list[dict[str, str]] = []
    for task in tasks:
        reply = by_client.get(task.client_id)
        reason = "no reply" if reply is None else check_reply(server, task, reply)
        if reason is None and reply is not None:
            accepted.append(reply)
        else:
            failed.append({"client": task.client_id, "reason": reason or "no reply"})
            logger.warning(
                "round %d: client %s left out: %s", state.round + 1, task.client_id, reason
            )
    needed = server.config.federation.min_replies
    if len(accepted) < needed:
        reasons = "; ".join(f"{f['client']}: {f['reason']}" for f in failed[:3])
        raise RoundFailure(
            f"round {state.round + 1}: {len(failed)} of {len(tasks)} clients failed and "
            f"{len(accepted)} < federation.min_replies={needed} remain ({reasons}); "
            "if training diverged, lower federation.lr; the run can go on with --resume"
        )

    targets: dict[Hashable, TargetSpec] = {
        c.key: TargetSpec(ranks=c.ranks, scalings=server.scalings(c.key)) for c in server.classes
    }
    weights = [float(r.num_examples) for r in accepted]
    sparse_delta = None
    if tasks and tasks[0].sparse is not None:
        sparse_delta = average_sparse([r.sparse for r in accepted if r.sparse is not None], weights)
        result = _sparse_result(server, state, sparse_delta, targets)
    else:
        updates = [r.factors for r in accepted if r.factors is not None]
        aggregate = server.method.aggregation.aggregate
        try:
            result = aggregate(updates, weights, targets, server.aggregation_options)
        except torch.linalg.LinAlgError as e:  # finite replies whose products overflow
            raise RoundFailure(
                f"round {state.round + 1}: the aggregation failed on the clients' updates "
                f"({str(e).splitlines()[0]}): lower federation.lr or set "
                "federation.max_update_norm; the run can go on with --resume"
            ) from e

    for name, g in result.global_update.items():
        if not (bool(torch.isfinite(g.B).all()) and bool(torch.isfinite(g.A).all())):
            # finite replies whose average overflows: nothing of this round may be kept
            raise RoundFailure(
                f"round {state.round + 1}: the aggregated update of {name} is not finite "
                "(the clients' updates are too large: lower federation.lr or set "
                "federation.max_update_norm); the run can go on with --resume"
            )
    client_ranks = dict(state.client_ranks)
    for reply in accepted:
        class_ranks = server.class_ranks(state.client_class[reply.client_id])
        pruned = {n: r for n, r in reply.ranks.items() if r < class_ranks[n]}
        if pruned:
            client_ranks[reply.client_id] = pruned
    folded = base_change(result)
    if result.merge_into_base:
        new_state = replace(
            state,
            round=state.round + 1,
            merged=[*state.merged, result.global_update],
            global_update=None,
            class_factors=None,
            client_ranks=client_ranks,
        )
    else:
        generator = torch.Generator().manual_seed(server.seed("revive", state.round + 1))
        global_update = result.global_update
        if folded is not None:
            # The base now holds part of dW: the global model's update on top of it is
            # the rest, dW − base_update, kept exact as stacked factors.
            global_update = {
                n: GlobalUpdate(
                    B=torch.cat([g.B, -folded[n].B.to(g.B.dtype)], dim=1),  # (out, R + R_b)
                    A=torch.cat([g.A, folded[n].A.to(g.A.dtype)], dim=0),  # (R + R_b, in)
                )
                for n, g in result.global_update.items()
            }
        new_state = replace(
            state,
            round=state.round + 1,
            merged=[*state.merged, folded] if folded is not None else state.merged,
            global_update=global_update,
            class_factors=None
            if result.client_factors is None
            else {
                str(key): revive_dead_components(factors, generator)
                for key, factors in result.client_factors.items()
            },
            client_ranks=client_ranks,
            sparse_delta=sparse_delta,
        )
    record: dict[str, Any] = {
        "round": new_state.round,
        "clients": [t.client_id for t in tasks],
        "ranks": {t.client_id: t.rank_class for t in tasks},
        "train_loss": float(np.average([r.loss for r in accepted], weights=weights)),
        "train_tokens": sum(r.tokens for r in accepted),
        "train_seconds": sum(r.seconds for r in accepted),
        "clients_failed": failed,
        "aggregation": result.diagnostics,
    }
    return new_state, result, record


def _sparse_result(
    server: Server,
    state: ServerState,
    sparse_delta: Mapping[str, torch.Tensor],
    targets: Mapping[Hashable, TargetSpec],
) -> AggregationResult:
    """The global update W0 + ΔW_s of a sparse round; after the stage's last round, also
    every rank class's LoRA start: the best approximation of ΔW_s at its rank (FlexLoRA's
    truncation of one update, whatever the method's aggregation)."""
    masks = server.sparse_masks()
    dense = {n: dense_update(sparse_delta[n], masks[n], server.shapes[n]) for n in server.shapes}
    diagnostics = {
        "method": "slora-sparse",
        "nonzero": {n: len(masks[n]) for n in server.shapes},
    }
    last = state.round + 1 == server.sparse_rounds
    if not last:  # ΔW_s = ΔW_s @ I: the exact update as factors (in, in)
        update = {n: GlobalUpdate(B=d, A=torch.eye(d.shape[1])) for n, d in dense.items()}
        return AggregationResult(None, update, False, diagnostics)
    one = [{n: LoraFactors(B=d, A=torch.eye(d.shape[1]), scaling=1.0) for n, d in dense.items()}]
    result = get_aggregation("flexlora").aggregate(one, [1.0], targets, {"svd": "exact"})
    result.diagnostics.update(diagnostics, method="slora-transition")
    return result


def base_change(result: AggregationResult) -> dict[str, GlobalUpdate] | None:
    """What an engine folds into its frozen base weights after this round, if anything:
    the whole update (FLoRA) or the method's residual (FedEx-LoRA)."""
    return result.global_update if result.merge_into_base else result.base_update


def revive_dead_components(
    factors: Mapping[str, LoraFactors], generator: torch.Generator
) -> dict[str, LoraFactors]:
    """Give zero-padded components (B column and A row both zero) a fresh random A row.

    A component with B[:, i] = 0 and A[i] = 0 gets zero gradient in both and could never
    train; these appear when a class's rank exceeds what the aggregate holds (rank(dW) or
    min(out, in)). A random A row with B still zero leaves the update B @ A unchanged.
    """
    out = {}
    for name in sorted(factors):  # sorted: the draw order must not depend on dict order
        f = factors[name]
        dead = (f.B.abs().sum(dim=0) == 0) & (f.A.abs().sum(dim=1) == 0)  # (r,)
        if not bool(dead.any()):
            out[name] = f
            continue
        A = f.A.clone()
        A[dead] = peft_default_A(int(dead.sum()), A.shape[1], generator).to(A.dtype)
        out[name] = LoraFactors(B=f.B, A=A, scaling=f.scaling)
    return out


def total_update(
    state: ServerState, shapes: Mapping[str, tuple[int, int]]
) -> dict[str, GlobalUpdate]:
    """W - W0 of the global model: what was folded into the base (FLoRA, FedEx-LoRA)
    stacked with the current update on top of it."""
    parts = [*state.merged, *([state.global_update] if state.global_update else [])]
    if not parts:
        return {
            n: GlobalUpdate(B=torch.zeros(o, 1), A=torch.zeros(1, i))
            for n, (o, i) in shapes.items()
        }
    if len(parts) == 1:
        return parts[0]
    # Stacking factors is exact: Σ_t B_t A_t = [B_1 … B_T] @ [A_1; …; A_T].
    return {
        n: GlobalUpdate(
            B=torch.cat([p[n].B.float() for p in parts], dim=1),  # (out, ΣR_t)
            A=torch.cat([p[n].A.float() for p in parts], dim=0),  # (ΣR_t, in)
        )
        for n in shapes
    }
