"""The fusion grid search: best-point ties, the shared text-only pass, files without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForImageTextToText

from tests.evaluation.conftest import colour_rows, read_jsonl, write_jsonl
from vift_plugin import FusionConfig, count_fusion_passes, enable_vift, fusion_config, load_processor
from vift_plugin.evaluation import GenerationSettings, SweepPoint, SweepResult, read_benchmark, sweep, write_sweep
from vift_plugin.evaluation.fusion_sweep import NO_MATPLOTLIB, resolve_first_layers
from vift_plugin.fusion import FusionStats


def point(alpha: float, beta: float, first: int, accuracy: float, format_rate: float = 1.0) -> SweepPoint:
    summary = {
        "n": 4,
        "correct": int(4 * accuracy),
        "formatted": int(4 * format_rate),
        "accuracy": accuracy,
        "format_rate": format_rate,
    }
    return SweepPoint(alpha, beta, first, list(range(first, 4)), summary)


def result(points: list[SweepPoint]) -> SweepResult:
    plain = {"n": 4, "correct": 1, "formatted": 4, "accuracy": 0.25, "format_rate": 1.0}
    return SweepResult(points, plain, FusionConfig(mode="official", tokens="all_text"), 4)


def test_best_point_ties_go_to_the_smaller_beta_then_the_later_first_layer() -> None:
    points = [
        point(1.0, 0.2, 3, 0.5),
        point(1.0, 0.1, 1, 0.75),
        point(1.0, 0.1, 2, 0.75),
        point(1.0, 0.15, 3, 0.75),
        point(1.0, 0.3, 3, 0.5),
    ]
    best = result(points).best
    assert (best.beta, best.first_layer) == (0.1, 2)
    assert result([point(0.9, 0.1, 2, 0.5), point(1.0, 0.1, 2, 0.5)]).best.alpha == 1.0
    config = result(points).best_config
    assert (config.beta, config.layers, config.mode, config.tokens) == (0.1, [2, 3], "official", "all_text")


def test_equal_accuracy_goes_to_the_higher_format_rate_before_the_smaller_beta() -> None:
    points = [point(1.0, 0.1, 2, 0.0, 0.0), point(0.5, 1.0, 1, 0.0, 0.75), point(1.0, 2.0, 2, 0.0, 0.5)]
    best = result(points).best
    assert (best.alpha, best.beta, best.first_layer) == (0.5, 1.0, 1)
    assert result([*points, point(1.0, 0.1, 3, 0.25, 0.25)]).best.first_layer == 3


def test_files_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    outcome = result([point(1.0, 0.0, 2, 0.25), point(1.0, 0.1, 2, 0.5)])
    files = write_sweep(outcome, tmp_path)
    assert outcome.notes == [NO_MATPLOTLIB] and "pip install" in NO_MATPLOTLIB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_fusion_config.json", "sweep.jsonl", "sweep.md"]
    assert files["best_config"].read_text() == outcome.best_config.to_json_string()
    assert FusionConfig.from_pretrained(files["best_config"]) == outcome.best_config
    rows = read_jsonl(tmp_path / "sweep.jsonl")
    assert [(r["beta"], r["accuracy"], r["plain_accuracy"]) for r in rows] == [(0.0, 0.25, 0.25), (0.1, 0.5, 0.25)]
    assert "| 1 | 0.1 | 2 | 50.0% **best** | 100.0% |" in (tmp_path / "sweep.md").read_text()


def test_text_pass_runs_once_per_batch_and_first_layer(checkpoint_dir: Any, tmp_path: Path) -> None:
    path = checkpoint_dir("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(path)
    saved = FusionConfig(beta=0.12, mode="official")
    enable_vift(model, saved, processor=processor)
    rows = [{**row, "question": f"{row['question']} ({i})"} for i, row in enumerate(colour_rows(tmp_path)[:4])]
    items = read_benchmark(write_jsonl(tmp_path / "b.jsonl", rows))  # four different text-only prompts
    with count_fusion_passes() as stats:
        settings = GenerationSettings(batch_size=2, max_new_tokens=3, progress=False)
        outcome = sweep(model, processor, items, [1.0], [0.1, 0.2, 0.3], [1, 2], settings=settings)
    # 2 batches x 2 first layers (fused layers 1-3 and 2-3 of 4) text passes of 2 rows each; the other two
    # betas of each read those rows from the cache; alpha=1, so official mode needs no unfused pass.
    assert stats == FusionStats(
        fused_calls=2 * 6,
        text_passes=2 * 2,
        text_rows=2 * 2 * 2,
        cached_rows=2 * 2 * 2 * 2,
        captured_layers=2 * (3 + 2),
    )
    assert len(outcome.points) == 6 and outcome.plain["n"] == 4
    assert outcome.base == saved and outcome.best_config.mode == "official"
    assert fusion_config(model) == saved  # the model's own fusion state is back


def test_first_layers_count_from_the_end_and_default_to_the_quarters() -> None:
    assert resolve_first_layers([-1, 3, 1], 4) == [1, 3]
    assert resolve_first_layers(None, 4) == [1, 2, 3]
    assert resolve_first_layers(None, 1) == [0]
    assert resolve_first_layers(iter([2]), 4) == [2]


@pytest.mark.parametrize(
    ("first_layers", "message"),
    [
        (
            [4],
            r"first_layers \[4\] \(first fused layers.*\): layer index 4 is out of range for a decoder with 4 layers",
        ),
        ([1, -5], r"layer index -5 is out of range for a decoder with 4 layers"),
        ([], r"first_layers \[\] .*non-empty list of layer indices"),
        ([1.0], r"non-empty list of layer indices"),
        ([True], r"non-empty list of layer indices"),
    ],
)
def test_bad_first_layers_are_refused_like_fused_layers(first_layers: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_first_layers(first_layers, 4)


def test_sweep_refuses_bad_first_layers_before_generating(checkpoint_dir: Any, tmp_path: Path) -> None:
    path = checkpoint_dir("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(path)
    items = read_benchmark(write_jsonl(tmp_path / "b.jsonl", colour_rows(tmp_path)[:2]))

    def no_generate(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("generate ran")

    model.generate = no_generate
    with pytest.raises(ValueError, match=r"first_layers \[9\].*out of range for a decoder with 4 layers"):
        sweep(model, processor, items, first_layers=[9], settings=GenerationSettings(progress=False))
    assert fusion_config(model) is None
