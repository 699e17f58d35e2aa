r"""What checkpointing costs a run: seconds in `RunWriter.checkpoint` per round, against
the round's wall time.

Runs `flexlora run` in this process (the offline default experiment unless `--set`
changes it) with `RunWriter.checkpoint` wrapped in a timer, then prints per round:
the checkpoint's seconds, the round's wall time (from the end of one round's checkpoint
to the end of the next, so it holds training, aggregation, evaluation, the metrics line
and the checkpoint itself), and the share. Round 1 also holds the base model's
evaluation when `eval.baseline` is on, so it is shown but left out of the mean share;
the round-0 checkpoint (written once, before any work) is reported on its own.
Goal: under 2 % of round time. What docs/benchmarks.md reports:

    .venv/bin/python benchmarks/checkpoint_cost.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flexlora.cli import main as cli_main
from flexlora.outputs import CHECKPOINT, RunWriter


def timed_run(sets: list[str], out: Path) -> list[dict[str, Any]]:
    """Run the experiment; (round, start, end, bytes) of every checkpoint write."""
    calls: list[dict[str, Any]] = []
    original = RunWriter.checkpoint

    def checkpoint(self: RunWriter, state: Any, seconds_so_far: float) -> None:
        start = time.perf_counter()
        original(self, state, seconds_so_far)
        end = time.perf_counter()
        size = (self.out_dir / CHECKPOINT).stat().st_size
        calls.append({"round": state.round, "start": start, "end": end, "bytes": size})

    RunWriter.checkpoint = checkpoint  # type: ignore[method-assign]
    try:
        args = ["run", "--quiet", "--out", str(out)]
        for s in sets:
            args += ["--set", s]
        code = cli_main(args)
    finally:
        RunWriter.checkpoint = original  # type: ignore[method-assign]
    if code != 0:
        raise SystemExit(f"flexlora run exited {code}")
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="as flexlora run --set"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkpoint-cost-") as tmp:
        calls = timed_run(args.sets, Path(tmp) / "run")
    rows = []
    for previous, call in itertools.pairwise(calls):
        seconds = call["end"] - call["start"]
        round_seconds = call["end"] - previous["end"]
        rows.append(
            {
                "round": call["round"],
                "checkpoint_s": round(seconds, 4),
                "round_s": round(round_seconds, 2),
                "share_pct": round(100 * seconds / round_seconds, 3),
                "checkpoint_bytes": call["bytes"],
            }
        )
    first = calls[0]
    print(
        f"round-0 checkpoint (once, before the base-model evaluation): "
        f"{first['end'] - first['start']:.4f} s, {first['bytes']} bytes"
    )
    print(f"{'round':>5} {'checkpoint s':>13} {'round s':>8} {'share %':>8} {'bytes':>9}")
    for r in rows:
        print(
            f"{r['round']:>5} {r['checkpoint_s']:>13.4f} {r['round_s']:>8.2f} "
            f"{r['share_pct']:>8.3f} {r['checkpoint_bytes']:>9}"
        )
    steady = rows[1:] or rows  # round 1 also holds the base-model evaluation
    summary = {
        "rounds": len(rows),
        "mean_checkpoint_s": statistics.mean(r["checkpoint_s"] for r in steady),
        "mean_round_s": statistics.mean(r["round_s"] for r in steady),
        "mean_share_pct": statistics.mean(r["share_pct"] for r in steady),
        "max_share_pct": max(r["share_pct"] for r in steady),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
