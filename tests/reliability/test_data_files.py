"""Issue 14, "nothing lost, nothing silent": data files that are damaged, oddly encoded or hostile.

Each bad file must end in one line naming ``file:line`` (exit code 2) or, with ``--skip-bad``, in a
counted, correctly explained skip; never in a traceback, a swallowed rest of the file or a lost output.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vift_plugin.cli import main
from vift_plugin.data.files import RowError, iter_rows
from vift_plugin.testing.records import write_toy_records

CAPTION = {"image": "a.png", "caption": "a red square"}
TEXT = {"instruction": "What is 2 plus 2?", "output": "4"}
DEEP = "[" * 100_000 + "]" * 100_000


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``vift ARGV``: exit code, stdout and stderr."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def caption_folder(folder: Path) -> Path:
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    return folder


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------- a. CSV quoting


@pytest.mark.parametrize("skip_bad", [False, True])
def test_csv_unclosed_quote_is_an_error_naming_the_line_it_starts_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], skip_bad: bool
) -> None:
    source = caption_folder(tmp_path) / "laion.csv"
    rows = "".join(f"a.png,caption {i}\n" for i in range(500))
    source.write_text(f'image,caption\na.png,fine\na.png,"never closed\n{rows}', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    code, out, err = run(capsys, "convert", "captions", source, "-o", output, *(["--skip-bad"] if skip_bad else []))
    assert code == 2, out
    assert f"{source}:1" in err and "unclosed quote" in err and "line 3" in err
    assert not output.exists()


def test_csv_stray_quote_within_a_line_is_skipped_and_counted_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = caption_folder(tmp_path) / "laion.csv"
    source.write_text('image,caption\na.png,one\na.png,"two" and more\na.png,three\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    code, out, _ = run(capsys, "convert", "captions", source, "-o", output, "--skip-bad")
    assert code == 0
    assert "read 3 row(s)" in out and "wrote 2" in out and "skipped 1 bad row(s)" in out
    [reject] = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert reject["location"] == f"{source}:1" and "line 3" in reject["reason"]
    assert [r["messages"][1]["content"][0]["text"] for r in read_jsonl(output)] == ["one", "three"]


def test_csv_field_limit_is_one_mib_per_reader_and_leaves_the_module_limit_alone(tmp_path: Path) -> None:
    before = csv.field_size_limit()
    source = tmp_path / "huge.csv"
    source.write_text(f"image,caption\na.png,short\na.png,{'x' * (2 << 20)}\n", encoding="utf-8")
    with pytest.raises(RowError, match="line 3") as info:
        list(iter_rows(source))
    assert info.value.location == f"{source}:1" and "longer than 1,048,576 characters" in info.value.reason
    assert csv.field_size_limit() == before


# ---------------------------------------------------------------------------------------------- b. not UTF-8


def test_jsonl_line_that_is_not_utf8_is_named_and_skippable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = caption_folder(tmp_path) / "captions.jsonl"
    good = json.dumps(CAPTION).encode()
    source.write_bytes(good + b'\n{"image": "a.png", "caption": "caf\xe9"}\n' + good + b"\n")
    output = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "convert", "captions", source, "-o", output)
    assert code == 2 and f"{source}:2: not UTF-8: byte 0xe9 at byte 34 of the line" in err
    code, out, _ = run(capsys, "convert", "captions", source, "-o", output, "--skip-bad")
    assert code == 0 and "wrote 2" in out and "not UTF-8" in out
    [reject] = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert reject["location"] == f"{source}:2" and reject["reason"].startswith("not UTF-8: byte 0xe9")


@pytest.mark.parametrize(
    ("name", "data", "location", "where"),
    [
        (
            "captions.json",
            b'[\n{"image": "a.png", "caption": "ok"},\n{"image": "a.png", "caption": "caf\xe9"}\n]\n',
            ":1",
            "on line 3",
        ),
        ("captions.csv", b"image,caption\na.png,ok\na.png,caf\xe9\n", ":1", "in column 'caption' (line 3)"),
    ],
)
def test_json_array_and_csv_rows_that_are_not_utf8_are_named_and_skippable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, data: bytes, location: str, where: str
) -> None:
    source = caption_folder(tmp_path) / name
    source.write_bytes(data)
    output = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "convert", "captions", source, "-o", output)
    assert code == 2 and f"{source}{location}: not UTF-8: byte 0xe9 {where}" in err
    code, out, _ = run(capsys, "convert", "captions", source, "-o", output, "--skip-bad")
    assert code == 0 and "wrote 1" in out and "skipped 1 bad row(s)" in out


# ---------------------------------------------------------------------------------------------- c. reasons, BOMs


def test_ragged_csv_rows_are_skipped_for_their_field_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = caption_folder(tmp_path) / "laion.csv"
    source.write_text("image,caption\na.png,one\na.png,two,extra\na.png\na.png,x,y\na.png,ok\n", encoding="utf-8")
    code, out, _ = run(capsys, "convert", "captions", source, "-o", tmp_path / "out.jsonl", "--skip-bad")
    assert code == 0 and "wrote 2" in out
    reasons = [r["reason"] for r in read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")]
    assert reasons == [
        "row has 3 fields, header has 2 (line 3)",
        "row has 1 field, header has 2 (line 4)",
        "row has 3 fields, header has 2 (line 5)",
    ]
    assert "       2  row has N fields, header has N (line N)" in out  # one summary line per kind of fault


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("excel.csv", "image,caption\r\na.png,a red square\r\n"),
        ("rows.json", json.dumps([CAPTION])),
        ("rows.jsonl", json.dumps(CAPTION) + "\n"),
    ],
)
def test_utf8_bom_before_the_header_or_first_row_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    source = caption_folder(tmp_path) / name
    source.write_text(text, encoding="utf-8-sig")
    code, out, err = run(capsys, "convert", "captions", source, "-o", tmp_path / "out.jsonl")
    assert code == 0, err
    assert "wrote 1" in out
    [record] = read_jsonl(tmp_path / "out.jsonl")
    assert record["images"] == ["a.png"]


# ---------------------------------------------------------------------------------------------- d. no tracebacks


def test_truncated_jsonl_given_to_mix_is_a_named_error_before_the_processor_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions, text = write_toy_records(tmp_path, captions=3, texts=3)
    text.write_text(text.read_text()[:-40])  # the last line cut mid-object
    argv = ["convert", "mix", "--captions", captions, "--text", text, "--processor", tmp_path / "no-such-model"]
    code, _, err = run(capsys, *argv, "-o", tmp_path / "mixed")
    assert code == 2
    assert f"{text}:3: invalid JSON" in err and "truncated" in err


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "t9", "messages": [', "invalid JSON"),
        (b'{"id": "caf\xe9"}', "not UTF-8"),
        ('{"id": "t9", "x": ' + DEEP + "}", "nested too deeply"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_record_files_names_the_row_datasets_cannot_load(tmp_path: Path, line: str | bytes, reason: str) -> None:
    from vift_plugin.data.files import load_record_files

    _, text = write_toy_records(tmp_path, captions=1, texts=2)
    good = text.read_bytes()
    text.write_bytes(good + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(RowError, match=reason) as info:
        load_record_files([text])
    assert info.value.location == f"{text}:3"
    text.write_bytes(good)
    assert len(load_record_files([text])) == 2


@pytest.mark.parametrize(("ratio", "message"), [("image=inf", "finite"), ("video=2", "ratios keys")])
def test_mix_ratio_is_refused_before_anything_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ratio: str, message: str
) -> None:
    argv = ["convert", "mix", "--captions", tmp_path / "missing.jsonl", "--processor", tmp_path / "no-such-model"]
    code, _, err = run(capsys, *argv, "-o", tmp_path / "mixed", "--ratio", ratio)
    assert code == 2
    assert err.startswith("vift convert: error: --ratio") and message in err


def test_resample_ratio_that_overflows_the_row_count_is_a_value_error() -> None:
    from vift_plugin.data.mixing import resample

    with pytest.raises(ValueError, match="a ratio is a small multiple"):
        resample(datasets.Dataset.from_dict({"x": [1, 2, 3]}), 1e308)


@pytest.mark.parametrize(
    ("command", "name", "text", "location"),
    [
        ("captions", "captions.jsonl", json.dumps(CAPTION)[:-1] + f', "x": {DEEP}}}\n', ":1"),
        ("text", "text.json", f"[{json.dumps(TEXT)}, {DEEP}]", ":1"),
        ("eval", "bench.jsonl", f'{{"image": "a.png", "question": "q", "answer": "a", "x": {DEEP}}}\n', ":1"),
    ],
)
def test_deeply_nested_row_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, name: str, text: str, location: str
) -> None:
    source = caption_folder(tmp_path) / name
    source.write_text(text, encoding="utf-8")
    if command == "eval":
        argv: list[Any] = ["eval", tmp_path / "no-such-model", "--data", source]
    else:
        argv = ["convert", command, source, "-o", tmp_path / "out.jsonl"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"{source}{location}: nested too deeply" in err


# ---------------------------------------------------------------------------------------------- e. stale partials


def test_stale_partials_of_the_same_output_are_removed_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _, text = write_toy_records(tmp_path, captions=1, texts=2)
    (tmp_path / ".out.jsonl.k3x_9q2z.partial").write_text('{"id": "half a')
    (tmp_path / ".out.jsonl.ab12cd34.partial").mkdir()
    (tmp_path / ".out.jsonl.ab12cd34.partial" / "data-00000-of-00001.arrow").write_bytes(b"\0" * 64)
    keep = [".out.jsonl.rejects.jsonl.k3x_9q2z.partial", ".other.jsonl.k3x_9q2z.partial", ".out.jsonl.partial"]
    for name in keep:
        (tmp_path / name).write_text("not ours to delete")
    with caplog.at_level(logging.WARNING, logger="vift_plugin.data.writers"):
        code, _, _ = run(capsys, "convert", "text", text, "-o", tmp_path / "out.jsonl")
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob(".*partial")) == sorted(keep)
    removed = [r.getMessage() for r in caplog.records if "interrupted write" in r.getMessage()]
    assert len(removed) == 2 and all(str(tmp_path / "out.jsonl") in message for message in removed)


def test_stale_partial_dataset_folder_is_removed_by_save_dataset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vift_plugin.data.commands import save_dataset

    stale = tmp_path / ".mixed.x7_abc12.partial"
    stale.mkdir()
    (stale / "dataset_info.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="vift_plugin.data.writers"):
        save_dataset(datasets.Dataset.from_dict({"x": [1, 2]}), str(tmp_path / "mixed"))
    assert not stale.exists() and len(datasets.load_from_disk(tmp_path / "mixed")) == 2
    assert any(str(stale) in r.getMessage() for r in caplog.records)


def test_a_killed_exports_scratch_folder_is_removed_by_the_next_export(tmp_path: Path) -> None:
    """``write_llava_records`` (the LLaVA and LLaMA-Factory data writers) converts into a scratch folder
    beside its output; a SIGKILL left it there for good. Now it is a stale partial of that output."""
    from vift_plugin.data.export import write_llava_records

    records, texts = write_toy_records(tmp_path / "records", captions=3, texts=2)
    captions = records.with_name("raw_captions.jsonl")
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    lines = [json.dumps({"image": row["images"][0], "caption": f"square {row['id']}"}) for row in rows]
    captions.write_text("\n".join(lines) + "\n")
    target = tmp_path / "mix.json"
    killed = tmp_path / ".mix.json.q1w2e3r4.partial"
    killed.mkdir()
    (killed / "captions-0.jsonl").write_text('{"id": "c0", "conv')
    counts = write_llava_records(target, captions=[captions], texts=[texts], image_root=captions.parent)
    assert counts == {"captions": 3, "texts": 2} and len(json.loads(target.read_text())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.json", "records"]


# ---------------------------------------------------------------------------------------------- f. existing outputs


def test_convert_replaces_an_existing_output_file_only_once_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind in ("captions", "text", "mix"):
        with pytest.raises(SystemExit):
            main(["convert", kind, "--help"])
        assert "an existing output is replaced only once the new one is complete" in " ".join(
            capsys.readouterr().out.split()
        ), kind
    _, text = write_toy_records(tmp_path, captions=1, texts=2)
    output = tmp_path / "out.jsonl"
    output.write_text("old output\n")
    assert run(capsys, "convert", "text", text, "-o", output)[0] == 0
    replaced = output.read_bytes()
    assert len(read_jsonl(output)) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text(text.read_text() + '{"messages": "not a list"}\n')
    code, _, err = run(capsys, "convert", "text", broken, "-o", output)
    assert code == 2 and f"{broken}:3" in err
    assert output.read_bytes() == replaced
    assert [p.name for p in tmp_path.glob(".*partial")] == []


# ---------------------------------------------------------------------------------------------- beyond the list


def test_duplicate_csv_header_column_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "laion.csv"
    source.write_text("image,caption,caption\na.png,kept,silently wins\n", encoding="utf-8")
    with pytest.raises(RowError, match="repeats column 'caption'"):
        list(iter_rows(source))


@pytest.mark.parametrize("damage", ["cut", "junk"])
def test_damaged_parquet_file_is_a_row_error_naming_it(tmp_path: Path, damage: str) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([CAPTION] * 50), source)
    source.write_bytes(source.read_bytes()[:100] if damage == "cut" else b"not parquet")
    with pytest.raises(RowError, match="not a readable Parquet file") as info:
        list(iter_rows(source))
    assert info.value.location == str(source)


def test_whole_json_documents_are_read_like_row_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vift_plugin.data.queries import QueryPool

    folder = caption_folder(tmp_path)
    coco = folder / "coco.json"
    document = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "red"}]}
    coco.write_text(json.dumps(document, indent=1), encoding="utf-8-sig")
    assert run(capsys, "convert", "captions", coco, "-o", tmp_path / "out.jsonl")[0] == 0
    coco.write_bytes(json.dumps(document, indent=1).encode().replace(b"red", b"rouge \xe9"))
    code, _, err = run(capsys, "convert", "captions", coco, "-o", tmp_path / "out.jsonl")
    assert code == 2 and f"{coco}:" in err and "not UTF-8: byte 0xe9" in err
    queries = tmp_path / "queries.json"
    queries.write_text('{"brief": ' + DEEP + "}")
    with pytest.raises(RowError, match="nested too deeply"):
        QueryPool.from_file(queries)
    queries.write_text('{"detailed_min_words": "30"}')
    with pytest.raises(ValueError, match=f"{queries}: detailed_min_words must be a whole number"):
        QueryPool.from_file(queries)
