"""The Flower engine: the shared round, with clients reached through a Flower Grid."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from flexlora.aggregation.base import AggregationResult
from flexlora.config import ExperimentConfig
from flexlora.experiment import ExperimentResult, drive_rounds, prepare_experiment
from flexlora.flower.strategy import FlexLoraStrategy, NodeChooser, spread_over_nodes
from flexlora.outputs import Checkpoint
from flexlora.rounds import ServerState, initial_state
from flexlora.simulation import Engine, RunObserver


@dataclass
class FlowerEngine(Engine):
    """Trains each round's clients on Flower nodes; evaluates on the server's model."""

    grid: Grid | None = None
    strategy: FlexLoraStrategy | None = None
    timeout: float = 3600.0
    node_ids: list[int] = field(default_factory=list)

    def train_and_aggregate(
        self, state: ServerState, observer: RunObserver
    ) -> tuple[ServerState, AggregationResult, dict[str, Any]]:
        assert self.grid is not None and self.strategy is not None
        strategy = self.strategy
        strategy.state = state
        round_index = state.round + 1
        messages = list(
            strategy.configure_train(round_index, ArrayRecord(), ConfigRecord(), self.grid)
        )
        clients = [t.client_id for t in strategy.tasks]
        observer.round_started(round_index, clients)
        t0 = time.perf_counter()
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        wait = time.perf_counter() - t0
        strategy.aggregate_train(round_index, replies)
        for client_id in clients:
            observer.client_done(client_id)
        assert strategy.result is not None
        strategy.record["clients_seconds"] = wait  # the round's wall time on the nodes
        return strategy.state, strategy.result, strategy.record


def serve(
    grid: Grid,
    cfg: ExperimentConfig,
    out_dir: Path,
    observer: RunObserver,
    checkpoint: Checkpoint | None,
    *,
    choose_node: NodeChooser = spread_over_nodes,
    min_nodes: int | None = None,
) -> ExperimentResult:
    """The ServerApp's work: flexlora's run loop with a FlowerEngine."""
    started = time.perf_counter()
    prepared = prepare_experiment(cfg)
    local = prepared.engine
    strategy = FlexLoraStrategy(
        local.server,
        initial_state(local.server),
        choose_node=choose_node,
        min_nodes=cfg.flower.supernodes if min_nodes is None else min_nodes,
        transport_dtype=cfg.flower.transport_dtype,
    )
    engine = FlowerEngine(
        server=local.server,
        client=local.client,
        dataset=local.dataset,
        evaluate=local.evaluate,
        grid=grid,
        strategy=strategy,
        timeout=cfg.flower.round_timeout,
    )
    return drive_rounds(prepared, engine, out_dir, observer, checkpoint, started)
