"""ViFT training end to end on tiny CPU checkpoints: the two stages learn, exactly the right weights
move, per-role learning rates, LoRA placement, save -> reload -> fused generation, exact resumption,
per-modality logging, QLoRA and the ``vift train`` command line."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, TrainerCallback, set_seed

from tests.conftest import conversation, encode
from tests.training.conftest import ToyData
from vift_plugin.cli import main
from vift_plugin.config import FUSION_CONFIG_NAME
from vift_plugin.data.collator import ViFTDataCollator
from vift_plugin.fusion import fusion_config
from vift_plugin.layers import find_decoder_layers, unwrap_model
from vift_plugin.loading import TRAINABLE_WEIGHTS_NAME
from vift_plugin.training import (
    DataArguments,
    ModelArguments,
    ViFTTrainer,
    ViFTTrainingArguments,
    load_model_and_processor,
    load_vift,
    parameter_role,
    prepare_model,
)
from vift_plugin.training.run import build_dataset, load_config, parse_stage, plan_stages

BASE_ARGS: dict[str, Any] = dict(
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    dataloader_num_workers=0,
    seed=0,
)
# ViFT's stage 1 (captions only, just the connector trains) and stage 2 (captions + text, LoRA on the
# language model, connector in full), and a full fine-tune of everything.
STAGE_ARGS: dict[str, dict[str, Any]] = {
    "stage1": dict(freeze_vision=True, freeze_language=True, per_device_train_batch_size=12, max_steps=10),
    "stage2": dict(freeze_vision=True, use_lora=True, per_device_train_batch_size=4, max_steps=15),
    "full": dict(per_device_train_batch_size=4, max_steps=15, learning_rate=1e-3),
}
RUNS = [(f, s) for f in ("qwen2_vl", "llava", "idefics3", "gemma3") for s in ("stage1", "stage2")]
RUNS.append(("qwen2_vl", "full"))


# ----------------------------------------------------------------------------------------------- helpers


def make_args(out: Path, toy: ToyData, **overrides: Any) -> ViFTTrainingArguments:
    return ViFTTrainingArguments(output_dir=str(out), image_root=str(toy.root), **{**BASE_ARGS, **overrides})


def make_trainer(
    checkpoint: Path,
    toy: ToyData,
    args: ViFTTrainingArguments,
    *,
    texts: bool = True,
    model_args: ModelArguments | None = None,
    callbacks: list[Any] | None = None,
) -> ViFTTrainer:
    """The trainer ``vift train`` builds: model, mixed dataset, collator (LoRA init seeded)."""
    set_seed(args.seed)
    model_args = model_args or ModelArguments(model_name_or_path=str(checkpoint))
    model, processor = load_model_and_processor(model_args, args)
    data_args = DataArguments(caption_files=[str(toy.captions)], text_files=[str(toy.texts)] if texts else None)
    dataset = build_dataset(data_args, processor, args)
    return ViFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ViFTDataCollator(processor, image_root=toy.root),
        processing_class=processor,
        callbacks=callbacks,
    )


def model_type(model: Any) -> str:
    return str(unwrap_model(model).config.model_type)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {name: not torch.equal(before[name], p.detach()) for name, p in model.named_parameters()}


def dataset_loss(trainer: ViFTTrainer) -> float:
    """Mean loss over the training records, one record at a time, in eval mode (no LoRA dropout)."""
    model, dataset, collator = trainer.model, trainer.train_dataset, trainer.data_collator
    assert model is not None and dataset is not None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [float(model(**collator([dataset[i]])).loss) for i in range(len(dataset))]
    model.train(was_training)
    return sum(losses) / len(losses)


def train_losses(trainer: ViFTTrainer) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


class RecordingCollator:
    """Wraps a collator and records the ``id`` of every row it collates, batch by batch, in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self.batches.append([str(feature["id"]) for feature in features])
        return self.inner(features)  # type: ignore[no-any-return]

    def consumed(self, micro_batches: int) -> list[list[str]]:
        """The batches that were trained on. ``accelerate`` collates one batch ahead of the loop, so
        a stopped run has collated one more batch than it used."""
        assert len(self.batches) >= micro_batches
        return self.batches[:micro_batches]


def flat(batches: list[list[str]]) -> list[str]:
    return [row for batch in batches for row in batch]


def image_inputs(processor: Any) -> Any:
    return encode(processor, [conversation("Describe the image.", 56, 56, "green")])


