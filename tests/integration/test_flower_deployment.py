"""flexlora on Flower's Deployment Engine: a SuperLink and two SuperNodes as separate
processes on loopback, TLS and SuperNode authentication on, driven by `flwr run`.

Each SuperNode is one client with its own data file and a declared capacity (max-rank 2
and max-rank 8 with ranks.types [2, 4, 8]); two rounds of a tiny model must give each
client the largest rank it can hold, and the same global update as the in-process
engine on the same two clients with that rank assignment (ranks.assign).

A third test runs three SuperNodes and SIGKILLs one once it has received its round-1
task: the run must leave that client out of every round, with a reason, and finish
with the other two.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_fixtures import global_delta, make_tiny_model
from flexlora.cli import main
from flexlora.config import load_config
from flexlora.experiment import run_experiment
from flexlora.flower.local import LocalDeployment, NodeSpec, _alive, _children

pytestmark = pytest.mark.deployment

RANK_TYPES = [2, 4, 8]
CAPACITY = (2, 8)  # max-rank of the first and second node -> rank types 0 and 2


def experiment(model: Path, cache: Path, data: Path) -> list[str]:
    """flexlora overrides: a tiny model, two clients (the folder `data`), two rounds."""
    return [
        f"model.path={model}",
        f"data.cache_dir={cache}",
        "data.kind=flexlora-ni",
        f"data.path={data}",
        "data.max_length=128",
        "federation.rounds=2",
        "federation.clients_per_round=2",
        "federation.local_steps=3",
        "federation.batch_size=4",
        "federation.lr=0.01",
        f"ranks.types={RANK_TYPES}",
        "eval.seen=true",
        "eval.max_new_tokens=4",
        "eval.max_examples_per_client=2",
        "flower.supernodes=2",
        "flower.round_timeout=300",
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic clients' files (`flexlora data export`) and their clients.json."""
    out = tmp_path_factory.mktemp("clients") / "exported"
    synthetic = (
        "data.synthetic={suite: families, num_clients: 12, train_per_client: 16, "
        "eval_per_client: 2, test_per_client: 2}"
    )
    assert main(["data", "export", "--set", synthetic, "--out", str(out)]) == 0
    return out


def some_clients(exported: Path, count: int) -> tuple[Path, list[str]]:
    """A folder beside `exported` with the first `count` seen clients' files, their ids."""
    ids = json.loads((exported / "clients.json").read_text())["seen"][:count]
    folder = exported.parent / f"first-{count}"
    folder.mkdir(exist_ok=True)
    for cid in ids:
        for split in ("training", "eval", "test"):
            shutil.copy(exported / f"local_{split}_{cid}.json", folder)
    return folder, ids


