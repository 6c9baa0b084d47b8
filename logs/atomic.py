"""Atomic writes: a reader sees either the old file or directory or the complete new one."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, pattern: str = ".*.tmp-*") -> int:
    """Remove ``.NAME.tmp-PID-*`` files and directories in ``folder`` whose writer is gone.

    Every atomic write here names its temporary after its process id, so a killed writer's
    leftovers can be told from a live writer's work in progress. Returns how many went.
    """
    removed = 0
    for stale in folder.glob(pattern):
        pid = stale.name.rpartition(".tmp-")[2].split("-")[0]
        if not pid.isdigit() or not process_alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed += 1
    return removed


def check_replaceable(path: str | os.PathLike[str], marker: str) -> None:
    """Refuse to replace ``path`` unless it is absent, empty, or holds ``marker`` (ours).

    Raises:
        FileExistsError: naming the path and what to do instead.
    """
    target = Path(path)
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target}: exists and is not a directory; choose another path")
    if (target / marker).is_file() or not any(target.iterdir()):
        return
    raise FileExistsError(
        f"{target}: holds files rankgym did not write (no {marker}); rankgym replaces only its "
        "own output or an empty directory: choose a new or empty path"
    )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only if the block succeeds.

    The temporary directory lives next to ``path`` (same filesystem), so the final step is a
    rename. If the block raises, or the process is killed, ``path`` is untouched; a killed run
    leaves only a hidden ``.NAME.tmp-PID-*`` sibling, which a later write removes once that
    process is gone. Writers of the same path at once each use their own temporary directory;
    the last to finish wins and neither fails.

    Args:
        path: the directory to create or replace.
        marker: a file every directory rankgym writes there holds (``meta.json``...): an
            existing ``path`` without it, and not empty, is refused (:func:`check_replaceable`),
            before and again after the block.

    Yields:
        The temporary directory to write into.
    """
    target = Path(path)
    if marker is not None:
        check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, f".{target.name}.tmp-*")
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if marker is not None:
            check_replaceable(target, marker)
        for _ in range(100):  # another writer may put its copy in place between our renames
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            try:
                target.rename(old)
            except FileNotFoundError:
                old = None
            try:
                tmp.rename(target)
                break
            except OSError:
                continue
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        else:
            raise OSError(f"{target}: could not be replaced (other writers kept replacing it)")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces ``path`` only if the block succeeds.

    Write the file at the yielded path; it is renamed over ``path`` when the block returns and
    removed when it raises, so ``path`` is never seen half-written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the block.

    Jobs of a sweep that start together take the same lock before preparing a shared artifact
    (a dataset, its embeddings, a fitted reward model): the first prepares it, the others wait
    and then find it ready, so nothing is prepared twice. ``flock`` locks are released by the
    kernel when their process dies, so a killed job never leaves a stale lock.
    """
    import fcntl
    import logging

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger(__name__).info("waiting for another job preparing %s", what or target)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