# ------------------------------------------------------------------------- 1 + 2: stages learn the right weights


@dataclass
class TrainedRun:
    family: str
    stage: str
    trainer: ViFTTrainer
    before: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float


@pytest.fixture(scope="module", params=RUNS, ids=[f"{f}-{s}" for f, s in RUNS])
def trained(
    request: pytest.FixtureRequest, checkpoint_dir: Any, toy: ToyData, tmp_path_factory: pytest.TempPathFactory
) -> TrainedRun:
    family, stage = request.param
    args = make_args(tmp_path_factory.mktemp(f"{family}-{stage}"), toy, **STAGE_ARGS[stage])
    trainer = make_trainer(checkpoint_dir(family), toy, args, texts=stage != "stage1")
    assert trainer.model is not None
    before = snapshot(trainer.model)
    loss_before = dataset_loss(trainer)
    trainer.train()
    return TrainedRun(family, stage, trainer, before, loss_before, dataset_loss(trainer))


@pytest.mark.slow
def test_stage_reduces_the_loss(trained: TrainedRun) -> None:
    losses = [entry["loss"] for entry in train_losses(trained.trainer)]
    assert len(losses) == trained.trainer.args.max_steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # stage 1 only moves the connector of a random, frozen model: a small but certain gain
    margin = 0.005 if trained.stage == "stage1" else 0.05
    assert last < first - margin, (trained.family, trained.stage, losses)
    assert trained.loss_after < trained.loss_before - 2 * margin, (trained.loss_before, trained.loss_after)


@pytest.mark.slow
def test_exactly_the_trainable_parameters_change(trained: TrainedRun) -> None:
    model = trained.trainer.model
    assert model is not None
    kind = model_type(model)
    moved = changed(model, trained.before)
    roles = {name: parameter_role(name, kind) for name in moved}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name in moved if "lora_" in name}

    if trained.stage == "stage1":
        assert not lora
        assert trainable == {name for name, role in roles.items() if role == "connector"}
    elif trained.stage == "stage2":
        assert lora and all(roles[name] == "language" for name in lora)
        assert trainable == lora | {name for name, role in roles.items() if role == "connector"}
        # the base weights under the adapters are frozen
        assert any(".base_layer." in name for name in moved)
    else:
        assert trainable == set(roles)  # a full fine-tune: everything trains
    assert sorted(name for name in trainable if not moved[name]) == []
    assert sorted(name for name in moved if moved[name] and name not in trainable) == []
    per_role = {role: any(moved[n] for n in moved if roles[n] == role) for role in ("vision", "connector", "language")}
    expected = {
        "stage1": {"vision": False, "connector": True, "language": False},
        "stage2": {"vision": False, "connector": True, "language": True},
        "full": {"vision": True, "connector": True, "language": True},
    }[trained.stage]
    assert per_role == expected


# ---------------------------------------------------------------------------------- 3: per-role learning rates


