"""Sharded engines (FSDP2, DeepSpeed ZeRO-2/3) on 2 CPU ranks over gloo: the failure the
modality-grouped sampler exists to prevent, and ``ViFTTrainer`` training through it.

A sharded engine gathers each wrapped module's parameters in a collective when the module runs. A
text-only batch skips Qwen2-VL's vision tower, so a step with images on one rank and none on the other
makes the ranks call different collectives: gloo sees the sizes disagree and aborts ("Received data
size doesn't match expected size. Is there a distributed collective mismatch in your code?"); NCCL
has no such check and hangs until its watchdog fires. With ``ModalityGroupedSampler`` every step is
single-modality on every rank and the same runs complete; text-only steps on *all* ranks (vision
parameters trainable but without gradients) are fine under both engines, so no dummy vision pass is
needed. ``tests/training/sharded_train.py`` gives each rank chosen batches under torch's own
``fully_shard`` or a DeepSpeed engine; ``tests/training/ddp_train.py`` runs ``ViFTTrainer`` under
accelerate's FSDP2 plugin (launched with ``examples/accelerate/fsdp2.yaml``) or transformers'
DeepSpeed integration (``examples/deepspeed/zero{2,3}.json``). DeepSpeed tests skip where
``deepspeed`` does not import.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.multirank import (
    HAS_DEEPSPEED,
    NO_DEEPSPEED,
    ROOT,
    Launch,
    accelerate_launch,
    launch,
    read_jsonl,
    torchrun,
)
from vift_plugin.testing import make_tiny_checkpoint
from vift_plugin.testing.records import write_toy_records

pytestmark = pytest.mark.slow  # two training processes per test

DRIVER = ROOT / "tests" / "training" / "sharded_train.py"
TRAINER = ROOT / "tests" / "training" / "ddp_train.py"
FSDP2_CONFIG = ROOT / "examples" / "accelerate" / "fsdp2.yaml"
MISMATCH = "Is there a distributed collective mismatch in your code?"  # gloo's words
WORLD, BATCH, ACCUM, STEPS = 2, 2, 2, 4  # 8 samples per optimizer step
CAPTIONS = TEXTS = 16  # one epoch: 2 image steps and 2 text steps
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason=NO_DEEPSPEED)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sharded")
    checkpoint = make_tiny_checkpoint("qwen2_vl", tmp / "checkpoint")
    captions, texts = write_toy_records(tmp / "records", captions=CAPTIONS, texts=TEXTS)
    return {"tmp": tmp, "checkpoint": checkpoint, "captions": captions, "texts": texts}


def data_args(material: dict[str, Path], out: Path) -> list[str]:
    return [
        "--checkpoint",
        str(material["checkpoint"]),
        "--captions",
        str(material["captions"]),
        "--texts",
        str(material["texts"]),
        "--image-root",
        str(material["captions"].parent),
        "--out",
        str(out),
    ]


def run_driver(material: dict[str, Path], name: str, *options: str) -> tuple[Launch, Path]:
    out = material["tmp"] / name
    command = torchrun([str(DRIVER), *data_args(material, out), "--collective-timeout", "30", *options])
    return launch(command, material["tmp"], timeout=150), out


def run_trainer(material: dict[str, Path], name: str, engine: str, *options: str) -> tuple[Launch, Path]:
    out = material["tmp"] / name
    script = [
        str(TRAINER),
        *data_args(material, out),
        "--engine",
        engine,
        "--max-steps",
        str(STEPS),
        "--batch-size",
        str(BATCH),
        "--grad-accum",
        str(ACCUM),
        "--lora-dropout",
        "0",  # no randomness: every engine must train the same numbers
        *options,
    ]
    if engine == "fsdp2":  # the user's launch line, with the shipped config
        command = accelerate_launch(["--config_file", str(FSDP2_CONFIG), "--num_processes", str(WORLD)], script)
    else:
        command = torchrun(script)
    return launch(command, material["tmp"], timeout=240), out


def summaries(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / f"summary-rank{rank}.json").read_text()) for rank in range(WORLD)]


def assert_mixed_step_fails(run: Launch, out: Path) -> None:
    """The run ended without finishing step 0, rank 0 on images and rank 1 on text."""
    assert run.timed_out or run.returncode != 0, run.tail()
    if not run.timed_out:
        assert MISMATCH in run.stderr, run.tail()
    started = [[r for r in read_jsonl(out / f"steps-rank{rank}.jsonl") if r["step"] == 0] for rank in range(WORLD)]
    assert [[r["event"] for r in rows] for rows in started] == [["start"], ["start"]], started
    assert [rows[0]["modality"] for rows in started] == ["image", "text"]


def assert_single_modality_steps(out: Path) -> list[str]:
    """Every optimizer step is one modality on both ranks; returns the step modalities."""
    batches = [read_jsonl(out / f"batches-rank{rank}.jsonl") for rank in range(WORLD)]
    assert len(batches[0]) == len(batches[1]) == STEPS * ACCUM
    steps = []
    for step in range(STEPS):
        micro = [b for rank in batches for b in rank[step * ACCUM : (step + 1) * ACCUM]]
        kinds = {b["modality"] for b in micro}
        assert len(kinds) == 1, f"step {step} mixes modalities: {micro}"
        steps.append(kinds.pop())
    return steps


@pytest.fixture(scope="module")
def ddp_reference(material: dict[str, Path]) -> dict[str, Any]:
    """The same ViFTTrainer run under plain DDP, to compare the sharded ones with: per-step losses
    and the saved weights (adapter and the fully trained vision/connector weights)."""
    run, out = run_trainer(material, "trainer-ddp", "ddp", "--save")
    assert run.returncode == 0, run.tail()
    return {"losses": [entry["loss"] for entry in summaries(out)[0]["modality_losses"]], "saved": saved(out)}


def saved(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from vift_plugin.loading import TRAINABLE_WEIGHTS_NAME

    run = out / "run"
    return {**load_file(run / "adapter_model.safetensors"), **load_file(run / TRAINABLE_WEIGHTS_NAME)}


def test_fsdp2_step_mixing_modalities_fails(material: dict[str, Path]) -> None:
    """torch's fully_shard (per vision block, per decoder layer, root): image rank vs text rank."""
    run, out = run_driver(material, "fsdp2-mixed", "--engine", "fsdp2", "--plan", "mixed", "--steps", "1")
    assert_mixed_step_fails(run, out)


