"""The in-process engine: sample -> train -> aggregate -> redistribute -> evaluate.

One base model in memory, one LoRA adapter per rank class (flexlora.adapters), clients
trained one after another. Everything the server knows between rounds lives in
`ServerState`, which can be saved and restored as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flexlora.adapters import AdapterHost, initial_factors
from flexlora.aggregation import get_method
from flexlora.aggregation.base import AggregationResult, GlobalUpdate, TargetSpec
from flexlora.aggregation.ffa import ffa_shared_A
from flexlora.client import train_client
from flexlora.config import ExperimentConfig
from flexlora.data.tokenize import TokenizedSplit
from flexlora.data.types import FederatedDataset
from flexlora.errors import FlexLoraError
from flexlora.lora import LoraFactors
from flexlora.ranks import (
    RankType,
    assign_rank_types,
    distribution_probabilities,
    rank_type_label,
    resolve_rank_type,
)

logger = logging.getLogger(__name__)


class RunObserver:
    """Hooks the engine calls as it goes (the CLI draws progress bars with them)."""

    def round_started(self, round_index: int, clients: list[str]) -> None: ...
    def client_done(self, client_id: str) -> None: ...
    def eval_started(self, name: str, total_examples: int) -> None: ...
    def eval_progress(self, done: int) -> None: ...
    def round_done(self, record: Mapping[str, Any]) -> None: ...


@dataclass
class RankClass:
    """Clients that share one rank type share one adapter and one set of start factors."""

    key: str
    """Adapter name and output folder suffix, e.g. 'rank-8' or 'rank-attention30-mlp200'."""
    type_indices: list[int]
    ranks: dict[str, int]


@dataclass
class ServerState:
    """Everything the server carries from one round to the next."""

    round: int
    client_class: dict[str, str]
    """client id -> rank class key (drawn once, kept for the run)."""
    class_factors: dict[str, dict[str, LoraFactors]] | None
    """rank class -> the factors its clients start the next round from (None: fresh LoRA)."""
    global_update: dict[str, GlobalUpdate] | None
    """The current global update dW (W0 + dW is the global model); None before round 1."""
    merged: list[dict[str, GlobalUpdate]] = field(default_factory=list)
    """Updates already folded into the base weights (FLoRA), one per round."""
    client_ranks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per-client ranks below the class rank (HETLoRA's self-pruning), module -> rank."""
    sample_rng: dict[str, Any] = field(default_factory=dict)
    """numpy bit-generator state of the client sampler."""
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    """Evaluation of the base model before round 1 (None when not asked for)."""

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
            "sample_rng": self.sample_rng,
            "history": self.history,
            "baseline": self.baseline,
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
            sample_rng=dict(state["sample_rng"]),
            history=list(state["history"]),
            baseline=state.get("baseline"),
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


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, identical on every machine."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class Federation:
    """The fixed parts of a run: config, data, model host and rank classes."""

    config: ExperimentConfig
    dataset: FederatedDataset
    train_examples: Mapping[str, TokenizedSplit]
    host: AdapterHost
    classes: list[RankClass]
    device: torch.device
    pad_id: int
    evaluate: Callable[[Any, str, Mapping[str, Any], RunObserver], dict[str, Any]]
    """(model, split name, clients, observer) -> metrics; supplied by the caller."""

    def __post_init__(self) -> None:
        self.class_by_key = {c.key: c for c in self.classes}
        self.method = get_method(self.config.method)
        if self.config.method == "fedit" and len(self.classes) > 1:
            raise FlexLoraError(
                "method fedit trains one homogeneous rank: give a single rank type "
                "(e.g. --set 'ranks.types=[8]')"
            )
        self.method_options = dict(self.config.method_options)
        if self.config.method == "ffa":
            # Every A is drawn with ffa_shared_A from this seed, and the aggregation is told
            # it: a class above the largest rank sampled in a round then gets its further
            # shared rows regenerated, not zero rows it could never train (A is frozen).
            self.method_options.setdefault("seed", _seed_for(self.config.seed, 6))

    # -- set-up -------------------------------------------------------------------

    def initial_state(self) -> ServerState:
        cfg = self.config
        probs = distribution_probabilities(cfg.ranks.distribution, len(cfg.ranks.types))
        assign_rng = np.random.default_rng(_seed_for(cfg.seed, 1))
        type_of = assign_rank_types(list(self.dataset.seen), probs, assign_rng)
        _, type_to_class = build_rank_classes(cfg.ranks.types, self.host.shapes)
        client_class = {cid: type_to_class[t] for cid, t in type_of.items()}
        sample_rng = np.random.default_rng(_seed_for(cfg.seed, 2))
        return ServerState(
            round=0,
            client_class=client_class,
            class_factors=self.fresh_factors(round_index=0),
            global_update=None,
            sample_rng=dict(sample_rng.bit_generator.state),
        )

    def fresh_factors(self, round_index: int) -> dict[str, dict[str, LoraFactors]]:
        """Every class's start factors from one draw at the largest rank, sliced per class.

        Slicing one draw gives every class the same leading rows of A, which FFA-LoRA
        needs (A frozen at a shared initialisation) and costs the others nothing. For
        FFA-LoRA that draw is `ffa_shared_A` with the method's seed.
        """
        max_ranks = {n: max(c.ranks[n] for c in self.classes) for n in self.host.shapes}
        scal = dict.fromkeys(self.host.shapes, 1.0)
        gen = torch.Generator().manual_seed(_seed_for(self.config.seed, 3, round_index))
        widest = initial_factors(self.host.shapes, max_ranks, scal, gen)
        if self.config.method == "ffa":
            seed = int(self.method_options["seed"])
            widest = {
                n: LoraFactors(
                    B=f.B,
                    A=ffa_shared_A(self.host.shapes[n][1], max_ranks[n], seed, n).to(f.A.dtype),
                    scaling=1.0,
                )
                for n, f in widest.items()
            }
        out = {}
        for c in self.classes:
            s = self.host.scalings(c.key)
            out[c.key] = {
                n: LoraFactors(B=f.B[:, : c.ranks[n]], A=f.A[: c.ranks[n]], scaling=s[n])
                for n, f in widest.items()
            }
        return out

    # -- one round ------------------------------------------------------------------

    def sample_clients(self, state: ServerState) -> list[str]:
        fed = self.config.federation
        ids = sorted(self.dataset.seen)
        count = fed.clients_per_round or max(1, round(fed.fraction * len(ids)))
        count = min(count, len(ids))
        rng = np.random.default_rng()
        rng.bit_generator.state = state.sample_rng
        chosen = sorted(rng.choice(len(ids), size=count, replace=False).tolist())
        state.sample_rng = dict(rng.bit_generator.state)
        return [ids[i] for i in chosen]

    def _hetlora_options(self) -> Any:
        from flexlora.aggregation.common import parse_options
        from flexlora.aggregation.hetlora import HetLoraOptions

        return parse_options(HetLoraOptions, self.config.method_options, "hetlora")

    def _client_regularizer(self, key: str) -> Callable[[], torch.Tensor] | None:
        if self.config.method != "hetlora":
            return None
        from flexlora.aggregation.hetlora import hetlora_regularizer

        opts = self._hetlora_options()
        if opts.reg_lambda == 0:
            return None
        pairs = self.host.factor_pairs(key)

        def regularizer() -> torch.Tensor:
            terms = [hetlora_regularizer(B, A, opts.gamma) for B, A in pairs.values()]
            return opts.reg_lambda * torch.stack(terms).sum()

        return regularizer

    def _prune(
        self,
        client_id: str,
        start: Mapping[str, LoraFactors],
        trained: dict[str, LoraFactors],
        state: ServerState,
    ) -> dict[str, LoraFactors]:
        """HETLoRA's rank self-pruning, which runs with its regulariser (reg_lambda > 0):
        a module drops to ⌊γ r⌋ when local training shrank its tail (the regulariser won)."""
        from flexlora.aggregation.hetlora import hetlora_prune_rank, pruned_rank

        opts = self._hetlora_options()
        if opts.reg_lambda == 0:
            return trained
        ranks = state.client_ranks.setdefault(client_id, {})
        out = {}
        for name, f in trained.items():
            current = ranks.get(name, f.rank)
            keep = max(opts.min_rank, pruned_rank(current, opts.gamma))
            s0 = start[name]
            # (out, r - keep) and (r - keep, in): the tail the regulariser pushes down
            before = float(s0.B[:, keep:current].norm() * s0.A[keep:current].norm())
            new = hetlora_prune_rank(f.B, f.A, opts.gamma, current, opts.min_rank, before)
            if new < f.rank:
                ranks[name] = new
            out[name] = _zero_tail(f, new)
        return out

    def train_round(
        self, state: ServerState, clients: list[str], observer: RunObserver
    ) -> tuple[list[dict[str, LoraFactors]], list[float], dict[str, Any]]:
        cfg = self.config
        updates: list[dict[str, LoraFactors]] = []
        weights: list[float] = []
        losses, tokens, seconds = [], 0, 0.0
        fresh = self.fresh_factors(state.round) if state.class_factors is None else None
        for index, cid in enumerate(clients):
            key = state.client_class[cid]
            start = (fresh or state.class_factors or {})[key]
            if cid in state.client_ranks:
                start = {
                    n: _zero_tail(f, state.client_ranks[cid].get(n, f.rank))
                    for n, f in start.items()
                }
            self.host.load(key, start)
            params = self.host.activate(key, freeze_A=cfg.method == "ffa")
            seed = _seed_for(cfg.seed, 4, state.round, index)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)  # dropout only, scoped: the caller's RNG is restored
                result = train_client(
                    self.host.model,
                    params,
                    self.train_examples[cid],
                    cfg.federation,
                    pad_id=self.pad_id,
                    generator=torch.Generator().manual_seed(seed),
                    device=self.device,
                    regularizer=self._client_regularizer(key),
                )
            factors = self.host.read(key)
            if cfg.method == "hetlora":
                factors = self._prune(cid, start, factors, state)
            updates.append(factors)
            weights.append(float(len(self.train_examples[cid])))
            losses.append(result.loss)
            tokens += result.tokens
            seconds += result.seconds
            observer.client_done(cid)
        train_stats = {
            "train_loss": float(np.average(losses, weights=weights)),
            "train_tokens": tokens,
            "train_seconds": seconds,
        }
        return updates, weights, train_stats

    def aggregate(
        self, state: ServerState, updates: list[dict[str, LoraFactors]], weights: list[float]
    ) -> AggregationResult:
        targets: dict[Hashable, TargetSpec] = {
            c.key: TargetSpec(ranks=c.ranks, scalings=self.host.scalings(c.key))
            for c in self.classes
        }
        return self.method(updates, weights, targets, self.method_options)

    def evaluate_global(self, state: ServerState, observer: RunObserver) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        with self.host.global_model(state.global_update) as model:
            if self.dataset.unseen:
                metrics["unseen"] = self.evaluate(model, "test", self.dataset.unseen, observer)
            if self.config.eval.seen and any(c.eval for c in self.dataset.seen.values()):
                metrics["seen"] = self.evaluate(model, "eval", self.dataset.seen, observer)
        return metrics

    def run_round(self, state: ServerState, observer: RunObserver) -> dict[str, Any]:
        """One federated round; updates `state` in place and returns its record."""
        t0 = time.perf_counter()
        clients = self.sample_clients(state)
        observer.round_started(state.round + 1, clients)
        updates, weights, train_stats = self.train_round(state, clients, observer)

        t1 = time.perf_counter()
        result = self.aggregate(state, updates, weights)
        del updates  # the round's client factors are not needed past aggregation
        aggregate_seconds = time.perf_counter() - t1

        if result.merge_into_base:
            self.host.merge_into_base(result.global_update)
            state.merged.append(result.global_update)
            state.global_update = None
            state.class_factors = None
        else:
            state.global_update = result.global_update
            gen = torch.Generator().manual_seed(_seed_for(self.config.seed, 5, state.round))
            state.class_factors = {
                str(key): revive_dead_components(factors, gen)
                for key, factors in (result.client_factors or {}).items()
            }
        state.round += 1

        record: dict[str, Any] = {
            "round": state.round,
            "clients": clients,
            "ranks": {cid: state.client_class[cid] for cid in clients},
            **train_stats,
            "aggregation": result.diagnostics,
            "aggregate_seconds": aggregate_seconds,
        }
        last = state.round == self.config.federation.rounds
        if last or state.round % self.config.eval.every == 0:
            t2 = time.perf_counter()
            record["eval"] = self.evaluate_global(state, observer)
            record["eval_seconds"] = time.perf_counter() - t2
        record["seconds"] = time.perf_counter() - t0
        state.history.append(record)
        observer.round_done(record)
        return record

    def total_update(self, state: ServerState) -> dict[str, GlobalUpdate]:
        """W - W0 of the global model: merged rounds (FLoRA) stacked with the current dW."""
        parts = [*state.merged, *([state.global_update] if state.global_update else [])]
        if not parts:
            return {
                n: GlobalUpdate(B=torch.zeros(o, 1), A=torch.zeros(1, i))
                for n, (o, i) in self.host.shapes.items()
            }
        if len(parts) == 1:
            return parts[0]
        # Stacking factors is exact: Σ_t B_t A_t = [B_1 … B_T] @ [A_1; …; A_T].
        return {
            n: GlobalUpdate(
                B=torch.cat([p[n].B.float() for p in parts], dim=1),  # (out, ΣR_t)
                A=torch.cat([p[n].A.float() for p in parts], dim=0),  # (ΣR_t, in)
            )
            for n in self.host.shapes
        }


def _zero_tail(f: LoraFactors, rank: int) -> LoraFactors:
    """The same factors with components from `rank` on set to zero (shape unchanged)."""
    if rank >= f.rank:
        return f
    B, A = f.B.clone(), f.A.clone()
    B[:, rank:] = 0
    A[rank:] = 0
    return LoraFactors(B=B, A=A, scaling=f.scaling)


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
        bound = 1.0 / float(A.shape[1]) ** 0.5  # PEFT's kaiming-uniform bound for A
        fresh = (torch.rand(int(dead.sum()), A.shape[1], generator=generator) * 2 - 1) * bound
        A[dead] = fresh.to(A.dtype)
        out[name] = LoraFactors(B=f.B, A=A, scaling=f.scaling)
    return out
