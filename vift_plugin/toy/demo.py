"""``vift demo``: ViFT end to end on the shapes world, on a laptop, with nothing downloaded.

Stages (each a ``ViFTTrainer`` run whose output folder the next one starts from):

0. ``language``: the language model learns the text-only instructions. This stands in for the
   pretrained LLM every real LVLM starts from (the paper's Qwen2.5-7B); vision and connector frozen.
1. ``captions``: ViFT stage 1, captions only, every module trains (a frozen language model this small
   learned captions far more slowly in our runs: loss 2.35 vs 0.04 after 800/2500 steps).
2. ``vift``: ViFT stage 2, captions + text instructions in modality-grouped batches, everything trains.
B. ``baseline`` (``--baseline``): from stage 1, captions + *visual* instructions, the LLaVA-style reference.

Then ``vift sweep`` picks fusion weights on the dev questions, and the held-out test questions are
answered with plain inference, with fused inference at the paper's weights and at the swept ones (and by
the baseline); ``report.md`` gets the table, example outputs, the sweep heatmaps and the loss curves.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vift_plugin.evaluation.scoring import normalize_answer
from vift_plugin.toy.data import CAPTION_REQUEST, RECIPES, WorldSizes, write_world

REPORT_NAME = "report.md"


@dataclass
class StagePlan:
    """One training run of the demo."""

    name: str
    steps: int
    learning_rate: float
    data: tuple[str, ...]
    freeze: tuple[str, ...] = ()
    start: str | None = None


@dataclass
class DemoConfig:
    """Sizes, steps and inference settings of one demo run (``quick()`` for the test-suite version)."""

    output_dir: str = field(default="vift_demo", metadata={"help": "Where the world, checkpoints and report go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the model and the training order."})
    model_size: str = field(default="demo", metadata={"help": "'demo' (1.5M parameters) or 'tiny'."})
    sizes: WorldSizes = field(default_factory=WorldSizes)
    batch_size: int = field(default=32, metadata={"help": "Per-device training batch size."})
    recipe: str = field(
        default="direct",
        metadata={"help": "Text-instruction answers: 'direct' (answer only) or 'restate' (scene, then answer)."},
    )
    language_steps: int = field(default=600, metadata={"help": "Stage 0 steps (text-only LLM pretraining)."})
    caption_steps: int = field(default=2000, metadata={"help": "Stage 1 steps (captions)."})
    vift_steps: int = field(default=2000, metadata={"help": "Stage 2 steps (captions + text instructions)."})
    baseline: bool = field(default=False, metadata={"help": "Also train the visual-instruction baseline."})
    alpha: float = field(default=1.0, metadata={"help": "Fusion alpha of the fixed-weight row (paper: 1)."})
    beta: float = field(default=0.1, metadata={"help": "Fusion beta of the fixed-weight row (paper: 0.1)."})
    sweep: bool = field(default=True, metadata={"help": "Choose fusion weights on the dev questions (vift sweep)."})
    sweep_alphas: tuple[float, ...] = field(default=(1.0, 0.5), metadata={"help": "Alphas the sweep tries."})
    sweep_betas: tuple[float, ...] = field(
        default=(0.1, 0.3, 0.5, 1.0, 2.0), metadata={"help": "Betas the sweep tries."}
    )
    eval_batch_size: int = field(default=50, metadata={"help": "Questions per generate() call."})
    max_new_tokens: int = field(default=40, metadata={"help": "Generation budget per answer."})
    fresh: bool = field(default=False, metadata={"help": "Retrain stages whose outputs already exist."})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.sweep and (not self.sweep_alphas or not self.sweep_betas):
            raise ValueError("the sweep needs at least one alpha and one beta (or sweep=False)")

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        """A smaller world, the tiny model and fewer steps: under a minute on 2 CPU cores."""
        settings: dict[str, Any] = dict(
            output_dir="vift_demo_quick",
            sizes=WorldSizes.quick(),
            model_size="tiny",
            language_steps=250,
            caption_steps=120,
            vift_steps=200,
        )
        return cls(**{**settings, **changes})

    def stages(self) -> list[StagePlan]:
        plans = [
            StagePlan("language", self.language_steps, 2e-3, ("text",), ("vision", "connector")),
            StagePlan("captions", self.caption_steps, 2e-3, ("captions",)),
            StagePlan("vift", self.vift_steps, 5e-4, ("captions", "text")),
        ]
        if self.baseline:
            plans.append(
                StagePlan("baseline", self.vift_steps, 5e-4, ("captions", "visual_instructions"), (), "captions")
            )
        return plans


def _training_arguments(config: DemoConfig, plan: StagePlan, world: Path, output: Path) -> Any:
    import torch

    from vift_plugin.training.arguments import ViFTTrainingArguments

    return ViFTTrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=config.batch_size,
        max_steps=plan.steps,
        learning_rate=plan.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=max(1, plan.steps // 10),
        dataloader_pin_memory=torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        image_root=str(world),
        freeze_vision="vision" in plan.freeze,
        freeze_connector="connector" in plan.freeze,
        freeze_language="language" in plan.freeze,
        fusion_alpha=config.alpha,
        fusion_beta=config.beta,
    )


STAGE_RECORD_NAME = "vift_demo_stage.json"


def _fingerprint(config: DemoConfig, plans: list[StagePlan]) -> str:
    """What a stage's weights depend on: the world, the model, and this and every earlier stage's plan."""
    keys = ("seed", "model_size", "sizes", "recipe", "batch_size")
    return json.dumps({"config": {k: asdict(config)[k] for k in keys}, "plans": [asdict(p) for p in plans]})


def _finished(folder: Path, fingerprint: str) -> bool:
    record = folder / STAGE_RECORD_NAME
    return record.is_file() and record.read_text(encoding="utf-8") == fingerprint


def train_stages(
    config: DemoConfig, world: dict[str, Path], base: Path, timings: dict[str, float] | None = None
) -> dict[str, Path]:
    """Run every planned stage (skipping finished ones unless ``config.fresh``); return their folders."""
    from vift_plugin.training.arguments import DataArguments, ModelArguments
    from vift_plugin.training.run import train_stage

    root = Path(config.output_dir)
    outputs: dict[str, Path] = {}
    previous = base
    plans = config.stages()
    for index, plan in enumerate(plans):
        output = root / f"stage{index}-{plan.name}"
        start = outputs[plan.start] if plan.start else previous
        lineage = [p for p in plans[: index + 1] if p.name != "baseline" or p is plan]
        fingerprint = _fingerprint(config, lineage)
        if config.fresh or not _finished(output, fingerprint):
            captions = [str(world[d]) for d in plan.data if d != "text"]
            texts = [str(world[d]) for d in plan.data if d == "text"]
            data = DataArguments(caption_files=captions or None, text_files=texts or None)
            print(f"\n== stage {index}: {plan.name} ({plan.steps} steps, data: {', '.join(plan.data)}) ==", flush=True)
            began = time.perf_counter()
            train_stage(
                ModelArguments(model_name_or_path=str(start), dtype="float32"),
                data,
                _training_arguments(config, plan, world["captions"].parent, output),
            )
            (output / STAGE_RECORD_NAME).write_text(fingerprint, encoding="utf-8")
            elapsed = time.perf_counter() - began
            if timings is not None:
                timings[plan.name] = elapsed
            print(f"   {plan.name}: {elapsed:.0f} s", flush=True)
        else:
            print(f"== stage {index}: {plan.name}: already trained in {output} (--fresh retrains) ==", flush=True)
        outputs[plan.name] = output
        if not plan.start:
            previous = output
    return outputs


@dataclass
class DemoRow:
    """One line of the demo's table."""

    label: str
    mode: str
    summary: dict[str, Any]
    predictions: list[str]


