"""Atomic writes, and the temp files a killed writer leaves behind.

Every file or folder flexlora writes goes first to a temp name beside its target and is
renamed over it when complete, so a crash never leaves half a file. A SIGKILL still
leaves the temp behind (checkpoints run to hundreds of MB), so every temp name carries
its writer's pid: the next start in that folder removes the temps of writers that are
gone (`remove_stale_temps`), and never those of a writer still running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

# `.NAME.tmp-PID-HEX` (being written) and `.NAME.old-PID-HEX` (a folder being replaced).
_TEMP = re.compile(r"\.(?P<target>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}")
# Names flexlora gave its temps before they carried a pid: no writer to ask, so stale
# whenever found by a caller that owns the folder.
_LEGACY_TEMP = re.compile(
    r"\.(?P<target>.+)\.(?:tmp|old)-[0-9a-f]{12}"  # atomic_folder
    r"|\.(?P<file>config\.yaml|metrics\.jsonl|checkpoint\.pt|summary\.json|compare\.json"
    r"|results\.md|results\.csv|results\.json)\.[a-z0-9_]{8}"  # tempfile.mkstemp
    r"|\.(?P<plot>.+\.png)\.tmp\.png"  # plots
)


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh temp name beside `target`: `.NAME.tmp-PID-HEX`."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(6)}"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write` on a binary temp file beside `path`, then rename it over `path`.

    The one atomic file writer: text, checkpoints, caches and plots all go through it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as f:  # x: a name collision is a bug, never an overwrite
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`path` holds `text` (UTF-8) in full or keeps what it held."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def atomic_folder(folder: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to `folder`: it becomes `folder` on success, vanishes on error.

    An existing non-empty `folder` is an error unless `replace`, in which case it is
    swapped out only once the new one is complete.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FlexLoraError(f"{folder}: exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not replace:
        raise FlexLoraError(f"{folder}: already exists and is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir (not mkdtemp) so that the folder gets the usual umask permissions.
    tmp = temp_path(folder)
    os.mkdir(tmp)
    try:
        yield tmp
        old = None
        if folder.exists():
            old = temp_path(folder, "old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale_temp(name: str) -> bool:
    """Whether `name` is a temp of ours whose writer is gone."""
    match = _TEMP.fullmatch(name)
    if match is not None:
        pid = int(match["pid"])
        return pid != os.getpid() and not pid_alive(pid)
    return _LEGACY_TEMP.fullmatch(name) is not None


def _temp_target(name: str) -> str | None:
    """The name of the file or folder a temp was written for."""
    match = _TEMP.fullmatch(name) or _LEGACY_TEMP.fullmatch(name)
    if match is None:
        return None
    return next(v for k, v in match.groupdict().items() if k != "pid" and v)


def remove_stale_temps(folder: Path, *, recursive: bool = True, target: str | None = None) -> int:
    """Delete the temps killed writers left in `folder` (and below, when `recursive`);
    with `target`, only those of that one name. Returns how many were removed."""
    if not folder.is_dir():
        return 0
    removed = 0
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    for entry in sorted(entries, key=lambda p: len(p.parts), reverse=True):
        if not is_stale_temp(entry.name):
            continue
        if target is not None and _temp_target(entry.name) != target:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
        logger.info("removed %s, left by a writer that was killed", entry)
    return removed
