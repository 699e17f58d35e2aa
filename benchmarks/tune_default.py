"""Choose the offline default's hyperparameters the fair way: FedIT at the smallest rank,
scored on the seen clients' eval split only.

    .venv/bin/python benchmarks/tune_default.py --lrs 1e-3,3e-3,1e-2 --local-steps 10,20
    .venv/bin/python benchmarks/tune_default.py --recipe fedavg --lrs 0.1,0.3,1 --local-steps 20

Every combination of the listed values is one `flexlora run` of `fedit-min` (FedIT,
every client at the default's smallest rank type; with `--recipe fedavg`, `fedavg-min`:
FedAvg's SGD, whose rate is federation.sgd_lr) on the offline default suite, scored
once after its last round on the seen clients' eval split; the unseen clients are not
scored at all (eval.seen true, and the unseen test split is never read by this script).
The table lists seen loss and Rouge-L, mean over the seeds, best loss first: the
default takes the best row, and every method then shares it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run_min(recipe: str, overrides: dict[str, object], seed: int, out: Path) -> dict[str, float]:
    """One RECIPE-min run; returns its seen eval loss and Rouge-L after the last round."""
    sets = {
        "method": "fedit" if recipe == "fedit" else f"{recipe}+fedit",
        "ranks.types": "[2]",
        "seed": seed,
        "eval.baseline": "false",
        "eval.seen": "true",
        **overrides,
    }
    sets["eval.every"] = sets["federation.rounds"]
    cmd = [sys.executable, "-m", "flexlora.cli", "run", "--quiet", "--out", str(out)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    final = json.loads((out / "summary.json").read_text())["final"]
    return {"seen_loss": final["seen_loss"], "seen_rougeL": final["seen_rougeL"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        choices=["fedit", "fedavg"],
        default="fedit",
        help="the baseline to tune: fedit-min (AdamW, federation.lr) or fedavg-min (SGD, "
        "federation.sgd_lr)",
    )
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="learning rates")
    parser.add_argument("--local-steps", default="10,20", help="local steps per round")
    parser.add_argument("--rounds", default="10", help="federated rounds")
    parser.add_argument("--clients-per-round", default="8", help="clients sampled a round")
    parser.add_argument("--alphas", default="16", help="LoRA alpha")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per setting")
    args = parser.parse_args()

    grid = list(
        itertools.product(
            _floats(args.lrs),
            _ints(args.local_steps),
            _ints(args.rounds),
            _ints(args.clients_per_round),
            _floats(args.alphas),
        )
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (lr, steps, rounds, per_round, alpha) in enumerate(grid):
            lr_key = "federation.lr" if args.recipe == "fedit" else "federation.sgd_lr"
            overrides = {
                lr_key: lr,
                "federation.local_steps": steps,
                "federation.rounds": rounds,
                "federation.clients_per_round": per_round,
                "lora.alpha": alpha,
            }
            started = time.perf_counter()
            scores = [
                run_min(args.recipe, overrides, seed, Path(tmp) / f"{i}-{seed}")
                for seed in range(args.seeds)
            ]
            seconds = (time.perf_counter() - started) / args.seeds
            loss = statistics.mean(s["seen_loss"] for s in scores)
            rouge = statistics.mean(s["seen_rougeL"] for s in scores)
            rows.append((loss, rouge, lr, steps, rounds, per_round, alpha, seconds))
            print(
                f"lr {lr:g}  steps {steps}  rounds {rounds}  clients/round {per_round}  "
                f"alpha {alpha:g}: seen loss {loss:.4f}  seen Rouge-L {rouge:.2f}  "
                f"({seconds:.0f} s a run)",
                flush=True,
            )
    print("\nbest first (seen eval loss, mean over seeds):")
    print(
        "| lr | local steps | rounds | clients/round | alpha | seen loss | seen Rouge-L | s/run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for loss, rouge, lr, steps, rounds, per_round, alpha, seconds in sorted(rows):
        print(
            f"| {lr:g} | {steps} | {rounds} | {per_round} | {alpha:g} | {loss:.4f} | "
            f"{rouge:.2f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