@needs_deepspeed
def test_zero3_step_mixing_modalities_fails(material: dict[str, Path]) -> None:
    run, out = run_driver(material, "zero3-mixed", "--engine", "zero3", "--plan", "mixed", "--steps", "1")
    assert_mixed_step_fails(run, out)


def test_vift_trainer_under_accelerate_fsdp2(material: dict[str, Path], ddp_reference: dict[str, Any]) -> None:
    run, out = run_trainer(material, "trainer-fsdp2", "fsdp2", "--save")
    assert run.returncode == 0, run.tail()
    assert sorted(assert_single_modality_steps(out)) == ["image", "image", "text", "text"]
    for summary in summaries(out):
        assert summary["distributed_type"] == "FSDP" and summary["global_step"] == STEPS
        sharding = summary["sharding"]
        assert sharding["dtensor"] == sharding["parameters"] > 0  # every parameter sharded
        assert "vision" in summary["trainable_roles"]  # text steps leave trainable vision weights without grads
        losses = [entry["loss"] for entry in summary["modality_losses"]]
        assert all(math.isfinite(x) for x in losses)
        assert losses == pytest.approx(ddp_reference["losses"], abs=1e-3)  # FSDP2 trains what DDP trains
    weights, expected = saved(out), ddp_reference["saved"]  # saved whole (FULL_STATE_DICT), not as shards
    assert sorted(weights) == sorted(expected) and any(name.startswith("model.visual.") for name in weights)
    for name, tensor in expected.items():
        assert weights[name].shape == tensor.shape, name
        assert torch.allclose(weights[name], tensor, atol=1e-4), name


def test_vift_trainer_under_fsdp2_without_the_sampler_fails(material: dict[str, Path]) -> None:
    """group_by_modality off: transformers' random sampler puts images on one rank, text on the other."""
    run, out = run_trainer(material, "trainer-fsdp2-random", "fsdp2", "--no-group-by-modality")
    assert run.timed_out or run.returncode != 0, run.tail()
    assert run.timed_out or MISMATCH in run.stderr, run.tail()
    rank0, rank1 = (read_jsonl(out / f"batches-rank{rank}.jsonl") for rank in range(WORLD))
    pairs = [(a["modality"], b["modality"]) for a, b in zip(rank0, rank1, strict=False)]
    assert pairs and pairs[-1] in {("image", "text"), ("text", "image")}, pairs  # it stopped at the first mixed one
    assert all(a == b for a, b in pairs[:-1]), pairs


@needs_deepspeed
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_vift_trainer_under_deepspeed(material: dict[str, Path], ddp_reference: dict[str, Any], engine: str) -> None:
    run, out = run_trainer(material, f"trainer-{engine}", engine, "--save")
    assert run.returncode == 0, run.tail()
    assert sorted(assert_single_modality_steps(out)) == ["image", "image", "text", "text"]
    for summary in summaries(out):
        assert summary["distributed_type"] == "DEEPSPEED" and summary["global_step"] == STEPS
        partitioned = summary["sharding"]["zero3_partitioned"]
        assert partitioned == (summary["sharding"]["parameters"] if engine == "zero3" else 0)
        losses = [entry["loss"] for entry in summary["modality_losses"]]
        assert all(math.isfinite(x) for x in losses)
        assert losses == pytest.approx(ddp_reference["losses"], abs=3e-3)
        for rates in summary["learning_rates"]:  # per-role rates of the logged step, not the next one
            assert rates["learning_rate/vision"] == rates["learning_rate"], rates
    # Saved whole. Not bit-equal to DDP: DeepSpeed steps Adam on the vision weights in text-only steps
    # too (zero gradients), so their moments and bias correction differ from torch's, which skips them.
    weights, expected = saved(out), ddp_reference["saved"]
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert weights[name].shape == tensor.shape, name
        assert torch.allclose(weights[name], tensor, atol=3e-3), name
