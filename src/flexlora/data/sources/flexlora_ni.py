"""kind=flexlora-ni: the FlexLoRA authors' Natural Instructions client split.

A folder of `local_training_<id>.json`, `local_eval_<id>.json`, `local_test_<id>.json`,
each a JSON list of {instruction, input, output, category}; one client per id (one NI
task per client), ids in natural (numeric) order. Other files (a manifest, a README)
are ignored.

The authors' category strings read "<NI category> <task number>.json" (e.g.
"Translation 229.json"); the trailing task file name is dropped so that the category
is the NI category itself ("Translation"), which is what per-category scores and
histograms group by. The client id already identifies the task.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from flexlora.data.partition import sort_ids
from flexlora.data.sources.files import existing_path, read_json
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

_FILE = re.compile(r"^local_(training|eval|test)_(.+)\.json$")
_TASK_SUFFIX = re.compile(r"\s+\d+\.json$")
SPLITS = {"training": "train", "eval": "eval", "test": "test"}


def _examples(records: Any, path: Path) -> list[Example]:
    if not isinstance(records, list):
        raise FlexLoraError(
            f"{path}: expected a JSON list of records, got {type(records).__name__}"
        )
    out: list[Example] = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise FlexLoraError(
                f"{path} record {i}: expected a JSON object, got {type(r).__name__}"
            )
        try:
            instruction, output = r["instruction"], r["output"]
        except KeyError as e:
            raise FlexLoraError(
                f"{path} record {i}: missing required field {e.args[0]!r}"
            ) from None
        text_input = r.get("input") or ""
        category = r.get("category") or "default"
        if not all(isinstance(v, str) for v in (instruction, output, text_input, category)):
            bad = next(
                k
                for k in ("instruction", "input", "output", "category")
                if not isinstance(r.get(k, ""), str)
            )
            raise FlexLoraError(f"{path} record {i}: field {bad!r} must be a string")
        out.append(Example(instruction, text_input, output, _TASK_SUFFIX.sub("", category)))
    return out


def client_files(root: Path) -> dict[str, dict[str, Path]]:
    """client id -> {train, eval, test} -> file; every id needs all three files."""
    found: dict[str, dict[str, Path]] = {}
    for entry in root.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.setdefault(m.group(2), {})[SPLITS[m.group(1)]] = entry
    if not found:
        raise FlexLoraError(
            f"{root}: no local_training_<id>.json files (is it a FlexLoRA NI folder?)"
        )
    for cid in sort_ids(list(found)):
        for prefix, split in SPLITS.items():
            if split not in found[cid]:
                raise FlexLoraError(f"{root}: client {cid} has no local_{prefix}_{cid}.json")
    return found


def load_flexlora_ni(path: str | Path | None) -> dict[str, ClientData]:
    """All clients of the folder, ids in natural order; an empty training file is an error."""
    root = existing_path(path)
    if not root.is_dir():
        raise FlexLoraError(
            f"data.path must be a folder of local_*_<id>.json files, got a file: {root}"
        )
    files = client_files(root)
    clients: dict[str, ClientData] = {}
    for cid in sort_ids(list(files)):
        splits = {split: _examples(read_json(p), p) for split, p in files[cid].items()}
        if not splits["train"]:
            raise FlexLoraError(f"{files[cid]['train']}: empty client {cid} (no training examples)")
        clients[cid] = ClientData(cid, splits["train"], splits["eval"], splits["test"])
    log.info("%s: %d clients", root, len(clients))
    return clients
