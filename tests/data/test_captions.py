"""Caption converter: every input format, both output formats, deterministic requests, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vift_plugin.cli import main
from vift_plugin.data import (
    QueryPool,
    RowError,
    captions_to_messages,
    convert_caption_file,
    convert_captions,
    read_caption_rows,
)
from vift_plugin.data.queries import BRIEF_QUERIES, DETAILED_QUERIES
from vift_plugin.data.writers import RecordWriter

CAPTIONS = {"a": "A red square on a white background.", "b": "Two blue circles.", "c": "A green triangle."}
LONG_CAPTION = " ".join(["word"] * 40)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (32, 24), colour).save(root / f"{name}.png")
    Image.new("RGB", (16, 16), "green").save(root / "sub" / "c.jpg")
    return root


PATHS = {"a": "a.png", "b": "b.png", "c": "sub/c.jpg"}


def write_llava(path: Path) -> None:
    rows = [
        {
            "id": key,
            "image": PATHS[key],
            "conversations": [
                {"from": "human", "value": "<image>\nRender a summary."},
                {"from": "gpt", "value": caption},
            ],
        }
        for key, caption in CAPTIONS.items()
    ]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))


def write_coco(path: Path) -> None:
    images = [{"id": i, "file_name": PATHS[key]} for i, key in enumerate(CAPTIONS)]
    annotations = [{"id": 100 + i, "image_id": i, "caption": caption} for i, caption in enumerate(CAPTIONS.values())]
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))


def table_rows() -> list[dict[str, Any]]:
    return [{"key": key, "url": PATHS[key], "caption": caption} for key, caption in CAPTIONS.items()]


def write_table(path: Path) -> None:
    rows = table_rows()
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)


INPUTS = {
    "llava.json": write_llava,
    "sharegpt4v.jsonl": write_llava,
    "coco_captions.json": write_coco,
    "laion.jsonl": write_table,
    "laion.csv": write_table,
    "laion.tsv": write_table,
    "laion.parquet": write_table,
}


def read_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        records: list[dict[str, Any]] = json.loads(path.read_text())
        return records
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("output_format", ["messages", "llava"])
def test_every_input_format_converts(tmp_path: Path, image_dir: Path, name: str, output_format: str) -> None:
    source = tmp_path / name
    INPUTS[name](source)
    suffix = ".jsonl" if output_format == "messages" else ".json"
    output = tmp_path / f"out{suffix}"
    report = convert_caption_file(source, output, output_format=output_format, image_root=image_dir)  # type: ignore[arg-type]
    assert (report.read, report.written, sum(report.skipped.values())) == (3, 3, 0)
    records = read_records(output)
    assert len(records) == 3
    by_caption = {}
    for record in records:
        if output_format == "messages":
            user, assistant = record["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            assert user["content"][0] == {"type": "image", "text": None}
            assert user["content"][1]["text"] in BRIEF_QUERIES
            assert len(record["images"]) == 1
            by_caption[assistant["content"][0]["text"]] = record["images"][0]
        else:
            human, gpt = record["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].startswith("<image>\n") and human["value"][len("<image>\n") :] in BRIEF_QUERIES
            by_caption[gpt["value"]] = record["image"]
    assert by_caption == {caption: PATHS[key] for key, caption in CAPTIONS.items()}


def test_hf_dataset_with_image_feature_keeps_images(tmp_path: Path) -> None:
    pictures = [Image.new("RGB", (8, 6), "red"), Image.new("L", (5, 5), 128)]
    dataset = datasets.Dataset.from_dict({"image": pictures, "text": ["a red patch", "a grey patch"]})
    dataset = dataset.cast_column("image", datasets.Image())
    converted = convert_captions(dataset, seed=3)
    assert converted.column_names == ["id", "messages", "images"]
    assert isinstance(converted.features["images"].feature, datasets.Image)
    first = converted[1]
    assert first["messages"][1]["content"][0]["text"] == "a grey patch"
    assert first["images"][0].size == (5, 5)
    assert first["id"] == "1"


def test_hf_dataset_with_paths_matches_the_file_converter(tmp_path: Path, image_dir: Path) -> None:
    source = tmp_path / "laion.jsonl"
    write_table(source)
    output = tmp_path / "out.jsonl"
    convert_caption_file(source, output, image_root=image_dir, seed=7)
    dataset = datasets.Dataset.from_list(
        [{"id": r["key"], "url": r["url"], "caption": r["caption"]} for r in table_rows()]
    )
    converted = convert_captions(dataset, seed=7, image_root=image_dir)
    assert [dict(r) for r in converted] == read_records(output)


def test_requests_are_deterministic_by_seed_and_chosen_by_length() -> None:
    batch = {"image": [f"{i}.png" for i in range(40)], "caption": ["short one"] * 39 + [LONG_CAPTION]}
    first = captions_to_messages(batch, seed=1)
    again = captions_to_messages(batch, seed=1)
    other = captions_to_messages(batch, seed=2)
    queries = [m[0]["content"][1]["text"] for m in first["messages"]]
    assert queries == [m[0]["content"][1]["text"] for m in again["messages"]]
    assert queries != [m[0]["content"][1]["text"] for m in other["messages"]]
    assert all(q in BRIEF_QUERIES for q in queries[:39]) and queries[39] in DETAILED_QUERIES
    assert len(set(queries[:39])) > 3
    reordered = captions_to_messages({k: v[::-1] for k, v in batch.items()}, list(range(39, -1, -1)), seed=1)
    assert [m[0]["content"][1]["text"] for m in reordered["messages"]][::-1] == queries


def test_user_query_pool_from_file(tmp_path: Path) -> None:
    pool_file = tmp_path / "pool.json"
    pool_file.write_text(json.dumps({"brief": ["Short?"], "detailed": ["Long?"], "detailed_min_words": 3}))
    pool = QueryPool.from_file(pool_file)
    out = captions_to_messages({"image": ["x.png", "y.png"], "caption": ["one two", "one two three"]}, queries=pool)
    assert [m[0]["content"][1]["text"] for m in out["messages"]] == ["Short?", "Long?"]
    pool_file.write_text(json.dumps({"brief": []}))
    with pytest.raises(ValueError, match="brief"):
        QueryPool.from_file(pool_file)
    pool_file.write_text(json.dumps({"brefi": ["x"]}))
    with pytest.raises(ValueError, match="unknown keys"):
        QueryPool.from_file(pool_file)


def bad_rows(image_dir: Path) -> list[dict[str, Any]]:
    (image_dir / "corrupt.png").write_bytes(b"\x89PNG not really")
    Image.new("CMYK", (9, 9)).save(image_dir / "cmyk.jpg")
    return [
        {"key": "ok", "url": "a.png", "caption": "fine"},
        {"key": "missing", "url": "nope.png", "caption": "gone"},
        {"key": "corrupt", "url": "corrupt.png", "caption": "broken"},
        {"key": "empty", "url": "b.png", "caption": "   "},
        {"key": "escape", "url": "../../etc/passwd", "caption": "sneaky"},
        {"key": "noimage", "url": "", "caption": "no image"},
        {"key": "cmyk", "url": "cmyk.jpg", "caption": "non-RGB is fine"},
        {"key": "number", "url": "a.png", "caption": 5},
    ]


def test_bad_rows_stop_with_file_and_row(tmp_path: Path, image_dir: Path) -> None:
    source = tmp_path / "bad.jsonl"
    rows = bad_rows(image_dir)
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    output.write_text("previous contents\n")
    with pytest.raises(RowError, match=r"bad\.jsonl:2: image file not found: .*nope\.png"):
        convert_caption_file(source, output, image_root=image_dir)
    assert output.read_text() == "previous contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "images", "out.jsonl"]


def test_skip_bad_counts_and_writes_rejects(tmp_path: Path, image_dir: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in bad_rows(image_dir)) + "{not json\n")
    output, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    report = convert_caption_file(source, output, image_root=image_dir, skip_bad=True, rejects_path=rejects)
    assert (report.read, report.written, sum(report.skipped.values())) == (9, 2, 7)
    assert [r["id"] for r in read_records(output)] == ["ok", "cmyk"]
    listed = {r["location"]: r["reason"] for r in read_records(rejects)}
    assert set(listed) == {f"{source}:{n}" for n in (2, 3, 4, 5, 6, 8, 9)}
    assert "not found" in listed[f"{source}:2"] and "cannot read image" in listed[f"{source}:3"]
    assert listed[f"{source}:4"] == "empty caption" and "escapes the image root" in listed[f"{source}:5"]
    assert listed[f"{source}:6"] == "no image" and "caption must be text" in listed[f"{source}:8"]
    assert "invalid JSON" in listed[f"{source}:9"]
    assert "skipped 7 bad row(s)" in report.summary()


def test_without_verification_only_paths_are_checked(tmp_path: Path, image_dir: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in bad_rows(image_dir)))
    report = convert_caption_file(
        source, tmp_path / "out.jsonl", image_root=image_dir, verify_images=False, skip_bad=True
    )
    assert report.written == 4  # ok, missing, corrupt, cmyk: files are not opened
    assert sum(report.skipped.values()) == 4


def test_malformed_structures_name_the_row(tmp_path: Path, image_dir: Path) -> None:
    source = tmp_path / "coco.json"
    source.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"caption": "x"}]}))
    with pytest.raises(RowError, match=r"coco\.json:annotations\[0\]: annotation without an image_id"):
        convert_caption_file(source, tmp_path / "o.jsonl", image_root=image_dir)
    source = tmp_path / "llava.json"
    source.write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": "oops"}]))
    with pytest.raises(RowError, match=r"llava\.json:0"):
        convert_caption_file(source, tmp_path / "o.jsonl", image_root=image_dir, input_format="llava")
    source = tmp_path / "table.csv"
    source.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="no image column found"):
        list(read_caption_rows(source))


def test_crash_mid_stream_leaves_no_output(tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"url": "a.png", "caption": f"c{i}"}) + "\n" for i in range(50)))
    calls = {"n": 0}
    original = RecordWriter.write

    def exploding(self: RecordWriter, lines: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, lines)

    monkeypatch.setattr(RecordWriter, "write", exploding)
    with pytest.raises(KeyboardInterrupt):
        convert_caption_file(source, tmp_path / "out.jsonl", image_root=image_dir, chunk_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "many.jsonl"]


def test_cli_convert_captions(tmp_path: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "laion.csv"
    write_table(source)
    with open(source, "a") as handle:
        handle.write("bad,../x.png,escape\n")
    output = tmp_path / "out.json"
    argv = ["convert", "captions", str(source), "-o", str(output), "--image-root", str(image_dir), "--to", "llava"]
    assert main(argv) == 2
    assert "escapes the image root" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    assert "skipped 1 bad row(s)" in capsys.readouterr().out
    assert len(read_records(output)) == 3
    assert len(read_records(Path(f"{output}.rejects.jsonl"))) == 1
    assert main(["convert", "formats"]) == 0
    assert "coco" in capsys.readouterr().out


def test_dataset_skip_bad_writes_rejects(tmp_path: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "ok", "image": "a.png", "caption": "fine"},
        {"id": "empty", "image": "b.png", "caption": " "},
        {"id": "gone", "image": "nope.png", "caption": "missing file"},
        {"id": "escape", "image": "../x.png", "caption": "sneaky"},
    ]
    dataset = datasets.Dataset.from_list(rows)
    rejects = tmp_path / "rejects.jsonl"
    converted = convert_captions(dataset, image_root=image_dir, verify_images=True, skip_bad=True, rejects_path=rejects)
    assert converted["id"] == ["ok"]
    listed = read_records(rejects)
    assert [r["location"] for r in listed] == ["row 1", "row 2", "row 3"]
    assert listed[0]["reason"] == "empty caption"
    assert listed[1]["reason"].startswith("image file not found")
    assert "escapes the image root" in listed[2]["reason"]
    with pytest.raises(RowError, match="row 1: empty caption"):
        convert_captions(dataset, image_root=image_dir)
    folder = tmp_path / "dataset"
    dataset.save_to_disk(folder)
    output = tmp_path / "converted"
    argv = ["convert", "captions", str(folder), "-o", str(output), "--image-root", str(image_dir), "--skip-bad"]
    assert main(argv) == 0
    assert datasets.load_from_disk(output)["id"] == ["ok"]
    assert len(read_records(Path(f"{output}.rejects.jsonl"))) == 3
    assert "rejected rows are listed in" in capsys.readouterr().out
