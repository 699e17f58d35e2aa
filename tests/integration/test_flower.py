"""flexlora on Flower: payloads, the strategy over a Grid, the Simulation Engine.

The strategy tests drive the real ServerApp code (`flower.engine.serve`) over a Grid
that delivers each message to the real ClientApp code in this process, so they check
the Flower path's numbers and its fault handling in seconds; one test runs the same
experiment on Flower's Simulation Engine (Ray) through the CLI.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Error, Message
from flwr.serverapp import Grid

from engine_fixtures import global_delta, make_tiny_model, quick_overrides
from flexlora.aggregation.base import GlobalUpdate
from flexlora.cli import main
from flexlora.client import ClientReply, ClientTask
from flexlora.config import ExperimentConfig, load_config
from flexlora.experiment import run_experiment
from flexlora.flower import client_app
from flexlora.flower.engine import serve
from flexlora.flower.payload import (
    array_bytes,
    decode_reply,
    decode_task,
    encode_reply,
    encode_task,
)
from flexlora.lora import LoraFactors
from flexlora.simulation import RunObserver


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def quick(model: Path, cache: Path, *extra: str) -> list[str]:
    """The engine tests' quick run, two rounds of three local steps."""
    return quick_overrides(model, cache, "federation.rounds=2", "federation.local_steps=3", *extra)


def assert_same_global(a: Path, b: Path, rtol: float) -> None:
    da, db = global_delta(a), global_delta(b)
    assert da.keys() == db.keys() and da
    for m in da:
        scale = float(db[m].norm())
        assert scale > 0, m
        assert float((da[m] - db[m]).norm()) <= rtol * scale, m


# -- payloads ---------------------------------------------------------------------------


def test_task_and_reply_survive_the_wire_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    start = {
        "l.0.q_proj": LoraFactors(
            torch.randn(6, 2, generator=gen), torch.randn(2, 5, generator=gen), 4.0
        ),
        "l.0.up_proj": LoraFactors(
            torch.randn(9, 3, generator=gen), torch.randn(3, 5, generator=gen), 2.5
        ),
    }
    task = ClientTask("c-1", 3, "rank-2", {"l.0.q_proj": 2, "l.0.up_proj": 1}, start, 2**62 + 5,
                      "hetlora", {"gamma": 0.5, "reg_lambda": 0.01})  # fmt: skip
    base = [
        {
            "l.0.q_proj": GlobalUpdate(
                torch.randn(6, 4, generator=gen), torch.randn(4, 5, generator=gen)
            )
        }
    ]

    back, back_base = decode_task(encode_task(task, base, "float32"))

    assert (back.client_id, back.round, back.rank_class, back.seed) == (
        "c-1",
        3,
        "rank-2",
        2**62 + 5,
    )
    assert back.ranks == task.ranks and back.recipe_options == task.recipe_options
    for name, f in start.items():
        assert torch.equal(back.start[name].B, f.B) and torch.equal(back.start[name].A, f.A)
        assert back.start[name].scaling == f.scaling
    assert torch.equal(back_base[0]["l.0.q_proj"].B, base[0]["l.0.q_proj"].B)

    reply = ClientReply("c-1", start, 16, {"l.0.q_proj": 2, "l.0.up_proj": 1}, 1.25, 300, 0.5)
    again = decode_reply(encode_reply(reply, "float32"))
    assert (again.client_id, again.num_examples, again.loss, again.tokens) == ("c-1", 16, 1.25, 300)
    assert again.ok and again.factors is not None
    assert torch.equal(again.factors["l.0.up_proj"].B, start["l.0.up_proj"].B)
    failed = decode_reply(encode_reply(ClientReply("c-2", None, 16, error="boom"), "float32"))
    assert failed.error == "boom" and failed.factors is None


def test_float16_transport_halves_the_bytes() -> None:
    factors = {"m": LoraFactors(torch.randn(64, 8), torch.randn(8, 32), 1.0)}
    reply = ClientReply("c", factors, 4, {"m": 8})
    full, half = encode_reply(reply, "float32"), encode_reply(reply, "float16")
    values = 64 * 8 + 8 * 32
    assert 4 * values <= array_bytes(full) < 4 * values + 512  # the arrays and a header each
    assert 2 * values <= array_bytes(half) < 2 * values + 512
    back = decode_reply(half).factors
    assert back is not None and back["m"].B.dtype == torch.float32
    torch.testing.assert_close(back["m"].B, factors["m"].B, rtol=1e-3, atol=1e-3)


# -- the strategy over a Grid -----------------------------------------------------------


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's process identity, which its runtimes set before a ServerApp runs."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


