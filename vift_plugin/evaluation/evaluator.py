"""``evaluate``: plain and fused answers to a benchmark, scored; ``write_results``: their files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vift_plugin.cascade import DEFAULT_DESCRIBE_REQUEST
from vift_plugin.config import FusionConfig
from vift_plugin.data.writers import atomic_output
from vift_plugin.evaluation.answers import DEFAULT_MARKERS
from vift_plugin.evaluation.benchmark import BenchmarkItem, as_items
from vift_plugin.evaluation.runner import cascade_answers, generate_answers
from vift_plugin.evaluation.scoring import Score, score_all, summarize
from vift_plugin.evaluation.settings import GenerationSettings
from vift_plugin.generation import active_fusion

MODES = ("plain", "fused", "cascade")
PREDICTIONS_NAME = "predictions.jsonl"
SUMMARY_JSON_NAME = "summary.json"
SUMMARY_MD_NAME = "summary.md"


@dataclass
class EvalResult:
    """Per-mode scored predictions (in item order) and their summaries."""

    items: list[BenchmarkItem]
    scores: dict[str, list[Score]]
    summary: dict[str, dict[str, Any]]
    fusion: FusionConfig | None = None
    answer_markers: tuple[str, ...] = DEFAULT_MARKERS
    settings: dict[str, Any] = field(default_factory=dict)
    descriptions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def modes(self) -> list[str]:
        return list(self.scores)

    def predictions(self, mode: str) -> list[str]:
        return [s.prediction for s in self.scores[mode]]

    def accuracy(self, mode: str) -> float:
        value: float = self.summary[mode]["accuracy"]
        return value

    def to_markdown(self) -> str:
        return summary_markdown(self.summary)

    def summary_dict(self) -> dict[str, Any]:
        return {
            "n_items": len(self.items),
            "modes": self.summary,
            "fusion_config": self.fusion.to_dict() if self.fusion is not None else None,
            "answer_markers": list(self.answer_markers),
            "settings": self.settings,
        }


def check_modes(modes: Iterable[str]) -> list[str]:
    """``modes`` without repeats, in order; a ValueError names an unknown or empty choice."""
    modes = list(modes)
    chosen = list(dict.fromkeys(modes))
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        raise ValueError(f"modes must be some of {MODES}, got {list(modes)!r}")
    return chosen


def evaluate(
    model: Any,
    processor: Any,
    items: str | os.PathLike[str] | Sequence[BenchmarkItem | Mapping[str, Any]],
    modes: Iterable[str] = MODES,
    *,
    fusion: FusionConfig | None = None,
    settings: GenerationSettings | None = None,
    image_root: str | os.PathLike[str] | None = None,
    describe_request: str | None = None,
) -> EvalResult:
    """Generate greedy answers to ``items`` in each mode and score them.

    ``items``: a benchmark file (relative images under ``image_root``, default the file's folder),
    :class:`BenchmarkItem` objects or row dicts (``image`` may be a path or a PIL image). A file's or row
    dicts' images are all decoded before the model runs, so a broken one is named with its row instead of
    ending the run after the other answers were computed; URLs are refused unless
    ``settings.allow_remote_images`` (then fetched once, up front).
    ``"plain"`` runs ``generate(vift=False)``; ``"fused"`` runs with ``fusion``, else the model's enabled
    config, else ``FusionConfig()``; the model's own state is restored afterwards.
    ``"cascade"`` describes each image under ``describe_request`` (default
    :data:`~vift_plugin.cascade.DEFAULT_DESCRIBE_REQUEST`), then answers the prompt with the description
    in the image's place (:func:`~vift_plugin.cascade.cascade_generate`); the descriptions are kept in
    ``EvalResult.descriptions["cascade"]`` and in the predictions file.
    ``settings`` (default :class:`GenerationSettings`): batch size, answer length, the prompt
    (``prompt_suffix`` or a ``prompt_builder``), the answer markers that say where the final answer
    starts (``()`` scores the whole output), image size, extra ``generate`` keywords, progress bar.
    """
    settings = settings or GenerationSettings()
    chosen = check_modes(modes)
    benchmark = as_items(items, image_root, allow_remote_images=settings.allow_remote_images)
    markers = settings.markers
    scores: dict[str, list[Score]] = {}
    descriptions: dict[str, list[str]] = {}
    for mode in chosen:
        if mode == "cascade":
            predictions, descriptions[mode] = cascade_answers(
                model, processor, benchmark, describe_request=describe_request, settings=settings
            )
        else:
            predictions = generate_answers(
                model, processor, benchmark, fused=mode == "fused", fusion=fusion, settings=settings, desc=mode
            )
        scores[mode] = score_all(predictions, benchmark, markers)
    used = active_fusion(model, fusion) if "fused" in chosen else None
    recorded: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.max_new_tokens,
        "prompt_suffix": settings.prompt_suffix,
    }
    if "cascade" in chosen:
        recorded["describe_request"] = describe_request or DEFAULT_DESCRIBE_REQUEST
    return EvalResult(
        items=benchmark,
        scores=scores,
        summary={mode: summarize(mode_scores) for mode, mode_scores in scores.items()},
        fusion=used,
        answer_markers=markers,
        settings=recorded,
        descriptions=descriptions,
    )


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_markdown(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables: mode x accuracy / format rate, then the same per ``type`` when items have one."""
    lines = ["| mode | accuracy | format rate | n |", "| --- | --- | --- | --- |"]
    for mode, numbers in summary.items():
        lines.append(
            f"| {mode} | {_percent(numbers['accuracy'])} | {_percent(numbers['format_rate'])} | {numbers['n']} |"
        )
    kinds = sorted({kind for numbers in summary.values() for kind in numbers.get("by_type", {})})
    if kinds:
        modes = list(summary)
        header = " | ".join(f"{m} accuracy | {m} format rate" for m in modes)
        lines += ["", f"| type | {header} | n |", "| --- |" + " --- |" * (2 * len(modes) + 1)]
        for kind in kinds:
            cells = []
            count = 0
            for mode in modes:
                numbers = summary[mode].get("by_type", {}).get(kind)
                if numbers is None:
                    cells += ["-", "-"]
                else:
                    cells += [_percent(numbers["accuracy"]), _percent(numbers["format_rate"])]
                    count = numbers["n"]
            lines.append(f"| {kind} | {' | '.join(cells)} | {count} |")
    return "\n".join(lines) + "\n"


def prediction_rows(result: EvalResult) -> Iterable[dict[str, Any]]:
    """One row per item per mode, in item order then mode order."""
    for index, item in enumerate(result.items):
        for mode in result.modes:
            score = result.scores[mode][index]
            row: dict[str, Any] = {
                "id": item.id,
                "mode": mode,
                "prediction": score.prediction,
                "extracted": score.extracted,
                "correct": score.correct,
                "formatted": score.formatted,
                "answer": item.answer,
            }
            if mode in result.descriptions:
                row["description"] = result.descriptions[mode][index]
            if item.choices:
                row["choice"] = score.choice
            if item.type is not None:
                row["type"] = item.type
            yield row


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_output(path) as handle:
        handle.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text)


def write_results(result: EvalResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``predictions.jsonl``, ``summary.json`` and ``summary.md`` (each atomically); their paths."""
    folder = Path(out_dir)
    paths = {
        "predictions": folder / PREDICTIONS_NAME,
        "summary_json": folder / SUMMARY_JSON_NAME,
        "summary_md": folder / SUMMARY_MD_NAME,
    }
    with atomic_output(paths["predictions"]) as handle:
        for row in prediction_rows(result):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_json(paths["summary_json"], result.summary_dict())
    write_text(paths["summary_md"], result.to_markdown())
    return paths
