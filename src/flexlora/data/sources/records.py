"""Flat record sources: Alpaca-style JSON / JSONL files, Dolly-15k, Hugging Face datasets.

They all become one `RecordPool` (examples plus, when a partition needs them, one
label per example) through `pool_from_records`, whatever the records came from: a
file on disk or a `datasets.Dataset` (any iterable of mappings). The partition into
clients happens afterwards (flexlora.data.dataset).

Field mapping: our fields are instruction, input, output, category; `field_map` maps
each to the source's field name (the default is the same name). instruction and
output are required; a missing (or null) input becomes "" and a missing category
"default".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexlora.data.sources.files import existing_path, read_records
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

log = logging.getLogger(__name__)

OUR_FIELDS = ("instruction", "input", "output", "category")
REQUIRED_FIELDS = ("instruction", "output")
DEFAULT_CATEGORY = "default"
# databricks-dolly-15k: {instruction, context, response, category}
DOLLY_FIELD_MAP = {"input": "context", "output": "response"}
DOLLY_FILE = "databricks-dolly-15k.jsonl"


@dataclass
class RecordPool:
    """Examples in source order, with one partition label each when one was asked for."""

    examples: list[Example]
    labels: list[str] | None
    origin: str


def resolve_field_map(
    field_map: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Our field -> source field, from `defaults` overridden by the user's `field_map`."""
    unknown = sorted(set(field_map) - set(OUR_FIELDS))
    if unknown:
        raise FlexLoraError(
            f"data.field_map: unknown field {unknown[0]!r} (our fields: {', '.join(OUR_FIELDS)})"
        )
    resolved = {name: name for name in OUR_FIELDS}
    resolved.update(defaults or {})
    resolved.update(field_map)
    return resolved


def _text(record: Mapping[str, Any], ours: str, theirs: str, where: str, required: bool) -> str:
    """The string value of our field `ours` (the source's `theirs`); defaults for optional ones."""
    value = record.get(theirs)
    if value is None:  # absent or null
        if required:
            mapped = f" (our {ours})" if theirs != ours else ""
            raise FlexLoraError(f"{where}: missing required field {theirs!r}{mapped}")
        return DEFAULT_CATEGORY if ours == "category" else ""
    if not isinstance(value, str):
        raise FlexLoraError(
            f"{where}: field {theirs!r} must be a string, got {type(value).__name__}"
        )
    return value


def pool_from_records(
    records: Iterable[tuple[int, Any]],
    field_map: Mapping[str, str],
    origin: str,
    unit: str = "record",
    label_field: str | None = None,
) -> RecordPool:
    """Turn (position, record) pairs into examples; errors name `origin` and the position.

    `label_field` (when a partition needs labels) names a source field, or one of our
    fields through `field_map`; every record must have it: the first one lacking it
    is named.
    """
    label_source = field_map.get(label_field, label_field) if label_field else None
    examples: list[Example] = []
    labels: list[str] | None = [] if label_source else None
    fi, fn, fo, fc = (field_map[name] for name in OUR_FIELDS)
    for pos, record in records:
        where = f"{origin} {unit} {pos}"
        if not isinstance(record, Mapping):
            raise FlexLoraError(f"{where}: expected a JSON object, got {type(record).__name__}")
        examples.append(
            Example(
                instruction=_text(record, "instruction", fi, where, required=True),
                input=_text(record, "input", fn, where, required=False),
                output=_text(record, "output", fo, where, required=True),
                category=_text(record, "category", fc, where, required=False),
            )
        )
        if labels is not None:
            label = record.get(label_source) if label_source else None
            if label is None or isinstance(label, (dict, list)):
                raise FlexLoraError(
                    f"data.label_field {label_field!r} (source field {label_source!r}) is missing "
                    f"from {where}, the first record lacking it"
                )
            labels.append(str(label))
    if not examples:
        raise FlexLoraError(f"{origin}: no records")
    return RecordPool(examples, labels, origin)


def load_file_pool(
    path: str | Path | None,
    field_map: Mapping[str, str],
    label_field: str | None = None,
    defaults: Mapping[str, str] | None = None,
) -> RecordPool:
    """A JSON list or JSONL file (kind=jsonl, or Dolly with its own default field map)."""
    p = existing_path(path)
    if p.is_dir():
        candidates = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.json"))
        if len(candidates) != 1:
            raise FlexLoraError(
                f"data.path {p} is a folder with {len(candidates)} .json/.jsonl files; "
                "name one file"
            )
        p = candidates[0]
    records, unit = read_records(p)
    resolved = resolve_field_map(field_map, defaults)
    pool = pool_from_records(records, resolved, str(p), unit, label_field)
    log.info("%s: %d records", p, len(pool.examples))
    return pool


def load_dolly_pool(
    path: str | Path | None, field_map: Mapping[str, str], label_field: str | None = None
) -> RecordPool:
    """databricks-dolly-15k JSONL (a file, or a folder holding databricks-dolly-15k.jsonl)."""
    p = existing_path(path)
    if p.is_dir() and (p / DOLLY_FILE).is_file():
        p = p / DOLLY_FILE
    return load_file_pool(p, field_map, label_field, defaults=DOLLY_FIELD_MAP)


def load_hf_pool(
    name: str | None, split: str, field_map: Mapping[str, str], label_field: str | None = None
) -> RecordPool:
    """`datasets.load_dataset(name, split=split)` (needs the network or a local copy) as a pool."""
    if not name:
        raise FlexLoraError("data.path (the dataset's name on the Hugging Face hub) is required")
    import datasets  # lazy: importing datasets costs about a second

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, unknown split: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FlexLoraError(
            f"cannot load Hugging Face dataset {name!r} split {split!r}: "
            f"{type(e).__name__}: {first}"
        ) from e
    return pool_from_dataset(dataset, field_map, f"hf:{name}[{split}]", label_field)


def pool_from_dataset(
    dataset: Iterable[Mapping[str, Any]],
    field_map: Mapping[str, str],
    origin: str,
    label_field: str | None = None,
) -> RecordPool:
    """Any iterable of mappings (a `datasets.Dataset` yields dicts) through the JSONL path."""
    return pool_from_records(
        enumerate(dataset), resolve_field_map(field_map), origin, "record", label_field
    )
