"""Distributed (DDP, 2 CPU ranks, gloo) training with ``ViFTTrainer``: single-modality steps on every rank.

The test writes a tiny Qwen2-VL checkpoint and toy records, launches ``tests/training/ddp_train.py``
under ``torch.distributed.run --nproc_per_node 2`` and checks what each rank trained on, micro-batch by
micro-batch. Select it with ``pytest -k distributed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.training.multirank import launch, read_jsonl, torchrun
from vift_plugin.testing import make_tiny_checkpoint
from vift_plugin.testing.records import write_toy_records

pytestmark = pytest.mark.slow  # two training processes

SCRIPT = Path(__file__).resolve().parent / "ddp_train.py"
WORLD_SIZE, BATCH_SIZE, GRAD_ACCUM, MAX_STEPS = 2, 2, 2, 6
STEP_SIZE = WORLD_SIZE * BATCH_SIZE * GRAD_ACCUM  # samples per optimizer step, all ranks together
# 36 captions -> 4 image steps (4 left out), 20 texts -> 2 text steps (4 left out): one epoch of 6 steps.
CAPTIONS, TEXTS = 36, 20


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Launch the two-rank run once; its per-rank batch logs and summaries."""
    tmp = tmp_path_factory.mktemp("ddp")
    checkpoint = make_tiny_checkpoint("qwen2_vl", tmp / "checkpoint")
    captions, texts = write_toy_records(tmp / "records", captions=CAPTIONS, texts=TEXTS)
    out = tmp / "out"
    command = torchrun(
        [
            str(SCRIPT),
            "--checkpoint",
            str(checkpoint),
            "--captions",
            str(captions),
            "--texts",
            str(texts),
            "--image-root",
            str(captions.parent),
            "--out",
            str(out),
            "--max-steps",
            str(MAX_STEPS),
            "--batch-size",
            str(BATCH_SIZE),
            "--grad-accum",
            str(GRAD_ACCUM),
        ],
        processes=WORLD_SIZE,
    )
    run = launch(command, tmp, timeout=300)
    if run.timed_out:
        pytest.fail(f"the 2-rank run did not finish in 300 s (a hang?); {run.tail(3000)}")
    assert run.returncode == 0, f"torchrun {run.tail()}"
    return {
        "batches": [read_jsonl(out / f"batches-rank{rank}.jsonl") for rank in range(WORLD_SIZE)],
        "summaries": [json.loads((out / f"summary-rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)],
        "seconds": run.seconds,
    }


def test_distributed_trainer_world_size_and_steps(ddp_run: dict[str, Any]) -> None:
    for rank, summary in enumerate(ddp_run["summaries"]):
        assert summary["rank"] == rank
        assert summary["world_size"] == WORLD_SIZE and summary["dist_world_size"] == WORLD_SIZE
        assert summary["global_step"] == summary["max_steps"] == MAX_STEPS
        assert summary["micro_batches"] == MAX_STEPS * GRAD_ACCUM
        assert summary["dataset_modalities"] == {"image": CAPTIONS, "text": TEXTS}
        assert len(summary["modality_losses"]) == MAX_STEPS
    # every image decoded once, on rank 0, which sends what it found (nothing) to rank 1
    assert [s["images_decoded_building_the_dataset"] for s in ddp_run["summaries"]] == [CAPTIONS, 0]


def test_distributed_ranks_log_every_micro_batch(ddp_run: dict[str, Any]) -> None:
    rank0, rank1 = ddp_run["batches"]
    assert len(rank0) == len(rank1) == MAX_STEPS * GRAD_ACCUM
    for rank, batches in enumerate(ddp_run["batches"]):
        assert [b["rank"] for b in batches] == [rank] * len(batches)
        assert [b["index"] for b in batches] == list(range(len(batches)))
        assert all(len(b["ids"]) == BATCH_SIZE for b in batches)
        # the trainer's own step counter: GRAD_ACCUM consecutive micro-batches per optimizer step
        assert [b["global_step"] for b in batches] == [k // GRAD_ACCUM for k in range(len(batches))]


def test_distributed_steps_are_single_modality_on_both_ranks(ddp_run: dict[str, Any]) -> None:
    rank0, rank1 = ddp_run["batches"]
    for k, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert a["modality"] == b["modality"], f"micro-batch {k}: rank 0 {a['modality']}, rank 1 {b['modality']}"
        for batch in (a, b):  # toy ids: c<i> captions (with an image), t<i> text instructions
            prefixes = {row[0] for row in batch["ids"]}
            assert prefixes == {"c" if batch["modality"] == "image" else "t"}, batch
    step_modalities = []
    for step in range(MAX_STEPS):
        micro = [b for batches in (rank0, rank1) for b in batches[step * GRAD_ACCUM : (step + 1) * GRAD_ACCUM]]
        modalities = {b["modality"] for b in micro}
        assert len(modalities) == 1, f"optimizer step {step} mixes modalities: {micro}"
        step_modalities.append(modalities.pop())
    assert sorted(step_modalities) == ["image"] * (CAPTIONS // STEP_SIZE) + ["text"] * (TEXTS // STEP_SIZE)


def test_distributed_ranks_see_disjoint_samples(ddp_run: dict[str, Any]) -> None:
    rank0, rank1 = ddp_run["batches"]
    for step in range(MAX_STEPS):
        window = slice(step * GRAD_ACCUM, (step + 1) * GRAD_ACCUM)
        ids0 = [row for b in rank0[window] for row in b["ids"]]
        ids1 = [row for b in rank1[window] for row in b["ids"]]
        assert not set(ids0) & set(ids1), f"optimizer step {step}: both ranks trained on {set(ids0) & set(ids1)}"
    # one epoch exactly (6 steps of 8 samples): no sample twice anywhere
    everything = [row for batches in (rank0, rank1) for b in batches for row in b["ids"]]
    assert len(everything) == len(set(everything)) == MAX_STEPS * STEP_SIZE
