"""Tests of :mod:`vift_plugin.data.files`: the streaming row readers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vift_plugin.data import files
from vift_plugin.data.files import RowError, file_kind, iter_rows

ROWS = [
    {"id": "a", "text": "first"},
    {"id": "b", "text": "second, with a comma"},
    {"id": "c", "text": "third"},
]


def rows_of(path: Path) -> list[tuple[str, Any]]:
    return list(iter_rows(path))


# ---------------------------------------------------------------------------------------------- file_kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.json", "json"),
        ("a.JSON", "json"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.csv", "csv"),
        ("a.tsv", "tsv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("train.v2.jsonl", "jsonl"),
    ],
)
def test_file_kind(name: str, kind: str) -> None:
    assert file_kind(name) == kind


@pytest.mark.parametrize("name", ["data.txt", "data", "data.xlsx"])
def test_file_kind_unknown_suffix_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ValueError, match="Cannot tell the format") as info:
        file_kind(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=name):
        rows_of(path)


# ---------------------------------------------------------------------------------------------- readers


def test_json_array_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert rows_of(path) == [(f"{path}:{i}", row) for i, row in enumerate(ROWS)]


@pytest.mark.parametrize("text", ["[]", "  [ ]  \n", "\n[\n]\n"])
def test_empty_json_array(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(text)
    assert rows_of(path) == []


def test_jsonl_round_trip_uses_one_based_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(ROWS[0]), "", "   ", json.dumps(ROWS[1]), json.dumps(ROWS[2])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert rows_of(path) == [(f"{path}:1", ROWS[0]), (f"{path}:4", ROWS[1]), (f"{path}:5", ROWS[2])]


def test_ndjson_is_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "rows.ndjson"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert [row for _, row in rows_of(path)] == ROWS


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_table_round_trip(tmp_path: Path, suffix: str, delimiter: str) -> None:
    path = tmp_path / f"rows{suffix}"
    rows = [*ROWS, {"id": "d", "text": 'quoted "word"\nand a newline\tand a tab'}]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text"], delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    assert rows_of(path) == [(f"{path}:{i}", row) for i, row in enumerate(rows)]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    rows = [{"id": i, "text": f"row {i}", "tags": [str(i)] * (i % 3)} for i in range(20)]
    # Small row groups so the reader has to cross several batches.
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    assert rows_of(path) == [(f"{path}:{i}", row) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------- JSON streaming


TRICKY = [
    {"id": 0, "text": "brackets ] and [ and ]] inside a string"},
    {"id": 1, "text": 'commas , ,, and "escaped quotes" and a backslash \\ and \\"'},
    {"id": 2, "text": "unicode é 漢字 🙂 and an escaped \u2028 separator", "nested": {"a": [1, [2, [3]]]}},
    {"id": 3, "text": "]" * 100 + "," * 100 + '"' * 50},
    {"id": 4, "numbers": [1.5, -2e10, 0, 123456789012345], "flags": [True, False, None]},
    {"id": 5, "text": "x" * 300},
    {"id": 6, "empty": {}, "list": []},
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_streams_across_tiny_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, indent: int | None
) -> None:
    monkeypatch.setattr(files, "_CHUNK", chunk)
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(TRICKY * 5, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert path.stat().st_size > 20 * chunk
    assert rows_of(path) == [(f"{path}:{i}", row) for i, row in enumerate(TRICKY * 5)]


json_records = st.lists(
    st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from('ab],[{}"\\ \n:é')),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
            max_leaves=6,
        ),
        max_size=4,
    ),
    max_size=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=json_records, chunk=st.integers(1, 40), indent=st.sampled_from([None, 0, 2]))
def test_json_array_of_records_streams_like_json_load(
    tmp_path: Path, records: list[dict[str, Any]], chunk: int, indent: int | None
) -> None:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "_CHUNK", chunk)
        assert [row for _, row in rows_of(path)] == records


def test_json_array_of_numbers_is_not_split_at_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_CHUNK", 16)
    values = [123456789 * i for i in range(40)]
    path = tmp_path / "numbers.json"
    path.write_text(json.dumps(values))
    assert [value for _, value in rows_of(path)] == values


def test_json_array_after_long_leading_whitespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_CHUNK", 64)
    path = tmp_path / "padded.json"
    path.write_text("\n" * 200 + json.dumps(ROWS))
    assert [row for _, row in rows_of(path)] == ROWS


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ('[{"a": 1} {"a": 2}]', 0),
        ('[{"a": 1}, {"a": 2} {"a": 3}]', 1),
        ('[{"a": 1},]', 1),
        ('[,{"a": 1}]', 0),
        ('[{"a": 1},,{"a": 2}]', 1),
        ("[1 2]", 0),
    ],
)
def test_malformed_json_array_separators_are_errors(tmp_path: Path, text: str, index: int) -> None:
    path = tmp_path / "malformed.json"
    path.write_text(text)
    with pytest.raises(RowError) as info:
        rows_of(path)
    assert info.value.location == f"{path}:{index}"


@pytest.mark.parametrize("text", ['[{"a": 1}][{"a": 2}]', '[{"a": 1}]\n{"a": 2}\n', '[{"a": 1}] trailing'])
def test_data_after_the_json_array_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "concatenated.json"
    path.write_text(text)
    with pytest.raises(RowError, match=str(path)):
        rows_of(path)


@pytest.mark.parametrize("chunk", [4, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        '[{"a": 1}, {"a": 2}',
        '[{"a": 1}, {"a": 2},',
        '[{"a": 1}, {"a": "unterminated',
        '[{"a": 1}, {"a": 2},\n  ',
        "[",
    ],
)
def test_truncated_json_array_raises_row_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, chunk: int
) -> None:
    monkeypatch.setattr(files, "_CHUNK", chunk)
    path = tmp_path / "cut.json"
    path.write_text(text)
    stream = iter_rows(path)
    with pytest.raises(RowError) as info:
        for _ in stream:
            pass
    assert str(path) in str(info.value)
    assert info.value.location.startswith(str(path))


def test_truncated_json_array_still_yields_the_complete_rows_first(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"a": 1}, {"a": 2}, {"a": 3')
    stream = iter_rows(path)
    assert next(stream) == (f"{path}:0", {"a": 1})
    assert next(stream) == (f"{path}:1", {"a": 2})
    with pytest.raises(RowError) as info:
        next(stream)
    assert info.value.location == f"{path}:2"


def test_invalid_item_in_json_array_names_its_index(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"a": 1}, {"a": nope}, {"a": 3}]')
    with pytest.raises(RowError, match="invalid JSON") as info:
        rows_of(path)
    assert info.value.location == f"{path}:1"


@pytest.mark.parametrize("text", ['{"a": 1}', '"text"', "42", "", "   \n"])
def test_json_top_level_must_be_an_array(tmp_path: Path, text: str) -> None:
    path = tmp_path / "object.json"
    path.write_text(text)
    with pytest.raises(RowError, match="expected a JSON array") as info:
        rows_of(path)
    assert str(path) in str(info.value)


def test_invalid_jsonl_line_is_yielded_as_row_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + '\n{"id": "b", oops}\n\n' + json.dumps(ROWS[2]) + "\n")
    rows = rows_of(path)  # does not raise
    assert [location for location, _ in rows] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    assert rows[0][1] == ROWS[0]
    assert rows[2][1] == ROWS[2]
    error = rows[1][1]
    assert isinstance(error, RowError)
    assert error.location == f"{path}:2"
    assert "invalid JSON" in error.reason
    assert str(error).startswith(f"{path}:2: ")


def test_only_the_last_suffix_names_the_format() -> None:
    with pytest.raises(ValueError, match=r"x\.json\.gz"):
        file_kind("x.json.gz")
