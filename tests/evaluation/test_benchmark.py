"""Benchmark files: fields kept, paths resolved, bad rows named by file:row, missing images listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.conftest import write_images, write_jsonl
from vift_plugin.data.files import RowError
from vift_plugin.evaluation import BenchmarkItem, as_items, read_benchmark
from vift_plugin.evaluation.runner import build_prompt


def test_rows_become_items_with_extra_fields_and_resolved_images(tmp_path: Path) -> None:
    images = write_images(tmp_path / "data")
    path = write_jsonl(
        tmp_path / "data" / "bench.jsonl",
        [
            {"id": 7, "image": images[0], "question": "Colour?", "answer": "red", "type": "colour", "source": "x"},
            "",
            {"image": images[1], "question": "Shape?", "choices": ["circle", "square"], "answer": "B"},
        ],
    )
    first, second = read_benchmark(path)
    assert (first.id, first.type, first.extra, first.choices) == (
        "7",
        "colour",
        {"type": "colour", "source": "x"},
        None,
    )
    assert Path(first.image) == tmp_path / "data" / images[0]
    assert first.location.endswith("bench.jsonl:1")
    assert (second.id, second.choices, second.type, second.is_multiple_choice) == (
        "1",
        ["circle", "square"],
        None,
        True,
    )
    assert build_prompt(second, "Reply with a letter.") == "Shape?\nA. circle\nB. square\nReply with a letter."
    assert len(read_benchmark(path, limit=1)) == 1


def test_image_root_overrides_the_file_folder(tmp_path: Path) -> None:
    images = write_images(tmp_path / "pictures")
    path = write_jsonl(tmp_path / "elsewhere" / "b.jsonl", [{"image": images[0], "question": "q", "answer": "a"}])
    with pytest.raises(FileNotFoundError):
        read_benchmark(path)
    (item,) = read_benchmark(path, image_root=tmp_path / "pictures")
    assert Path(item.image).is_file()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ('{"image": "images/red.png", "question": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"question": "q", "answer": "a"}, "missing 'image'"),
        ({"image": "images/red.png", "question": " ", "answer": "a"}, "'question' must be a non-empty string"),
        ({"image": "images/red.png", "question": "q"}, "missing 'answer'"),
        ({"image": "images/red.png", "question": "q", "answer": ""}, "'answer' is empty"),
        ({"image": "images/red.png", "question": "q", "answer": {"x": 1}}, "'answer' must be"),
        ({"image": "images/red.png", "question": "q", "choices": "ab", "answer": "A"}, "'choices' must be a list"),
        ({"image": "images/red.png", "question": "q", "choices": ["only"], "answer": "A"}, "2 to 26 options"),
        ({"image": "images/red.png", "question": "q", "choices": ["a", "b"], "answer": "C"}, "none of the choices"),
        ({"image": "images/red.png", "question": "q", "answer": "a", "id": "q0"}, "duplicate id 'q0'"),
    ],
)
def test_bad_rows_are_named_by_file_and_row(tmp_path: Path, row: object, reason: str) -> None:
    write_images(tmp_path)
    good = {"id": "q0", "image": "images/red.png", "question": "q", "answer": "a"}
    path = write_jsonl(tmp_path / "bench.jsonl", [good, "", row])
    with pytest.raises(RowError) as error:
        read_benchmark(path)
    assert error.value.location == f"{path}:3"
    assert str(error.value).startswith(f"{path}:3: ") and reason in str(error.value)


def test_every_missing_image_is_reported(tmp_path: Path) -> None:
    write_images(tmp_path)
    rows = [{"image": name, "question": "q", "answer": "a"} for name in ("images/red.png", "nope1.png", "x/nope2.jpg")]
    path = write_jsonl(tmp_path / "bench.jsonl", rows)
    with pytest.raises(FileNotFoundError) as error:
        read_benchmark(path)
    message = str(error.value)
    assert "2 image file(s) not found" in message
    assert f"{path}:2: " in message and "nope1.png" in message and f"{path}:3: " in message
    assert "red.png" not in message
    assert len(read_benchmark(path, check_images=False)) == 3


def test_items_from_dicts_and_objects(tmp_path: Path) -> None:
    from PIL import Image

    picture = Image.new("RGB", (8, 8))
    (item,) = as_items([{"image": picture, "question": "q", "answer": "x"}])
    assert item.image is picture and item.id == "0"
    assert as_items([item]) == [item]
    with pytest.raises(RowError, match=r"items\[0\]: missing 'image'"):
        as_items([{"question": "q", "answer": "x"}])
    with pytest.raises(TypeError):
        as_items([item, {"image": picture, "question": "q", "answer": "x"}])
    assert isinstance(item, BenchmarkItem)
