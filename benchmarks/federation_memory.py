"""Peak memory of one federated round: a 1,612-client federation against a 16-client one.

    .venv/bin/python benchmarks/federation_memory.py [--assets ../shared/assets]
        [--clients-per-round 8] [--max-length 512]

Each case runs `flexlora.experiment.run_experiment` in a fresh subprocess (so that one
case's allocations cannot lift the other's peak) and reports that process's ru_maxrss.
Both cases: the shipped builtin:flexlora-tiny, data.kind=flexlora-ni, one round of the
same clients per round (2 local steps of batch 4 each), 2 unseen clients scored on 1
example each (eval.seen=false), 1 torch thread, a cold token cache in a temp folder
(tokenisation is part of the run's peak), then again with that cache warm (each case
twice, each run its own subprocess).

  1612: ../shared/assets/ni-flexlora/all-1612-clients-20-5-5 as it is.
  16:   the same folder's first 16 clients (by manifest order), their files copied into a
        temp folder at run time.

The ratio printed is peak(1612) / peak(16); the goal is <= 1.25: the engine keeps one
model and one adapter per rank class whatever the number of clients, so only the data
should grow.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = "ni-flexlora/all-1612-clients-20-5-5"


def run_case(
    data_dir: str, work: str, clients_per_round: int, max_length: int, threads: int
) -> None:
    """Child process: one run_experiment, then its peak RSS and summary figures as JSON."""
    import torch

    from flexlora.config import load_config
    from flexlora.experiment import run_experiment

    torch.set_num_threads(threads)
    overrides = [
        "model.path=builtin:flexlora-tiny",
        "model.device=cpu",
        "data.kind=flexlora-ni",
        f"data.path={data_dir}",
        f"data.max_length={max_length}",
        "data.unseen.count=2",
        f"data.cache_dir={work}/cache",
        "federation.rounds=1",
        f"federation.clients_per_round={clients_per_round}",
        "federation.local_steps=2",  # memory, not learning: a step's peak is the same
        "federation.batch_size=4",
        "eval.seen=false",
        "eval.max_examples_per_client=1",
        "eval.max_new_tokens=16",
    ]
    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    result = run_experiment(load_config(None, overrides), out)
    summary = json.loads((out / "summary.json").read_text())
    report = {
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "seconds": time.perf_counter() - started,
        "seen_clients": summary["data"]["seen_clients"],
        "unseen_clients": summary["data"]["unseen_clients"],
        "train_examples": summary["data"]["train_examples"],
        "skipped": summary["data"]["skipped"],
        "tokenization": summary["data"]["tokenization"],
        "train_loss": result.summary["final_round_train_loss"],
    }
    print("RESULT " + json.dumps(report))


def subset(source: Path, count: int, dest: Path) -> None:
    """Copy the `count` lowest-numbered clients' three files into `dest`."""
    ids = sorted(
        (
            p.name[len("local_training_") : -len(".json")]
            for p in source.glob("local_training_*.json")
        ),
        key=lambda c: (len(c), c),  # numeric order of the decimal ids
    )
    dest.mkdir(parents=True)
    for cid in ids[:count]:
        for split in ("training", "eval", "test"):
            shutil.copyfile(
                source / f"local_{split}_{cid}.json", dest / f"local_{split}_{cid}.json"
            )


def child(name: str, data_dir: Path, work: str, args: argparse.Namespace) -> dict:
    """One case in a fresh subprocess; its JSON report."""
    cmd = [
        sys.executable, __file__, "--child", str(data_dir), "--work", work,
        "--clients-per-round", str(args.clients_per_round),
        "--max-length", str(args.max_length), "--threads", str(args.threads),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"case {name} failed (exit status {proc.returncode})")
    report: dict = json.loads(lines[-1][len("RESULT ") :])
    return report


def measure(name: str, data_dir: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """(cold, warm): a run into an empty token cache, then a second run that reads it."""
    with tempfile.TemporaryDirectory(prefix=f"flexlora-mem-{name}-") as work:
        cold = child(name, data_dir, work, args)
        warm = child(name, data_dir, work, args)
    tok = cold["tokenization"]
    print(
        f"{name:>5} clients: peak RSS cold cache {cold['peak_rss_kib'] / 1024:7.1f} MiB "
        f"({cold['seconds']:.1f} s), warm cache {warm['peak_rss_kib'] / 1024:7.1f} MiB "
        f"({warm['seconds']:.1f} s); {cold['seen_clients']} seen + {cold['unseen_clients']} "
        f"unseen, {cold['train_examples']} train examples; tokenisation {tok}; "
        f"skipped {cold['skipped']}; round train loss {cold['train_loss']:.3f}"
    )
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=Path, default=ROOT / "../shared/assets")
    parser.add_argument("--clients-per-round", type=int, default=8)
    parser.add_argument("--small", type=int, default=16, help="clients in the small federation")
    parser.add_argument(
        "--max-length", type=int, default=512, help="the builtin model's context window"
    )
    parser.add_argument("--threads", type=int, default=1, help="memory does not need two")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_case(args.child, args.work, args.clients_per_round, args.max_length, args.threads)
        return

    full = (args.assets / SPLIT).resolve()
    if not (full / "local_training_0.json").is_file():
        raise SystemExit(f"{args.assets / SPLIT} not found: this benchmark needs ../shared/assets")
    with tempfile.TemporaryDirectory(prefix="flexlora-mem-subset-") as tmp:
        small_dir = Path(tmp) / "clients"
        subset(full, args.small, small_dir)
        small = measure(str(args.small), small_dir, args)
    big = measure("1612", full, args)
    for i, label in enumerate(("cold cache", "warm cache")):
        ratio = big[i]["peak_rss_kib"] / small[i]["peak_rss_kib"]
        print(f"ratio peak(1612) / peak({args.small}), {label}: {ratio:.3f}; goal <= 1.25")


if __name__ == "__main__":
    main()
