"""``GenerationSettings``: one set of defaults for the API and the CLI, every bad value refused on construction."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from vift_plugin.cli import build_parser, main
from vift_plugin.evaluation import DEFAULT_MARKERS, GenerationSettings
from vift_plugin.evaluation.commands import generation_settings


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_the_cli_defaults_are_the_dataclass_defaults(command: str) -> None:
    args = build_parser().parse_args([command, "model", "--data", "bench.jsonl"])
    assert generation_settings(args) == GenerationSettings()
    args = build_parser().parse_args([command, "m", "--data", "b.jsonl", "--no-answer-marker", "--max-pixels", "900"])
    assert generation_settings(args) == GenerationSettings(answer_markers=(), max_pixels=900)
    args = build_parser().parse_args([command, "m", "--data", "b.jsonl", "--answer-marker", "final:", "--no-progress"])
    assert generation_settings(args) == GenerationSettings(answer_markers=("final:",), progress=False)


def test_every_field_has_help() -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(GenerationSettings))


def test_answer_markers_are_kept_as_a_tuple() -> None:
    assert GenerationSettings().markers == DEFAULT_MARKERS
    assert GenerationSettings(answer_markers="final:").answer_markers == ("final:",)
    assert GenerationSettings(answer_markers=None).markers == ()
    once = GenerationSettings(answer_markers=(m for m in ["a:", " ", "b:"]))  # a generator is read once
    assert once.markers == once.answer_markers == ("a:", "b:")


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.0}, ValueError, r"batch_size must be an int >= 1, got 2\.0"),
        ({"batch_size": True}, ValueError, r"batch_size must be an int >= 1, got True"),
        ({"max_new_tokens": 0}, ValueError, r"max_new_tokens must be an int >= 1, got 0"),
        ({"max_pixels": 0}, ValueError, r"max_pixels must be an int >= 1 or None, got 0"),
        ({"prompt_suffix": 3}, TypeError, r"prompt_suffix must be a string or None"),
        ({"prompt_builder": "Q:"}, TypeError, r"prompt_builder must be callable"),
        ({"answer_markers": 3}, TypeError, r"answer_markers must be a string, an iterable of strings or None"),
        ({"generate_kwargs": ["top_k"]}, TypeError, r"generate_kwargs must be a dict"),
    ],
)
def test_bad_values_are_refused_on_construction(changes: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        GenerationSettings(**changes)
    with pytest.raises(error, match=message):
        GenerationSettings().replace(**changes)


def test_the_cli_refuses_a_bad_setting_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(tmp_path / "no-model"), "--data", str(tmp_path / "none.jsonl"), "--batch-size", "0"]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "vift eval: error: batch_size must be an int >= 1, got 0" in capsys.readouterr().err
