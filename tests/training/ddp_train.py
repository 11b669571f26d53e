"""Train a tiny model with ``ViFTTrainer`` on 2 CPU ranks and log every micro-batch each rank trains on.

Run by ``tests/training/test_distributed.py`` (plain DDP) as::

    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_train.py \
        --checkpoint CKPT --captions captions.jsonl --texts text.jsonl --image-root ROOT --out OUT

and by ``tests/training/test_sharded.py`` under sharded engines (``--engine``): ``fsdp2`` when launched
by ``accelerate launch --config_file examples/accelerate/fsdp2.yaml``, ``zero2``/``zero3`` (the JSONs in
``examples/deepspeed/``) under torchrun with ``deepspeed`` installed. See :func:`engine_arguments` for
what running those engines on CPU takes.

Each rank writes ``OUT/batches-rank{rank}.jsonl`` (one line per micro-batch passed to
``training_step``, in order: rank, index, the trainer's global step at that moment, modality, row ids)
and ``OUT/summary-rank{rank}.json`` (world size, final global step, ...). The row ids come from the
records' ``id`` column: a wrapping collator notes them (with the ``input_ids`` it produced) in a FIFO,
and ``training_step`` takes the head of the FIFO after checking that its ``input_ids`` are the batch's.
The collator itself and the inputs the trainer sees are left untouched.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import set_seed

from vift_plugin.data.collator import ViFTDataCollator
from vift_plugin.training import DataArguments, ModelArguments, ViFTTrainer, ViFTTrainingArguments
from vift_plugin.training.model import load_model_and_processor
from vift_plugin.training.roles import parameters_by_role
from vift_plugin.training.run import build_dataset

ROOT = Path(__file__).resolve().parents[2]


class RecordingCollator:
    """``ViFTDataCollator`` that also remembers, in order, the row ids and ``input_ids`` of each batch."""

    def __init__(self, collator: ViFTDataCollator) -> None:
        self.collator = collator
        self.pending: deque[tuple[list[str], torch.Tensor]] = deque()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        self.pending.append(([str(f["id"]) for f in features], batch["input_ids"].clone()))
        return batch


class RecordingTrainer(ViFTTrainer):
    """``ViFTTrainer`` that appends one JSON line per micro-batch to ``log_file``."""

    def __init__(self, *args: Any, recorder: RecordingCollator, log_file: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.log_handle = open(log_file, "w", encoding="utf-8")  # closed in close_log
        self.micro_batches = 0

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        ids, input_ids = self.recorder.pending.popleft()
        if not torch.equal(input_ids, inputs["input_ids"].to(input_ids.device)):
            raise RuntimeError(f"micro-batch {self.micro_batches}: the collated batch order does not match")
        record = {
            "rank": self.args.process_index,
            "index": self.micro_batches,
            "global_step": self.state.global_step,
            "modality": "image" if inputs.get("pixel_values") is not None else "text",
            "ids": ids,
        }
        self.log_handle.write(json.dumps(record) + "\n")
        self.log_handle.flush()
        self.micro_batches += 1
        return super().training_step(model, inputs, num_items_in_batch)

    def close_log(self) -> None:
        self.log_handle.close()


def engine_arguments(engine: str) -> dict[str, Any]:
    """``ViFTTrainingArguments`` fields for ``engine``, after setting up accelerate's state for it.

    ``ddp`` is what users get on CPU (``use_cpu`` and gloo). The sharded engines are GPU-only in
    accelerate: with ``use_cpu`` it builds a ``MULTI_CPU`` state, on which it applies neither FSDP nor
    DeepSpeed. To run their real code paths (accelerate's FSDP2 plugin, transformers' DeepSpeed
    integration, ViFTTrainer on top) on CPU, the test pre-builds the process state over gloo and hands
    it to the trainer (``use_configured_state``): for FSDP2 relabelled as a multi-GPU state, for which
    accelerate turns on the FSDP plugin its launcher configured from the YAML; for DeepSpeed with
    ``ACCELERATE_USE_DEEPSPEED`` set, so that ``deepspeed.comm`` is initialized with gloo and its CPU
    accelerator. Only the test does this; users run these engines on GPUs.
    """
    if engine == "ddp":
        return {"use_cpu": True, "ddp_backend": "gloo"}
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    configured = {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}
    if engine == "fsdp2":
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
            raise SystemExit("--engine fsdp2 needs accelerate launch --config_file examples/accelerate/fsdp2.yaml")
        state = PartialState(backend="gloo")
        state.distributed_type = DistributedType.MULTI_GPU
        return configured
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {**configured, "deepspeed": str(ROOT / "examples" / "deepspeed" / f"{engine}.json")}


def sharding(model: Any) -> dict[str, int]:
    """How many parameters are sharded: FSDP2 DTensors and ZeRO-3 partitions (``ds_id``), of all."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    return {
        "parameters": len(parameters),
        "dtensor": sum(isinstance(p, DTensor) for p in parameters),
        "zero3_partitioned": sum(hasattr(p, "ds_id") for p in parameters),
    }


