"""``vift train CONFIG.yaml``: one run or ViFT's two stages, from YAML into the argument dataclasses.

The YAML holds any field of :class:`ModelArguments`, :class:`DataArguments` and
:class:`ViFTTrainingArguments`; an optional ``stages`` list holds per-stage overrides (``name`` plus
fields). Stage ``k`` writes to ``output_dir/<name>`` and, unless it names a model itself, starts from
stage ``k-1``'s output. Flags after the file (``--max_steps 10``) override every stage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOSS_PLOT_NAME = "loss.png"


def _to_argv(values: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(error, "problem", None) or error
            raise ValueError(f"{path}: not valid YAML{line}: {problem}.") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values.")
    return config


def plan_stages(config: dict[str, Any], flags: list[str], only: str | None = None) -> list[tuple[str, list[str]]]:
    """``[(stage name, argv), ...]``: each stage's merged arguments as command-line tokens."""
    common = {k: v for k, v in config.items() if k != "stages"}
    stages = config.get("stages") or [{"name": ""}]
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise ValueError("'stages' must be a list of mappings, each with a 'name' and overrides.")
    names = [str(s.get("name", f"stage{i + 1}")) for i, s in enumerate(stages)]
    if only is not None and only not in names and only not in [str(i + 1) for i in range(len(names))]:
        raise ValueError(f"no stage {only!r}; the config has {names}.")
    root = common.get("output_dir")
    planned, previous = [], None
    for index, (name, stage) in enumerate(zip(names, stages, strict=True)):
        merged = {**common, **{k: v for k, v in stage.items() if k != "name"}}
        if name and root and "output_dir" not in stage:
            merged["output_dir"] = str(Path(root) / name)
        if previous is not None and "model_name_or_path" not in stage:
            merged["model_name_or_path"] = previous
        previous = merged.get("output_dir")
        if only is None or only in (name, str(index + 1)):
            planned.append((name or "train", _to_argv(merged) + list(flags)))
    return planned


def argument_parser() -> Any:
    """``HfArgumentParser`` over ``(ModelArguments, DataArguments, ViFTTrainingArguments)``."""
    from transformers import HfArgumentParser

    from vift_plugin.training.arguments import DataArguments, ModelArguments, ViFTTrainingArguments

    classes: Any = (ModelArguments, DataArguments, ViFTTrainingArguments)
    return HfArgumentParser(classes, allow_abbrev=False)


def parse_stage(argv: list[str]) -> tuple[Any, Any, Any]:
    """``(ModelArguments, DataArguments, ViFTTrainingArguments)`` from command-line tokens."""
    parser = argument_parser()
    model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if unknown:
        raise ValueError(f"unknown options {unknown}; see `vift train --help-options`.")
    return model_args, data_args, training_args


def build_dataset(data_args: Any, processor: Any, training_args: Any) -> Any:
    """The mixed training dataset (``modality`` and ``length`` columns) named by ``data_args``.

    Every row is read and every image decoded first, so a bad record or image is named (or, with
    ``skip_bad_images``, counted and left out) before the model loads rather than at some step mid-run.
    With several processes, the main process reads and tokenizes first (the others then load ``datasets``'
    cache) and the images are decoded once, on rank 0 (:func:`~vift_plugin.training.distributed.check_images_once`).
    """
    from datasets import load_from_disk

    from vift_plugin.data.files import load_record_files
    from vift_plugin.data.mixing import add_modality_and_length, mix_datasets
    from vift_plugin.training.distributed import check_images_once

    images = dict(
        image_root=training_args.image_root,
        max_pixels=training_args.max_pixels,
        allow_remote_images=training_args.allow_remote_images,
    )

    def limited(dataset: Any) -> Any:
        if data_args.max_samples is not None:
            dataset = dataset.select(range(min(len(dataset), data_args.max_samples)))
        return dataset

    with training_args.main_process_first(desc="reading the training data"):
        if data_args.dataset_dir:
            parts = {"dataset": limited(load_from_disk(data_args.dataset_dir))}
        else:
            files = {"image": data_args.caption_files, "text": data_args.text_files}
            parts = {kind: limited(load_record_files(names)) for kind, names in files.items() if names}
    skip_bad = data_args.skip_bad_images
    parts = {kind: check_images_once(part, **images, skip_bad=skip_bad) for kind, part in parts.items()}
    with training_args.main_process_first(desc="mixing the training set"):
        if "dataset" in parts:
            dataset = parts["dataset"]
            if "modality" not in dataset.column_names or "length" not in dataset.column_names:
                dataset = add_modality_and_length(dataset, processor, **images)
            return dataset
        return mix_datasets(
            parts.get("image"),
            parts.get("text"),
            processor,
            ratios={"image": data_args.caption_ratio, "text": data_args.text_ratio},
            seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
            **images,
        )


def plot_losses(log_history: list[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Loss per optimizer step, overall and per modality, as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install vift-plugin[plot]); no loss plot written.")
        return False
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "all"), ("loss_image", "captions (image)"), ("loss_text", "text instructions")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def check_training_data(dataset: Any, training_args: Any) -> None:
    """Before the model loads: every data kind gets optimizer steps and reaches a trainable role."""
    from vift_plugin.data.sampler import ModalityGroupedSampler
    from vift_plugin.training.roles import check_modalities_train

    column = training_args.modality_column
    if column not in dataset.column_names:
        return
    modalities = list(dataset[column])
    counts = {str(m): modalities.count(m) for m in sorted(set(modalities), key=str)}
    check_modalities_train(counts, training_args.trainable_roles())
    if training_args.group_by_modality:
        ModalityGroupedSampler(
            modalities,
            batch_size=training_args.per_device_train_batch_size,
            world_size=training_args.world_size,
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            remainder=training_args.remainder,
        ).check_coverage()


def train_stage(model_args: Any, data_args: Any, training_args: Any) -> Any:
    """Check the data, load, train, save (model, processor, FusionConfig, trainer state, loss plot);
    returns the trainer. Data problems are found before the model loads."""
    from transformers import set_seed

    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.training.model import describe_trainable, load_training_model, load_training_processor
    from vift_plugin.training.trainer import ViFTTrainer

    set_seed(training_args.seed)
    processor = load_training_processor(model_args, training_args)
    dataset = build_dataset(data_args, processor, training_args)
    check_training_data(dataset, training_args)
    model = load_training_model(model_args, training_args)
    logger.info("trainable parameters: %s", describe_trainable(model))
    collator = ViFTDataCollator(
        processor,
        image_root=training_args.image_root,
        max_pixels=training_args.max_pixels,
        allow_remote_images=training_args.allow_remote_images,
    )
    trainer = ViFTTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator, processing_class=processor
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        plot_losses(trainer.state.log_history, Path(training_args.output_dir) / LOSS_PLOT_NAME)
    return trainer
