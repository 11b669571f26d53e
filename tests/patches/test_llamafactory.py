"""``vift_plugin.integrations.llamafactory`` against stand-ins of LLaMA-Factory 0.9's trainer modules.

The stand-ins keep upstream's module names, class names and signatures: ``CustomSeq2SeqTrainer``
(``Seq2SeqTrainer``) and ``CustomTrainer`` (``Trainer``) taking ``finetuning_args`` and ``processor``,
``_get_train_sampler(self, *args, **kwargs)`` returning a ``SequentialSampler`` under
``disable_shuffling``, and ``create_optimizer(self)`` asking
``trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)`` first; and
``callbacks.LogCallback``, which writes ``trainer_log.jsonl`` from a fixed set of keys of the newest log
through ``self._write_log`` on a thread pool.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate.data_loader import get_sampler
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments

from tests.patches.conftest import (
    assert_role_groups,
    assert_single_modality_steps,
    assert_trained_grouped,
    lr_by_name,
    recording_collate,
    tiny_run_arguments,
    write_alpaca,
    write_caption_table,
)
from vift_plugin.data.sampler import ModalityGroupedSampler
from vift_plugin.testing import build_tiny_model

ENV = ("VIFT_VISION_LR", "VIFT_CONNECTOR_LR", "VIFT_LANGUAGE_LR", "VIFT_GROUP_BY_MODALITY", "VIFT_REMAINDER")

# ----------------------------------------------------------------------------------------------- stand-ins


class LogCallback(TrainerCallback):
    """Upstream's ``trainer_log.jsonl`` writer: a fixed set of keys (``learning_rate`` as ``lr``) per log."""

    def __init__(self) -> None:
        self.thread_pool: ThreadPoolExecutor | None = None

    def _write_log(self, output_dir: str, logs: dict[str, Any]) -> None:
        with open(os.path.join(output_dir, "trainer_log.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(logs) + "\n")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
            self.thread_pool = ThreadPoolExecutor(max_workers=1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.thread_pool is not None:
            self.thread_pool.shutdown(wait=True)
            self.thread_pool = None

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        last = state.log_history[-1]
        logs = dict(
            current_steps=state.global_step,
            total_steps=state.max_steps,
            loss=last.get("loss"),
            lr=last.get("learning_rate"),
            epoch=last.get("epoch"),
        )
        logs = {k: v for k, v in logs.items() if v is not None}
        if self.thread_pool is not None:
            self.thread_pool.submit(self._write_log, args.output_dir, logs)


def build_llamafactory(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Register stand-in ``llamafactory.train.{trainer_utils, sft.trainer, pt.trainer, callbacks}`` modules."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("llamafactory", "llamafactory.train", "llamafactory.train.sft", "llamafactory.train.pt"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    utils = types.ModuleType("llamafactory.train.trainer_utils")

    def create_custom_optimizer(model: Any, training_args: Any, finetuning_args: Any) -> Any:
        if finetuning_args.use_galore:
            return torch.optim.SGD(model.parameters(), lr=0.123)
        return None

    utils.create_custom_optimizer = create_custom_optimizer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, utils.__name__, utils)

    def make(base: type, name: str) -> type:
        def __init__(self: Any, finetuning_args: Any, processor: Any, **kwargs: Any) -> None:
            base.__init__(self, **kwargs)
            self.finetuning_args = finetuning_args

        def create_optimizer(self: Any) -> Any:
            if self.optimizer is None:
                self.optimizer = utils.create_custom_optimizer(self.model, self.args, self.finetuning_args)
            return base.create_optimizer(self)

        def _get_train_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.finetuning_args.disable_shuffling:
                return SequentialSampler(self.train_dataset)
            return base._get_train_sampler(self, *args, **kwargs)

        namespace = {
            "__init__": __init__,
            "create_optimizer": create_optimizer,
            "_get_train_sampler": _get_train_sampler,
        }
        return type(name, (base,), namespace)

    sft = make(Seq2SeqTrainer, "CustomSeq2SeqTrainer")
    pt = make(Trainer, "CustomTrainer")
    for module_name, cls in (("llamafactory.train.sft.trainer", sft), ("llamafactory.train.pt.trainer", pt)):
        module = types.ModuleType(module_name)
        setattr(module, cls.__name__, cls)
        cls.__module__ = module_name
        monkeypatch.setitem(sys.modules, module_name, module)
    callbacks = types.ModuleType("llamafactory.train.callbacks")
    callback = type("LogCallback", (LogCallback,), {"__module__": callbacks.__name__})
    callbacks.LogCallback = callback  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, callbacks.__name__, callbacks)
    return SimpleNamespace(sft=sft, pt=pt, utils=utils, callback=callback)


@pytest.fixture
def lf(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    return build_llamafactory(monkeypatch)


def finetuning(**overrides: Any) -> SimpleNamespace:
    return SimpleNamespace(**{"disable_shuffling": False, "use_galore": False, **overrides})


def tokenized_dataset(images: int, videos: int, texts: int, seed: int = 0) -> Dataset:
    """What LLaMA-Factory's supervised processor keeps: input_ids, labels, images, videos, audios.

    Text rows have ``None`` or ``[]`` media (both occur upstream); the rows are then reordered through an
    index mapping, as ``train_test_split`` leaves them.
    """
    rng = random.Random(seed)
    rows = []
    for kind, count in (("image", images), ("video", videos), ("text", texts)):
        for i in range(count):
            length = rng.randint(3, 60)
            rows.append(
                {
                    "input_ids": list(range(length)),
                    "labels": list(range(length)),
                    "images": [f"{i}.png"] if kind == "image" else rng.choice([None, []]),
                    "videos": [f"{i}.mp4"] if kind == "video" else None,
                    "audios": None,
                }
            )
    dataset = Dataset.from_list(rows)
    order = list(range(len(rows)))
    rng.shuffle(order)
    return dataset.select(order)


def modality_of(dataset: Dataset) -> Any:
    images, videos = dataset["images"], dataset["videos"]
    return lambda i: "image" if (images[i] or videos[i]) else "text"


def fake_trainer(dataset: Any, **args: Any) -> SimpleNamespace:
    defaults = dict(
        train_batch_size=2, per_device_train_batch_size=2, world_size=1, gradient_accumulation_steps=1, seed=0
    )
    defaults.update(args)
    defaults.setdefault("data_seed", None)
    return SimpleNamespace(args=SimpleNamespace(**defaults), train_dataset=dataset, finetuning_args=finetuning())


# ----------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("target", ["sft", "pt"])
def test_single_modality_steps_on_every_rank(vift_llamafactory: ModuleType, lf: SimpleNamespace, target: str) -> None:
    dataset = tokenized_dataset(images=21, videos=6, texts=19)
    cls = getattr(lf, target)
    with vift_llamafactory.apply():
        sampler = cls._get_train_sampler(fake_trainer(dataset, world_size=2, gradient_accumulation_steps=2, seed=5))
    assert isinstance(sampler, ModalityGroupedSampler)
    kinds = assert_single_modality_steps(sampler, modality_of(dataset), batch_size=2, world_size=2, accumulation=2)
    assert sorted(kinds) == ["image"] * 3 + ["text"] * 2  # 27 visual -> 24, 19 text -> 16 (steps of 8)
    assert sampler.lengths is not None
    assert sampler.lengths.tolist() == [len(ids) for ids in dataset["input_ids"]]


def test_seeds_and_global_random_state(vift_llamafactory: ModuleType, lf: SimpleNamespace) -> None:
    dataset = tokenized_dataset(images=30, videos=0, texts=30)
    state = torch.get_rng_state()
    with vift_llamafactory.apply():
        orders = [list(lf.sft._get_train_sampler(fake_trainer(dataset, seed=s))) for s in (1, 1, 2)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert torch.equal(torch.get_rng_state(), state)


def test_columns_dropped_by_transformers_fall_back_to_the_train_dataset(
    vift_llamafactory: ModuleType, lf: SimpleNamespace
) -> None:
    dataset = tokenized_dataset(images=12, videos=0, texts=12)
    stripped = dataset.remove_columns(["images", "videos", "audios"])
    with vift_llamafactory.apply():
        sampler = lf.sft._get_train_sampler(fake_trainer(dataset), stripped)
    assert_single_modality_steps(sampler, modality_of(dataset), batch_size=2, world_size=1, accumulation=1)
    assert set(sampler.groups) == {"image", "text"}


def test_plain_python_datasets_and_text_only_data(vift_llamafactory: ModuleType, lf: SimpleNamespace) -> None:
    rows = [{"input_ids": [1] * (i + 1), "images": ["x.png"] if i % 3 == 0 else []} for i in range(12)]
    with vift_llamafactory.apply():
        sampler = lf.pt._get_train_sampler(fake_trainer(rows))
        assert_single_modality_steps(
            sampler, lambda i: "image" if rows[i]["images"] else "text", batch_size=2, world_size=1, accumulation=1
        )
        text_only = Dataset.from_dict({"input_ids": [[1, 2], [1], [3, 4, 5], [6]]})
        assert set(lf.pt._get_train_sampler(fake_trainer(text_only)).groups) == {"text"}


def test_disable_shuffling_and_grouping_off_keep_upstream_samplers(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, _ = build_tiny_model("qwen2_vl")
    dataset = tokenized_dataset(images=4, videos=0, texts=4)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=2)
    trainer = lf.pt(
        finetuning_args=finetuning(disable_shuffling=True),
        processor=None,
        model=model,
        args=args,
        train_dataset=dataset,
    )
    with vift_llamafactory.apply():
        assert isinstance(trainer._get_train_sampler(dataset), SequentialSampler)
        trainer.finetuning_args.disable_shuffling = False
        assert isinstance(trainer._get_train_sampler(dataset), ModalityGroupedSampler)
    monkeypatch.setenv("VIFT_GROUP_BY_MODALITY", "0")
    with vift_llamafactory.apply():
        assert not isinstance(trainer._get_train_sampler(dataset), ModalityGroupedSampler)


# ----------------------------------------------------------------------------------------------- optimizer


def sft_trainer(lf: SimpleNamespace, tmp_path: Path, model: Any, **finetuning_overrides: Any) -> Any:
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.05, use_cpu=True, report_to=[]
    )
    return lf.sft(finetuning_args=finetuning(**finetuning_overrides), processor=None, model=model, args=args)


def test_per_module_learning_rates_from_environment_on_qwen2_vl(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, _ = build_tiny_model("qwen2_vl")
    monkeypatch.setenv("VIFT_VISION_LR", "1e-6")
    monkeypatch.setenv("VIFT_CONNECTOR_LR", "2e-6")
    monkeypatch.setenv("VIFT_LANGUAGE_LR", "5e-6")
    trainer = sft_trainer(lf, tmp_path, model)
    with vift_llamafactory.apply():
        trainer.create_optimizer()
    rates = assert_role_groups(trainer, "qwen2_vl", {"vision": 1e-6, "connector": 2e-6, "language": 5e-6}, 0.05)
    assert len(rates) == sum(1 for _ in model.parameters())
    assert rates["model.visual.merger.mlp.0.weight"][:2] == (2e-6, 0.05)
    assert rates["model.visual.blocks.0.attn.qkv.weight"][0] == 1e-6
    assert rates["model.language_model.layers.0.self_attn.q_proj.weight"][0] == 5e-6


def test_arguments_override_environment_and_defaults_follow_learning_rate(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, _ = build_tiny_model("llava")
    monkeypatch.setenv("VIFT_CONNECTOR_LR", "2e-6")
    trainer = sft_trainer(lf, tmp_path, model)
    with vift_llamafactory.apply(connector_lr=3e-6) as handle:
        assert handle.config.connector_lr == 3e-6 and handle.config.vision_lr is None
        trainer.create_optimizer()
    rates = lr_by_name(trainer)
    assert rates["model.multi_modal_projector.linear_1.weight"][0] == 3e-6
    assert rates["model.vision_tower.embeddings.patch_embedding.weight"][0] == 1e-5
    assert rates["lm_head.weight"][0] == 1e-5


def test_rate_of_a_frozen_module_is_warned_about(
    vift_llamafactory: ModuleType,
    lf: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LLaMA-Factory freezes the vision tower and projector by default: their rates would do nothing."""
    model, _ = build_tiny_model("qwen2_vl")
    model.model.visual.requires_grad_(False)  # freeze_vision_tower (default), the merger too (projector)
    monkeypatch.setenv("VIFT_VISION_LR", "1e-05")
    trainer = sft_trainer(lf, tmp_path, model)
    with caplog.at_level(logging.WARNING, logger="vift_llamafactory"), vift_llamafactory.apply(connector_lr=2e-6):
        trainer.create_optimizer()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    vision, connector = sorted(warnings, key=lambda m: "connector" in m)
    assert "vision_lr=1e-05 is set but the vision role has no trainable parameter (frozen)" in vision
    assert "the rate does nothing" in vision and "freeze_vision_tower: false" in vision
    assert "connector_lr=2e-06 is set but the connector role" in connector
    assert "freeze_multi_modal_projector: false" in connector
    assert {group["role"] for group in trainer.optimizer.param_groups} == {"language"}


def test_no_warning_when_the_rates_are_unset_or_their_modules_train(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = build_tiny_model("qwen2_vl")
    model.model.visual.requires_grad_(False)
    with caplog.at_level(logging.WARNING, logger="vift_llamafactory"), vift_llamafactory.apply(language_lr=1e-4):
        sft_trainer(lf, tmp_path, model).create_optimizer()  # vision and connector frozen, but no rate set
    model.model.visual.requires_grad_(True)
    with caplog.at_level(logging.WARNING, logger="vift_llamafactory"), vift_llamafactory.apply(vision_lr=1e-6):
        sft_trainer(lf, tmp_path, model).create_optimizer()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_custom_optimizers_of_llamafactory_win(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, tmp_path: Path
) -> None:
    model, _ = build_tiny_model("qwen2_vl")
    trainer = sft_trainer(lf, tmp_path, model, use_galore=True)
    with vift_llamafactory.apply(vision_lr=1e-6):
        optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.123
    assert "role" not in optimizer.param_groups[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VIFT_VISION_LR", "fast"), ("VIFT_GROUP_BY_MODALITY", "maybe"), ("VIFT_REMAINDER", "keep")],
)
def test_bad_environment_values_are_errors(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable if variable != "VIFT_REMAINDER" else "remainder"):
        vift_llamafactory.apply()
    assert not vift_llamafactory.active_patches()


# ----------------------------------------------------------------------------------------------- patch mechanics


def test_remove_restores_both_trainers_exactly(vift_llamafactory: ModuleType, lf: SimpleNamespace) -> None:
    names = ("_get_train_sampler", "create_optimizer")
    originals = {(cls, name): cls.__dict__[name] for cls in (lf.sft, lf.pt) for name in names}
    on_log = lf.callback.__dict__.get("on_log")
    handle = vift_llamafactory.apply()
    assert handle.trainer_classes == [lf.sft, lf.pt]
    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is not original
    for cls in (lf.sft, lf.pt):  # log is inherited from transformers: replaced on the class, removed after
        assert getattr(cls.__dict__["log"], "_vift_patch", False)
    assert getattr(lf.callback.on_log, "_vift_patch", False)
    with pytest.raises(vift_llamafactory.ViFTPatchError, match="already patched"):
        vift_llamafactory.apply("pt")
    handle.remove()
    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is original
    assert "log" not in lf.sft.__dict__ and "log" not in lf.pt.__dict__
    assert lf.callback.__dict__.get("on_log") is on_log and not getattr(lf.callback.on_log, "_vift_patch", False)
    with vift_llamafactory.apply("sft"), vift_llamafactory.apply("pt"):  # one callback patch serves both
        assert getattr(lf.callback.on_log, "_vift_patch", False)
    assert not getattr(lf.callback.on_log, "_vift_patch", False)
    with vift_llamafactory.apply("sft"):
        assert lf.sft.__dict__["create_optimizer"] is not originals[(lf.sft, "create_optimizer")]
        assert lf.pt.__dict__["create_optimizer"] is originals[(lf.pt, "create_optimizer")]
    assert lf.sft.__dict__["create_optimizer"] is originals[(lf.sft, "create_optimizer")]


def test_symbol_checks(vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    error = vift_llamafactory.ViFTPatchError
    monkeypatch.setitem(sys.modules, "llamafactory.train.pt.trainer", None)
    with pytest.raises(error, match=r"cannot import module 'llamafactory\.train\.pt\.trainer'.*LLaMA-Factory 0\.9"):
        vift_llamafactory.apply()
    with vift_llamafactory.apply("sft"):  # the other trainer alone still works
        pass
    monkeypatch.setitem(
        sys.modules, "llamafactory.train.sft.trainer", types.ModuleType("llamafactory.train.sft.trainer")
    )
    with pytest.raises(error, match=r"has no class 'CustomSeq2SeqTrainer'.*LLaMA-Factory 0\.9"):
        vift_llamafactory.apply("sft")

    def two_arguments(model: Any, training_args: Any) -> None:
        return None

    monkeypatch.setattr(lf.utils, "create_custom_optimizer", two_arguments)
    with pytest.raises(error, match=r"create_custom_optimizer has an incompatible signature"):
        vift_llamafactory.apply(lf.pt)
    monkeypatch.delattr(lf.utils, "create_custom_optimizer")
    with pytest.raises(error, match="has no 'create_custom_optimizer'"):
        vift_llamafactory.apply(lf.pt)
    assert lf.pt.__dict__["create_optimizer"].__qualname__.endswith("create_optimizer")
    assert not getattr(lf.pt.__dict__["create_optimizer"], "_vift_patch", False)


def test_incompatible_method_signature(vift_llamafactory: ModuleType, lf: SimpleNamespace) -> None:
    def create_optimizer(self: Any, model: Any) -> None:
        return None

    odd = type("Odd", (Trainer,), {"create_optimizer": create_optimizer})
    with pytest.raises(vift_llamafactory.ViFTPatchError, match=r"Odd\.create_optimizer has an incompatible signature"):
        vift_llamafactory.apply(odd)


# ----------------------------------------------------------------------------------------------- data


def test_write_llamafactory_dataset(vift_llamafactory: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    counts = vift_llamafactory.write_llamafactory_dataset(
        out, "vift_mix", captions=[write_caption_table(tmp_path, 4)], texts=[write_alpaca(tmp_path, 2)]
    )
    assert counts == {"captions": 4, "texts": 2}
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["vift_mix"]["formatting"] == "sharegpt"
    assert info["vift_mix"]["columns"] == {"messages": "conversations", "images": "image"}
    records = json.loads((out / "vift_mix.json").read_text())
    images = [r for r in records if "image" in r]
    assert len(images) == 4 and all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in images)
    assert all(r["conversations"][0]["value"].count("<image>") == 1 for r in images)
    assert all("<image>" not in t["value"] for r in records if "image" not in r for t in r["conversations"])


# ----------------------------------------------------------------------------------------------- end to end


def test_custom_seq2seq_trainer_trains_grouped(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, tmp_path: Path
) -> None:
    """The stand-in CustomSeq2SeqTrainer trains 2 steps on a tiny Qwen2-VL through transformers' own loop
    (which passes the dataset to the sampler hook): every step single-modality, per-module rates in use."""
    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.testing.records import write_toy_records

    captions, texts = write_toy_records(tmp_path, captions=8, texts=8)
    rows = [json.loads(line) for path in (captions, texts) for line in path.read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": json.dumps(r["messages"]), "images": r["images"]} for r in rows])
    model, processor = build_tiny_model("qwen2_vl")
    model.train()
    collator = ViFTDataCollator(processor, image_root=tmp_path)
    seen: list[str] = []
    collate = recording_collate(
        collator,
        seen,
        lambda features: [{"messages": json.loads(f["messages"]), "images": f["images"]} for f in features],
    )
    args = Seq2SeqTrainingArguments(**tiny_run_arguments(tmp_path, max_steps=2, seed=1, logging_steps=1))
    trainer = lf.sft(
        finetuning_args=finetuning(),
        processor=None,
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[lf.callback()],
    )
    with vift_llamafactory.apply(connector_lr=1e-2, vision_lr=0.0):
        trainer.train()
        assert isinstance(get_sampler(trainer.get_train_dataloader()), ModalityGroupedSampler)
    assert_trained_grouped(trainer, seen, 2, {"vision": 0.0, "connector": 1e-2, "language": 1e-3})
    # each role's rate is logged beside transformers' learning_rate (the first group's: vision) ...
    rates = {"learning_rate/vision": 0.0, "learning_rate/connector": 1e-2, "learning_rate/language": 1e-3}
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["learning_rate"] == 0.0
        assert {key: entry[key] for key in rates} == rates
    # ... and reaches LLaMA-Factory's trainer_log.jsonl, which otherwise has only the first group's rate
    lines = [json.loads(line) for line in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["current_steps"] for line in steps] == [1, 2]
    for line in steps:
        assert line["lr"] == 0.0 and {key: line[key] for key in rates} == rates
    assert not getattr(lf.callback.on_log, "_vift_patch", False)  # restored on leaving the block


def test_configuration_precedence(vift_llamafactory: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert vift_llamafactory.config_from_env() == vift_llamafactory.ViFTLlamaFactoryConfig()
    monkeypatch.setenv("VIFT_LENGTH_WINDOW", "none")
    monkeypatch.setenv("VIFT_REMAINDER", "fill")
    monkeypatch.setenv("VIFT_GROUP_BY_MODALITY", "no")
    monkeypatch.setenv("VIFT_LANGUAGE_LR", "3e-5")
    config = vift_llamafactory.config_from_env()
    assert (config.length_window, config.remainder, config.group_by_modality, config.language_lr) == (
        None,
        "fill",
        False,
        3e-5,
    )
    config = vift_llamafactory.config_from_env(length_window=8, remainder="drop", language_lr=None)
    assert (config.length_window, config.remainder, config.language_lr) == (8, "drop", None)
    monkeypatch.setenv("VIFT_LENGTH_WINDOW", "0")
    with pytest.raises(ValueError, match="length_window"):
        vift_llamafactory.config_from_env()


def test_launcher_applies_then_runs_run_exp(
    vift_llamafactory: ModuleType, lf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], bool]] = []

    def run_exp() -> None:
        calls.append((list(sys.argv), getattr(lf.sft.create_optimizer, "_vift_patch", False)))

    tuner = types.ModuleType("llamafactory.train.tuner")
    tuner.run_exp = run_exp  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, tuner.__name__, tuner)
    monkeypatch.setenv("VIFT_VISION_LR", "4e-6")
    monkeypatch.setattr(sys, "argv", ["vift_llamafactory.py"])
    vift_llamafactory.main(["--vift-connector-lr", "1e-5", "train.yaml"])
    (handle,) = vift_llamafactory.active_patches()
    handle.remove()
    assert calls == [(["vift_llamafactory.py", "train.yaml"], True)]
    assert (handle.config.vision_lr, handle.config.connector_lr, handle.config.group_by_modality) == (4e-6, 1e-5, True)
