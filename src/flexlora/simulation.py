"""The in-process engine: a short loop over the round's server functions and client step.

One base model in memory, one LoRA adapter per rank class (flexlora.adapters), clients
trained one after another with `client.local_update`. The server side is
flexlora.rounds; everything carried between rounds lives in its `ServerState`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flexlora.aggregation.base import AggregationResult
from flexlora.client import ClientHost, local_update
from flexlora.data.types import FederatedDataset
from flexlora.rounds import (
    Server,
    ServerState,
    aggregate_round,
    base_change,
    make_tasks,
    sample_clients,
)

logger = logging.getLogger(__name__)


class RunObserver:
    """Hooks the engine calls as it goes (the CLI draws progress bars with them)."""

    def round_started(self, round_index: int, clients: list[str]) -> None: ...
    def client_done(self, client_id: str) -> None: ...
    def eval_started(self, name: str, total_examples: int) -> None: ...
    def eval_progress(self, done: int) -> None: ...
    def round_done(self, record: Mapping[str, Any]) -> None: ...


# (model, split name, clients, observer) -> metrics
Evaluate = Callable[[Any, str, Mapping[str, Any], RunObserver], dict[str, Any]]


@dataclass
class Engine:
    """What every engine shares: one round is a step that trains the sampled clients and
    aggregates their replies (engine-specific), then the same conclusion: fold what the
    round hands the base, evaluate the global model, time and record the round."""

    server: Server
    client: ClientHost
    """The model the server evaluates and folds base updates into (and, in-process, the
    one every client trains on)."""
    dataset: FederatedDataset
    evaluate: Evaluate

    def train_and_aggregate(
        self, state: ServerState, observer: RunObserver
    ) -> tuple[ServerState, AggregationResult, dict[str, Any]]:
        """Sample, train the clients, aggregate: `rounds.aggregate_round`'s result."""
        raise NotImplementedError

    def evaluate_global(self, state: ServerState, observer: RunObserver) -> dict[str, Any]:
        """Scores of W0 + dW (W0 alone before round 1) on the unseen and seen clients."""
        metrics: dict[str, Any] = {}
        with self.client.adapters.global_model(state.global_update) as model:
            if self.dataset.unseen:
                metrics["unseen"] = self.evaluate(model, "test", self.dataset.unseen, observer)
            cfg = self.server.config
            if cfg.eval.seen and any(c.eval for c in self.dataset.seen.values()):
                metrics["seen"] = self.evaluate(model, "eval", self.dataset.seen, observer)
        return metrics

    def run_round(
        self, state: ServerState, observer: RunObserver
    ) -> tuple[ServerState, dict[str, Any]]:
        """One federated round: the state after it and the round's record."""
        t0 = time.perf_counter()
        new_state, result, record = self.train_and_aggregate(state, observer)
        folded = base_change(result)
        if folded is not None:
            self.client.adapters.merge_into_base(folded)
        cfg = self.server.config
        if new_state.round == cfg.federation.rounds or new_state.round % cfg.eval.every == 0:
            t2 = time.perf_counter()
            record["eval"] = self.evaluate_global(new_state, observer)
            record["eval_seconds"] = time.perf_counter() - t2
        record["seconds"] = time.perf_counter() - t0
        new_state.history = [*state.history, record]
        observer.round_done(record)
        return new_state, record


class InProcessEngine(Engine):
    """The server and every client in one process, sharing one model."""

    def train_and_aggregate(
        self, state: ServerState, observer: RunObserver
    ) -> tuple[ServerState, AggregationResult, dict[str, Any]]:
        clients = sample_clients(self.server, state)
        observer.round_started(state.round + 1, clients)
        tasks = make_tasks(self.server, state, clients)
        replies = []
        for task in tasks:
            replies.append(local_update(self.client, task))
            observer.client_done(task.client_id)
        t1 = time.perf_counter()
        new_state, result, record = aggregate_round(self.server, state, tasks, replies)
        record["aggregate_seconds"] = time.perf_counter() - t1
        return new_state, result, record
