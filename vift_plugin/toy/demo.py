"""``vift demo``: ViFT end to end on the shapes world, on a laptop, with nothing downloaded.

Stages (each a ``ViFTTrainer`` run whose output folder the next one starts from):

0. ``language``: the language model learns the text-only instructions and to repeat a scene given as
   text. This stands in for the pretrained LLM every real LVLM starts from (the paper's Qwen2.5-7B).
1. ViFT stage 1, captions only, in two runs. ``align``: the language model learns to read the image
   tokens while the vision tower and connector stay frozen at their random initialisation (which
   stands in for a pretrained vision encoder). ``captions``: every module trains, the vision tower and
   connector at a lower rate. (Training them from the start collapsed the image tokens into one large
   constant vector that carried no picture, for every learning rate we tried: caption loss equal with
   right and shuffled pictures, one caption for every test picture.)
2. ``vift``: ViFT stage 2, captions + text instructions in modality-grouped batches.
B. ``baseline`` (on by default; ``--no-baseline`` skips it): from stage 1, captions + *visual*
   instructions, the LLaVA-style reference ViFT is measured against.

Then ``vift sweep`` picks fusion weights on the dev questions, and the held-out test questions are
answered plain, fused at the paper's weights and at the swept ones, and by the cascade (describe the
picture, then answer from the description as text); the baseline answers plain. Every stage's image
reliance is measured (caption loss with right vs shuffled pictures, distinct captions).
``report.md`` gets the tables, a bar chart, example outputs, the sweep heatmaps and the loss curves.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vift_plugin.evaluation.answers import normalize_answer
from vift_plugin.evaluation.settings import GenerationSettings
from vift_plugin.toy.data import CAPTION_REQUEST, RECIPES, WorldSizes, write_world
from vift_plugin.toy.perception import Perception, caption_test_pictures, measure_perception, perception_table
from vift_plugin.toy.report import (
    BASELINE,
    CASCADE,
    GUESS,
    SWEEP_DIR,
    VIFT,
    DemoRow,
    results_table,
    write_report,
    write_run_files,
    write_seeds_report,
)


@dataclass
class StagePlan:
    """One training run of the demo: its data, steps, learning rate (per role where given) and frozen roles."""

    name: str
    steps: int
    learning_rate: float
    data: tuple[str, ...]
    freeze: tuple[str, ...] = ()
    start: str | None = None
    role_learning_rates: dict[str, float] = field(default_factory=dict)


FROZEN_VISION = ("vision", "connector")
SLOW_VISION = {"vision": 2e-4, "connector": 2e-4}
TEXT_FILES = ("text", "scene_texts")


@dataclass
class DemoConfig:
    """Sizes, steps and inference settings of one demo run (``quick()`` for the test-suite version)."""

    output_dir: str = field(default="vift_demo", metadata={"help": "Where the world, checkpoints and report go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the model and the training order."})
    model_size: str = field(
        default="demo", metadata={"help": "'demo' (1.9M parameters) or 'tiny' (0.4M, used by --quick)."}
    )
    sizes: WorldSizes = field(default_factory=WorldSizes)
    batch_size: int = field(default=32, metadata={"help": "Per-device training batch size."})
    recipe: str = field(
        default="direct",
        metadata={"help": "Text-instruction answers: 'direct' (answer only) or 'restate' (scene, then answer)."},
    )
    language_steps: int = field(default=600, metadata={"help": "Stage 0 steps (text-only LLM pretraining)."})
    align_steps: int = field(
        default=800, metadata={"help": "Stage 1a steps (captions; vision tower and connector frozen)."}
    )
    caption_steps: int = field(default=1800, metadata={"help": "Stage 1b steps (captions; every module trains)."})
    vift_steps: int = field(default=1500, metadata={"help": "Stage 2 steps (captions + text instructions)."})
    baseline: bool = field(default=True, metadata={"help": "Also train the visual-instruction baseline."})
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
        from vift_plugin.config import FusionConfig

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"beta=.* > 0\.4")
            for alpha, beta in [
                (self.alpha, self.beta),
                *((a, b) for a in self.sweep_alphas for b in self.sweep_betas),
            ]:
                FusionConfig(alpha=alpha, beta=beta)

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        """A smaller world, the tiny model and fewer steps: under a minute on 2 CPU cores."""
        settings: dict[str, Any] = dict(
            output_dir="vift_demo_quick",
            sizes=WorldSizes.quick(),
            model_size="tiny",
            language_steps=250,
            align_steps=200,
            caption_steps=200,
            vift_steps=200,
        )
        return cls(**{**settings, **changes})

    def stages(self) -> list[StagePlan]:
        plans = [
            StagePlan("language", self.language_steps, 2e-3, ("text", "scene_texts"), FROZEN_VISION),
            StagePlan("align", self.align_steps, 2e-3, ("captions",), FROZEN_VISION),
            StagePlan("captions", self.caption_steps, 5e-4, ("captions",), (), None, SLOW_VISION),
            StagePlan("vift", self.vift_steps, 5e-4, ("captions", "text"), (), None, SLOW_VISION),
        ]
        if self.baseline:
            plans.append(
                StagePlan(
                    "baseline", self.vift_steps, 5e-4, ("captions", "visual_instructions"), (), "captions", SLOW_VISION
                )
            )
        return plans


def _training_arguments(config: DemoConfig, plan: StagePlan, world: Path, output: Path) -> Any:
    import torch

    from vift_plugin.config import FusionConfig
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
        vision_lr=plan.role_learning_rates.get("vision"),
        connector_lr=plan.role_learning_rates.get("connector"),
        language_lr=plan.role_learning_rates.get("language"),
        fusion_config=FusionConfig(alpha=config.alpha, beta=config.beta).to_json_string(),
    )


STAGE_RECORD_NAME = "vift_demo_stage.json"


def code_digest() -> str:
    """SHA-256 of the plugin's sources and the torch/transformers versions: a stage trained by other code
    (an older checkout drawing the world differently, say) is retrained, not reused with stale weights."""
    import torch
    import transformers

    digest = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _fingerprint(config: DemoConfig, plans: list[StagePlan]) -> str:
    """What a stage's weights depend on: the world, the model, this and every earlier stage's plan, the code."""
    keys = ("seed", "model_size", "sizes", "recipe", "batch_size")
    settings = {"config": {k: asdict(config)[k] for k in keys}, "plans": [asdict(p) for p in plans]}
    return json.dumps({**settings, "code": code_digest()})


def _finished(folder: Path, fingerprint: str) -> bool:
    record = folder / STAGE_RECORD_NAME
    return record.is_file() and record.read_text(encoding="utf-8") == fingerprint


def train_stages(
    config: DemoConfig, world: dict[str, Path], base: Path, timings: dict[str, float] | None = None
) -> dict[str, Path]:
    """Run every planned stage (skipping finished ones unless ``config.fresh``); return their folders.

    A stage is trained again when its start was trained in this run: its old weights grew from another start.
    """
    from vift_plugin.training.arguments import DataArguments, ModelArguments
    from vift_plugin.training.run import train_stage

    root = Path(config.output_dir)
    outputs: dict[str, Path] = {}
    previous = base
    plans = config.stages()
    trained: set[Path] = set()
    for index, plan in enumerate(plans):
        output = root / f"stage{index}-{plan.name}"
        start = outputs[plan.start] if plan.start else previous
        lineage = [p for p in plans[: index + 1] if p.name != "baseline" or p is plan]
        fingerprint = _fingerprint(config, lineage)
        reusable = _finished(output, fingerprint) and start not in trained
        if not config.fresh and (output / STAGE_RECORD_NAME).is_file() and not reusable:
            why = "its start was retrained" if start in trained else "it was trained by other code or settings"
            print(f"== stage {index}: {plan.name}: retraining {output}: {why} ==", flush=True)
        if config.fresh or not reusable:
            trained.add(output)
            captions = [str(world[d]) for d in plan.data if d not in TEXT_FILES]
            texts = [str(world[d]) for d in plan.data if d in TEXT_FILES]
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


def generation_settings(config: DemoConfig) -> GenerationSettings:
    """The :class:`~vift_plugin.evaluation.GenerationSettings` of every evaluation and of the sweep."""
    return GenerationSettings(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens)


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
            settings=generation_settings(config),
            output_dir=Path(config.output_dir) / SWEEP_DIR,
        )


def _fused_label(fusion: Any, num_layers: int, chosen: str) -> str:
    layers = fusion.resolve_layers(num_layers)
    span = f"layers {min(layers)}-{max(layers)} of {num_layers}"
    return f"fused (alpha {fusion.alpha:g}, beta {fusion.beta:g}, {span}; {chosen})"


def evaluate_stages(
    config: DemoConfig, outputs: dict[str, Path], world: dict[str, Path]
) -> tuple[list[DemoRow], list[Perception]]:
    """The table rows (ViFT plain / fused at fixed and swept weights / cascade, its captions, the baseline,
    guessing) and every stage's image reliance."""
    from vift_plugin.config import FusionConfig
    from vift_plugin.evaluation import evaluate, load_model, write_results
    from vift_plugin.layers import find_decoder_layers

    test_file, root = world["test"], Path(config.output_dir)
    settings = generation_settings(config)
    sizes: dict[str, Any] = dict(batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens)
    rows: list[DemoRow] = []
    perception: list[Perception] = []
    for name in [name for name in outputs if name not in ("vift", "baseline")]:
        model, processor = load_model(str(outputs[name]), dtype="float32")
        perception.append(measure_perception(name, model, processor, world, **sizes))
    model, processor = load_model(str(outputs["vift"]), dtype="float32")
    described = caption_test_pictures(model, processor, world, **sizes)
    perception.append(measure_perception("vift", model, processor, world, captioned=described, **sizes))
    num_layers = len(find_decoder_layers(model))
    fixed = FusionConfig(alpha=config.alpha, beta=config.beta)
    modes = ("plain", "fused", "cascade")
    result = evaluate(
        model, processor, test_file, modes, fusion=fixed, settings=settings, describe_request=CAPTION_REQUEST
    )
    write_results(result, root / "eval-vift")
    rows.append(DemoRow("vift-plain", VIFT, "plain", _with_leading(result, "plain"), result.predictions("plain")))
    label = _fused_label(fixed, num_layers, "fixed")
    rows.append(DemoRow("vift-fused", VIFT, label, _with_leading(result, "fused"), result.predictions("fused")))
    if config.sweep:
        print("== choosing fusion weights on the dev questions (vift sweep) ==", flush=True)
        chosen = sweep_fusion(config, model, processor, world["dev"], num_layers).best_config
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"beta=.* > 0\.4")
            swept = evaluate(model, processor, test_file, ("fused",), fusion=chosen, settings=settings)
        write_results(swept, root / "eval-vift-swept")
        label = _fused_label(chosen, num_layers, "swept on dev")
        rows.append(DemoRow("vift-swept", VIFT, label, _with_leading(swept, "fused"), swept.predictions("fused")))
    cascade = [
        f"{description} → {answer}"
        for description, answer in zip(result.descriptions["cascade"], result.predictions("cascade"), strict=True)
    ]
    rows.append(DemoRow("vift-cascade", VIFT, CASCADE, _with_leading(result, "cascade"), cascade))
    caption_summary = {k: v for k, v in described.summary["plain"].items() if k != "format_rate"}
    rows.append(DemoRow("vift-captions", "ViFT, captioning the test images", "plain", caption_summary, []))
    del model
    if "baseline" in outputs:
        model, processor = load_model(str(outputs["baseline"]), dtype="float32")
        perception.append(measure_perception("baseline", model, processor, world))
        result = evaluate(model, processor, test_file, ("plain",), settings=settings)
        write_results(result, root / "eval-baseline")
        rows.append(DemoRow("baseline", BASELINE, "plain", _with_leading(result, "plain"), result.predictions("plain")))
    test = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()]
    rows.append(DemoRow("guess", GUESS, "-", _majority_guess(test), []))
    return rows, perception


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
    began = time.perf_counter()
    outputs = train_stages(config, world, base, timings)
    print("\n== evaluating on the held-out visual questions ==", flush=True)
    rows, perception = evaluate_stages(config, outputs, world)
    timings["total"] = time.perf_counter() - began
    write_run_files(root, config.seed, rows, perception)
    report = write_report(config, rows, perception, outputs, world_dir, timings)
    print("\n" + perception_table(perception), flush=True)
    print(results_table(rows), flush=True)
    print(f"report: {report}", flush=True)
    return report


def run_seeds(config: DemoConfig, seeds: list[int]) -> Path:
    """``run_demo`` once per seed (in ``OUTPUT_DIR/seed-N``), then ``OUTPUT_DIR/report.md`` with each row's
    mean and range over the seeds and a bar chart."""
    reports = [
        run_demo(replace(config, seed=seed, output_dir=str(Path(config.output_dir) / f"seed-{seed}"))) for seed in seeds
    ]
    report = write_seeds_report(Path(config.output_dir), [path.parent for path in reports])
    print(f"report over seeds {seeds}: {report}", flush=True)
    return report
