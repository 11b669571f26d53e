"""Tests of :mod:`vift_plugin.data.caption_formats`: format detection, the readers' rows, registration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vift_plugin.data import CAPTION_READERS, RowError, convert_caption_file, read_caption_rows, register_caption_format
from vift_plugin.data.caption_formats import detect_caption_format


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("coco.json", '\ufeff  {"images": [], "annotations": []}', "coco"),
        ("llava.json", '[{"id": "a", "image": "a.png", "conversations": []}]', "llava"),
        ("llava.jsonl", '{"id": "a", "image": "a.png", "conversations": []}\n', "llava"),
        ("laion.jsonl", '{"url": "a.png", "caption": "x"}\n', "table"),
        ("laion.csv", "url,caption\na.png,x\n", "table"),
        ("empty.jsonl", "", "table"),
    ],
)
def test_detect_caption_format(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert detect_caption_format(path) == expected


def test_readers_yield_id_image_caption_rows(tmp_path: Path) -> None:
    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "a.png"}],
                "annotations": [{"id": 1, "image_id": 7, "caption": "A cat."}, {"image_id": 8, "caption": "?"}],
            }
        )
    )
    rows = list(read_caption_rows(coco))
    assert rows[0] == (f"{coco}:annotations[0]", {"id": 1, "image": "a.png", "caption": "A cat."})
    assert isinstance(rows[1][1], RowError) and "image_id 8 is not in 'images'" in rows[1][1].reason

    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"key": "k", "picture": "b.png", "alt": "A dog."}) + "\n")
    with pytest.raises(ValueError, match=r"no image column found among \['alt', 'key', 'picture'\]"):
        list(read_caption_rows(table))
    rows = list(read_caption_rows(table, image_column="picture", caption_column="alt"))
    assert rows == [(f"{table}:1", {"id": "k", "image": "b.png", "caption": "A dog."})]


def test_an_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match=r"one of \['coco', 'llava', 'table'\], got 'webdataset'"):
        read_caption_rows("x.jsonl", "webdataset")


def test_a_registered_format_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader added with ``register_caption_format`` goes through the same checks and writer."""
    monkeypatch.setattr("vift_plugin.data.caption_formats.CAPTION_READERS", dict(CAPTION_READERS))
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")

    def pipe_rows(path: str, image_column: str | None, caption_column: str | None) -> Iterator[tuple[str, Any]]:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                image, caption = line.rstrip("\n").split("|")
                yield f"{path}:{number}", {"id": str(number), "image": image, "caption": caption}

    register_caption_format("pipe", pipe_rows, "image|caption per line")
    source = tmp_path / "captions.txt"
    source.write_text("a.png|A red square.\nmissing.png|Nothing.\n")
    report = convert_caption_file(
        source, tmp_path / "out.jsonl", input_format="pipe", skip_bad=True, rejects_path=tmp_path / "rejects.jsonl"
    )
    assert (report.read, report.written) == (2, 1)
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record["images"] == ["a.png"] and record["messages"][1]["content"][0]["text"] == "A red square."
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{source}:2"]
