"""The GPU path, in one script that fits about 10 minutes on one GPU.

    python benchmarks/gpu.py --out /tmp/gpu            # on a machine with a CUDA GPU
    python benchmarks/gpu.py --dry-run --out /tmp/gpu  # tiny shapes on the CPU (the tests)

(a) runs the test suite's GPU-marked tests (`pytest -m gpu` on the files that hold them);
(c) runs 2 rounds of a randomly initialised Llama with the paper's 1.3B shapes (hidden
    2048, FFN 5504, 24 layers; built from a config, nothing downloaded) at the paper
    preset's rank types and batch sizes (batch 4, 2 accumulation steps) in bfloat16, and
    records the round time, the share spent in aggregation, tokens/s per client and the
    peak GPU memory;
(b) times the aggregation benchmark's cases a and b on the GPU against the same code on
    the CPU (`benchmarks/aggregation.py --device`), one layer each.
They run in that order, and OUT/gpu.json is rewritten after each, so a run stopped at
its time limit keeps every part it finished; the exit status is 1 when a part failed or
was skipped. `--budget` (540 s) bounds the whole: each subprocess part gets at most what
is left of it.
The model and the run go to --work (a temporary folder, removed, by default), so OUT
holds only the report. The dry run does (c) with tiny shapes on the CPU, in bfloat16 as
the real run, so the script cannot rot unseen.

On a lent GPU machine (the device tool; its image has torch, transformers, peft and
scipy but no rouge-score or nltk, and no network), build their wheels here first into
the ignored folder .gpu-wheels:

    .venv/bin/pip wheel --no-deps -w .gpu-wheels rouge-score==0.1.2 nltk==3.10.4

then run, with `carry: [".gpu-wheels"]` and a timeout of 600 s:

    python3 -m pip install --no-index --no-deps .gpu-wheels/*.whl &&
    PYTHONPATH=src PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0 python3 benchmarks/gpu.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_TYPES = [
    {"attention": 8, "mlp": 8},
    {"attention": 30, "mlp": 30},
    {"attention": 30, "mlp": 200},
    {"attention": 200, "mlp": 200},
]


def build_model(folder: Path, *, dry_run: bool) -> Path:
    """A random Llama (the paper's 1.3B shapes, or tiny ones) with the shipped tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flexlora.assets import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:flexlora-tiny"))
    shapes: dict[str, Any] = (
        {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4}
        if dry_run
        else {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
              "num_attention_heads": 16, "num_key_value_heads": 16}
    )  # fmt: skip
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shapes,
    )
    torch.manual_seed(0)  # a fixed random model: the benchmark times, it does not learn
    # Drawn on the GPU: 1.3B float32 weights take a minute or more to draw on a CPU.
    with torch.device("cpu" if dry_run else "cuda"):
        model = LlamaForCausalLM(config)
    # bfloat16 in the dry run too, so that the CPU check takes the GPU run's dtype path.
    torch.nn.Module.to(model, torch.bfloat16)  # (transformers' `to` is typed for its decorator)
    model.save_pretrained(folder)
    del model
    tokenizer.save_pretrained(folder)
    return folder


def two_rounds(model: Path, out: Path, *, dry_run: bool) -> dict[str, Any]:
    """(c): 2 rounds at the paper's rank types and batch sizes; figures per round."""
    from flexlora.config import load_config
    from flexlora.experiment import run_experiment

    types = "[2, 4]" if dry_run else json.dumps(PAPER_TYPES)
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            "model.dtype=bfloat16",
            f"model.device={'cpu' if dry_run else 'cuda'}",
            "model.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
            "data.synthetic={suite: families, num_clients: 24, train_per_client: 16, "
            "eval_per_client: 2, test_per_client: 2}",
            "data.max_length=256",
            f"data.cache_dir={out / 'cache'}",
            "federation.rounds=2",
            "federation.clients_per_round=4",
            "federation.local_steps=4",
            "federation.batch_size=4",
            "federation.grad_accum=2",
            "federation.lr=0.0003",
            f"ranks.types={types}",
            "ranks.distribution=uniform",
            "lora.alpha=16",
            "eval.baseline=false",
            "eval.seen=false",
            "eval.max_new_tokens=8",
            "eval.max_examples_per_client=2",
        ],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_experiment(cfg, out / "run")
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [
        {
            "round": r["round"],
            "seconds": r["seconds"],
            "aggregate_share": r["aggregate_seconds"] / r["seconds"],
            "tokens_per_second_per_client": r["train_tokens"] / r["train_seconds"],
        }
        for r in records
    ]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"rounds": rounds, "peak_gpu_gib": peak, "final": result.summary["final"]}


