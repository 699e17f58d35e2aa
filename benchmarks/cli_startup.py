r"""How fast the command line starts, and `flexlora aggregate` as a whole command.

1. `flexlora --help`: wall time of the installed console script in a subprocess, best
   and median of `--help-runs` runs, and which heavy modules the parser imports
   (none of torch, transformers, peft, matplotlib, datasets, rouge_score should be).
2. `flexlora aggregate` on the LLaMA-7B attention case: 10 PEFT adapter folders written
   to a temp dir (q_proj and v_proj of one layer, 4096 × 4096, ranks 4–64 spread evenly,
   alpha 16, data sizes 100–1000), then in one run:
   - ours: the whole `flexlora aggregate ... --out OUT` subprocess (Python start-up,
     imports, reading the adapters, aggregating, writing 10 client adapters, the global
     adapter and summary.json), wall time;
   - the dense in-process reference (the authors' way): per module, dW = Σ p_k s_k B_k A_k
     summed densely, a full torch.linalg.svd, U_r Σ_r / s_j and V_rᵀ for every client j
     (factors already in memory: reading them is not timed).
   Every written client adapter is read back and checked against the float32
   reference's truncation (max relative error).

Both sides run with the same torch thread count (`--threads`, passed to the subprocess
as OMP_NUM_THREADS / MKL_NUM_THREADS). What docs/benchmarks.md reports:
    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "matplotlib", "datasets", "rouge_score", "numpy")
SCRIPT = Path(sys.executable).parent / "flexlora"
SHAPE = (4096, 4096)
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")
ALPHA = 16.0


def time_help(runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) times of `flexlora --help` in fresh processes.

    The CPU time hardly depends on other jobs sharing the cores; the wall time does.
    """
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([str(SCRIPT), "--help"], check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def modules_imported_by_help() -> list[str]:
    """The HEAVY modules present after the parser handled --help."""
    code = (
        "import sys, flexlora.cli\n"
        "try:\n    flexlora.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return [m for m in last.split(",") if m]


def write_adapters(root: Path, seed: int) -> tuple[list[Path], list[float], list[dict]]:
    """10 PEFT adapter folders; returns the folders, data sizes and each one's factors."""
    import numpy as np
    import torch

    from flexlora.lora import LoraFactors, lora_scaling
    from flexlora.peft_io import write_adapter

    ranks = [int(r) for r in np.rint(np.linspace(4, 64, 10))]
    sizes = [float(n) for n in np.random.default_rng(seed).integers(100, 1001, size=10)]
    g = torch.Generator().manual_seed(seed)
    out, inn = SHAPE
    folders, factors = [], []
    for k, r in enumerate(ranks):
        client = {}
        for module in MODULES:
            B = torch.randn(out, r, generator=g) / out**0.5  # (out, r)
            A = torch.randn(r, inn, generator=g) / inn**0.5  # (r, in)
            client[module] = LoraFactors(B, A, lora_scaling(ALPHA, r))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": r,
            "lora_alpha": ALPHA,
            "target_modules": ["q_proj", "v_proj"],
            "lora_dropout": 0.0,
            "bias": "none",
        }
        folder = root / f"adapter-{k}"
        write_adapter(folder, client, config)
        folders.append(folder)
        factors.append(client)
    return folders, sizes, factors


def reference(factors: list[dict], sizes: list[float]) -> dict[str, tuple]:
    """The authors' way: dense weighted sum, full SVD, every client's truncation."""
    import torch

    total = sum(sizes)
    results = {}
    for module in MODULES:
        dW = None
        for client, n in zip(factors, sizes, strict=True):
            f = client[module]
            term = (n / total) * f.scaling * (f.B @ f.A)  # (out, r) @ (r, in) -> (out, in)
            dW = term if dW is None else dW + term
        assert dW is not None
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)  # (out, n), (n,), (n, in)
        for client in factors:
            f = client[module]
            _ = (U[:, : f.rank] * (S[: f.rank] / f.scaling), Vh[: f.rank])  # what it receives
        results[module] = (U, S, Vh)
    return results


def max_client_error(out: Path, factors: list[dict], ref: dict[str, tuple]) -> float:
    """Max over written clients and modules of ‖s B A − T_r(dW)‖_F / ‖T_r(dW)‖_F."""
    import torch

    from flexlora.peft_io import read_adapter

    worst = 0.0
    for k, client in enumerate(factors):
        written = read_adapter(out / f"client-{k}")
        for module in MODULES:
            U, S, Vh = ref[module]
            r = client[module].rank
            exact = (U[:, :r] * S[:r]) @ Vh[:r]  # (out, r) @ (r, in) -> (out, in)
            f = written.factors[module]
            got = f.scaling * (f.B.float() @ f.A.float())  # (out, r) @ (r, in) -> (out, in)
            error = torch.linalg.matrix_norm(got - exact) / torch.linalg.matrix_norm(exact)
            worst = max(worst, float(error))
    return worst


def run_aggregate(folders: list[Path], sizes: list[float], out: Path, threads: int) -> float:
    """Wall time of the whole `flexlora aggregate` subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    weights = ",".join(str(int(n)) for n in sizes)
    command = [str(SCRIPT), "aggregate", *map(str, folders), "--out", str(out)]
    command += ["--weights", weights, "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--help-runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many aggregate runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-aggregate", action="store_true")
    args = parser.parse_args()

    times, cpus = time_help(args.help_runs)
    print(
        f"flexlora --help: wall best {min(times):.3f} s, median {statistics.median(times):.3f} s; "
        f"CPU median {statistics.median(cpus):.3f} s; over {len(times)} runs; "
        f"heavy modules imported: {modules_imported_by_help() or 'none'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if args.skip_aggregate:
        return

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs")
    root = Path(tempfile.mkdtemp(prefix="flexlora-cli-bench-"))
    try:
        folders, sizes, factors = write_adapters(root, args.seed)
        ranks = [c[MODULES[0]].rank for c in factors]
        print(f"aggregate: 10 adapters, ranks {ranks}, 2 modules of {SHAPE[0]}x{SHAPE[1]}")
        ours = []
        for i in range(args.repeat):
            ours.append(run_aggregate(folders, sizes, root / f"out-{i}", args.threads))
        start = time.perf_counter()
        ref = reference(factors, sizes)
        t_ref = time.perf_counter() - start
        best = min(range(len(ours)), key=ours.__getitem__)
        error = max_client_error(root / f"out-{best}", factors, ref)
        summary = json.loads((root / f"out-{best}" / "summary.json").read_text())
        inside = summary["timing_seconds"]
        t_ours = ours[best]
        print(
            f"    flexlora aggregate (whole subprocess): best {t_ours:.2f} s of "
            f"{[round(t, 2) for t in ours]} "
            f"(inside: read {inside['read']:.2f} s, aggregate {inside['aggregate']:.2f} s, "
            f"write {inside['write']:.2f} s); svd paths {summary['diagnostics']['svd_mode']}"
        )
        print(f"    dense in-process reference (sum + full SVD + truncations): {t_ref:.2f} s")
        print(f"    ratio reference / flexlora aggregate: {t_ref / t_ours:.1f}x")
        print(f"    max rel. error of the written clients vs the reference truncation: {error:.2e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