@pytest.fixture(scope="module")
def clients(exported: Path) -> tuple[Path, list[str]]:
    """A folder with two synthetic clients' files, their ids."""
    return some_clients(exported, 2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, clients: tuple[Path, list[str]]
) -> Iterator[LocalDeployment]:
    """The SuperLink and the two SuperNodes, up for the module's tests."""
    folder, ids = clients
    nodes = [
        NodeSpec({"client-id": cid, "data-path": str(folder / f"local_training_{cid}.json"),
                  "max-rank": cap})
        for cid, cap in zip(ids, CAPACITY, strict=True)
    ]  # fmt: skip
    # one torch thread per process: both SuperNodes train at once, on as few as 2 cores
    running = LocalDeployment(tmp_path_factory.mktemp("flower"), nodes, ready_timeout=90,
                              grace=5, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    pids: list[int] = []
    try:
        running.start()
        yield running
    finally:
        pids = running.pids()
        running.stop()  # every process, also when start() or a test failed
    assert pids and not [pid for pid in pids if _alive(pid)]


def test_two_supernodes_train_at_their_declared_ranks_and_match_in_process(
    deployment: LocalDeployment,
    clients: tuple[Path, list[str]],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    folder, (a, b) = clients
    common = experiment(tiny_model, tmp_path / "cache", folder)
    deployed = tmp_path / "deployed"
    log: list[str] = []

    outcome = deployment.run_app(
        {"config": "", "set": ";".join(common), "out": str(deployed), "mode": "deployment"},
        echo=log.append,
        timeout=240,
    )

    assert outcome.ok, f"{outcome.status}: {outcome.details}\n" + "\n".join(log[-30:])
    records = [json.loads(x) for x in (deployed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["ranks"] == {a: "rank-2", b: "rank-8"}  # within max-rank 2 and 8
        assert record["clients_failed"] == []
        for cid in (a, b):
            assert record["traffic_bytes"][cid]["sent"] > 0
            assert record["traffic_bytes"][cid]["received"] > 0
    assert (deployed / "summary.json").is_file()
    assert (deployed / "adapters" / "global" / "adapter_model.safetensors").is_file()

    # the in-process engine, same clients, same rank assignment
    assigned = load_config(None, [*common, f"ranks.assign={{{a}: 0, {b}: 2}}"])
    run_experiment(assigned, tmp_path / "in-process")
    here, there = global_delta(tmp_path / "in-process"), global_delta(deployed)
    assert here.keys() == there.keys() and here
    for module, expected in here.items():
        scale = float(expected.norm())
        assert scale > 0, module
        assert float((there[module] - expected).norm()) <= 1e-4 * scale, module


def test_a_supernode_whose_key_is_not_registered_is_refused(
    deployment: LocalDeployment,
) -> None:
    stranger = deployment.add_node(NodeSpec({"client-id": "stranger", "max-rank": 8}),
                                   register=False)  # fmt: skip
    try:
        code = stranger.wait(timeout=60)
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()
    assert code != 0
    assert len(deployment.online_nodes()) == 2


# -- faults: a SuperNode killed mid-round ----------------------------------------------------

FAULT_CAPACITY = (2, 8, 4)  # max-rank of the three nodes -> rank types 0, 2 and 1
ROUND_TIMEOUT = 20  # seconds the server waits for a round's replies


@dataclass
class ThreeNodes:
    deployment: LocalDeployment
    folder: Path
    ids: list[str]
    """The clients, in node order; the last one's node is the one to kill."""
    victim: subprocess.Popen[bytes]
    victim_log: Path


def kill_on_first_train_message(
    node: subprocess.Popen[bytes], log: Path, stop: threading.Event, timeout: float
) -> dict[str, float]:
    """A thread that SIGKILLs `node` and its descendants (SuperExec, the ClientApp) as
    soon as its log shows it receiving its first train message: round 1's task is out,
    and the node will never answer it. What it did lands in the returned dict."""
    done: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if "Receiving: train message" in log.read_text(errors="replace"):
                for pid in [node.pid, *_children(node.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                done["killed_at"] = time.monotonic()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return done


@pytest.fixture
def three_nodes(tmp_path_factory: pytest.TempPathFactory, exported: Path) -> Iterator[ThreeNodes]:
    """A SuperLink and three SuperNodes (max-rank 2, 8 and 4), up for one test."""
    folder, ids = some_clients(exported, 3)
    specs = [
        NodeSpec({"client-id": cid, "data-path": str(folder / f"local_training_{cid}.json"),
                  "max-rank": cap})
        for cid, cap in zip(ids, FAULT_CAPACITY, strict=True)
    ]  # fmt: skip
    running = LocalDeployment(tmp_path_factory.mktemp("flower-faults"), specs[:2],
                              ready_timeout=90, grace=5, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    pids: list[int] = []
    try:
        running.start()
        victim = running.add_node(specs[2])  # the third SuperNode: the one to kill
        running.wait_until_online(3)
        (log,) = (running.workdir / "logs").glob("supernode-2-*.log")
        yield ThreeNodes(running, folder, ids, victim, log)
    finally:
        pids = running.pids()
        running.stop()  # every process, also when start() or the test failed
    assert pids and not [pid for pid in pids if _alive(pid)]


def test_a_supernode_killed_mid_round_is_left_out_and_the_run_completes(
    three_nodes: ThreeNodes, tiny_model: Path, tmp_path: Path
) -> None:
    # Prepare: three clients, each round all three, at least two replies needed
    ids = three_nodes.ids
    victim, survivors = ids[2], ids[:2]
    common = [
        *experiment(tiny_model, tmp_path / "cache", three_nodes.folder),
        "federation.clients_per_round=3",
        "federation.min_replies=2",
        "flower.supernodes=3",
        f"flower.round_timeout={ROUND_TIMEOUT}",
    ]
    deployed = tmp_path / "deployed"
    log: list[str] = []
    stop = threading.Event()
    killed = kill_on_first_train_message(
        three_nodes.victim, three_nodes.victim_log, stop, timeout=180
    )

    # Execute: the run; the third node dies as its round-1 task reaches it
    try:
        outcome = three_nodes.deployment.run_app(
            {"config": "", "set": ";".join(common), "out": str(deployed), "mode": "deployment"},
            echo=log.append,
            timeout=240,
        )
    finally:
        stop.set()

    # Assert: the node died in round 1, and both rounds completed without it
    assert "killed_at" in killed, "the third SuperNode never received its round-1 task"
    assert three_nodes.victim.poll() is not None
    assert outcome.ok, f"{outcome.status}: {outcome.details}\n" + "\n".join(log[-30:])
    records = [json.loads(x) for x in (deployed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert sorted(record["clients"]) == sorted(ids)
        assert record["ranks"] == dict(zip(ids, ["rank-2", "rank-8", "rank-4"], strict=True))
        # the dead node's client, left out with a reason: no reply within the round's
        # timeout, or the SuperLink's "Node Unavailable" once it has missed its heartbeats
        (failed,) = record["clients_failed"]
        assert failed["client"] == victim, record["clients_failed"]
        reason = failed["reason"]
        assert reason == "no reply" or (
            reason.startswith("node ") and "Node Unavailable" in reason
        ), reason
        assert record["traffic_bytes"][victim]["received"] == 0
        # the other two trained, answered and were aggregated
        for cid in survivors:
            assert record["traffic_bytes"][cid]["sent"] > 0
            assert record["traffic_bytes"][cid]["received"] > 0
        assert record["train_tokens"] > 0
    summary = json.loads((deployed / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert (deployed / "adapters" / "global" / "adapter_model.safetensors").is_file()
    assert global_delta(deployed)
