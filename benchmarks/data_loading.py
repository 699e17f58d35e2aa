"""Load + tokenise the 1,612-client NI split: ours (cold and warm cache) against the naive way.

    .venv/bin/python benchmarks/data_loading.py [--assets ../shared/assets] [--max-length 512]

ours, cold:  load_federated_dataset + TokenizedCache.load_or_tokenize into a fresh cache
             directory (batched fast tokenizer, exact prefix cut, one .npz written).
ours, warm:  the same two calls again: the JSON is read again, the tokens come from the cache.
reference:   json.load per file, then the tokenizer called per example on prompt + target
             and on the prompt alone (the Alpaca recipe), no cache.

The tokenizer is stories260K's (no pad token: unk is used for padding). Every kept
example's ids are checked against the reference's, so the speed is not bought with a
different tokenisation. Seconds are wall-clock; CPU seconds are shown beside them
because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from flexlora.config import DataConfig
from flexlora.data.dataset import load_federated_dataset
from flexlora.data.templates import format_prompt, format_target
from flexlora.data.tokenize import TokenizedCache, TokenizedDataset
from flexlora.data.types import Example

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def ours(cfg: DataConfig, tokenizer: Any) -> TokenizedDataset:
    dataset = load_federated_dataset(cfg, seed=0)
    return TokenizedCache(cfg.cache_dir).load_or_tokenize(dataset, tokenizer, cfg)


def reference(
    folder: Path, tokenizer: Any, max_length: int
) -> dict[tuple[str, str], list[tuple[list[int], int]]]:
    """The naive way: a json.load per file, two tokenizer calls per example, no cache."""
    out: dict[tuple[str, str], list[list[int]]] = {}
    for name in sorted(os.listdir(folder)):
        m = re.match(r"local_(training|eval|test)_(\d+)\.json$", name)
        if not m:
            continue
        split = {"training": "train"}.get(m.group(1), m.group(1))
        with open(folder / name) as f:
            records = json.load(f)
        rows: list[tuple[list[int], int]] = []
        for r in records:
            example = Example(r["instruction"], r.get("input", ""), r["output"], r["category"])
            prompt = format_prompt(example, "alpaca")
            ids = tokenizer(prompt + format_target(example, "alpaca"))["input_ids"] + [
                tokenizer.eos_token_id
            ]
            prompt_length = len(tokenizer(prompt)["input_ids"])  # the labels' mask
            rows.append((ids[:max_length], min(prompt_length, max_length)))
        out[(m.group(2), split)] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=Path, default=ROOT / "../shared/assets")
    parser.add_argument("--max-length", type=int, default=512, help="stories260K's context window")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    folder = (args.assets / "ni-flexlora" / "all-1612-clients-20-5-5").resolve()
    tokenizer = AutoTokenizer.from_pretrained(args.assets / "models" / "stories260K")
    tokenizer.pad_token = tokenizer.unk_token

    with tempfile.TemporaryDirectory() as cache_dir:
        cfg = DataConfig(
            kind="flexlora-ni", path=str(folder), max_length=args.max_length, cache_dir=cache_dir
        )
        cold, cold_s, cold_cpu = timed(lambda: ours(cfg, tokenizer))
        warm, warm_s, warm_cpu = timed(lambda: ours(cfg, tokenizer))
        cache_mb = sum(p.stat().st_size for p in Path(cache_dir).iterdir()) / 2**20
    assert not cold.from_cache and warm.from_cache
    n_examples = sum(len(t) for by_split in cold.splits.values() for t in by_split.values())
    print(f"clients {len(cold.splits)}, kept examples {n_examples}, counts {cold.counts}")
    print(f"cache file {cache_mb:.1f} MiB")
    print(f"ours, cold cache: {cold_s:6.2f} s  ({cold_cpu:6.2f} CPU s)")
    print(f"ours, warm cache: {warm_s:6.2f} s  ({warm_cpu:6.2f} CPU s)")
    if args.skip_reference:
        return
    ref, ref_s, ref_cpu = timed(lambda: reference(folder, tokenizer, args.max_length))
    print(f"reference:        {ref_s:6.2f} s  ({ref_cpu:6.2f} CPU s)")
    print(f"speed-up: cold {ref_s / cold_s:.1f}x, warm {ref_s / warm_s:.1f}x")
    # every example we kept has the reference's ids; prompt lengths may differ where a
    # token straddles the prompt / target boundary (ours: the token holding the first
    # target character; the reference: the prompt tokenised on its own)
    id_mismatches = prompt_differences = 0
    for (cid, split), rows in ref.items():
        got = warm.split(cid, split)
        for k, index in enumerate(got.example_index):
            ids, prompt_length = rows[int(index)]
            id_mismatches += got[k].input_ids.tolist() != ids
            prompt_differences += int(got.prompt_lengths[k]) != prompt_length
    verdict = "yes" if id_mismatches == 0 else f"NO ({id_mismatches} differ)"
    print(f"token ids identical to the reference: {verdict}")
    print(f"prompt lengths that differ from the reference: {prompt_differences}")


if __name__ == "__main__":
    main()
