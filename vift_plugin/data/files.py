"""Streaming row readers for JSON/JSONL/CSV/TSV/Parquet and atomic writers for JSON/JSONL outputs.

Every row carries its location (``file:row``) so a bad row can be named in an error or in the
rejects file. Outputs are written to a temporary sibling and renamed into place only when complete,
so a crash never leaves a truncated file under the final name.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_CHUNK = 1 << 20


class RowError(ValueError):
    """A malformed row, named by file and row number (1-based line for JSONL, 0-based index else)."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason


def file_kind(path: str | os.PathLike[str]) -> str:
    """``json``, ``jsonl``, ``csv``, ``tsv`` or ``parquet``, from the file name."""
    suffix = Path(path).suffix.lower()
    kind = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(suffix)
    kind = kind or {".parquet": "parquet", ".pq": "parquet"}.get(suffix)
    if kind:
        return kind
    raise ValueError(f"Cannot tell the format of {path} from its name; expected .json, .jsonl, .csv, .tsv or .parquet.")


def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """``(location, row)`` for every row of a JSON array, JSONL, CSV/TSV or Parquet file, streaming."""
    kind = file_kind(path)
    name = os.fspath(path)
    if kind == "jsonl":
        yield from _iter_jsonl(name)
    elif kind == "json":
        yield from _iter_json_array(name)
    elif kind in ("csv", "tsv"):
        yield from _iter_table(name, "," if kind == "csv" else "\t")
    else:
        yield from _iter_parquet(name)


def _iter_jsonl(name: str) -> Iterator[tuple[str, Any]]:
    with open(name, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{name}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"{name}:{number}", RowError(f"{name}:{number}", f"invalid JSON ({error.msg})")


def _iter_json_array(name: str) -> Iterator[tuple[str, Any]]:
    """Elements of a top-level JSON array, decoded one at a time with bounded memory."""
    decoder = json.JSONDecoder()
    with open(name, encoding="utf-8") as handle:
        buffer, position, done = "", 0, False

        def next_char() -> str:
            """The next non-space character (not consumed), reading more as needed; "" at the end."""
            nonlocal buffer, position, done
            while True:
                position = _skip_space(buffer, position)
                if position < len(buffer) or done:
                    return buffer[position] if position < len(buffer) else ""
                more = handle.read(_CHUNK)
                done = not more
                buffer, position = buffer[position:] + more, 0

        if next_char() != "[":
            raise RowError(name, "expected a JSON array of records at the top level")
        position += 1
        index = 0
        while True:
            char = next_char()
            if char == "]" and index == 0:
                position += 1
                _expect_end(name, next_char())
                return
            if not char:
                raise RowError(f"{name}:{index}", "the JSON array is not closed (truncated file?)")
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, position)
                    if end < len(buffer) or done:
                        break
                except json.JSONDecodeError as error:
                    if done:
                        raise RowError(f"{name}:{index}", f"invalid JSON ({error.msg})") from error
                more = handle.read(_CHUNK)
                done = not more
                buffer, position = buffer[position:] + more, 0
            yield f"{name}:{index}", value
            index += 1
            position = end
            char = next_char()
            if char == "]":
                position += 1
                _expect_end(name, next_char())
                return
            if char != ",":
                reason = (
                    "the JSON array is not closed (truncated file?)"
                    if not char
                    else f"expected ',' or ']' after it, got {char!r}"
                )
                raise RowError(f"{name}:{index - 1}", reason)
            position += 1
            if position > _CHUNK:
                buffer, position = buffer[position:], 0


def _expect_end(name: str, char: str) -> None:
    if char:
        raise RowError(name, f"unexpected data after the JSON array (starting with {char!r})")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _iter_table(name: str, delimiter: str) -> Iterator[tuple[str, Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(name, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for index, row in enumerate(reader):
            yield f"{name}:{index}", row


def _iter_parquet(name: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(name).iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            yield f"{name}:{index}", row
            index += 1


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path``, renamed to ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
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


def chunked(lines: Iterable[str], size: int = 4096) -> Iterator[list[str]]:
    """``lines`` in lists of ``size`` (the last one shorter)."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def jsonl_lines(path: str | os.PathLike[str], image_root: Path | None = None) -> Iterator[str]:
    """The non-blank JSON lines of ``path``; with ``image_root``, each ``image`` path made absolute under it."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            if image_root is None:
                yield line.rstrip("\n")
                continue
            record = json.loads(line)
            if "image" in record:
                record["image"] = str((image_root / record["image"]).resolve())
            yield json.dumps(record, ensure_ascii=False)


def write_llava_records(
    output: str | os.PathLike[str],
    *,
    captions: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str | os.PathLike[str]] = (),
    image_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verify_images: bool = True,
    skip_bad: bool = False,
    absolute_image_paths: bool = False,
    scratch_prefix: str = ".vift-",
) -> dict[str, int]:
    """One file of LLaVA-format records (``.json`` a list, ``.jsonl`` a line each) from caption and text files.

    Each file is converted with ``output_format="llava"`` into a scratch folder (``scratch_prefix``) beside
    ``output``, then all are written atomically in order: captions first, then texts. Image paths are
    relative to ``image_root`` (default: each caption file's folder), absolute with ``absolute_image_paths``.
    Returns ``{"captions": n, "texts": m}``, the records written of each kind.
    """
    from vift_plugin.data.captions import convert_caption_file
    from vift_plugin.data.instructions import convert_instruction_file

    if not captions and not texts:
        raise ValueError("Give at least one caption file or text-instruction file.")
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    counts = {"captions": 0, "texts": 0}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=scratch_prefix) as folder:
        parts: list[tuple[Path, Path | None]] = []
        for index, path in enumerate(captions):
            part = Path(folder) / f"captions-{index}.jsonl"
            root = Path(image_root) if image_root is not None else Path(path).resolve().parent
            report = convert_caption_file(
                path,
                part,
                output_format="llava",
                image_root=root,
                seed=seed,
                verify_images=verify_images,
                skip_bad=skip_bad,
            )
            counts["captions"] += report.written
            parts.append((part, root if absolute_image_paths else None))
        for index, path in enumerate(texts):
            part = Path(folder) / f"texts-{index}.jsonl"
            counts["texts"] += convert_instruction_file(path, part, output_format="llava", skip_bad=skip_bad).written
            parts.append((part, None))
        with RecordWriter(target) as writer:
            for part, part_root in parts:
                for chunk in chunked(jsonl_lines(part, part_root)):
                    writer.write(chunk)
    return counts
