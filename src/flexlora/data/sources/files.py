"""Reading JSON and JSONL files with errors that name the file and the position."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flexlora.errors import FlexLoraError


def existing_path(path: str | Path | None, what: str = "data.path") -> Path:
    """`path` as a Path that exists, or FlexLoraError naming it."""
    if path is None:
        raise FlexLoraError(f"{what} is required")
    p = Path(path).expanduser()
    if not p.exists():
        raise FlexLoraError(f"{what} not found: {p}")
    return p


def read_text(path: Path) -> str:
    """The file's UTF-8 text (a BOM is dropped)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FlexLoraError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise FlexLoraError(f"{path}: cannot read ({e.strerror})") from e


def parse_json(text: str, path: Path) -> Any:
    """One JSON document; a syntax error names the file, line, column and character."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FlexLoraError(
            f"{path}: broken JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from e
    except (ValueError, RecursionError) as e:
        raise FlexLoraError(f"{path}: unreadable JSON ({_reason(e)})") from e


def _reason(e: Exception) -> str:
    """Why json refused a document it could parse: a value Python cannot hold."""
    if isinstance(e, RecursionError):
        return "nested too deep"
    return str(e).split(":")[0]  # "Exceeds the limit (4300 digits) for integer string ..."


def read_json(path: Path) -> Any:
    return parse_json(read_text(path), path)


def iter_jsonl(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed object) for every non-blank line of a JSONL text."""
    # split on "\n" only: str.splitlines() would also cut at U+2028, which JSON strings may hold
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FlexLoraError(
                f"{path} line {lineno}: broken JSON at column {e.colno}: {e.msg}"
            ) from e
        except (ValueError, RecursionError) as e:
            raise FlexLoraError(f"{path} line {lineno}: unreadable JSON ({_reason(e)})") from e


def read_records(path: Path) -> tuple[list[tuple[int, Any]], str]:
    """Records of a JSON list or a JSONL file, with their positions and the unit of position.

    A file whose first non-blank character is '[' is a JSON list (positions are record
    indices from 0, unit "record"); anything else is JSONL (positions are line
    numbers from 1, unit "line").
    """
    text = read_text(path)
    if text.lstrip()[:1] == "[":
        data = parse_json(text, path)
        return list(enumerate(data)), "record"
    return list(iter_jsonl(text, path)), "line"
