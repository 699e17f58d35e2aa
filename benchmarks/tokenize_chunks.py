"""Texts per tokenizer call (ENCODE_CHUNK): cold tokenisation time and peak memory.

    .venv/bin/python benchmarks/tokenize_chunks.py [--assets DIR] [--sizes 512 1024 2048]

Tokenises all 1,612 clients of ../shared/assets/ni-flexlora/all-1612-clients-20-5-5 with
the shipped builtin:flexlora-tiny tokenizer (Alpaca template, max_length 512, no cache)
once per chunk size, each in a fresh subprocess, and reports the wall time of
`tokenize_dataset` and how far it raised the process's peak RSS above what it was after
loading the data and the tokenizer. The ratio printed is against the size flexlora ships
(`flexlora.data.tokenize.ENCODE_CHUNK`), and every size's token ids are checked equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = "ni-flexlora/all-1612-clients-20-5-5"


def peak_rss_mib() -> float:
    """VmHWM of this process: the peak resident set size so far, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_case(data_dir: str, chunk: int) -> None:
    """Child process: one cold tokenisation at `chunk` texts a call; JSON on stdout."""
    from transformers import AutoTokenizer

    import flexlora.data.tokenize as tokenize
    from flexlora.assets import resolve_model_path
    from flexlora.config import load_config
    from flexlora.data.dataset import load_federated_dataset

    tokenize.ENCODE_CHUNK = chunk
    overrides = ["data.kind=flexlora-ni", f"data.path={data_dir}", "data.max_length=512"]
    cfg = load_config(None, overrides)
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:flexlora-tiny"))
    before = peak_rss_mib()
    start = time.perf_counter()
    splits = tokenize.tokenize_dataset(dataset, tokenizer, cfg.data)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for by_split in splits.values():
        for part in by_split.values():
            digest.update(part.ids.tobytes())
            digest.update(part.prompt_lengths.tobytes())
    print(json.dumps({
        "seconds": seconds,
        "peak_rise_mib": peak_rss_mib() - before,
        "ids_sha256": digest.hexdigest(),
    }))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from flexlora.data.tokenize import ENCODE_CHUNK

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=ROOT.parent / "shared" / "assets")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # child mode: DIR CHUNK
    args = parser.parse_args(argv)
    if args.case:
        run_case(args.case[0], int(args.case[1]))
        return 0
    data_dir = args.assets / SPLIT
    if not data_dir.is_dir():
        print(f"{data_dir} not found: nothing to measure", file=sys.stderr)
        return 2
    sizes = sorted({*args.sizes, ENCODE_CHUNK})
    results = {}
    for size in sizes:
        child = [sys.executable, __file__, "--case", str(data_dir), str(size)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results[size] = json.loads(out.strip().splitlines()[-1])
        r = results[size]
        print(f"{size:5d} texts a call: {r['seconds']:6.2f} s, peak +{r['peak_rise_mib']:6.1f} MiB",
              flush=True)  # fmt: skip
    shipped = results[ENCODE_CHUNK]
    print(f"\nagainst the shipped ENCODE_CHUNK = {ENCODE_CHUNK}:")
    for size, r in results.items():
        print(f"{size:5d}: time x{r['seconds'] / shipped['seconds']:.2f}, "
              f"peak rise x{r['peak_rise_mib'] / shipped['peak_rise_mib']:.2f}")  # fmt: skip
    same = len({r["ids_sha256"] for r in results.values()}) == 1
    print(f"token ids and prompt lengths identical across sizes: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
