"""Benchmark evaluation of plain vs fused generation, and the grid search of the fusion settings.

Names are imported on first use, so ``vift --help`` starts without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vift_plugin._lazy import lazy_attributes

if TYPE_CHECKING:
    from vift_plugin.evaluation.answers import DEFAULT_MARKERS, extract_answer, extract_choice, normalize_answer
    from vift_plugin.evaluation.benchmark import BenchmarkItem, as_items, read_benchmark
    from vift_plugin.evaluation.evaluator import EvalResult, evaluate, summary_markdown, write_results
    from vift_plugin.evaluation.fusion_sweep import SweepPoint, SweepResult, sweep, write_sweep
    from vift_plugin.evaluation.runner import build_prompt, generate_answers
    from vift_plugin.evaluation.scoring import Score, score_prediction, summarize
    from vift_plugin.evaluation.settings import GenerationSettings
    from vift_plugin.loading import load_model

_WHERE = {
    "BenchmarkItem": "vift_plugin.evaluation.benchmark",
    "as_items": "vift_plugin.evaluation.benchmark",
    "read_benchmark": "vift_plugin.evaluation.benchmark",
    "load_model": "vift_plugin.loading",
    "GenerationSettings": "vift_plugin.evaluation.settings",
    "EvalResult": "vift_plugin.evaluation.evaluator",
    "evaluate": "vift_plugin.evaluation.evaluator",
    "summary_markdown": "vift_plugin.evaluation.evaluator",
    "write_results": "vift_plugin.evaluation.evaluator",
    "build_prompt": "vift_plugin.evaluation.runner",
    "generate_answers": "vift_plugin.evaluation.runner",
    "DEFAULT_MARKERS": "vift_plugin.evaluation.answers",
    "Score": "vift_plugin.evaluation.scoring",
    "extract_answer": "vift_plugin.evaluation.answers",
    "extract_choice": "vift_plugin.evaluation.answers",
    "normalize_answer": "vift_plugin.evaluation.answers",
    "score_prediction": "vift_plugin.evaluation.scoring",
    "summarize": "vift_plugin.evaluation.scoring",
    "SweepPoint": "vift_plugin.evaluation.fusion_sweep",
    "SweepResult": "vift_plugin.evaluation.fusion_sweep",
    "sweep": "vift_plugin.evaluation.fusion_sweep",
    "write_sweep": "vift_plugin.evaluation.fusion_sweep",
}

__all__ = [
    "BenchmarkItem",
    "DEFAULT_MARKERS",
    "EvalResult",
    "GenerationSettings",
    "Score",
    "SweepPoint",
    "SweepResult",
    "as_items",
    "build_prompt",
    "evaluate",
    "extract_answer",
    "extract_choice",
    "generate_answers",
    "load_model",
    "normalize_answer",
    "read_benchmark",
    "score_prediction",
    "summarize",
    "summary_markdown",
    "sweep",
    "write_results",
    "write_sweep",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
