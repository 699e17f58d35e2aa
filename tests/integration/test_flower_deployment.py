"""flexlora on Flower's Deployment Engine: a SuperLink and two SuperNodes as separate
processes on loopback, TLS and SuperNode authentication on, driven by `flwr run`.

Each SuperNode is one client with its own data file and a declared capacity (max-rank 2
and max-rank 8 with ranks.types [2, 4, 8]); two rounds of a tiny model must give each
client the largest rank it can hold, and the same global update as the in-process
engine on the same two clients with that rank assignment (ranks.assign).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_fixtures import make_tiny_model
from flexlora.cli import main
from flexlora.config import load_config
from flexlora.experiment import run_experiment
from flexlora.flower.local import LocalDeployment, NodeSpec, _alive

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
def clients(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder with two synthetic clients' files (`flexlora data export`), their ids."""
    root = tmp_path_factory.mktemp("clients")
    exported = root / "exported"
    synthetic = (
        "data.synthetic={num_clients: 12, train_per_client: 16, "
        "eval_per_client: 2, test_per_client: 2}"
    )
    assert main(["data", "export", "--set", synthetic, "--out", str(exported)]) == 0
    ids = json.loads((exported / "clients.json").read_text())["seen"][:2]
    two = root / "two"
    two.mkdir()
    for cid in ids:
        for split in ("training", "eval", "test"):
            shutil.copy(exported / f"local_{split}_{cid}.json", two)
    return two, ids


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


def global_delta(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "adapters" / "global" / "adapter_model.safetensors"))
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    return {
        m: tensors[f"{m}.lora_B.weight"].double() @ tensors[f"{m}.lora_A.weight"].double()
        for m in modules
    }


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
