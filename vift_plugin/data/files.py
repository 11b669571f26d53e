"""Streaming row readers for JSON/JSONL/CSV/TSV/Parquet: the bottom of the data layer (imports nothing of ours).

Every row carries its location (``file:row``) so a bad row can be named in an error or in the
rejects file. Writing outputs whole is :mod:`.writers`' job.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20
MAX_CSV_FIELD = 1 << 20
"""The longest CSV/TSV field read (1 MiB): a longer one is almost always an unclosed quote eating the rows after it."""
_REENCODE = "re-encode the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8 IN > OUT)"


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, escaping its root, empty, or a refused URL."""


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


def _open_text(name: str, newline: str | None = None) -> IO[str]:
    """``name`` opened as UTF-8 text for the row readers.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8", Notepad) is dropped, so it does not end up in the first
    column name or in front of the first ``[`` or ``{``. Bytes that are not UTF-8 are kept as lone surrogates
    (``surrogateescape``) instead of aborting the whole file; the readers find them with :func:`_undecodable`
    and name the row that holds them, which ``--skip-bad`` can then skip.
    """
    return open(name, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def _undecodable(text: str) -> int | None:
    """The index in ``text`` (read by :func:`_open_text`) of the first byte that was not UTF-8, if any."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")  # fails exactly on the lone surrogates that stand for bad bytes; faster than a regex
    except UnicodeEncodeError as error:
        return error.start
    return None


def _too_deep(where: str = "") -> str:
    """The reason for JSON nested past Python's recursion limit (``json`` raises ``RecursionError``)."""
    return f"nested too deeply{where} (deeper than Python's JSON parser can go); flatten or drop the row"


def _not_utf8(text: str, index: int, where: str) -> str:
    """The reason for a row whose ``text`` holds, at ``index``, a byte that was not UTF-8."""
    return f"not UTF-8: byte 0x{ord(text[index]) - 0xDC00:02x} {where}; {_REENCODE}"


def _parse_json_line(location: str, line: str) -> Any:
    """One JSONL line's value, or a ``RowError`` saying why it has none (skippable: the next line is intact)."""
    index = _undecodable(line)
    if index is not None:
        offset = len(line[:index].encode("utf-8", "surrogateescape"))
        return RowError(location, _not_utf8(line, index, f"at byte {offset} of the line"))
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        cut = "" if line.endswith("\n") else "; the file ends inside this line: truncated?"
        return RowError(location, f"invalid JSON ({error.msg}, column {error.colno}){cut}")
    except RecursionError:
        return RowError(location, _too_deep())


def _iter_jsonl(name: str) -> Iterator[tuple[str, Any]]:
    with _open_text(name) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"{name}:{number}", _parse_json_line(f"{name}:{number}", line)


def _iter_json_array(name: str) -> Iterator[tuple[str, Any]]:
    """Elements of a top-level JSON array, decoded one at a time with bounded memory.

    An element holding bytes that are not UTF-8 is yielded as a ``RowError`` (its end is known, so it can be
    skipped); one that does not parse stops the read, naming its line, as nothing after it can be found.
    """
    decoder = json.JSONDecoder()
    with _open_text(name) as handle:
        buffer, position, done, lines_before = "", 0, False, 0

        def drop_read(more: str) -> None:
            """Forget the text before ``position`` (counting its lines) and append ``more``."""
            nonlocal buffer, position, lines_before
            lines_before += buffer.count("\n", 0, position)
            buffer, position = buffer[position:] + more, 0

        def read_more() -> None:
            nonlocal done
            more = handle.read(_CHUNK)
            done = not more
            drop_read(more)

        def line_at(offset: int) -> str:
            number = lines_before + buffer.count("\n", 0, offset) + 1
            return f"line {number}"

        def next_char() -> str:
            """The next non-space character (not consumed), reading more as needed; "" at the end."""
            nonlocal position
            while True:
                position = _skip_space(buffer, position)
                if position < len(buffer) or done:
                    return buffer[position] if position < len(buffer) else ""
                read_more()

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
            location = f"{name}:{index}"
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, position)
                    if end < len(buffer) or done:
                        break
                except json.JSONDecodeError as error:
                    if done:
                        raise RowError(location, f"invalid JSON ({error.msg}, {line_at(error.pos)})") from error
                except RecursionError:
                    raise RowError(location, _too_deep(f" from {line_at(position)}")) from None
                read_more()
            bad = _undecodable(buffer[position:end])
            if bad is not None:
                value = RowError(location, _not_utf8(buffer, position + bad, f"on {line_at(position + bad)}"))
            yield location, value
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
                raise RowError(location, reason)
            position += 1
            if position > _CHUNK:
                drop_read("")


