r"""One round on the loopback deployment: a SuperLink and 2 SuperNodes (separate
processes, TLS and SuperNode authentication on), the tiny 2-layer Llama of the tests,
two synthetic clients at max-rank 2 and 8 (ranks.types [2, 4, 8]).

Reports, in one run:
- bring-up: certificates, SuperLink, key registration, SuperNodes until all online;
- the `flwr run` call from start to the run's final status (FAB build, ServerApp
  start-up, profile query, the rounds, evaluation, writing the run folder);
- per round, from metrics.jsonl: `seconds` (the round on the server, evaluation
  included), `clients_seconds` (from sending the tasks to the last reply: each
  SuperNode starts a fresh ClientApp process that imports torch and loads the model),
  `train_seconds` (the clients' own training), and `traffic_bytes` per client (sent to
  it and received from it, the arrays of the messages);
- take-down.
The load average is printed before and after: the machine may be shared.
What docs/benchmarks.md reports:
    .venv/bin/python benchmarks/flower_deployment.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from engine_fixtures import make_tiny_model
from flexlora.cli import main as flexlora_main
from flexlora.flower.local import LocalDeployment, NodeSpec

SYNTHETIC = (
    "data.synthetic={suite: families, num_clients: 12, train_per_client: 16, "
    "eval_per_client: 2, test_per_client: 2}"
)


def prepare(root: Path) -> tuple[Path, Path, list[str]]:
    """The tiny model, and a folder with two synthetic clients' files."""
    model = make_tiny_model(root / "model")
    exported = root / "exported"
    if flexlora_main(["data", "export", "--set", SYNTHETIC, "--out", str(exported)]) != 0:
        raise SystemExit("data export failed")
    ids = json.loads((exported / "clients.json").read_text())["seen"][:2]
    two = root / "two"
    two.mkdir()
    for cid in ids:
        for split in ("training", "eval", "test"):
            shutil.copy(exported / f"local_{split}_{cid}.json", two)
    return model, two, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the work folder here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="flexlora-bench-deploy-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}")
    model, two, ids = prepare(root)
    overrides = [
        f"model.path={model}", f"data.cache_dir={root / 'cache'}",
        "data.kind=flexlora-ni", f"data.path={two}", "data.max_length=128",
        f"federation.rounds={args.rounds}", "federation.clients_per_round=2",
        "federation.local_steps=3", "federation.batch_size=4", "federation.lr=0.01",
        "ranks.types=[2, 4, 8]", "eval.seen=true", "eval.max_new_tokens=4",
        "eval.max_examples_per_client=2", "flower.supernodes=2",
    ]  # fmt: skip
    nodes = [
        NodeSpec({"client-id": cid, "data-path": str(two / f"local_training_{cid}.json"),
                  "max-rank": cap})
        for cid, cap in zip(ids, (2, 8), strict=True)
    ]  # fmt: skip
    out = root / "run"
    deployment = LocalDeployment(root / "flower", nodes, grace=5)
    t0 = time.perf_counter()
    try:
        deployment.start()
        up = time.perf_counter() - t0
        t1 = time.perf_counter()
        outcome = deployment.run_app(
            {"config": "", "set": ";".join(overrides), "out": str(out), "mode": "deployment"}
        )
        run = time.perf_counter() - t1
    finally:
        t2 = time.perf_counter()
        deployment.stop()
        down = time.perf_counter() - t2
    if not outcome.ok:
        raise SystemExit(f"run failed: {outcome.status} {outcome.details}")
    print(f"bring-up (certs, SuperLink, 2 keys registered, 2 SuperNodes online): {up:.1f} s")
    print(f"flwr run, start to final status: {run:.1f} s")
    print(f"take-down: {down:.1f} s")
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        print(
            f"round {r['round']}: {r['seconds']:.1f} s on the server "
            f"(clients {r['clients_seconds']:.1f} s, of which training "
            f"{r['train_seconds']:.1f} s; evaluation {r.get('eval_seconds', 0.0):.1f} s); "
            f"ranks {r['ranks']}"
        )
        for cid, t in r["traffic_bytes"].items():
            print(f"  {cid}: {t['sent']:,} B sent to it, {t['received']:,} B received")
    print(f"load average after: {os.getloadavg()}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
