"""The streaming conversion loop shared by the converters, and the report it returns."""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vift_plugin.data.files import RowError
from vift_plugin.data.writers import RecordWriter, atomic_output

Transform = Callable[[dict[str, list[Any]], list[int], list[str], list[dict[str, Any]]], Iterable[str]]


@dataclass
class ConversionReport:
    """What a conversion read, wrote and skipped (by reason), and where it wrote."""

    source: str
    output: str
    read: int = 0
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejects_path: str | None = None
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        lines = [
            f"read {self.read} row(s) from {self.source}, wrote {self.written} to {self.output} "
            f"in {self.seconds:.1f}s ({self.rows_per_second:,.0f} rows/s)"
        ]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())} bad row(s):")
            lines += [f"  {count:8d}  {reason}" for reason, count in self.skipped.most_common(10)]
            if self.rejects_path:
                lines.append(f"rejected rows are listed in {self.rejects_path}")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: quoted values and paths replaced by ``...``, numbers (line numbers,
    field counts, byte offsets; not the 8 of UTF-8) by ``N``."""
    return re.sub(r"(?<![\w-])\d+\b", "N", re.sub(r"'[^']*'|\"[^\"]*\"|\S*[/\\]\S*", "...", reason))


def convert_stream(
    rows: Iterable[tuple[str, Any]],
    transform: Transform,
    columns: tuple[str, ...],
    output: str | os.PathLike[str],
    *,
    skip_bad: bool,
    rejects_path: str | os.PathLike[str] | None,
    chunk_size: int,
    source: str,
) -> ConversionReport:
    """Feed ``rows`` to ``transform`` in column chunks and write its records, atomically.

    ``transform(columns, positions, locations, rejects)`` gets each row's index in the input and
    its location. A row that arrives as a ``RowError`` (unparseable) or that ``transform`` rejects stops the run
    with that error, or with ``skip_bad`` is counted and listed in ``rejects_path``. On any error
    neither output is left behind.
    """
    report = ConversionReport(source=source, output=os.fspath(output))
    rejects: list[dict[str, Any]] = []
    start = time.perf_counter()
    collecting = gc.isenabled()
    gc.disable()  # rows are freed by reference counting; full collections would rescan torch's objects
    try:
        _run(rows, transform, columns, output, skip_bad, chunk_size, report, rejects)
    finally:
        if collecting:
            gc.enable()
    report.seconds = time.perf_counter() - start
    report.skipped = Counter(_reason_kind(r["reason"]) for r in rejects)
    if rejects_path is not None and rejects:
        with atomic_output(rejects_path) as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
        report.rejects_path = os.fspath(rejects_path)
    return report


def _run(
    rows: Iterable[tuple[str, Any]],
    transform: Transform,
    columns: tuple[str, ...],
    output: str | os.PathLike[str],
    skip_bad: bool,
    chunk_size: int,
    report: ConversionReport,
    rejects: list[dict[str, Any]],
) -> None:
    with RecordWriter(output) as writer:
        chunk: dict[str, list[Any]] = {name: [] for name in columns}
        locations: list[str] = []
        positions: list[int] = []

        def flush() -> None:
            if not locations:
                return
            writer.write(transform(chunk, positions, locations, rejects))
            for values in chunk.values():
                values.clear()
            locations.clear()
            positions.clear()

        for location, row in rows:
            report.read += 1
            if isinstance(row, RowError):
                if not skip_bad:
                    raise row
                rejects.append({"location": row.location, "reason": row.reason})
                continue
            for name in columns:
                chunk[name].append(row.get(name))
            locations.append(location)
            positions.append(report.read - 1)
            if len(locations) >= chunk_size:
                flush()
        flush()
        report.written = writer.count
