"""The Flower engine: the shared round, with clients reached through a Flower Grid."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flexlora.aggregation.base import AggregationResult
from flexlora.config import ExperimentConfig
from flexlora.errors import FlexLoraError
from flexlora.experiment import ExperimentResult, drive_rounds, prepare_experiment
from flexlora.flower.client_app import NodeProfile
from flexlora.flower.strategy import (
    FlexLoraStrategy,
    NodeChooser,
    spread_over_nodes,
    wait_for_nodes,
)
from flexlora.outputs import Checkpoint
from flexlora.rounds import Server, ServerState, initial_state, type_for_capacity
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
    mode: str = "simulation",
) -> ExperimentResult:
    """The ServerApp's work: flexlora's run loop with a FlowerEngine.

    mode "simulation": the nodes are interchangeable workers that hold the run's whole
    dataset; the clients and their ranks come from the config, as in-process.
    mode "deployment": each node is one client; the server asks every node for its
    profile and assigns it the largest rank type within the capacity it declared.
    """
    started = time.perf_counter()
    prepared = prepare_experiment(cfg)
    local = prepared.engine
    server = local.server
    choose_node: NodeChooser = spread_over_nodes
    nodes = cfg.flower.supernodes
    if mode == "deployment":
        found = wait_for_nodes(grid, cfg.flower.supernodes, cfg.flower.round_timeout)
        profiles = query_profiles(grid, found, cfg.flower.round_timeout)
        node_of = {p.client_id: node for node, p in profiles.items()}
        assign = {p.client_id: declared_type(p, cfg, prepared.shapes) for p in profiles.values()}
        deployed = replace(cfg, ranks=replace(cfg.ranks, assign=assign))
        server = Server.build(deployed, prepared.shapes, sorted(node_of))
        # Each task goes to its client's own node by id, online or not: a node that has
        # died gets the SuperLink's "node unavailable" error (or no reply within
        # round_timeout) and its client is left out of the round. So a round waits only
        # for as many connected nodes as it needs replies, not for every node, or one
        # dead node would stop the run at the next round.
        nodes = min(cfg.federation.min_replies, len(found))

        def choose_node(client_id: str, connected: Sequence[int], position: int) -> int:
            return node_of[client_id]

    elif mode != "simulation":
        raise FlexLoraError(f"run config mode must be simulation or deployment, got {mode!r}")
    strategy = FlexLoraStrategy(
        server,
        initial_state(server),
        choose_node=choose_node,
        min_nodes=nodes,
        node_wait_seconds=cfg.flower.round_timeout,
        transport_dtype=cfg.flower.transport_dtype,
    )
    engine = FlowerEngine(
        server=server,
        client=local.client,
        dataset=local.dataset,
        evaluate=local.evaluate,
        grid=grid,
        strategy=strategy,
        timeout=cfg.flower.round_timeout,
    )
    return drive_rounds(prepared, engine, out_dir, observer, checkpoint, started)


def query_profiles(grid: Grid, nodes: Sequence[int], timeout: float) -> dict[int, NodeProfile]:
    """node id -> the profile it declares (its client id, data path and capacity)."""
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    profiles: dict[int, NodeProfile] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise FlexLoraError(f"SuperNode {node} gave no profile: {reply.error.reason}")
        record = reply.content.config_records["profile"]
        rank_type, max_rank = int(record["rank_type"]), int(record["max_rank"])  # type: ignore[arg-type]
        profiles[node] = NodeProfile(
            client_id=str(record["client_id"]),
            data_path=Path(),  # the node's own: the server never reads it
            rank_type=None if rank_type < 0 else rank_type,
            max_rank=None if max_rank < 0 else max_rank,
        )
    missing = sorted(set(nodes) - set(profiles))
    if missing:
        raise FlexLoraError(f"SuperNode {missing[0]} did not answer the profile query")
    ids = [p.client_id for p in profiles.values()]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise FlexLoraError(f"two SuperNodes declare client-id {twice[0]!r}")
    return profiles


def declared_type(
    profile: NodeProfile, cfg: ExperimentConfig, shapes: dict[str, tuple[int, int]]
) -> int:
    """The rank type a node gets: the one it names, or the largest within its max-rank."""
    if profile.rank_type is not None:
        if not 0 <= profile.rank_type < len(cfg.ranks.types):
            raise FlexLoraError(
                f"node {profile.client_id}: rank-type {profile.rank_type} is not an index "
                f"of ranks.types (0 to {len(cfg.ranks.types) - 1})"
            )
        return profile.rank_type
    assert profile.max_rank is not None
    try:
        return type_for_capacity(cfg.ranks.types, shapes, profile.max_rank)
    except FlexLoraError as e:
        raise FlexLoraError(f"node {profile.client_id}: {e}") from e
