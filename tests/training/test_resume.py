"""Resuming restores everything that trained: a run stopped after a checkpoint and resumed from it
ends with the same weights as an uninterrupted run, for a full fine-tune, a connector-only stage 1,
LoRA and QLoRA; a half-written newest checkpoint is skipped for the last complete one, and a save
that fails (disk full) is one clear error."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.conftest import ToyData
from tests.training.test_trainer import SnapshotAtStart, StopAt, make_args, make_trainer
from vift_plugin.training import ModelArguments, ViFTTrainer
from vift_plugin.training.checkpoints import CheckpointSaveError, last_complete_checkpoint

RUN: dict[str, Any] = dict(
    max_steps=6,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    save_strategy="steps",
    save_steps=3,
    learning_rate=5e-3,
)
MODES: dict[str, dict[str, Any]] = {
    "full": dict(learning_rate=1e-3),
    "connector-only": dict(freeze_vision=True, freeze_language=True),
    "lora": dict(freeze_vision=True, use_lora=True),
    "qlora": dict(freeze_vision=True, use_lora=True, load_in_bits=4),
}
CASES = [("qwen2_vl", mode) for mode in MODES] + [("llava", "connector-only"), ("gemma3", "full"), ("idefics3", "full")]


def trainer_for(checkpoint: Path, toy: ToyData, out: Path, mode: str, **extra: Any) -> ViFTTrainer:
    settings = {**RUN, **MODES[mode]}
    bits = settings.pop("load_in_bits", None)
    model_args = ModelArguments(model_name_or_path=str(checkpoint), load_in_bits=bits)
    texts = mode != "connector-only"
    return make_trainer(checkpoint, toy, make_args(out, toy, **settings), texts=texts, model_args=model_args, **extra)


def trained_weights(trainer: ViFTTrainer) -> dict[str, torch.Tensor]:
    assert trainer.model is not None
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.slow
@pytest.mark.parametrize(("family", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(
    family: str, mode: str, checkpoint_dir: Any, toy: ToyData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = checkpoint_dir(family)
    full = trainer_for(ckpt, toy, tmp_path / "a", mode)
    full.train()
    stopped = trainer_for(ckpt, toy, tmp_path / "b", mode, callbacks=[StopAt(3)])
    stopped.train()
    at_stop = trained_weights(stopped)
    at_resume = SnapshotAtStart()
    resumed = trainer_for(ckpt, toy, tmp_path / "b", mode, callbacks=[at_resume])
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert "missing keys" not in caplog.text.lower()
    assert (full.state.global_step, resumed.state.global_step) == (6, 6)
    assert at_stop, "the mode trains nothing"
    moved = [name for name, weight in at_stop.items() if not torch.equal(weight, trained_weights(full)[name])]
    assert moved, "steps 4-6 moved no weight: the comparison below could not fail"
    for name, weight in at_stop.items():
        assert torch.equal(at_resume.weights[name], weight), f"{name} was not restored from checkpoint-3"
    final = trained_weights(full)
    for name, weight in trained_weights(resumed).items():
        torch.testing.assert_close(weight, final[name], atol=1e-6, rtol=0, msg=name)


@pytest.fixture
def stopped_run(checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> Path:
    """A connector-only run stopped at step 3 with checkpoint-3 saved (6 steps planned)."""
    out = tmp_path / "run"
    trainer_for(checkpoint_dir("qwen2_vl"), toy, out, "connector-only", callbacks=[StopAt(3)]).train()
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    return out


def half_written(run: Path, step: int, keep: tuple[str, ...]) -> Path:
    """``checkpoint-<step>`` holding only ``keep`` of checkpoint-3's files, as a SIGKILLed save leaves it."""
    folder = run / f"checkpoint-{step}"
    folder.mkdir()
    for name in keep:
        shutil.copy(run / "checkpoint-3" / name, folder / name)
    return folder


