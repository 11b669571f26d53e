"""The demo's report: the results table, a bar chart, image reliance per stage, example outputs, and the
mean and range of every row over several seeds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPORT_NAME = "report.md"
CHART_NAME = "results.png"
RESULTS_NAME = "results.json"
PERCEPTION_NAME = "perception.json"
SWEEP_DIR = "sweep-vift"
VIFT = "ViFT (captions + text only)"
BASELINE = "Visual-instruction baseline"
GUESS = "Guessing (majority answer per type)"
CASCADE = "cascade (describe, then answer from the description)"
SEED_LABELS = {
    "vift-plain": (VIFT, "plain"),
    "vift-fused": (VIFT, "fused (paper's weights: alpha 1, beta 0.1, top half)"),
    "vift-swept": (VIFT, "fused (weights swept on dev)"),
    "vift-cascade": (VIFT, CASCADE),
    "vift-captions": ("ViFT, captioning the test images", "plain"),
    "baseline": (BASELINE, "plain"),
    "guess": (GUESS, "-"),
}


@dataclass
class DemoRow:
    """One line of the demo's table; ``key`` names the row the same way in every seed."""

    key: str
    label: str
    mode: str
    summary: dict[str, Any]
    predictions: list[str]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def results_table(rows: list[DemoRow]) -> str:
    """Markdown: one line per model x inference, exact match overall and per question type."""
    kinds = sorted({kind for row in rows for kind in row.summary.get("by_type", {})})
    lines = [
        "| model | inference | exact match | answer format | answer leads | " + " | ".join(kinds) + " |",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(kinds),
    ]
    for row in rows:
        by_type = row.summary.get("by_type", {})
        cells = [_percent(by_type[k]["accuracy"]) if k in by_type else "-" for k in kinds]
        fmt, leads = (
            _percent(row.summary[key]) if key in row.summary else "-" for key in ("format_rate", "leading_accuracy")
        )
        lines.append(
            f"| {row.label} | {row.mode} | {_percent(row.summary['accuracy'])} | {fmt} | {leads} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


def examples_table(rows: list[DemoRow], test: list[dict[str, Any]], count: int = 8) -> str:
    shown = [row for row in rows if row.predictions]
    header = "| image | question | answer | " + " | ".join(f"{r.label}, {r.mode}" for r in shown) + " |"
    lines = [header, "| --- | --- | --- |" + " --- |" * len(shown)]
    for index, item in enumerate(test[:count]):
        outputs = " | ".join(_cell(r.predictions[index]) for r in shown)
        lines.append(f"| ![]({item['image']}) | {item['question']} | {item['answer']} | {outputs} |")
    return "\n".join(lines) + "\n"


def bar_chart(
    labels: list[str], means: list[float], path: Path, spans: list[tuple[float, float]] | None = None
) -> bool:
    """Horizontal bars of exact match (with min-max whiskers when ``spans``); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(10, 0.5 * len(labels) + 1.2))
    positions = list(range(len(labels)))[::-1]
    errors = None
    if spans is not None:
        errors = [
            [100 * (m - lo) for m, (lo, _) in zip(means, spans, strict=True)],
            [100 * (hi - m) for m, (_, hi) in zip(means, spans, strict=True)],
        ]
    bars = axis.barh(positions, [100 * m for m in means], xerr=errors, color="#4c72b0", capsize=3)
    axis.bar_label(bars, labels=[f"{100 * m:.1f}%" for m in means], padding=4, fontsize=8)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.set_xlabel("exact match on held-out visual questions (%)")
    axis.set_xlim(0, 100)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _short(row: DemoRow) -> str:
    return row.label if row.mode == "-" else f"{row.label}, {row.mode}"


def write_report(
    config: Any,
    rows: list[DemoRow],
    perception: list[Any],
    outputs: dict[str, Path],
    world_dir: Path,
    timings: dict[str, float],
) -> Path:
    """``report.md`` in ``config.output_dir``: the table and chart, image reliance, settings, examples, curves."""
    from vift_plugin.toy.perception import perception_table

    root = Path(config.output_dir)
    test = [json.loads(line) for line in (world_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [{**item, "image": str(Path(world_dir.name) / item["image"])} for item in test]
    plans = {plan.name: plan for plan in config.stages()}
    stage_lines = [
        f"- `{folder.name}`: {plans[name].steps} steps on {', '.join(plans[name].data)}"
        + (f", frozen: {', '.join(plans[name].freeze)}" if plans[name].freeze else "")
        + (f" ({timings[name]:.0f} s)" if name in timings else " (trained earlier)")
        for name, folder in outputs.items()
    ]
    charted = [row for row in rows if row.key != "vift-captions"]
    chart = bar_chart([_short(r) for r in charted], [r.summary["accuracy"] for r in charted], root / CHART_NAME)
    curves = [
        f"![{name}]({folder.name}/loss.png)" for name, folder in outputs.items() if (folder / "loss.png").is_file()
    ]
    sweep_lines = []
    if config.sweep:
        maps = sorted((root / SWEEP_DIR).glob("heatmap_alpha_*.png"))
        sweep_lines = [
            "## Fusion weights",
            "",
            "The fixed row uses the paper's weights, chosen for a 28-layer 7B model. The swept row uses the "
            f"weights `vift sweep` chose on {config.sizes.dev} dev questions (scenes in neither the training "
            f"files nor the test set): alphas {list(config.sweep_alphas)}, betas {list(config.sweep_betas)}, "
            f"ranked by exact match, then answer format. Every point: `{SWEEP_DIR}/sweep.md`; the chosen "
            f"config: `{SWEEP_DIR}/best_fusion_config.json` (`vift eval --fusion-config` reads it).",
            "",
            *(f"![{path.stem}]({SWEEP_DIR}/{path.name})" for path in maps),
            "",
        ]
    text = "\n".join(
        [
            "# ViFT on the shapes world",
            "",
            f"Held-out visual QA: {len(test)} questions about scenes that no training file contains. "
            "ViFT never saw an image paired with a question: it learned captions (images) and "
            "scene-text instructions (text only). Answers count as correct when the text after the last "
            "`answer:` (or the whole output, when there is none) equals the reference; they follow the answer "
            "format when they contain `answer:` followed by some text, and the answer leads when that text "
            "begins with the reference. The cascade describes the picture with the caption request, then "
            "answers the question with that description where the picture was (examples show "
            "`description → answer`).",
            "",
            results_table(rows),
            *([f"![exact match per row]({CHART_NAME})", ""] if chart else []),
            "## Does the model look at the picture?",
            "",
            "Caption loss per token on 128 training captions with their own pictures and with each picture "
            "swapped for another caption's; captions written for 200 test pictures.",
            "",
            perception_table(perception),
            "Stages" + (f" (wall time of the whole run: {timings['total']:.0f} s)" if "total" in timings else "") + ":",
            "",
            *stage_lines,
            "",
            "Settings: `" + json.dumps({k: v for k, v in asdict(config).items() if k != "output_dir"}) + "`",
            "",
            "## Example outputs",
            "",
            examples_table(rows, test),
            *sweep_lines,
            "## Loss curves",
            "",
            *curves,
            "",
        ]
    )
    return _write(root / REPORT_NAME, text)


def write_run_files(root: Path, seed: int, rows: list[DemoRow], perception: list[Any]) -> None:
    """``results.json`` (the table rows) and ``perception.json`` (image reliance per stage) of one run."""
    _write(root / RESULTS_NAME, json.dumps({"seed": seed, "rows": [asdict(row) for row in rows]}, indent=1) + "\n")
    _write(root / PERCEPTION_NAME, json.dumps([p.to_dict() for p in perception], indent=1) + "\n")


def _write(path: Path, text: str) -> Path:
    from vift_plugin.data.writers import atomic_output

    with atomic_output(path) as handle:
        handle.write(text)
    return path


def _span(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{100 * mean:.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"


def seeds_table(runs: list[dict[str, Any]]) -> tuple[str, list[tuple[str, list[float]]]]:
    """Markdown of each row's mean (min-max) over ``runs`` (``results.json`` contents), overall and per type;
    also ``[(label, values)]`` for the chart."""
    keys = [row["key"] for row in runs[0]["rows"]]
    kinds = sorted({kind for run in runs for row in run["rows"] for kind in row["summary"].get("by_type", {})})
    seeds = ", ".join(str(run["seed"]) for run in runs)
    lines = [
        f"| model | inference | exact match, mean (range) over seeds {seeds} | " + " | ".join(kinds) + " |",
        "| --- | --- | --- |" + " --- |" * len(kinds),
    ]
    chart: list[tuple[str, list[float]]] = []
    for key in keys:
        rows = [row for run in runs for row in run["rows"] if row["key"] == key]
        if len(rows) != len(runs):
            continue
        label, mode = SEED_LABELS.get(key, (rows[0]["label"], rows[0]["mode"]))
        overall = [row["summary"]["accuracy"] for row in rows]
        cells = []
        for kind in kinds:
            values = [row["summary"].get("by_type", {}).get(kind, {}).get("accuracy") for row in rows]
            cells.append(_span([v for v in values if v is not None]) if None not in values else "-")
        lines.append(f"| {label} | {mode} | {_span(overall)} | " + " | ".join(cells) + " |")
        if key != "vift-captions":
            chart.append((label if mode == "-" else f"{label}, {mode}", overall))
    return "\n".join(lines) + "\n", chart


def write_seeds_report(root: Path, runs: list[Path]) -> Path:
    """``root/report.md`` over the runs in ``runs`` (each holding ``results.json``, ``perception.json``)."""
    results = [json.loads((run / RESULTS_NAME).read_text(encoding="utf-8")) for run in runs]
    table, chart = seeds_table(results)
    means = [sum(v) / len(v) for _, v in chart]
    drawn = bar_chart([label for label, _ in chart], means, root / CHART_NAME, [(min(v), max(v)) for _, v in chart])
    perception_lines = []
    for run, result in zip(runs, results, strict=True):
        stages = json.loads((run / PERCEPTION_NAME).read_text(encoding="utf-8"))
        cells = ", ".join(
            f"{p['stage']} {p['loss_right_images']:.3f} vs {p['loss_shuffled_images']:.3f}"
            f" ({100 * p['caption_exact_match']:.1f}% exact, {p['distinct_captions']} distinct)"
            for p in stages
        )
        perception_lines.append(f"- seed {result['seed']} ([report]({run.name}/{REPORT_NAME})): {cells}")
    text = "\n".join(
        [
            "# ViFT on the shapes world, over seeds",
            "",
            table,
            *([f"![exact match per row, mean and range over the seeds]({CHART_NAME})", ""] if drawn else []),
            "Caption loss with right vs shuffled pictures, per stage:",
            "",
            *perception_lines,
            "",
        ]
    )
    return _write(root / REPORT_NAME, text)
