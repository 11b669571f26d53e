"""Tests of :mod:`vift_plugin.data.writers`: outputs appear whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from vift_plugin.data.files import iter_rows
from vift_plugin.data.writers import RecordWriter, atomic_output, dump_columns


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


# ---------------------------------------------------------------------------------------------- atomic_output


def test_atomic_output_writes_on_success(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "out.txt"
    with atomic_output(target) as handle:
        handle.write("hello é\n")
        assert not target.exists()  # nothing under the final name until the block ends
    assert target.read_text(encoding="utf-8") == "hello é\n"
    assert leftovers(target.parent) == []


def test_atomic_output_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="boom"), atomic_output(target) as handle:
        handle.write("partial data\n")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old contents\n")
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as handle:
        handle.write("new contents\n")
        raise KeyboardInterrupt
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_output_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old contents that are longer than the new ones\n")
    with atomic_output(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- RecordWriter


RECORDS = [{"id": str(i), "text": f"record {i}", "parts": [{"type": "text", "text": "é]"}]} for i in range(5)]


@pytest.mark.parametrize("batches", [[], [[]], [RECORDS[:1]], [RECORDS[:2], [], RECORDS[2:]], [[r] for r in RECORDS]])
def test_record_writer_json_is_a_valid_array(tmp_path: Path, batches: list[list[dict[str, Any]]]) -> None:
    path = tmp_path / "out.json"
    with RecordWriter(path) as writer:
        for batch in batches:
            writer.write(json.dumps(r, ensure_ascii=False) for r in batch)
    expected = [r for batch in batches for r in batch]
    assert json.loads(path.read_text(encoding="utf-8")) == expected
    assert writer.count == len(expected)
    # And the streaming reader reads it back.
    assert [row for _, row in iter_rows(path)] == expected
    assert leftovers(tmp_path) == []


def test_record_writer_empty_json_is_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with RecordWriter(path):
        pass
    assert json.loads(path.read_text()) == []


@pytest.mark.parametrize("batches", [[], [RECORDS[:2], [], RECORDS[2:]], [[r] for r in RECORDS]])
def test_record_writer_jsonl_has_one_line_per_record(tmp_path: Path, batches: list[list[dict[str, Any]]]) -> None:
    path = tmp_path / "out.jsonl"
    with RecordWriter(path) as writer:
        for batch in batches:
            writer.write(json.dumps(r, ensure_ascii=False) for r in batch)
    expected = [r for batch in batches for r in batch]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected
    assert writer.count == len(expected)


@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_record_writer_failure_leaves_no_output(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(RuntimeError), RecordWriter(path) as writer:
        writer.write([json.dumps(RECORDS[0])])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.csv", "out.parquet", "out.txt"])
def test_record_writer_rejects_other_formats(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RecordWriter(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_dump_columns() -> None:
    lines = list(dump_columns({"id": ["1", "2"], "text": ["é", None]}))
    assert [json.loads(line) for line in lines] == [{"id": "1", "text": "é"}, {"id": "2", "text": None}]
    assert "é" in lines[0]  # not ASCII-escaped
    assert list(dump_columns({"id": [], "text": []})) == []
    with pytest.raises(ValueError):
        list(dump_columns({"id": ["1", "2"], "text": ["only one"]}))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_output_files_get_the_usual_permissions(tmp_path: Path, umask: int) -> None:
    """The temporary file is private while written; the finished file has the mode ``open()`` would give."""
    previous = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out.jsonl") as handle:
            handle.write("{}\n")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_temporary_still_being_written_is_not_taken_for_stale(tmp_path: Path) -> None:
    """Two runs writing the same output: the second's clean-up leaves the first's live temporary (and
    live dataset folder) alone, removes the dead one, and both writes finish."""
    from vift_plugin.data.writers import lock_temporary, remove_stale_partials

    target = tmp_path / "out.jsonl"
    dead = tmp_path / ".out.jsonl.deadbeef.partial"
    dead.write_text("left by a killed run")
    live_folder = tmp_path / ".out.jsonl.f01dab1e.partial"
    live_folder.mkdir()
    folder_lock = lock_temporary(live_folder)
    try:
        with atomic_output(target) as first:
            first.write("first\n")
            [live] = [p for p in leftovers(tmp_path) if p not in (dead.name, live_folder.name)]
            with atomic_output(target) as second:  # cleans up before it writes
                second.write("second\n")
            assert (tmp_path / live).is_file() and live_folder.is_dir() and not dead.exists()
            first.write("more\n")
        assert target.read_text() == "first\nmore\n"  # the last rename wins
    finally:
        if folder_lock is not None:
            os.close(folder_lock)
    remove_stale_partials(target)  # the folder's writer is gone now
    assert leftovers(tmp_path) == []