def _expect_end(name: str, char: str) -> None:
    if char:
        raise RowError(name, f"unexpected data after the JSON array (starting with {char!r})")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _iter_table(name: str, delimiter: str) -> Iterator[tuple[str, Any]]:
    """Rows of a CSV/TSV file with a header line, parsed strictly, each named by its line in the reasons.

    A malformed row within one line (a stray quote, too many or too few fields, bytes that are not UTF-8) is
    yielded as a ``RowError``, which ``--skip-bad`` can skip. A quoted field that never closes, runs across
    lines into a malformed row or grows past ``MAX_CSV_FIELD`` stops the read: it has swallowed the rows after
    it, and a lenient parser would turn them into one long, silently wrong value.
    """
    with _open_text(name, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        header: list[str] | None = None
        index = 0
        while True:
            line = reader.line_num + 1
            try:
                fields = _next_record(reader)
            except csv.Error as error:
                location = name if header is None else f"{name}:{index}"
                reason, fatal = _table_error(error, line, reader.line_num)
                if fatal or header is None:
                    raise RowError(location, reason) from None
                yield location, RowError(location, reason)
                index += 1
                continue
            if fields is None:
                return
            if not fields:
                continue  # a blank line
            if header is None:
                header = _table_header(name, fields)
                continue
            location = f"{name}:{index}"
            index += 1
            yield location, _table_row(location, header, fields, line)


def _next_record(reader: Iterator[list[str]]) -> list[str] | None:
    """The next record of a CSV reader, read under ``MAX_CSV_FIELD``; the module-wide limit is restored at
    once, so other CSV readers in the process keep theirs."""
    previous = csv.field_size_limit(MAX_CSV_FIELD)
    try:
        return next(reader, None)
    finally:
        csv.field_size_limit(previous)


def _table_error(error: csv.Error, line: int, last: int) -> tuple[str, bool]:
    """``(reason, fatal)`` for a CSV parse error in the row that starts on ``line``, read up to ``last``."""
    fix = 'close the quote, or write a quote inside a quoted field as ""'
    if "unexpected end of data" in str(error):
        return f"unclosed quote: the quoted field of the row on line {line} runs to the end of the file; {fix}", True
    if "field limit" in str(error):
        return (
            f"the row on line {line} has a field longer than {MAX_CSV_FIELD:,} characters (read up to line {last}); "
            f"is a quote not closed? {fix}",
            True,
        )
    if last > line:
        return f"unclosed quote: the quoted field of the row on line {line} runs to line {last} ({error}); {fix}", True
    return f"malformed row on line {line} ({error})", False


def _table_header(name: str, fields: list[str]) -> list[str]:
    """The column names, refused when one repeats (a dict row would silently keep only its last value)."""
    for index, column in enumerate(fields):
        bad = _undecodable(column)
        if bad is not None:
            raise RowError(name, _not_utf8(column, bad, "in the header"))
        if column in fields[:index]:
            raise RowError(name, f"the header repeats column {column!r}; rename one of them")
    return fields


def _table_row(location: str, header: list[str], fields: list[str], line: int) -> Any:
    """One row as ``{column: value}``, or a ``RowError`` when its field count is off or a value is not UTF-8."""
    if len(fields) != len(header):
        count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        return RowError(location, f"row has {count}, header has {len(header)} (line {line})")
    row = dict(zip(header, fields, strict=True))
    if _undecodable("".join(fields)) is not None:  # one check per row; the column is looked for only then
        for column, value in row.items():
            bad = _undecodable(value)
            if bad is not None:
                return RowError(location, _not_utf8(value, bad, f"in column {column!r} (line {line})"))
    return row


def read_json_document(path: str | os.PathLike[str]) -> Any:
    """The value of a JSON file read whole (COCO annotations, a query pool), not row by row.

    Read like the row files: a UTF-8 BOM is dropped, and a file that is not UTF-8, not valid JSON or nested
    too deeply raises ``RowError`` naming ``file:line``, not a bare codec error or a ``RecursionError``.
    """
    name = os.fspath(path)
    with _open_text(name) as handle:
        text = handle.read()
    bad = _undecodable(text)
    if bad is not None:
        line, column = text.count("\n", 0, bad) + 1, bad - text.rfind("\n", 0, bad)
        raise RowError(f"{name}:{line}", _not_utf8(text, bad, f"at character {column} of the line"))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RowError(f"{name}:{error.lineno}", f"invalid JSON ({error.msg}, column {error.colno})") from None
    except RecursionError:
        raise RowError(name, _too_deep()) from None


def load_record_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Any:
    """One ``datasets.Dataset`` of the ``.jsonl``/``.json`` record files ``paths`` (``load_dataset("json")``).

    Every row is read here first, because ``datasets`` names neither file nor row when one is bad: a
    truncated last line is a ``DatasetGenerationError``, a byte that is not UTF-8 loads and fails later on
    access, and a row nested 100,000 deep crashes the process (segmentation fault). A bad row raises
    ``RowError`` naming ``file:line`` before ``datasets`` sees the file; what ``datasets`` still refuses
    (columns whose types differ between rows) is a ``ValueError`` naming the files and Arrow's reason.
    """
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    names = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    for name in names:
        if file_kind(name) not in ("json", "jsonl"):
            raise ValueError(f"{name}: record files must be .jsonl or .json; convert it with `vift convert` first")
        for location, row in iter_rows(name):
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError(location, f"expected a JSON object (a record), got {type(row).__name__}")
    try:
        return load_dataset("json", data_files=names, split="train")
    except (DatasetGenerationError, ValueError) as error:
        raise ValueError(f"cannot load {', '.join(names)} as one dataset: {error.__cause__ or error}") from error


def _iter_parquet(name: str) -> Iterator[tuple[str, Any]]:
    """Rows of a Parquet file; a damaged file raises ``RowError`` naming it and the first row not read
    (Arrow's own errors, "Parquet magic bytes not found", "Corrupt snappy compressed data", name no file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    damaged = (pa.ArrowException, OSError)
    try:
        batches = pq.ParquetFile(name).iter_batches(batch_size=8192)
    except FileNotFoundError:
        raise
    except damaged as error:
        raise RowError(name, f"not a readable Parquet file ({error})") from None
    index = 0
    while True:
        try:
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except damaged as error:
            raise RowError(f"{name}:{index}", f"the Parquet file is damaged from this row on ({error})") from None
        if batch is None:
            return
        for row in rows:
            yield f"{name}:{index}", row
            index += 1