class count_decodes:  # noqa: N801 - used like a function
    """Counts :func:`~vift_plugin.data.images.load_image` calls made through the images module until ``stop``."""

    def __init__(self) -> None:
        import vift_plugin.data.images as images

        self.module, self.original, self.count = images, images.load_image, 0

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self.original(*args, **kwargs)

        images.load_image = counting  # type: ignore[assignment]

    def stop(self) -> None:
        self.module.load_image = self.original  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="tiny checkpoint folder")
    parser.add_argument("--captions", required=True, help="caption records (.jsonl)")
    parser.add_argument("--texts", required=True, help="text-instruction records (.jsonl)")
    parser.add_argument("--image-root", required=True, help="folder the caption image paths resolve under")
    parser.add_argument("--out", required=True, help="folder for the per-rank logs")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["ddp", "fsdp2", "zero2", "zero3"], default="ddp")
    parser.add_argument("--no-group-by-modality", action="store_true", help="transformers' random sampler")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="0 makes engines comparable step by step")
    parser.add_argument("--optim", default="adamw_torch", help="sgd with --max-grad-norm 0 compares raw gradients")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--save", action="store_true", help="save_model() at the end, as vift train does")
    cli = parser.parse_args()

    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    args = ViFTTrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=cli.batch_size,
        gradient_accumulation_steps=cli.grad_accum,
        max_steps=cli.max_steps,
        learning_rate=1e-3,
        optim=cli.optim,
        max_grad_norm=cli.max_grad_norm,
        use_lora=True,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=cli.lora_dropout,
        group_by_modality=not cli.no_group_by_modality,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        image_root=cli.image_root,
        seed=cli.seed,
        disable_tqdm=True,
        **engine_arguments(cli.engine),
    )
    model_args = ModelArguments(model_name_or_path=cli.checkpoint, dtype="float32")
    data_args = DataArguments(caption_files=[cli.captions], text_files=[cli.texts])

    set_seed(cli.seed)  # the LoRA A matrices are drawn at load: the same on every rank and in every engine
    model, processor = load_model_and_processor(model_args, args)
    decoded = count_decodes()
    dataset = build_dataset(data_args, processor, args)  # reads, checks and mixes rank by rank itself
    decoded.stop()
    recorder = RecordingCollator(ViFTDataCollator(processor, image_root=args.image_root, max_pixels=args.max_pixels))
    rank = args.process_index
    trainer = RecordingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=recorder,
        processing_class=processor,
        recorder=recorder,
        log_file=out / f"batches-rank{rank}.jsonl",
    )
    result = trainer.train()
    trainer.close_log()
    if cli.save:
        trainer.save_model()
    summary = {
        "rank": rank,
        "engine": cli.engine,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "sharding": sharding(trainer.model_wrapped),
        "trainable_roles": sorted(
            str(role) for role, named in parameters_by_role(model).items() if any(p.requires_grad for _, p in named)
        ),
        "world_size": args.world_size,
        "dist_world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "micro_batches": trainer.micro_batches,
        "dataset_size": len(dataset),
        "images_decoded_building_the_dataset": decoded.count,
        "dataset_modalities": {m: dataset["modality"].count(m) for m in ("image", "text")},
        "training_loss": result.training_loss,
        "modality_losses": [
            {k: v for k, v in entry.items() if k in ("step", "loss", "loss_image", "loss_text")}
            for entry in trainer.state.log_history
            if "loss" in entry
        ],
        "learning_rates": [
            {k: v for k, v in entry.items() if k.startswith("learning_rate")}
            for entry in trainer.state.log_history
            if "learning_rate" in entry
        ],
    }
    (out / f"summary-rank{rank}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