def run(command: list[str], seconds: float) -> dict[str, Any]:
    """A subprocess in the repository root: its exit status, wall time and last lines."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as stopped:
        # partial output: bytes on POSIX even in text mode
        output = "".join(
            part.decode() if isinstance(part, bytes) else part
            for part in (stopped.stdout or b"", stopped.stderr or b"")
        )
        rc, lines = None, [*output.strip().splitlines()[-15:], f"(stopped after {seconds:g} s)"]
    else:
        rc, lines = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-15:]
    return {
        "command": " ".join(command),
        "rc": rc,
        "seconds": time.perf_counter() - started,
        "tail": lines,
    }


def gpu_test_files() -> list[str]:
    """The test files that hold GPU-marked tests. Only these are collected: the rest may
    import what a lent GPU machine lacks (Flower, datasets) and would stop collection."""
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if "pytest.mark.gpu" in path.read_text()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu.json goes")
    parser.add_argument(
        "--work", type=Path, help="scratch for the model and the run (default: a temp folder)"
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument(
        "--budget",
        type=float,
        default=540,
        help="seconds for the whole script: a subprocess part gets at most what is left, "
        "so that the script ends inside a lent machine's 600 s command limit",
    )
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget

    def within_budget(command: list[str], seconds: float) -> dict[str, Any]:
        left = deadline - time.perf_counter()
        if left < 30:
            return {"command": " ".join(command), "rc": None, "skipped": "out of --budget"}
        return run(command, min(seconds, left))

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device (use --dry-run for the CPU check)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="flexlora-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": "cpu" if args.dry_run else torch.cuda.get_device_name()}
    failed: list[str] = []

    def step(name: str, action: Callable[[], Any]) -> None:
        """Run one part, record its result or its error, and save the report at once: a
        run stopped at its time limit still leaves every part finished before it."""
        print(f"[gpu.py {time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            report[name] = action()
        except Exception as error:  # a benchmark: record the failure, go on to the next part
            trace = traceback.format_exc().strip().splitlines()[-15:]
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": trace}
            failed.append(name)
        else:
            if isinstance(report[name], dict) and report[name].get("rc", 0) != 0:
                failed.append(name)
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({name: report[name]}, indent=2), flush=True)

    python = sys.executable
    if not args.dry_run:
        tests = [python, "-m", "pytest", "-q", "-m", "gpu", *gpu_test_files()]
        step("gpu_tests", lambda: within_budget(tests, 150))
    # The two rounds come before the aggregation benchmark: they are the figure no other
    # part gives, so a run that meets its time limit should have them.
    step(
        "two_rounds",
        lambda: two_rounds(
            build_model(work / "model", dry_run=args.dry_run), work, dry_run=args.dry_run
        ),
    )
    if not args.dry_run:
        aggregation = [python, "benchmarks/aggregation.py", "--case", "a", "b", "--layers", "1"]
        aggregation += ["--b-layers", "1", "--repeat", "1", "--no-memory", "--device"]
        step("aggregation_cuda", lambda: within_budget([*aggregation, "cuda"], 180))
        step("aggregation_cpu", lambda: within_budget([*aggregation, "cpu"], 180))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(f"gpu.py: failed: {', '.join(failed)} (details in {args.out / 'gpu.json'})")


if __name__ == "__main__":
    main()