def test_optimizer_has_one_learning_rate_per_role(checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> None:
    rates = {"vision": 1e-5, "connector": 2e-6, "language": 3e-5}
    args = make_args(
        tmp_path,
        toy,
        vision_lr=rates["vision"],
        connector_lr=rates["connector"],
        language_lr=rates["language"],
        weight_decay=0.1,
        max_steps=1,
    )
    trainer = make_trainer(checkpoint_dir("qwen2_vl"), toy, args)
    optimizer = trainer.create_optimizer()
    model = trainer.model
    assert model is not None
    kind = model_type(model)
    names = {id(p): name for name, p in model.named_parameters()}
    decay = set(trainer.get_decay_parameter_names(model))
    seen: list[int] = []
    for group in optimizer.param_groups:
        assert group["lr"] == rates[group["role"]], group["role"]
        assert {parameter_role(names[id(p)], kind) for p in group["params"]} == {group["role"]}
        decayed = {names[id(p)] in decay for p in group["params"]}
        assert decayed == {group["weight_decay"] > 0}
        seen += [id(p) for p in group["params"]]
    assert sorted({g["role"] for g in optimizer.param_groups}) == ["connector", "language", "vision"]
    assert len(seen) == len(set(seen)) == sum(1 for p in model.parameters() if p.requires_grad)
    # a constant schedule keeps each group's own rate through training
    trainer.train()
    assert {g["role"]: g["lr"] for g in trainer.optimizer.param_groups} == rates
    # and the logs carry each role's rate beside transformers' learning_rate (the first group's: vision)
    (logged,) = train_losses(trainer)
    assert logged["learning_rate"] == rates["vision"]
    assert {k: v for k, v in logged.items() if k.startswith("learning_rate/")} == {
        f"learning_rate/{role}": rate for role, rate in rates.items()
    }
    assert not [k for k in logged if k.startswith("lr_")]


def test_logged_role_rates_follow_the_schedule_like_learning_rate(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path
) -> None:
    """Under a decaying schedule each logged role rate is that step's rate, as transformers' learning_rate is
    (read before the scheduler moves on): the first group's role equals learning_rate at every step."""
    rates = {"vision": 4e-3, "connector": 1e-3, "language": 2e-3}
    args = make_args(
        tmp_path, toy, **{f"{role}_lr": rate for role, rate in rates.items()}, lr_scheduler_type="linear", max_steps=3
    )
    trainer = make_trainer(checkpoint_dir("qwen2_vl"), toy, args, texts=False)
    trainer.train()
    logged = train_losses(trainer)
    assert len(logged) == 3
    for step, entry in enumerate(logged):
        factor = 1 - step / 3  # linear decay from the full rate, no warm-up
        assert entry["learning_rate"] == pytest.approx(rates["vision"] * factor)
        for role, rate in rates.items():
            assert entry[f"learning_rate/{role}"] == pytest.approx(rate * factor), (step, role)


def test_logged_role_rates_match_either_way_transformers_reads_learning_rate() -> None:
    """Releases that log learning_rate after the scheduler's step (LLaVA pins 4.3x) get the current rates."""
    from vift_plugin.training.roles import logged_learning_rates, track_step_learning_rates

    weights = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    groups = [
        {"params": [weights[0]], "lr": 1.0, "role": "vision"},
        {"params": [weights[1]], "lr": 2.0, "role": "language"},
    ]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    track_step_learning_rates(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    assert logged_learning_rates(optimizer, 1.0) == {"learning_rate/vision": 1.0, "learning_rate/language": 2.0}
    optimizer.step()  # records the step's rates (1, 2), then the scheduler halves them
    scheduler.step()
    taken = {"learning_rate/vision": 1.0, "learning_rate/language": 2.0}
    assert logged_learning_rates(optimizer, 1.0) == taken  # transformers 5: the rate before the scheduler step
    assert logged_learning_rates(optimizer, 0.5) == {"learning_rate/vision": 0.5, "learning_rate/language": 1.0}
    assert logged_learning_rates(SimpleWrapper(optimizer), 1.0) == taken  # accelerate's AcceleratedOptimizer


@dataclass
class SimpleWrapper:
    """Like accelerate's ``AcceleratedOptimizer``: the torch optimizer as ``.optimizer``."""

    optimizer: Any

    @property
    def param_groups(self) -> Any:
        return self.optimizer.param_groups


def test_rate_of_a_role_without_trainable_parameters_is_warned_about(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that arrives with its vision encoder frozen makes vision_lr a no-op: warn, naming rate and role.

    A role frozen by the run's own freeze_<role> is expected (recipes set the rates once for two
    stages) and only logged at INFO.
    """
    import logging

    args = make_args(tmp_path, toy, vision_lr=1e-5, connector_lr=2e-6, max_steps=1)
    trainer = make_trainer(checkpoint_dir("qwen2_vl"), toy, args)
    assert trainer.model is not None
    unwrap_model(trainer.model).model.visual.blocks.requires_grad_(False)
    unwrap_model(trainer.model).model.visual.patch_embed.requires_grad_(False)
    with caplog.at_level(logging.INFO, logger="vift_plugin.training.trainer"):
        trainer.create_optimizer()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "vision_lr=1e-05 is set but the vision role has no trainable parameter (frozen); the rate does nothing."
    ]
    assert {g["role"] for g in trainer.optimizer.param_groups} == {"connector", "language"}

    caplog.clear()
    args = make_args(tmp_path, toy, vision_lr=1e-5, freeze_vision=True, max_steps=1)
    with caplog.at_level(logging.INFO, logger="vift_plugin.training.trainer"):
        make_trainer(checkpoint_dir("qwen2_vl"), toy, args).create_optimizer()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (info,) = [r.getMessage() for r in caplog.records if "vision_lr=1e-05 is set" in r.getMessage()]
    assert info.endswith("the rate does nothing. freeze_vision is set.")


def test_frozen_role_has_no_group_and_rates_default_to_learning_rate(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path
) -> None:
    args = make_args(tmp_path, toy, freeze_vision=True, use_lora=True, vision_lr=1e-5, connector_lr=2e-6)
    trainer = make_trainer(checkpoint_dir("llava"), toy, args)
    optimizer = trainer.create_optimizer()
    assert {(g["role"], g["lr"]) for g in optimizer.param_groups} == {("connector", 2e-6), ("language", 1e-2)}
    model = trainer.model
    assert model is not None
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in in_groups) == parameter.requires_grad, name
        if id(parameter) in in_groups and parameter_role(name, model_type(model)) == "language":
            assert "lora_" in name


# ------------------------------------------------------------------------------------------ 4: LoRA placement


def fresh_model(checkpoint: Path) -> Any:
    return AutoModelForImageTextToText.from_pretrained(checkpoint)


def decoder_linears(model: nn.Module) -> dict[str, int]:
    """``{name: layer index}`` of the language model's linear layers inside its decoder layers."""
    layers = find_decoder_layers(model)
    index = {id(layer): i for i, layer in enumerate(layers)}
    prefixes = {name: index[id(m)] for name, m in model.named_modules() if id(m) in index}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            for prefix, i in prefixes.items():
                if name.startswith(prefix + "."):
                    found[name] = i
    return found


def lora_modules(model: nn.Module) -> set[str]:
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    names = {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    assert all(name.startswith(prefix) for name in names)
    return {name[len(prefix) :] for name in names}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
@pytest.mark.parametrize(
    ("lora_layers", "layers"), [("all", {0, 1, 2, 3}), ("intermediate", {1, 2}), ("0-0", {0}), ("2-9", {2, 3})]
)
def test_lora_lands_on_the_chosen_language_layers(
    family: str, lora_layers: str, layers: set[int], checkpoint_dir: Any, tmp_path: Path
) -> None:
    model = fresh_model(checkpoint_dir(family))
    kind = model.config.model_type
    linears = decoder_linears(model)
    assert len(find_decoder_layers(model)) == 4 and linears
    args = ViFTTrainingArguments(output_dir=str(tmp_path), use_lora=True, lora_layers=lora_layers, use_cpu=True)
    peft_model = prepare_model(model, args)
    targets = lora_modules(peft_model)
    assert targets == {name for name, i in linears.items() if i in layers}
    assert all(parameter_role(name, kind) == "language" for name in targets)
    assert not any(name.endswith("lm_head") for name in targets)
    for name, parameter in peft_model.named_parameters():
        assert parameter.requires_grad == ("lora_" in name or parameter_role(name, kind) in ("vision", "connector"))


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_lora_on_vision_too(family: str, checkpoint_dir: Any, tmp_path: Path) -> None:
    model = fresh_model(checkpoint_dir(family))
    kind = model.config.model_type
    vision = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and parameter_role(n, kind) == "vision"}
    language = set(decoder_linears(model))
    assert vision
    args = ViFTTrainingArguments(output_dir=str(tmp_path), use_lora=True, lora_target="language,vision", use_cpu=True)
    peft_model = prepare_model(model, args)
    assert lora_modules(peft_model) == vision | language
    for name, parameter in peft_model.named_parameters():
        role = parameter_role(name, kind)
        assert parameter.requires_grad == ("lora_" in name or role == "connector"), name


def test_bad_lora_settings_raise(checkpoint_dir: Any, tmp_path: Path) -> None:
    out = str(tmp_path)
    for bad in ("middle", "3-1", "1-", "a-b", ""):
        with pytest.raises(ValueError, match="lora_layers"):
            ViFTTrainingArguments(output_dir=out, use_lora=True, lora_layers=bad, use_cpu=True)
    with pytest.raises(ValueError, match="audio"):
        ViFTTrainingArguments(output_dir=out, use_lora=True, lora_target="language,audio", use_cpu=True)
    args = ViFTTrainingArguments(output_dir=out, use_lora=True, lora_layers="7-9", use_cpu=True)
    with pytest.raises(ValueError, match="selects no layer"):
        prepare_model(fresh_model(checkpoint_dir("qwen2_vl")), args)


# ------------------------------------------------------------------------- 5: save -> reload -> fused generate


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_save_reload_and_fused_generate(family: str, checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> None:
    args = make_args(
        tmp_path / "run",
        toy,
        freeze_vision=True,
        use_lora=True,
        max_steps=4,
        fusion_config='{"alpha": 1.0, "beta": 0.15}',
    )
    trainer = make_trainer(checkpoint_dir(family), toy, args)
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))

    files = {p.name for p in out.iterdir()}
    expected = {"adapter_config.json", "adapter_model.safetensors", TRAINABLE_WEIGHTS_NAME, FUSION_CONFIG_NAME}
    expected |= {"tokenizer.json", "tokenizer_config.json", "processor_config.json"}
    assert expected <= files
    assert json.loads((out / FUSION_CONFIG_NAME).read_text())["beta"] == 0.15

    model = trainer.model
    assert model is not None
    kind = model_type(model)
    from safetensors.torch import load_file

    saved = load_file(out / TRAINABLE_WEIGHTS_NAME)
    connector = {
        n.removeprefix("base_model.model."): p
        for n, p in model.named_parameters()
        if p.requires_grad and "lora_" not in n
    }
    assert set(saved) == set(connector) and all(parameter_role(n, kind) == "connector" for n in saved)
    assert all(torch.equal(saved[n], connector[n].detach()) for n in saved)

    model.eval()
    processor = trainer.processing_class
    inputs = image_inputs(processor)
    with torch.no_grad():
        trained_logits = model(**inputs).logits
        merged = copy.deepcopy(model).merge_and_unload()
        merged_logits = merged(**inputs).logits
        base_logits = fresh_model(checkpoint_dir(family)).eval()(**inputs).logits
    torch.testing.assert_close(merged_logits, trained_logits, atol=1e-5, rtol=0)
    assert (trained_logits - base_logits).abs().max() > 1e-3  # training moved the outputs

    reloaded, reloaded_processor = load_vift(out)
    inputs2 = image_inputs(reloaded_processor)
    assert torch.equal(inputs2["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs2).logits, trained_logits, atol=1e-5, rtol=0)
    config = fusion_config(reloaded)
    assert config is not None and (config.alpha, config.beta) == (1.0, 0.15)

    greedy: dict[str, Any] = dict(
        max_new_tokens=3, do_sample=False, output_hidden_states=True, return_dict_in_generate=True
    )
    fused = reloaded.generate(**inputs2, **greedy)
    plain = reloaded.generate(**inputs2, **greedy, vift=False)
    reference = merged.generate(**inputs, **greedy)  # in-memory merged model, no fusion
    assert torch.equal(plain.sequences, reference.sequences)
    prefill_fused, prefill_plain = fused.hidden_states[0], plain.hidden_states[0]
    assert torch.equal(prefill_fused[0], prefill_plain[0])  # embeddings untouched
    assert any(not torch.allclose(a, b) for a, b in zip(prefill_fused, prefill_plain, strict=True))


# -------------------------------------------------------------------------------- 6: exact resumption


class StopAt(TrainerCallback):
    """Interrupts training at ``step``, after that step's checkpoint is saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@dataclass
class ResumedRuns:
    full: ViFTTrainer
    stopped: ViFTTrainer
    resumed: ViFTTrainer
    ids_full: list[str]
    ids_stopped: list[str]
    ids_resumed: list[str]
    checkpoint: Path
    at_resume: dict[str, torch.Tensor]


class SnapshotAtStart(TrainerCallback):
    """The model's parameters when training (re)starts, after a checkpoint has been loaded."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        self.weights = snapshot(model)
        return control


@pytest.fixture(scope="module")
def resumed_runs(checkpoint_dir: Any, toy: ToyData, tmp_path_factory: pytest.TempPathFactory) -> ResumedRuns:
    """Run A: 8 steps. Run B: the same, interrupted at step 4, then resumed from checkpoint-4.

    12 captions + 8 texts at 4 samples per optimizer step (batch 2, accumulation 2) make 3 image and
    2 text steps an epoch: the 8 steps cross an epoch boundary and the stop falls mid-epoch. LoRA
    dropout is on, so the RNG state must be restored too.
    """
    tmp = tmp_path_factory.mktemp("resume")
    run: dict[str, Any] = dict(
        freeze_vision=True,
        use_lora=True,
        max_steps=8,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="steps",
        save_steps=4,
        learning_rate=5e-3,
    )
    ckpt = checkpoint_dir("qwen2_vl")
    micro = run["gradient_accumulation_steps"]

    def recorded(trainer: ViFTTrainer) -> RecordingCollator:
        recorder = RecordingCollator(trainer.data_collator)
        trainer.data_collator = recorder
        return recorder

    full = make_trainer(ckpt, toy, make_args(tmp / "a", toy, **run))
    ids_full = recorded(full)
    full.train()
    stopped = make_trainer(ckpt, toy, make_args(tmp / "b", toy, **run), callbacks=[StopAt(4)])
    ids_stopped = recorded(stopped)
    stopped.train()
    stop_step = stopped.state.global_step
    checkpoint = tmp / "b" / "checkpoint-4"
    at_resume = SnapshotAtStart()
    resumed = make_trainer(ckpt, toy, make_args(tmp / "b", toy, **run), callbacks=[at_resume])
    ids_resumed = recorded(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert (full.state.global_step, stop_step, resumed.state.global_step) == (8, 4, 8)
    return ResumedRuns(
        full,
        stopped,
        resumed,
        flat(ids_full.consumed(8 * micro)),
        flat(ids_stopped.consumed(4 * micro)),
        flat(ids_resumed.consumed(4 * micro)),
        checkpoint,
        at_resume.weights,
    )


@pytest.mark.slow
def test_resumed_run_sees_exactly_the_unseen_samples(resumed_runs: ResumedRuns) -> None:
    runs = resumed_runs
    assert runs.checkpoint.is_dir() and (runs.checkpoint / "trainer_state.json").is_file()
    assert len(runs.ids_full) == 8 * 4 and len(runs.ids_stopped) == len(runs.ids_resumed) == 4 * 4
    assert runs.ids_stopped == runs.ids_full[: len(runs.ids_stopped)]
    assert runs.ids_resumed == runs.ids_full[len(runs.ids_stopped) :]
    assert runs.ids_stopped + runs.ids_resumed == runs.ids_full
    # every optimizer step (4 samples) is single-modality, and both modalities occur
    steps = [runs.ids_full[i : i + 4] for i in range(0, len(runs.ids_full), 4)]
    assert all(len({row[0] for row in step}) == 1 for step in steps), steps
    assert {step[0][0] for step in steps} == {"c", "t"}
    # the second epoch is a fresh permutation, not a replay of the first
    assert steps[5:8] != steps[0:3]


@pytest.mark.slow
def test_resumed_run_restores_the_adapters(resumed_runs: ResumedRuns) -> None:
    runs = resumed_runs
    assert runs.stopped.model is not None
    at_stop = dict(runs.stopped.model.named_parameters())
    lora = [name for name in runs.at_resume if "lora_" in name]
    assert lora
    for name in lora:
        assert torch.equal(runs.at_resume[name], at_stop[name].detach()), name
    # step 5 (a text step: the connector plays no part) sees the same adapters, optimizer state,
    # RNG and batch as run A's step 5
    by_step = {e["step"]: e["loss"] for e in train_losses(runs.full)}
    resumed = {e["step"]: e["loss"] for e in train_losses(runs.resumed)}  # steps 1-4 come from the checkpoint
    assert sorted(resumed) == sorted(by_step) == list(range(1, 9))
    assert [resumed[s] for s in range(1, 5)] == [by_step[s] for s in range(1, 5)]
    assert runs.ids_full[16][0] == "t"
    assert resumed[5] == by_step[5]


@pytest.mark.slow
def test_resumed_run_restores_every_trained_weight(resumed_runs: ResumedRuns) -> None:
    runs = resumed_runs
    assert runs.stopped.model is not None and runs.full.model is not None and runs.resumed.model is not None
    at_stop = dict(runs.stopped.model.named_parameters())
    for name, weight in runs.at_resume.items():
        torch.testing.assert_close(weight, at_stop[name].detach(), atol=0, rtol=0, msg=name)
    final = dict(runs.full.model.named_parameters())
    for name, parameter in runs.resumed.model.named_parameters():
        torch.testing.assert_close(parameter, final[name], atol=1e-6, rtol=0, msg=name)


# ----------------------------------------------------------------------------- 7: per-modality logging


@pytest.mark.parametrize("accumulation", [1, 2])
def test_every_log_has_the_loss_of_its_single_modality(
    accumulation: int, checkpoint_dir: Any, toy: ToyData, tmp_path: Path
) -> None:
    args = make_args(
        tmp_path,
        toy,
        freeze_vision=True,
        use_lora=True,
        max_steps=6,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=4 // accumulation,
    )
    trainer = make_trainer(checkpoint_dir("qwen2_vl"), toy, args)
    recorder = trainer.data_collator = RecordingCollator(trainer.data_collator)
    trainer.train()
    logs = train_losses(trainer)
    batches = recorder.consumed(6 * accumulation)
    assert len(logs) == 6
    for step, entry in enumerate(logs):
        rows = flat(batches[step * accumulation : (step + 1) * accumulation])
        modality = {"c": "image", "t": "text"}[rows[0][0]]
        assert {row[0] for row in rows} == {rows[0][0]}
        assert [k for k in ("loss_image", "loss_text") if k in entry] == [f"loss_{modality}"]
        assert entry[f"loss_{modality}"] == pytest.approx(entry["loss"], abs=1e-4)
    assert {"loss_image", "loss_text"} <= {k for entry in logs for k in entry}


def test_modality_losses_average_over_their_steps(checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> None:
    """Logging every 5 steps reports the mean per-step loss of each modality over the window."""
    common: dict[str, Any] = dict(freeze_vision=True, use_lora=True, max_steps=10, per_device_train_batch_size=4)
    logs = {}
    for every in (1, 5):
        trainer = make_trainer(
            checkpoint_dir("llava"), toy, make_args(tmp_path / str(every), toy, logging_steps=every, **common)
        )
        trainer.train()
        logs[every] = train_losses(trainer)
    per_step, grouped = logs[1], logs[5]
    assert len(per_step) == 10 and len(grouped) == 2
    for window, entry in enumerate(grouped):
        steps = per_step[window * 5 : (window + 1) * 5]
        assert entry["loss"] == pytest.approx(sum(s["loss"] for s in steps) / 5, abs=1e-4)
        for key in ("loss_image", "loss_text"):
            values = [s[key] for s in steps if key in s]
            if values:
                assert entry[key] == pytest.approx(sum(values) / len(values), abs=1e-4), (window, key)
            else:
                assert key not in entry
    assert any("loss_image" in e and "loss_text" in e for e in grouped)


# ------------------------------------------------------------------------------------------- 8: QLoRA


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_quantizes_only_the_language_model(bits: int, checkpoint_dir: Any, toy: ToyData, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    args = make_args(tmp_path, toy, freeze_vision=True, use_lora=True, gradient_checkpointing=True, max_steps=3)
    model_args = ModelArguments(model_name_or_path=str(checkpoint_dir("qwen2_vl")), load_in_bits=bits)
    trainer = make_trainer(checkpoint_dir("qwen2_vl"), toy, args, model_args=model_args)
    model = trainer.model
    assert model is not None
    kind = model_type(model)
    quantized = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    decoder = decoder_linears(fresh_model(checkpoint_dir("qwen2_vl")))  # names in the unquantized model
    assert decoder
    for name in decoder:
        module = unwrap_model(model).get_submodule(name)
        assert isinstance(module.base_layer, quantized), name
        assert not module.base_layer.weight.is_floating_point()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and parameter_role(name, kind) != "language":
            assert not isinstance(module, quantized), name
    for name, parameter in model.named_parameters():
        if parameter_role(name, kind) in ("vision", "connector") or name.endswith("lm_head.weight"):
            assert parameter.is_floating_point(), name
    before = snapshot(model)
    trainer.train()
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in train_losses(trainer))
    moved = changed(model, before)
    lora = [name for name in moved if "lora_" in name]
    assert lora and all(moved[name] for name in lora)
    for name, did in moved.items():
        role = parameter_role(name, kind)
        if role == "connector":
            assert did, name
        elif "lora_" not in name:
            assert not did, name  # vision frozen, quantized base weights untouched


@pytest.mark.parametrize(
    ("lora", "message"),
    [(dict(), "trains through LoRA adapters"), (dict(use_lora=True, lora_target="vision"), "is quantized and cannot")],
    ids=["no-lora", "lora-on-vision"],
)
def test_quantized_language_model_cannot_train_in_full(
    lora: dict[str, Any], message: str, checkpoint_dir: Any, tmp_path: Path
) -> None:
    ckpt = checkpoint_dir("qwen2_vl")
    args = ViFTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], freeze_vision=True, **lora)
    with pytest.raises(ValueError, match=message):
        load_model_and_processor(ModelArguments(str(ckpt), load_in_bits=4), args)


# --------------------------------------------------------------------------------------------- 9: the CLI


def write_config(path: Path, checkpoint: Path, toy: ToyData, **common: Any) -> Path:
    config = {
        "model_name_or_path": str(checkpoint),
        "output_dir": str(path.parent / "run"),
        "image_root": str(toy.root),
        "per_device_train_batch_size": 4,
        "learning_rate": 0.003,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        **common,
        "stages": [
            {
                "name": "stage1",
                "caption_files": [str(toy.captions)],
                "freeze_vision": True,
                "freeze_language": True,
                "connector_lr": 0.01,
                "max_steps": 3,
            },
            {
                "name": "stage2",
                "caption_files": [str(toy.captions)],
                "text_files": [str(toy.texts)],
                "use_lora": True,
                "freeze_vision": True,
                "max_steps": 4,
            },
        ],
    }
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_trains_two_stages(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_dir("qwen2_vl")
    cfg = write_config(tmp_path / "cfg.yaml", ckpt, toy)
    run = tmp_path / "run"
    stage1, stage2 = run / "stage1", run / "stage2"

    assert main(["train", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"== stage stage1: {ckpt} -> {stage1}" in out
    assert f"== stage stage2: {stage1} -> {stage2}" in out
    assert not (stage1 / "trainer_state.json").exists() and not (stage2 / "trainer_state.json").exists()

    assert main(["train", str(cfg), "--max_steps", "2"]) == 0  # flags override every stage
    for folder in (stage1, stage2):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == 2
        assert [e for e in state["log_history"] if "loss" in e]
        assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / FUSION_CONFIG_NAME).is_file()
    assert (stage1 / "model.safetensors").is_file() and not (stage1 / "adapter_config.json").exists()
    adapter = json.loads((stage2 / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(stage1)
    assert (stage2 / TRAINABLE_WEIGHTS_NAME).is_file()

    # stage 2 started from stage 1's connector, not the original checkpoint's
    from safetensors.torch import load_file

    base = load_file(ckpt / "model.safetensors")
    after1 = load_file(stage1 / "model.safetensors")
    moved = sorted(name for name in base if not torch.equal(base[name], after1[name]))
    assert moved and all(parameter_role(name, "qwen2_vl") == "connector" for name in moved)


def test_plan_stages_and_config_errors(
    checkpoint_dir: Any, toy: ToyData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_dir("qwen2_vl")
    config = load_config(write_config(tmp_path / "cfg.yaml", ckpt, toy))
    run = tmp_path / "run"

    both = plan_stages(config, [])
    assert [name for name, _ in both] == ["stage1", "stage2"]
    for only in ("2", "stage2"):
        planned = plan_stages(config, ["--max_steps", "1"], only)
        assert [name for name, _ in planned] == ["stage2"]
        model_args, data_args, training_args = parse_stage(planned[0][1])
        assert model_args.model_name_or_path == str(run / "stage1")
        assert training_args.output_dir == str(run / "stage2")
        assert training_args.use_lora and training_args.freeze_vision and training_args.max_steps == 1
        assert data_args.text_files == [str(toy.texts)]
    with pytest.raises(ValueError, match="no stage '3'"):
        plan_stages(config, [], "3")

    bad = write_config(tmp_path / "bad.yaml", ckpt, toy, bogus_option=0.1)
    with pytest.raises(ValueError, match=re.escape("unknown options ['--bogus_option', '0.1']")):
        for _, argv in plan_stages(load_config(bad), []):
            parse_stage(argv)
    assert main(["train", str(bad)]) == 2
    assert "unknown options ['--bogus_option', '0.1']" in capsys.readouterr().err
    assert not (run / "stage1").exists()


@pytest.mark.parametrize(("typo", "field"), [("learning_rat", "learning_rate"), ("max_step", "max_steps")])
def test_yaml_key_must_name_an_option_exactly(
    typo: str, field: str, checkpoint_dir: Any, toy: ToyData, tmp_path: Path
) -> None:
    config = load_config(write_config(tmp_path / "typo.yaml", checkpoint_dir("qwen2_vl"), toy, **{typo: 7}))
    (_, argv), _ = plan_stages(config, [])
    with pytest.raises(ValueError, match=f"unknown options.*{typo}"):
        parse_stage(argv)  # instead, the typo silently sets `field` to 7
