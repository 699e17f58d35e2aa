"""kind=ni-tasks: raw Super-NaturalInstructions task files, one client per task.

Layout (the official repository): `tasks/taskNNN_name.json`, each an object with
"Definition" (list of str), "Positive Examples", "Instances" (list of {id, input,
output: list of str}) and "Categories" (list of str); and
`splits/default/{train,test}_tasks.txt`, task names one a line.

Each task becomes a client named after its file (e.g. "task001_quoref_question_generation"):
instruction = the Definition strings joined by newlines, input = the instance's input,
output = the first of its outputs, category = Categories[0] ("default" if none). The
positive examples are not used (the FlexLoRA setting is zero-shot). A task's
instances are split positionally 80 / 10 / 10 into train / eval / test
(flexlora.data.partition.split_train_eval_test; there is no config key for it).

The official unseen split: `splits/default/test_tasks.txt` when present (see
`official_split`); only listed tasks present in tasks/ count, and the number missing
is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexlora.data.partition import read_split_file, sort_ids, split_train_eval_test
from flexlora.data.sources.files import existing_path, read_json
from flexlora.data.types import ClientData, Example
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

SPLIT_DIR = Path("splits") / "default"


@dataclass
class OfficialSplit:
    """SNI's default task split: tasks listed for training and for testing (unseen)."""

    train: list[str] | None
    test: list[str] | None
    test_file: Path | None


def _strings(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FlexLoraError(f"{where}: {what} must be a list of strings")
    return value


def task_client(path: Path) -> ClientData:
    """One task file -> one client with positional 80/10/10 splits."""
    task = read_json(path)
    if not isinstance(task, dict):
        raise FlexLoraError(
            f"{path}: expected a JSON object (an SNI task), got {type(task).__name__}"
        )
    for key in ("Definition", "Instances"):
        if key not in task:
            raise FlexLoraError(f"{path}: missing required field {key!r}")
    instruction = "\n".join(_strings(task["Definition"], "Definition", str(path)))
    categories = _strings(task.get("Categories") or [], "Categories", str(path))
    category = categories[0] if categories else "default"
    instances = task["Instances"]
    if not isinstance(instances, list):
        raise FlexLoraError(f"{path}: Instances must be a list")
    if not instances:
        raise FlexLoraError(f"{path}: empty client {path.stem} (no Instances)")
    examples: list[Example] = []
    for i, inst in enumerate(instances):
        where = f"{path} Instances[{i}]"
        if not isinstance(inst, dict):
            raise FlexLoraError(f"{where}: expected a JSON object, got {type(inst).__name__}")
        if "input" not in inst or "output" not in inst:
            missing = "input" if "input" not in inst else "output"
            raise FlexLoraError(f"{where}: missing required field {missing!r}")
        outputs = _strings(inst["output"], "output", where)
        if not outputs:
            raise FlexLoraError(f"{where}: output is an empty list")
        text = inst["input"]
        if not isinstance(text, str):
            raise FlexLoraError(f"{where}: input must be a string")
        examples.append(Example(instruction, text, outputs[0], category))
    train, eval_, test = split_train_eval_test(examples)
    return ClientData(path.stem, train, eval_, test)


def load_ni_tasks(path: str | Path | None) -> dict[str, ClientData]:
    """Every tasks/*.json under `path` (or `path` itself when it is the tasks folder)."""
    root = existing_path(path)
    tasks_dir = root / "tasks" if (root / "tasks").is_dir() else root
    files = {p.stem: p for p in tasks_dir.glob("*.json")}
    if not files:
        raise FlexLoraError(
            f"{root}: no tasks/*.json task files (is it a Super-NaturalInstructions folder?)"
        )
    clients = {name: task_client(files[name]) for name in sort_ids(list(files))}
    log.info("%s: %d tasks", tasks_dir, len(clients))
    return clients


def official_split(path: str | Path) -> OfficialSplit:
    """The lists in splits/default/ (each None when its file is absent)."""
    root = Path(path).expanduser()
    split_dir = root / SPLIT_DIR
    train_file, test_file = split_dir / "train_tasks.txt", split_dir / "test_tasks.txt"
    return OfficialSplit(
        train=read_split_file(train_file) if train_file.is_file() else None,
        test=read_split_file(test_file) if test_file.is_file() else None,
        test_file=test_file if test_file.is_file() else None,
    )