def _with_leading(result: Any, mode: str) -> dict[str, Any]:
    """``result.summary[mode]`` plus ``leading_accuracy``: the share of answers whose text after ``answer:``
    *begins* with the reference phrase (``answer: green circle at ...`` for ``green``). Exact match counts
    those as wrong; this column shows whether the answer is there before a caption-like tail."""
    hits = 0
    for score in result.scores[mode]:
        text, gold = normalize_answer(score.extracted), normalize_answer(score.answer)
        hits += score.formatted and bool(gold) and (text == gold or text.startswith(gold + " "))
    return {**result.summary[mode], "leading_accuracy": hits / max(1, len(result.scores[mode]))}


def _majority_guess(test: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of always answering each question type's most common test answer: the guessing floor."""
    by_type: dict[str, list[str]] = {}
    for row in test:
        by_type.setdefault(row["type"], []).append(row["answer"])
    correct = {kind: max(answers.count(a) for a in set(answers)) for kind, answers in by_type.items()}
    accuracy = sum(correct.values()) / len(test)
    return {
        "accuracy": accuracy,
        "leading_accuracy": accuracy,
        "format_rate": 1.0,
        "n": len(test),
        "by_type": {
            kind: {"accuracy": correct[kind] / len(answers), "n": len(answers)} for kind, answers in by_type.items()
        },
    }


def sweep_fusion(config: DemoConfig, model: Any, processor: Any, dev_file: Path, num_layers: int) -> Any:
    """``vift sweep`` over ``config.sweep_alphas x sweep_betas x`` first layers at a quarter and half of the
    ``num_layers`` decoder on the dev questions; files in ``OUTPUT_DIR/sweep-vift``. Returns the ``SweepResult``."""
    from vift_plugin.evaluation import sweep

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"beta=.* > 0\.4")
        return sweep(
            model,
            processor,
            dev_file,
            config.sweep_alphas,
            config.sweep_betas,
            sorted({num_layers // 4, num_layers // 2}),
            batch_size=config.eval_batch_size,
            max_new_tokens=config.max_new_tokens,
            output_dir=Path(config.output_dir) / SWEEP_DIR,
        )


SWEEP_DIR = "sweep-vift"
VIFT = "ViFT (captions + text only)"


def _fused_label(fusion: Any, num_layers: int, chosen: str) -> str:
    layers = fusion.resolve_layers(num_layers)
    span = f"layers {min(layers)}-{max(layers)} of {num_layers}"
    return f"fused (alpha {fusion.alpha:g}, beta {fusion.beta:g}, {span}; {chosen})"


def evaluate_stages(config: DemoConfig, outputs: dict[str, Path], world: dict[str, Path]) -> list[DemoRow]:
    """Plain and fused answers of the ViFT model (fixed weights, and swept on dev when ``config.sweep``),
    the baseline's answers, and the ViFT model's captions of the test images."""
    from vift_plugin.config import FusionConfig
    from vift_plugin.evaluation import evaluate, load_model, write_results
    from vift_plugin.layers import find_decoder_layers

    test_file, root = world["test"], Path(config.output_dir)
    settings: dict[str, Any] = dict(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens)
    rows: list[DemoRow] = []
    model, processor = load_model(str(outputs["vift"]), dtype="float32")
    num_layers = len(find_decoder_layers(model))
    fixed = FusionConfig(alpha=config.alpha, beta=config.beta)
    result = evaluate(model, processor, test_file, ("plain", "fused"), fusion=fixed, **settings)
    write_results(result, root / "eval-vift")
    rows.append(DemoRow(VIFT, "plain", _with_leading(result, "plain"), result.predictions("plain")))
    label = _fused_label(fixed, num_layers, "fixed")
    rows.append(DemoRow(VIFT, label, _with_leading(result, "fused"), result.predictions("fused")))
    if config.sweep:
        print("== choosing fusion weights on the dev questions (vift sweep) ==", flush=True)
        chosen = sweep_fusion(config, model, processor, world["dev"], num_layers).best_config
        swept = evaluate(model, processor, test_file, ("fused",), fusion=chosen, **settings)
        write_results(swept, root / "eval-vift-swept")
        label = _fused_label(chosen, num_layers, "swept on dev")
        rows.append(DemoRow(VIFT, label, _with_leading(swept, "fused"), swept.predictions("fused")))
    test = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()]
    captions = [
        {"id": row["id"], "image": row["image"], "question": CAPTION_REQUEST, "answer": row["caption"]} for row in test
    ]
    described = evaluate(
        model, processor, captions, ("plain",), answer_markers=None, image_root=test_file.parent, **settings
    )
    caption_summary = {k: v for k, v in described.summary["plain"].items() if k != "format_rate"}
    rows.append(DemoRow("ViFT, captioning the test images", "plain", caption_summary, []))
    del model
    if "baseline" in outputs:
        model, processor = load_model(str(outputs["baseline"]), dtype="float32")
        result = evaluate(model, processor, test_file, ("plain",), **settings)
        write_results(result, root / "eval-baseline")
        rows.append(
            DemoRow("Visual-instruction baseline", "plain", _with_leading(result, "plain"), result.predictions("plain"))
        )
    rows.append(DemoRow("Guessing (majority answer per type)", "-", _majority_guess(test), []))
    return rows


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


def write_report(
    config: DemoConfig,
    rows: list[DemoRow],
    outputs: dict[str, Path],
    world_dir: Path,
    timings: dict[str, float],
) -> Path:
    """``report.md`` in ``config.output_dir``: settings, the table, example outputs, loss curves."""
    from vift_plugin.data.files import atomic_output

    root = Path(config.output_dir)
    test = [json.loads(line) for line in (world_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [{**item, "image": str(Path(world_dir.name) / item["image"])} for item in test]
    plans = {plan.name: plan for plan in config.stages()}
    stage_lines = [
        f"- `{folder.name}`: {plans[name].steps} steps on {', '.join(plans[name].data)}"
        + (f" ({timings[name]:.0f} s)" if name in timings else " (trained earlier)")
        for name, folder in outputs.items()
    ]
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
            "begins with the reference (`answer: green circle at the top left` for `green`). Exact match "
            "and the per-type columns are strict.",
            "",
            results_table(rows),
            "Stages:",
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
    path = root / REPORT_NAME
    with atomic_output(path) as handle:
        handle.write(text)
    return path


def run_demo(config: DemoConfig) -> Path:
    """Write the world, build the model, train every stage, evaluate, write ``report.md``; its path."""
    from vift_plugin.toy.checkpoint import make_world_checkpoint

    root = Path(config.output_dir)
    if config.fresh and root.exists():
        shutil.rmtree(root)
    world_dir = root / "world"
    print(f"writing the shapes world to {world_dir}", flush=True)
    world = write_world(world_dir, config.sizes, seed=config.seed, recipe=config.recipe)
    base = root / "stage-base"
    if not (base / "config.json").is_file():
        make_world_checkpoint(base, config.model_size, seed=config.seed)
    timings: dict[str, float] = {}
    outputs = train_stages(config, world, base, timings)
    print("\n== evaluating on the held-out visual questions ==", flush=True)
    rows = evaluate_stages(config, outputs, world)
    report = write_report(config, rows, outputs, world_dir, timings)
    print("\n" + results_table(rows), flush=True)
    print(f"report: {report}", flush=True)
    return report