class LocalGrid(Grid):
    """Delivers each message to `handle(node, message)` in this process, at once."""

    def __init__(self, nodes: list[int], handle: Callable[[int, Message], Message | None]):
        self.nodes = nodes
        self.handle = handle
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            reply = self.handle(message.metadata.dst_node_id, message)
            if reply is not None:
                self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def config(model: Path, cache: Path, *extra: str) -> ExperimentConfig:
    return load_config(None, quick(model, cache, *extra))


@pytest.mark.parametrize(
    "method",
    [
        ["method=flexlora"],
        ["method=flora"],  # sends its merged bases too
        ["method=slora+flexlora", "recipe_options={slora: {sparse_rounds: 1, density: 0.05}}"],
    ],
    ids=["flexlora", "flora", "slora"],
)
def test_the_flower_path_gives_the_in_process_result(
    method: list[str], tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: the same config for both engines
    cfg = config(tiny_model, tmp_path / "cache", *method)
    grid = LocalGrid([11, 22], lambda node, m: client_app.train(m, cfg))

    # Execute
    serve(grid, cfg, tmp_path / "flower", RunObserver(), None)
    run_experiment(cfg, tmp_path / "local")

    # Assert: the same global update and the same records, bit for bit
    assert_same_global(tmp_path / "flower", tmp_path / "local", rtol=0.0)
    flower = [
        json.loads(x) for x in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()
    ]
    local = [json.loads(x) for x in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in flower] == [r["train_loss"] for r in local]
    assert [r["eval"]["unseen"]["loss"] for r in flower] == [
        r["eval"]["unseen"]["loss"] for r in local
    ]
    sent = flower[0]["traffic_bytes"]
    assert set(sent) == set(flower[0]["clients"])
    assert all(v["sent"] > 0 and v["received"] > 0 for v in sent.values())


def test_a_node_that_errs_or_stays_silent_is_left_out_and_the_round_completes(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: three nodes; node 2 errs on every message, node 3 never answers
    cfg = config(tiny_model, tmp_path / "cache")

    def handle(node: int, message: Message) -> Message | None:
        if node == 2:
            return Message(Error(code=0, reason="out of memory"), reply_to=message)
        if node == 3:
            return None
        return client_app.train(message, cfg)

    grid = LocalGrid([1, 2, 3], handle)

    # Execute
    serve(grid, cfg, tmp_path / "run", RunObserver(), None)

    # Assert: each round recorded one failure of each kind, and still produced a model
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        reasons = sorted(f["reason"] for f in record["clients_failed"])
        assert reasons == ["no reply", "node 2 failed: out of memory"], reasons
        assert record["eval"]["unseen"]["loss"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2


def test_too_few_nodes_answering_stop_the_run_resumably(tiny_model: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model, tmp_path / "cache", "federation.min_replies=2")
    grid = LocalGrid([1, 2, 3], lambda node, m: None if node != 1 else client_app.train(m, cfg))
    from flexlora.rounds import RoundFailure

    with pytest.raises(RoundFailure, match=r"round 1: 2 of 3 clients failed"):
        serve(grid, cfg, tmp_path / "run", RunObserver(), None)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()  # resumable from round 1


# -- the Simulation Engine --------------------------------------------------------------


def test_run_on_the_simulation_engine_matches_in_process(tiny_model: Path, tmp_path: Path) -> None:
    sets = [a for s in quick(tiny_model, tmp_path / "cache") for a in ("--set", s)]
    assert main(["run", "--quiet", "--out", str(tmp_path / "local"), *sets]) == 0
    assert (
        main(["run", "--quiet", "--engine", "flower", "--out", str(tmp_path / "flower"), *sets])
        == 0
    )
    assert_same_global(tmp_path / "flower", tmp_path / "local", rtol=1e-4)
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "config.yaml"):
        assert (tmp_path / "flower" / name).is_file(), name
    assert (tmp_path / "flower" / "plots").is_dir()
    saved = (tmp_path / "flower" / "config.yaml").read_text()
    assert "engine: flower" in saved


# -- deployment: one client per node, its own data and declared capacity -------------------


def test_deployment_nodes_train_their_own_data_at_their_declared_capacity(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: two clients' files, exported; each node holds one and declares a capacity
    exported = tmp_path / "exported"
    sets = [a for s in quick(tiny_model, tmp_path / "cache") for a in ("--set", s)]
    assert main(["data", "export", *sets, "--out", str(exported)]) == 0
    seen = json.loads((exported / "clients.json").read_text())["seen"]
    a, b = seen[0], seen[1]
    two = tmp_path / "two-clients"
    two.mkdir()
    for cid in (a, b):
        for split in ("training", "eval", "test"):
            name = f"local_{split}_{cid}.json"
            (two / name).write_text((exported / name).read_text())
    common = [
        *quick(tiny_model, tmp_path / "cache"),
        "data.kind=flexlora-ni",
        f"data.path={two}",
        "federation.clients_per_round=2",
        "eval.seen=true",
    ]
    profiles = {
        1: client_app.NodeProfile(a, two / f"local_training_{a}.json", None, 3),  # -> rank 2
        2: client_app.NodeProfile(b, two / f"local_training_{b}.json", 2, None),  # -> rank 8
    }
    cfg = load_config(None, common)

    def handle(node: int, message: Message) -> Message:
        if message.metadata.message_type == "query":
            return client_app.profile_reply(message, profiles[node])
        return client_app.train(message, cfg, profiles[node])

    # Execute: the deployment, and in-process with the same rank assignment
    serve(LocalGrid([1, 2], handle), cfg, tmp_path / "deployed", RunObserver(), None,
          mode="deployment")  # fmt: skip
    assigned = load_config(None, [*common, f"ranks.assign={{{a}: 0, {b}: 2}}"])
    run_experiment(assigned, tmp_path / "local")

    # Assert: each node trained at the rank it could hold, and the result is in-process's
    records = [
        json.loads(x) for x in (tmp_path / "deployed" / "metrics.jsonl").read_text().splitlines()
    ]
    for record in records:
        assert record["ranks"] == {a: "rank-2", b: "rank-8"}
        assert record["clients_failed"] == []
    assert_same_global(tmp_path / "deployed", tmp_path / "local", rtol=1e-6)


def test_a_deployment_node_gone_offline_is_left_out_of_later_rounds_without_a_wait(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: three nodes, one client each; node 3 goes offline after its profile
    # query, as a killed SuperNode does once it has missed its heartbeats: the SuperLink
    # lists only nodes 1 and 2 and answers a message to node 3 with its own error
    exported = tmp_path / "exported"
    sets = [a for s in quick(tiny_model, tmp_path / "cache") for a in ("--set", s)]
    assert main(["data", "export", *sets, "--out", str(exported)]) == 0
    ids = json.loads((exported / "clients.json").read_text())["seen"][:3]
    three = tmp_path / "three-clients"
    three.mkdir()
    for cid in ids:
        for split in ("training", "eval", "test"):
            name = f"local_{split}_{cid}.json"
            (three / name).write_text((exported / name).read_text())
    cfg = load_config(None, [
        *quick(tiny_model, tmp_path / "cache"),
        "data.kind=flexlora-ni",
        f"data.path={three}",
        "federation.min_replies=2",
        "flower.supernodes=3",
        "flower.round_timeout=2",  # without the fix: "only 2 of 3 SuperNodes connected"
    ])  # fmt: skip
    profiles = {
        node: client_app.NodeProfile(cid, three / f"local_training_{cid}.json", None, 8)
        for node, cid in zip((1, 2, 3), ids, strict=True)
    }

    def handle(node: int, message: Message) -> Message:
        if message.metadata.message_type == "query":
            if node == 3:
                grid.nodes = [1, 2]  # offline from now on
            return client_app.profile_reply(message, profiles[node])
        if node == 3:
            error = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=message)
            error.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own id
            return error
        return client_app.train(message, cfg, profiles[node])

    grid = LocalGrid([1, 2, 3], handle)

    # Execute
    serve(grid, cfg, tmp_path / "run", RunObserver(), None, mode="deployment")

    # Assert: both rounds ran with nodes 1 and 2; node 3's client is named, with its node
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["clients_failed"] == [
            {"client": ids[2], "reason": "node 3 failed: Error: Node Unavailable"}
        ]


class CrashAfterRound(RunObserver):
    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def round_done(self, record: Any) -> None:
        if record["round"] == self.round_index:
            raise KeyboardInterrupt  # as a Ctrl-C would, after the round's record


def test_a_flower_run_resumes_and_ends_as_an_uninterrupted_one(
    tiny_model: Path, tmp_path: Path
) -> None:
    from flexlora.outputs import read_checkpoint

    cfg = config(tiny_model, tmp_path / "cache", "federation.rounds=3", "method=flora")
    grid = LocalGrid([1, 2], lambda node, m: client_app.train(m, cfg))
    serve(grid, cfg, tmp_path / "whole", RunObserver(), None)
    with pytest.raises(KeyboardInterrupt):
        serve(grid, cfg, tmp_path / "cut", CrashAfterRound(2), None)
    checkpoint = read_checkpoint(tmp_path / "cut")
    assert checkpoint.rounds_completed == 1  # round 2's record was not checkpointed
    serve(grid, cfg, tmp_path / "cut", RunObserver(), checkpoint)

    assert_same_global(tmp_path / "cut", tmp_path / "whole", rtol=0.0)
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in cut] == [r["train_loss"] for r in whole]
    assert len(cut) == 3
