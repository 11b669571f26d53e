"""Issue 14, items 3 and 4: never delete what the plugin did not write; an output is never an input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets
import pytest

from tests.evaluation.conftest import colour_rows, write_jsonl
from vift_plugin.cli import main
from vift_plugin.data.commands import save_dataset
from vift_plugin.testing.records import write_toy_records


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mix_argv(folder: Path, processor: Path, output: Path) -> list[str]:
    argv = ["convert", "mix", "--captions", str(folder / "captions.jsonl"), "--text", str(folder / "text.jsonl")]
    return [*argv, "--processor", str(processor), "--image-root", str(folder), "-o", str(output)]


def test_mix_into_the_folder_of_its_inputs_is_refused(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_toy_records(tmp_path / "data", captions=4, texts=4)
    before = snapshot(tmp_path / "data")
    assert main(mix_argv(tmp_path / "data", checkpoint_dir("qwen2_vl"), tmp_path / "data")) == 2
    error = capsys.readouterr().err
    assert "not a dataset folder" in error and "--overwrite" in error and "captions.jsonl" in error
    assert snapshot(tmp_path / "data") == before


def test_a_dataset_folder_is_replaced_and_other_folders_only_with_overwrite(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_toy_records(tmp_path / "data", captions=4, texts=4)
    processor = checkpoint_dir("qwen2_vl")
    out = tmp_path / "mixed"
    assert main(mix_argv(tmp_path / "data", processor, out)) == 0
    assert main(mix_argv(tmp_path / "data", processor, out)) == 0  # a dataset folder: replaced
    assert len(datasets.load_from_disk(out)) == 8
    other = tmp_path / "holiday"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"keep me")
    assert main(mix_argv(tmp_path / "data", processor, other)) == 2
    assert (other / "photo.jpg").read_bytes() == b"keep me"
    assert main([*mix_argv(tmp_path / "data", processor, other), "--overwrite"]) == 0
    assert len(datasets.load_from_disk(other)) == 8 and not (other / "photo.jpg").exists()


def test_captions_to_a_dataset_folder_that_holds_images_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions, _ = write_toy_records(tmp_path, captions=3, texts=1)
    source = tmp_path / "source"
    datasets.Dataset.from_list(
        [{"image": f"images/{i:04d}.png", "caption": f"caption {i}"} for i in range(3)]
    ).save_to_disk(source)
    before = snapshot(tmp_path / "images")
    argv = ["convert", "captions", str(source), "--image-root", str(tmp_path), "-o", str(tmp_path / "images")]
    assert main(argv) == 2
    assert snapshot(tmp_path / "images") == before
    with pytest.raises(ValueError, match="not a dataset folder"):
        save_dataset(datasets.Dataset.from_list([{"a": 1}]), str(tmp_path / "images"))
    assert snapshot(tmp_path / "images") == before


@pytest.mark.parametrize("kind", ["captions", "text"])
@pytest.mark.parametrize("clash", ["output", "rejects", "symlink"])
def test_an_output_that_is_an_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, clash: str
) -> None:
    captions, text = write_toy_records(tmp_path, captions=3, texts=3)
    source = captions if kind == "captions" else text
    before = source.read_bytes()
    output = tmp_path / "out.jsonl"
    extra: list[str] = []
    if clash == "output":
        output = source
    elif clash == "rejects":
        extra = ["--skip-bad", "--rejects", str(output)]
    else:
        os.symlink(source, tmp_path / "link.jsonl")
        output = tmp_path / "link.jsonl"
    assert main(["convert", kind, str(source), "-o", str(output), *extra]) == 2
    assert "are the same path" in capsys.readouterr().err
    assert source.read_bytes() == before


@pytest.mark.parametrize("command", ["eval", "sweep"])
@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_the_model_loads(
    command: str,
    where: str,
    checkpoint_dir: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("vift_plugin.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    bench = write_jsonl(tmp_path / "bench.jsonl", colour_rows(tmp_path))
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    output = blocker if where == "a-file" else blocker / "eval"
    argv = [command, str(checkpoint_dir("qwen2_vl")), "--data", str(bench), "--output-dir", str(output)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"vift {command}: error: --output-dir {output}" in error and "file" in error, error
    assert blocker.read_text() == "keep me"
