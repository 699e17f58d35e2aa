"""One writer per run folder.

`run`, `run --resume` and `compare` hold an exclusive flock on DIR/.lock (which holds
their pid, for the message a second writer gets) from before they write anything until
they exit. Two writers in one folder would interleave metrics.jsonl and leave a config
from one run beside a checkpoint from the other, both exiting 0.

The kernel drops a flock when its process dies, however it dies: a `.lock` left by a
killed run holds no lock and is simply taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from flexlora.atomic import pid_alive
from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(folder: Path, *, create: bool = True) -> Iterator[Path]:
    """Hold `folder`'s lock for the `with` block; FlexLoraError naming the holder's pid
    when another process has it. With `create`, a missing folder is made, and removed
    again on the way out if nothing was written into it (a run refused before writing
    leaves nothing behind)."""
    if folder.exists() and not folder.is_dir():
        raise FlexLoraError(f"{folder} exists and is not a directory")
    # the folders this call makes, deepest first (runs/ too, for runs/<stamp>)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    if created:
        if not create:
            raise FlexLoraError(f"{folder} is not a directory")
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise FlexLoraError(f"cannot create {folder}: {e.strerror}") from e
    try:
        fd = _acquire(folder / LOCK_NAME)
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield folder
    finally:
        # unlink while still holding the lock: a waiter that opened the old file notices
        # (see _acquire) instead of locking a file nobody else can see
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()
        os.close(fd)
        _remove_if_empty(created)


def _acquire(path: Path) -> int:
    """An fd holding the flock of `path`, with our pid written in the file."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FlexLoraError(f"cannot lock {path.parent}: {e.strerror}") from e
        try:
            _flock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        # The holder we waited on may have unlinked the file between our open and flock:
        # then the lock we got is on a file no one else will open, so try again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _flock(fd: int, path: Path) -> None:
    """Take the lock of `fd` without waiting, or raise FlexLoraError naming the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # a filesystem without flock (some network mounts): the pid in the file is
            # all there is to go by
            logger.debug("flock on %s failed (%s): checking the pid it holds", path, e)
            holder = _read_pid(fd)
            if holder is None or holder == os.getpid() or not pid_alive(holder):
                return
        holder = _read_pid(fd)
    who = f"pid {holder}" if holder is not None else "a process that is starting"
    raise FlexLoraError(
        f"{path.parent} is in use by another flexlora run ({who}): wait for it to end or "
        "stop it, then try again"
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove_if_empty(folders: list[Path]) -> None:
    """rmdir each of `folders`, deepest first, up to the first that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