def truncated_weights(run: Path, step: int) -> Path:
    folder = run / f"checkpoint-{step}"
    shutil.copytree(run / "checkpoint-3", folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["global_step"] = step
    (folder / "trainer_state.json").write_text(json.dumps(state))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.mark.parametrize(
    ("make_partial", "reason"),
    [
        (lambda run: half_written(run, 5, ("config.json",)), "no trainer_state.json"),
        (lambda run: half_written(run, 5, ("config.json", "trainer_state.json")), "no model weights"),
        (lambda run: truncated_weights(run, 5), "model.safetensors is truncated"),
    ],
    ids=["config-only", "no-weights", "truncated-weights"],
)
def test_resume_skips_a_half_written_checkpoint(
    make_partial: Any,
    reason: str,
    stopped_run: Path,
    checkpoint_dir: Any,
    toy: ToyData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    partial = make_partial(stopped_run)
    found, skipped = last_complete_checkpoint(stopped_run)
    assert found == stopped_run / "checkpoint-3"
    assert [(path, reason in why) for path, why in skipped] == [(partial, True)], skipped
    resumed = trainer_for(checkpoint_dir("qwen2_vl"), toy, stopped_run, "connector-only")
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert "checkpoint-3" in caplog.text and "checkpoint-5" in caplog.text and reason in caplog.text


def test_resume_from_a_named_half_written_checkpoint_says_what_is_missing(
    stopped_run: Path, checkpoint_dir: Any, toy: ToyData
) -> None:
    partial = half_written(stopped_run, 5, ("config.json",))
    resumed = trainer_for(checkpoint_dir("qwen2_vl"), toy, stopped_run, "connector-only")
    with pytest.raises(ValueError, match=r"checkpoint-5 is incomplete \(no trainer_state.json\).*checkpoint-3"):
        resumed.train(resume_from_checkpoint=str(partial))


def test_resume_with_no_complete_checkpoint_is_an_error(checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "config.json").write_text("{}")
    trainer = trainer_for(checkpoint_dir("qwen2_vl"), toy, out, "connector-only")
    with pytest.raises(ValueError, match=r"no complete checkpoint in .*checkpoint-2: no trainer_state.json"):
        trainer.train(resume_from_checkpoint=True)


def test_a_save_that_runs_out_of_disk_is_one_clear_error(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reports a full disk as ``RuntimeError: ... file write failed``; the user gets which
    checkpoint failed, why, that the partial folder was removed and what to resume from."""
    out = tmp_path / "run"
    trainer = trainer_for(checkpoint_dir("qwen2_vl"), toy, out, "full")
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoint-6" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr("vift_plugin.training.checkpoints.free_bytes", lambda path: 0)
    with pytest.raises(CheckpointSaveError, match=r"checkpoint-6.*no space left.*checkpoint-3") as error:
        trainer.train()
    assert isinstance(error.value, OSError)
    assert not (out / "checkpoint-6").exists()
    assert last_complete_checkpoint(out)[0] == out / "checkpoint-3"


def test_a_final_save_that_runs_out_of_disk_is_one_clear_error_and_its_files_are_refused(
    stopped_run: Path, checkpoint_dir: Any, toy: ToyData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final ``save_model`` (not a checkpoint) cut short by a full disk: one error that names the
    folder and the checkpoint to resume from; nothing of the run is removed; the half-written model is
    refused by name wherever it would load (evaluation, fused inference, the next stage)."""
    from transformers import modeling_utils

    from vift_plugin.loading import load_model, load_vift
    from vift_plugin.training.model import load_training_model

    trainer = trainer_for(checkpoint_dir("qwen2_vl"), toy, stopped_run, "connector-only")
    real_save = modeling_utils.safe_save_file

    def disk_fills_up(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        real_save(tensors, filename, *args, **kwargs)
        written = Path(filename)
        written.write_bytes(written.read_bytes()[: written.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_fills_up)
    with pytest.raises(CheckpointSaveError, match=r"run failed: no space left on device.*resume from .*checkpoint-3"):
        trainer.save_model()
    monkeypatch.setattr(modeling_utils, "safe_save_file", real_save)
    assert (stopped_run / "checkpoint-3" / "trainer_state.json").is_file()

    refused = rf"{stopped_run} does not hold a whole saved model \(model.safetensors is truncated"
    with pytest.raises(ValueError, match=refused):
        load_model(str(stopped_run), device="cpu")
    with pytest.raises(ValueError, match=refused):
        load_vift(stopped_run)
    with pytest.raises(ValueError, match=refused):
        load_training_model(ModelArguments(model_name_or_path=str(stopped_run)), trainer.args)

    trainer.save_model()  # space again: the same folder loads
    model, _ = load_model(str(stopped_run), device="cpu")
    saved = dict(model.named_parameters())
    assert trainer.model is not None
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(saved[name], parameter.detach()), name


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "vift_trainable_weights.safetensors"])
def test_a_saved_lora_run_with_a_cut_file_is_refused_by_name(
    damaged: str, checkpoint_dir: Any, toy: ToyData, tmp_path: Path
) -> None:
    from vift_plugin.loading import load_vift

    saved = tmp_path / "saved"
    trainer_for(checkpoint_dir("qwen2_vl"), toy, tmp_path / "run", "lora").save_model(str(saved))
    load_vift(saved)  # whole: loads
    file = saved / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size - 16])
    with pytest.raises(
        ValueError, match=rf"saved does not hold a whole saved model \({re.escape(damaged)} is truncated"
    ):
        load_vift(saved)
