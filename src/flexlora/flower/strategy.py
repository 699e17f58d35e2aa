"""A Flower Strategy over flexlora's round: each node its own message, every method.

Flower's built-in strategies send every node the same payload, which cannot carry mixed
ranks. `FlexLoraStrategy.configure_train` samples clients and makes their tasks with
flexlora.rounds (each task holds that client's own rank class and start factors) and
sends one Message per task; `aggregate_train` decodes the replies and calls
`rounds.aggregate_round`, the same function the in-process engine calls. A node that
errs, or does not answer within the round's timeout, is left out of the round and
recorded with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flexlora.aggregation.base import AggregationResult
from flexlora.client import ClientReply, ClientTask
from flexlora.errors import FlexLoraError, InternalError
from flexlora.flower.payload import array_bytes, decode_reply, encode_factors, encode_task
from flexlora.lora import LoraFactors
from flexlora.rounds import Server, ServerState, aggregate_round, make_tasks, sample_clients

logger = logging.getLogger(__name__)

# (client id, the connected node ids, the task's position in the round) -> node id
NodeChooser = Callable[[str, Sequence[int], int], int]


def spread_over_nodes(client_id: str, nodes: Sequence[int], position: int) -> int:
    """Simulation: any node can train any client; the round's tasks go round-robin."""
    return nodes[position % len(nodes)]


class FlexLoraStrategy(Strategy):
    """Holds the server's state between rounds; every decision is flexlora.rounds'."""

    def __init__(
        self,
        server: Server,
        state: ServerState,
        *,
        choose_node: NodeChooser = spread_over_nodes,
        min_nodes: int = 1,
        node_wait_seconds: float = 120.0,
        transport_dtype: str = "float32",
    ) -> None:
        self.server = server
        self.state = state
        self.choose_node = choose_node
        self.min_nodes = min_nodes
        self.node_wait_seconds = node_wait_seconds
        self.transport_dtype = transport_dtype
        self.result: AggregationResult | None = None
        self.record: dict[str, Any] = {}
        self.tasks: list[ClientTask] = []
        self._sent: list[tuple[ClientTask, Message, int]] = []

    def summary(self) -> None:
        cfg = self.server.config
        logger.info(
            "FlexLoraStrategy: method %s, %d rank classes, %d clients",
            cfg.method,
            len(self.server.classes),
            len(self.server.client_ids),
        )

    # -- training ---------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One Message per sampled client, to the node `choose_node` picks for it."""
        if server_round != self.state.round + 1:
            raise InternalError(f"round {server_round} asked after round {self.state.round}")
        nodes = wait_for_nodes(grid, self.min_nodes, self.node_wait_seconds)
        self.tasks = make_tasks(self.server, self.state, sample_clients(self.server, self.state))
        self._sent = []
        for position, task in enumerate(self.tasks):
            content = encode_task(task, self.state.merged, self.transport_dtype)
            message = Message(
                content,
                dst_node_id=self.choose_node(task.client_id, nodes, position),
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
            self._sent.append((task, message, array_bytes(content)))
        return [message for _, message, _ in self._sent]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with flexlora.rounds; returns the global update and the round's
        figures (the new state, result and record stay on the strategy)."""
        t0 = time.perf_counter()
        decoded, traffic = self._decode(list(replies))
        state, result, record = aggregate_round(self.server, self.state, self.tasks, decoded)
        record["aggregate_seconds"] = time.perf_counter() - t0
        record["traffic_bytes"] = traffic
        self.state, self.result, self.record = state, result, record
        global_factors = {  # dW = B @ A, its scaling folded in
            n: LoraFactors(B=g.B, A=g.A, scaling=1.0) for n, g in result.global_update.items()
        }
        metrics = MetricRecord(
            {
                "train_loss": float(record["train_loss"]),
                "clients_failed": len(record["clients_failed"]),
            }
        )
        return encode_factors(global_factors, "float32"), metrics

    def _decode(
        self, replies: list[Message]
    ) -> tuple[list[ClientReply], dict[str, dict[str, int]]]:
        """Each reply matched to the task it answers; an error message becomes a failed
        reply with the node's reason. Bytes sent and received per client."""
        sent = {m.metadata.message_id: (t, m.metadata.dst_node_id) for t, m, _ in self._sent}
        traffic = {t.client_id: {"sent": n, "received": 0} for t, _, n in self._sent}
        out: list[ClientReply] = []
        for reply in replies:
            task, node = sent.get(reply.metadata.reply_to_message_id, (None, None))
            if reply.has_error():
                if task is None:
                    logger.warning("an error reply matches no task: %s", reply.error.reason)
                    continue
                # the node the task went to: an error the SuperLink makes for a node it
                # sees offline ("Node Unavailable") comes from the SuperLink's own id
                reason = f"node {node} failed: {reply.error.reason}"
                out.append(ClientReply(task.client_id, None, 0, error=reason))
                continue
            try:
                decoded = decode_reply(reply.content)
            except ValueError as e:
                logger.warning("round %d: %s", self.state.round + 1, e)
                if task is not None:
                    out.append(ClientReply(task.client_id, None, 0, error=str(e)))
                continue
            out.append(decoded)
            if decoded.client_id in traffic:
                traffic[decoded.client_id]["received"] = array_bytes(reply.content)
        return out, traffic

    # -- evaluation happens on the server, as in-process -----------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def wait_for_nodes(grid: Grid, count: int, seconds: float) -> list[int]:
    """The connected node ids (sorted) once at least `count` are there."""
    deadline = time.monotonic() + seconds
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise FlexLoraError(
                f"only {len(nodes)} of {count} SuperNodes connected within {seconds:.0f} s"
            )
        time.sleep(0.5)
