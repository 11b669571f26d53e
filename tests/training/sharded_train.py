"""Train a tiny Qwen2-VL on 2 CPU ranks (gloo) under a *sharded* engine, with chosen per-rank batches.

Sharded engines gather each wrapped module's parameters in a collective when the module runs, and
reduce-scatter its gradients in another one after backward. Every rank must therefore run the same
modules in the same order. A text-only batch skips Qwen2-VL's vision tower: when one rank has images
and another has none in the same step, the ranks call different collectives: gloo sees the sizes
disagree and aborts ("Is there a distributed collective mismatch in your code?"), NCCL hangs. To give
each rank exactly the batches it should have, this driver builds the engine itself rather than
through ``Trainer``: torch's ``fully_shard`` on each vision block and decoder layer, then the root (what
``accelerate``'s FSDP2 plugin does), or DeepSpeed ZeRO-3 with its CPU accelerator (``--engine zero3``,
when ``deepspeed`` imports). ``ddp_train.py --engine`` runs ``ViFTTrainer`` itself under these engines.

Run as::

    python -m torch.distributed.run --nproc_per_node 2 tests/training/sharded_train.py \
        --checkpoint CKPT --captions captions.jsonl --texts text.jsonl --image-root ROOT --out OUT \
        --engine fsdp2 --plan mixed

Plans (``--plan``):

- ``mixed``: one step where rank 0 trains on captions (with images) and rank 1 on text only: the
  failure the modality-grouped sampler prevents;
- ``text``: text-only steps on every rank (the vision tower is skipped everywhere, its parameters get
  no gradient);
- ``sampler``: the batches :class:`ModalityGroupedBatchSampler` deals this rank from a
  :class:`ModalityGroupedSampler` over both record files, as ``accelerate`` would deal them.

Each rank writes ``OUT/steps-rank{rank}.jsonl`` (per micro-batch: step, modality, loss, row ids) and,
when it finishes, ``OUT/summary-rank{rank}.json``. ``--collective-timeout`` bounds each gloo
collective (torch's default is 30 minutes, i.e. a hang).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def shard_fsdp2(model: Any) -> Any:
    """``fully_shard`` every module whose class is in the model's ``_no_split_modules`` (Qwen2-VL: each
    vision block and each decoder layer), then the whole model: what ``accelerate``'s FSDP2 plugin
    does with its default transformer-layer auto-wrap policy."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    layer_classes = set(model._no_split_modules or [])
    for module in list(model.modules()):
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def zero3_engine(model: Any, lr: float) -> Any:
    """A DeepSpeed ZeRO-3 engine over ``model`` (torch's AdamW as the client optimizer: DeepSpeed's
    CPU Adam would need its C++ op built)."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,  # shard even the tiny model's small tensors
            "stage3_prefetch_bucket_size": 0,
        },
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def plan_batches(plan: str, dataset: Any, rank: int, world_size: int, steps: int, batch: int) -> list[list[int]]:
    """Row indices of this rank's micro-batches, one per step."""
    image = [i for i, m in enumerate(dataset["modality"]) if m == "image"]
    text = [i for i, m in enumerate(dataset["modality"]) if m == "text"]
    if plan == "mixed":
        rows = image if rank == 0 else text
        return [rows[k * batch : (k + 1) * batch] for k in range(steps)]
    if plan == "text":
        return [text[(k * world_size + rank) * batch : (k * world_size + rank + 1) * batch] for k in range(steps)]
    from vift_plugin.data.sampler import ModalityGroupedBatchSampler, ModalityGroupedSampler

    sampler = ModalityGroupedSampler(dataset["modality"], batch_size=batch, world_size=world_size, seed=0)
    return list(ModalityGroupedBatchSampler(sampler, rank=rank))[:steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--captions", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--engine", choices=["fsdp2", "zero3"], default="fsdp2")
    parser.add_argument("--plan", choices=["mixed", "text", "sampler"], default="mixed")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--freeze-vision", action="store_true", help="vision tower frozen (merger trains)")
    parser.add_argument("--collective-timeout", type=float, default=1800.0, help="seconds per gloo collective")
    cli = parser.parse_args()

    torch.manual_seed(0)
    timeout = timedelta(seconds=cli.collective_timeout)
    if cli.engine == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)

    from transformers import AutoModelForImageTextToText

    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.data.files import load_record_files
    from vift_plugin.data.mixing import mix_datasets
    from vift_plugin.processors import load_processor

    processor = load_processor(cli.checkpoint)
    dataset = mix_datasets(
        load_record_files([cli.captions]), load_record_files([cli.texts]), processor, image_root=cli.image_root
    )
    collator = ViFTDataCollator(processor, image_root=cli.image_root)
    model = AutoModelForImageTextToText.from_pretrained(cli.checkpoint, dtype=torch.float32)
    if cli.freeze_vision:
        for name, parameter in model.model.visual.named_parameters():
            parameter.requires_grad_(name.startswith("merger."))
    model.train()
    if cli.engine == "zero3":
        engine = zero3_engine(model, lr=1e-3)
        module: Any = engine.module
        optimizer = None
    else:
        module = shard_fsdp2(model)
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    batches = plan_batches(cli.plan, dataset, rank, world_size, cli.steps, cli.batch_size)
    log = open(out / f"steps-rank{rank}.jsonl", "w", encoding="utf-8")  # closed after the loop
    started = time.perf_counter()
    losses = []
    for step, rows in enumerate(batches):
        inputs = collator([dataset[i] for i in rows])
        modality = "image" if inputs.get("pixel_values") is not None else "text"
        record = {"rank": rank, "step": step, "modality": modality, "ids": [dataset[i]["id"] for i in rows]}
        log.write(json.dumps({**record, "event": "start"}) + "\n")
        log.flush()
        if cli.engine == "zero3":
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
        else:
            assert optimizer is not None
            loss = module(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], 1.0)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(float(loss.detach()))
        log.write(json.dumps({**record, "event": "done", "loss": losses[-1]}) + "\n")
        log.flush()
    log.close()
    dist.barrier()
    summary = {
        "rank": rank,
        "world_size": world_size,
        "engine": cli.engine,
        "plan": cli.plan,
        "steps": len(losses),
        "losses": losses,
        "finite": all(math.isfinite(x) for x in losses),
        "seconds": round(time.perf_counter() - started, 2),
        "torch": torch.__version__,
    }
    (out / f"summary-rank{rank}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
