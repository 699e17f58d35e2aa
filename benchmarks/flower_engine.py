"""Wall time of one experiment on Flower's Simulation Engine against the in-process engine.

    python benchmarks/flower_engine.py [--set KEY=VALUE ...] [--supernodes N]

Runs `flexlora run` (by default the offline default experiment) twice in one go, as the
user would: in-process, then `--engine flower` with N SuperNodes (one CPU each); prints
both wall times, their ratio (goal: Flower within 1.5x) and the largest relative
difference between the two global updates (the engines draw the same numbers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def run(out: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "flexlora.cli", "run", "--quiet", "--out", str(out), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def largest_difference(a: Path, b: Path) -> float:
    ta = load_file(str(a / "adapters" / "global" / "adapter_model.safetensors"))
    tb = load_file(str(b / "adapters" / "global" / "adapter_model.safetensors"))
    worst = 0.0
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in ta}):
        da = ta[f"{module}.lora_B.weight"].double() @ ta[f"{module}.lora_A.weight"].double()
        db = tb[f"{module}.lora_B.weight"].double() @ tb[f"{module}.lora_A.weight"].double()
        worst = max(worst, float((da - db).norm() / db.norm().clamp_min(1e-30)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--supernodes", type=int, default=2)
    args = parser.parse_args()
    sets = [a for s in args.overrides for a in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run(root / "warm", [*sets, "--set", "federation.rounds=1"])  # token cache built once
        local = run(root / "local", sets)
        flower_sets = [*sets, "--set", f"flower.supernodes={args.supernodes}"]
        flower = run(root / "flower", [*flower_sets, "--engine", "flower"])
        difference = largest_difference(root / "flower", root / "local")
    print(f"in-process: {local:.1f} s")
    print(f"Flower Simulation Engine ({args.supernodes} SuperNodes): {flower:.1f} s")
    print(f"ratio Flower / in-process: {flower / local:.2f}x (goal <= 1.5x)")
    print(f"largest relative difference of the global updates: {difference:.2e}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # this process only compares; the runs use their own
    main()
