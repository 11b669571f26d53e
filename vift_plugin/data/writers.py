"""Atomic writers for outputs: a crash never leaves a truncated file under the final name.

Every output is written to a hidden temporary sibling (``.<name>.XXXXXXXX.partial``) and renamed into
place only when complete; an existing output stays as it was until then (like ``cp`` or ``sort -o``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vift_plugin.data.files import file_kind

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so a live temporary is not told apart
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_TEMPORARY_PART = "[a-z0-9_]{8}"  # the random part of a ``tempfile`` name


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lock_temporary(path: str | os.PathLike[str]) -> int | None:
    """Hold an exclusive lock on a temporary file or folder while it is written; returns the descriptor to
    ``os.close`` when done. :func:`remove_stale_partials` leaves a locked temporary alone: its writer lives."""
    if fcntl is None:
        return None
    descriptor = os.open(path, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


def _being_written(path: str) -> bool:
    """True when another descriptor holds :func:`lock_temporary`'s lock on ``path`` (a run still writing it)."""
    if fcntl is None:
        return False
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also releases the lock just taken
    return False


def remove_stale_partials(target: Path) -> None:
    """Delete what an interrupted write of ``target`` left beside it, logging each removal.

    :func:`atomic_output` and ``save_dataset`` write to ``.<name>.XXXXXXXX.partial`` siblings (files and
    folders) and delete them on failure, but a SIGKILL or a power cut skips that, and the hidden leftovers
    pile up (a dataset folder's can be gigabytes). Only that exact pattern for this ``target`` is removed;
    another output's temporaries (``.<name>.rejects.jsonl.XXXXXXXX.partial``) and anything else are kept,
    and so is a temporary another run is still writing (it holds :func:`lock_temporary`'s lock): two runs
    writing the same output at once both finish, and the last rename wins.
    """
    pattern = re.compile(re.escape(f".{target.name}.") + _TEMPORARY_PART + re.escape(".partial"))
    if not target.parent.is_dir():
        return
    for entry in os.scandir(target.parent):
        if not pattern.fullmatch(entry.name) or _being_written(entry.path):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
        logger.warning("removed %s, left behind by an interrupted write of %s", entry.path, target)


@contextmanager
def partial_folder(target: Path) -> Iterator[str]:
    """A locked ``.<name>.XXXXXXXX.partial`` folder beside ``target`` (stale ones removed first), deleted on
    exit unless the caller moved it into place: where a dataset folder or an export's scratch is written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    folder = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    lock = lock_temporary(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path``, renamed to ``path`` only on success.

    An existing ``path`` stays as it was until the new contents are complete (like ``cp`` or ``sort -o``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the handle closes
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class RecordWriter:
    """Writes pre-serialised JSON records as JSONL, or as one JSON array (``.json``), atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        kind = file_kind(path)
        if kind not in ("json", "jsonl"):
            raise ValueError(f"Output {path} must end in .jsonl or .json.")
        self.array = kind == "json"
        self.count = 0
        self._context = atomic_output(path)
        self._handle: IO[str] | None = None

    def __enter__(self) -> RecordWriter:
        self._handle = self._context.__enter__()
        if self.array:
            self._handle.write("[")
        return self

    def write(self, serialised: Iterable[str]) -> None:
        assert self._handle is not None, "use RecordWriter as a context manager"
        lines = list(serialised)
        if not lines:
            return
        if self.array:
            self._handle.write(("\n" if self.count == 0 else ",\n") + ",\n".join(lines))
        else:
            self._handle.write("\n".join(lines) + "\n")
        self.count += len(lines)

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None and exc[0] is None and self.array:
            self._handle.write("\n]\n")
        self._context.__exit__(*exc)


def dump_columns(columns: dict[str, list[Any]]) -> Iterator[str]:
    """One JSON line per row of a column dict (what a batched ``map`` function returns)."""
    keys = list(columns)
    for values in zip(*columns.values(), strict=True):
        yield json.dumps(dict(zip(keys, values, strict=True)), ensure_ascii=False)
