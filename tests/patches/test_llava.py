"""``vift_plugin.integrations.llava`` against stand-ins of LLaVA's and Bunny's trainer modules.

The stand-ins have upstream's names and method signatures (``_get_train_sampler(self)``,
``create_optimizer(self)``, ``mm_projector_lr``/``mm_vision_tower_lr`` arguments, a dataset with a
signed ``modality_lengths``) and are registered in ``sys.modules`` under upstream's module names.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from accelerate.data_loader import get_sampler
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from transformers import Trainer, TrainingArguments

from tests.patches.conftest import (
    assert_role_groups,
    assert_single_modality_steps,
    assert_trained_grouped,
    lr_by_name,
    recording_collate,
    signed_lengths,
    tiny_run_arguments,
    write_alpaca,
    write_caption_table,
)
from vift_plugin.data.sampler import ModalityGroupedSampler
from vift_plugin.testing import build_tiny_model

# ----------------------------------------------------------------------------------------------- stand-ins

UPSTREAM_SAMPLER = "upstream-sampler"


class LazySupervisedDataset(Dataset[dict[str, Any]]):
    """LLaVA's dataset in miniature: records in ``conversations`` format and a signed ``modality_lengths``."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.list_data_dict = records

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.list_data_dict[index]

    @property
    def modality_lengths(self) -> list[int]:
        return signed_lengths(self.list_data_dict)


class Stream(IterableDataset[int]):
    def __iter__(self) -> Any:
        return iter(range(4))


class SignedDataset(Dataset[int]):
    """Only ``modality_lengths`` (the sampler never reads the samples)."""

    def __init__(self, signed: list[int]) -> None:
        self.modality_lengths = signed

    def __len__(self) -> int:
        return len(self.modality_lengths)

    def __getitem__(self, index: int) -> int:
        return index


@dataclass
class LLaVATrainingArguments(TrainingArguments):
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = False


@dataclass
class NeXTTrainingArguments(LLaVATrainingArguments):
    mm_vision_tower_lr: float | None = None


def make_llava_trainer_class(name: str = "LLaVATrainer") -> type:
    """A fresh class with upstream's signatures (v1.2.2: no dataset argument to the sampler hook)."""

    def _get_train_sampler(self: Any) -> Any:
        if self.train_dataset is None:
            return None
        return UPSTREAM_SAMPLER

    def create_optimizer(self: Any) -> Any:
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.learning_rate)
        return self.optimizer

    return type(name, (Trainer,), {"_get_train_sampler": _get_train_sampler, "create_optimizer": create_optimizer})


def register(monkeypatch: pytest.MonkeyPatch, dotted: str, **attributes: Any) -> ModuleType:
    """Register ``dotted`` (and empty parent packages) in ``sys.modules`` for this test."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType(dotted)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, dotted, module)
    return module


@pytest.fixture
def llava_cls(monkeypatch: pytest.MonkeyPatch) -> type:
    """``llava.train.llava_trainer.LLaVATrainer`` (a stand-in), with ``bunny`` made unimportable."""
    cls = make_llava_trainer_class()
    register(monkeypatch, "llava.train.llava_trainer", LLaVATrainer=cls)
    monkeypatch.setitem(sys.modules, "bunny.train.bunny_trainer", None)
    return cls


def fake_trainer(dataset: Any, **args: Any) -> SimpleNamespace:
    """Just what the sampler hook reads: ``args`` and ``train_dataset``."""
    defaults = dict(
        train_batch_size=2, per_device_train_batch_size=2, world_size=1, gradient_accumulation_steps=1, seed=0
    )
    defaults.update(args)
    defaults.setdefault("data_seed", None)
    return SimpleNamespace(args=SimpleNamespace(**defaults), train_dataset=dataset)


def signed_data(images: int, texts: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    values = [rng.randint(1, 500) for _ in range(images)] + [-rng.randint(1, 500) for _ in range(texts)]
    rng.shuffle(values)
    return values


# ----------------------------------------------------------------------------------------------- sampler


def test_every_optimizer_step_is_single_modality_on_every_rank(vift_llava: ModuleType, llava_cls: type) -> None:
    signed = signed_data(images=37, texts=23)
    with vift_llava.apply():
        sampler = llava_cls._get_train_sampler(
            fake_trainer(SignedDataset(signed), world_size=2, gradient_accumulation_steps=2, seed=3)
        )
    assert isinstance(sampler, ModalityGroupedSampler)
    assert (sampler.batch_size, sampler.world_size, sampler.gradient_accumulation_steps) == (2, 2, 2)
    kinds = assert_single_modality_steps(
        sampler, lambda i: "image" if signed[i] > 0 else "text", batch_size=2, world_size=2, accumulation=2
    )
    # remainder="drop": 37 -> 32 image samples (4 steps of 8), 23 -> 16 text samples (2 steps).
    assert sorted(kinds) == ["image"] * 4 + ["text"] * 2
    assert sampler.lengths is not None and sampler.lengths.tolist() == [abs(v) for v in signed]


def test_fill_keeps_every_sample(vift_llava: ModuleType, llava_cls: type) -> None:
    signed = signed_data(images=9, texts=5)
    with vift_llava.apply(remainder="fill"):
        sampler = llava_cls._get_train_sampler(fake_trainer(SignedDataset(signed), gradient_accumulation_steps=2))
    stream = list(sampler)
    assert set(stream) == set(range(len(signed)))
    assert len(stream) == 12 + 8
    assert_single_modality_steps(
        sampler, lambda i: "image" if signed[i] > 0 else "text", batch_size=2, world_size=1, accumulation=2
    )


def test_order_depends_on_the_seed_only(vift_llava: ModuleType, llava_cls: type) -> None:
    data = SignedDataset(signed_data(images=40, texts=40))
    with vift_llava.apply():
        order = {
            key: list(llava_cls._get_train_sampler(fake_trainer(data, **args)))
            for key, args in {
                "seed1": dict(seed=1),
                "seed1 again": dict(seed=1),
                "seed2": dict(seed=2),
                "data_seed2": dict(seed=1, data_seed=2),
            }.items()
        }
    assert order["seed1"] == order["seed1 again"]
    assert order["seed1"] != order["seed2"]
    assert order["data_seed2"] == order["seed2"]  # data_seed wins over seed, as in transformers


def test_global_random_state_is_untouched(vift_llava: ModuleType, llava_cls: type) -> None:
    data = SignedDataset(signed_data(images=30, texts=30))
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with vift_llava.apply():
        sampler = llava_cls._get_train_sampler(fake_trainer(data))
        sampler.set_epoch(1)
        list(sampler)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_epochs_reshuffle_and_resume_identically(vift_llava: ModuleType, llava_cls: type) -> None:
    data = SignedDataset(signed_data(images=30, texts=30))
    with vift_llava.apply():
        first = llava_cls._get_train_sampler(fake_trainer(data))
        again = llava_cls._get_train_sampler(fake_trainer(data))
    epoch0 = list(first)
    first.set_epoch(1)
    again.set_epoch(1)
    assert list(first) != epoch0
    assert list(first) == list(again)


def test_dataset_argument_of_newer_transformers(vift_llava: ModuleType, llava_cls: type) -> None:
    """transformers >= 4.5x calls ``_get_train_sampler(dataset)``; LLaVA's own method takes no argument."""
    data = SignedDataset(signed_data(images=16, texts=16))
    trainer = fake_trainer(data)
    with pytest.raises(TypeError):
        llava_cls._get_train_sampler(trainer, data)  # upstream signature
    with vift_llava.apply():
        streams = [
            list(llava_cls._get_train_sampler(trainer)),
            list(llava_cls._get_train_sampler(trainer, data)),
            list(llava_cls._get_train_sampler(trainer, train_dataset=data)),
        ]
        # A dataset without length (streaming) goes to the original method, called without the argument.
        stream = Stream()
        assert llava_cls._get_train_sampler(fake_trainer(stream), stream) == UPSTREAM_SAMPLER
    assert streams[0] == streams[1] == streams[2]


def test_modality_lengths_is_read_once(vift_llava: ModuleType, llava_cls: type) -> None:
    """LLaVA's property walks the whole data list; the patch must not evaluate it twice."""

    class Counting(SignedDataset):
        reads = 0

        @property  # type: ignore[override]
        def modality_lengths(self) -> list[int]:
            Counting.reads += 1
            return self._signed

        @modality_lengths.setter
        def modality_lengths(self, value: list[int]) -> None:
            self._signed = value

        def __len__(self) -> int:
            return len(self._signed)

    data = Counting(signed_data(images=8, texts=8))
    with vift_llava.apply():
        llava_cls._get_train_sampler(fake_trainer(data), data)
    assert Counting.reads == 1


def test_bad_modality_lengths_are_reported(vift_llava: ModuleType, llava_cls: type) -> None:
    class Plain(Dataset[int]):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> int:
            return index

    with vift_llava.apply():
        with pytest.raises(ValueError, match="no 'modality_lengths'"):
            llava_cls._get_train_sampler(fake_trainer(Plain()))
        with pytest.raises(ValueError, match=r"modality_lengths\[2\] is 0"):
            llava_cls._get_train_sampler(fake_trainer(SignedDataset([3, -4, 0, 5])))


# ----------------------------------------------------------------------------------------------- optimizer


def make_trainer(
    cls: type, model: nn.Module, tmp_path: Path, args_cls: type = LLaVATrainingArguments, **args: Any
) -> Any:
    arguments = args_cls(
        output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.1, use_cpu=True, report_to=[], **args
    )
    return cls(model=model, args=arguments)


def test_per_role_learning_rates_on_a_real_llava_model(vift_llava: ModuleType, llava_cls: type, tmp_path: Path) -> None:
    model, _ = build_tiny_model("llava")
    trainer = make_trainer(llava_cls, model, tmp_path, mm_projector_lr=2e-6)
    with vift_llava.apply(vision_lr=3e-6):
        trainer.create_optimizer()
    rates = assert_role_groups(trainer, "llava", {"vision": 3e-6, "connector": 2e-6, "language": 1e-5}, 0.1)
    assert len(rates) == sum(1 for p in model.parameters() if p.requires_grad)
    assert rates["model.multi_modal_projector.linear_1.weight"][:2] == (2e-6, 0.1)
    assert rates["model.multi_modal_projector.linear_1.bias"][:2] == (2e-6, 0.0)
    assert rates["model.vision_tower.embeddings.patch_embedding.weight"][0] == 3e-6
    assert rates["lm_head.weight"][0] == 1e-5


class UpstreamLayout(nn.Module):
    """Parameter names of LLaVA's own ``LlavaLlamaForCausalLM`` (mm_projector, vision_tower.vision_tower)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(10, 4)
        self.model.layers = nn.ModuleList([nn.Linear(4, 4)])
        self.model.norm = nn.LayerNorm(4)
        self.model.mm_projector = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))
        self.model.vision_tower = nn.Module()
        self.model.vision_tower.vision_tower = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)


@pytest.mark.parametrize(
    ("args_cls", "arguments", "patch", "vision", "connector"),
    [
        (LLaVATrainingArguments, {"mm_projector_lr": 2e-6}, {"vision_lr": 7e-6}, 7e-6, 2e-6),
        (LLaVATrainingArguments, {}, {"connector_lr": 4e-6}, 1e-5, 4e-6),  # mm_projector_lr unset: the patch's
        (LLaVATrainingArguments, {}, {}, 1e-5, 1e-5),
        (NeXTTrainingArguments, {"mm_vision_tower_lr": 5e-6}, {"vision_lr": 7e-6}, 5e-6, 1e-5),  # the args win
        (NeXTTrainingArguments, {"mm_vision_tower_lr": None}, {"vision_lr": 7e-6}, 7e-6, 1e-5),
    ],
)
def test_learning_rate_sources(
    vift_llava: ModuleType,
    llava_cls: type,
    tmp_path: Path,
    args_cls: type,
    arguments: dict[str, Any],
    patch: dict[str, float],
    vision: float,
    connector: float,
) -> None:
    model = UpstreamLayout()
    trainer = make_trainer(llava_cls, model, tmp_path, args_cls, **arguments)
    with vift_llava.apply(**patch):
        trainer.create_optimizer()
    rates = lr_by_name(trainer)
    assert rates["model.vision_tower.vision_tower.weight"][0] == vision
    assert rates["model.mm_projector.0.weight"][0] == connector
    assert rates["model.mm_projector.2.bias"] == (connector, 0.0, "connector")
    assert rates["model.layers.0.weight"][0] == 1e-5
    assert rates["model.norm.weight"] == (1e-5, 0.0, "language")


def test_frozen_parameters_and_existing_optimizers_are_respected(
    vift_llava: ModuleType, llava_cls: type, tmp_path: Path
) -> None:
    model = UpstreamLayout()
    model.model.vision_tower.requires_grad_(False)
    trainer = make_trainer(llava_cls, model, tmp_path)
    with vift_llava.apply(vision_lr=1.0):
        trainer.create_optimizer()
        assert {group["role"] for group in trainer.optimizer.param_groups} == {"connector", "language"}
        assert "model.vision_tower.vision_tower.weight" not in lr_by_name(trainer)
        preset = torch.optim.SGD(model.parameters(), lr=0.5)
        other = make_trainer(llava_cls, model, tmp_path)
        other.optimizer = preset
        assert other.create_optimizer() is preset


@pytest.mark.parametrize(
    ("args_cls", "arguments", "patch", "setting"),
    [
        (LLaVATrainingArguments, {}, {"vision_lr": 1e-5}, "vision_lr=1e-05"),
        (NeXTTrainingArguments, {"mm_vision_tower_lr": 2e-6}, {"vision_lr": 1e-5}, "mm_vision_tower_lr=2e-06"),
    ],
)
def test_vision_rate_with_a_frozen_vision_tower_is_warned_about(
    vift_llava: ModuleType,
    llava_cls: type,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    args_cls: type,
    arguments: dict[str, Any],
    patch: dict[str, float],
    setting: str,
) -> None:
    """Upstream LLaVA's CLIP tower freezes itself, so a vision rate does nothing there: say so, naming the rate."""
    model = UpstreamLayout()
    model.model.vision_tower.requires_grad_(False)
    trainer = make_trainer(llava_cls, model, tmp_path, args_cls, **arguments)
    with caplog.at_level(logging.WARNING, logger="vift_llava"), vift_llava.apply(**patch):
        trainer.create_optimizer()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{setting} is set but the vision role has no trainable parameter (frozen); the rate does nothing" in warning
    assert "clip_encoder.py" in warning
    assert {group["role"] for group in trainer.optimizer.param_groups} == {"connector", "language"}


def test_no_warning_for_unset_rates_or_trained_roles(
    vift_llava: ModuleType, llava_cls: type, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frozen = UpstreamLayout()
    frozen.model.vision_tower.requires_grad_(False)
    with caplog.at_level(logging.WARNING, logger="vift_llava"):
        with vift_llava.apply():  # no vision rate: upstream's frozen tower is nothing to report
            make_trainer(llava_cls, frozen, tmp_path).create_optimizer()
        with vift_llava.apply(vision_lr=1e-6, connector_lr=1e-6):  # both roles train
            make_trainer(llava_cls, UpstreamLayout(), tmp_path).create_optimizer()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_role_of_overrides_the_role_table(vift_llava: ModuleType, llava_cls: type, tmp_path: Path) -> None:
    model = UpstreamLayout()
    trainer = make_trainer(llava_cls, model, tmp_path)
    with vift_llava.apply(connector_lr=1e-3, role_of=lambda name: "connector" if "lm_head" in name else "language"):
        trainer.create_optimizer()
    rates = lr_by_name(trainer)
    assert rates["lm_head.weight"][0] == 1e-3
    assert rates["model.mm_projector.0.weight"][0] == 1e-5


# ----------------------------------------------------------------------------------------------- patch mechanics


def test_remove_restores_the_exact_originals(vift_llava: ModuleType, llava_cls: type) -> None:
    originals = {name: llava_cls.__dict__[name] for name in ("_get_train_sampler", "create_optimizer")}
    handle = vift_llava.apply()
    assert handle.trainer_cls is llava_cls
    for name, original in originals.items():
        assert llava_cls.__dict__[name] is not original
    handle.remove()
    for name, original in originals.items():
        assert llava_cls.__dict__[name] is original
    handle.remove()  # a second removal does nothing
    assert not vift_llava.active_patches()


def test_inherited_methods_are_restored_to_inheritance(vift_llava: ModuleType) -> None:
    cls = type("SubTrainer", (Trainer,), {})
    with vift_llava.apply(cls):
        assert "create_optimizer" in cls.__dict__
    assert "create_optimizer" not in cls.__dict__ and "_get_train_sampler" not in cls.__dict__
    assert cls.create_optimizer is Trainer.create_optimizer


def test_applying_twice_is_an_error(vift_llava: ModuleType, llava_cls: type) -> None:
    first = vift_llava.apply(vision_lr=1e-6)
    patched = llava_cls.__dict__["create_optimizer"]
    with pytest.raises(vift_llava.ViFTPatchError, match="already patched"):
        vift_llava.apply(vision_lr=2e-6)
    subclass = type("Child", (llava_cls,), {})
    with pytest.raises(vift_llava.ViFTPatchError, match="already patched"):
        vift_llava.apply(subclass)
    assert llava_cls.__dict__["create_optimizer"] is patched
    assert vift_llava.active_patches() == [first]
    first.remove()
    vift_llava.apply().remove()  # applying again after removal works


def test_context_manager_and_partial_patch(vift_llava: ModuleType, llava_cls: type) -> None:
    original_sampler = llava_cls.__dict__["_get_train_sampler"]
    with vift_llava.apply(optimizer=False):
        assert llava_cls.__dict__["_get_train_sampler"] is not original_sampler
        assert (
            llava_cls.__dict__["create_optimizer"].__qualname__ == "make_llava_trainer_class.<locals>.create_optimizer"
        )
    assert llava_cls.__dict__["_get_train_sampler"] is original_sampler


def test_settings_are_validated(vift_llava: ModuleType, llava_cls: type) -> None:
    for bad in (
        {"remainder": "keep"},
        {"vision_lr": -1.0},
        {"length_window": 0},
        {"sampler": False, "optimizer": False},
    ):
        with pytest.raises(ValueError):
            vift_llava.apply(**bad)
    assert not vift_llava.active_patches()


# ----------------------------------------------------------------------------------------------- symbol checks


def test_missing_module_names_module_version_and_remedy(
    vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llava.train.llava_trainer", None)
    with pytest.raises(vift_llava.ViFTPatchError) as error:
        vift_llava.apply(target="llava")
    message = str(error.value)
    assert "'llava.train.llava_trainer'" in message
    assert "haotian-liu/LLaVA v1.2.2" in message
    assert "trainer_cls=" in message


def test_auto_reports_every_candidate(vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llava.train.llava_trainer", None)
    monkeypatch.setitem(sys.modules, "bunny.train.bunny_trainer", None)
    with pytest.raises(
        vift_llava.ViFTPatchError, match=r"(?s)llava\.train\.llava_trainer.*bunny\.train\.bunny_trainer"
    ):
        vift_llava.apply()


def test_auto_falls_back_to_bunny(vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llava.train.llava_trainer", None)
    bunny = make_llava_trainer_class("BunnyTrainer")
    register(monkeypatch, "bunny.train.bunny_trainer", BunnyTrainer=bunny)
    with vift_llava.apply() as handle:
        assert handle.trainer_cls is bunny and handle.target.cls == "BunnyTrainer"
        assert getattr(bunny.create_optimizer, "_vift_patch", False)


def test_missing_class(vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, "llava.train.llava_trainer", SomethingElse=object)
    with pytest.raises(vift_llava.ViFTPatchError, match="has no class 'LLaVATrainer'.*v1.2.2"):
        vift_llava.apply(target="llava")


def test_missing_or_incompatible_method(vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoOptimizer:
        def _get_train_sampler(self) -> None:
            return None

    with pytest.raises(vift_llava.ViFTPatchError, match="has no method 'create_optimizer'"):
        vift_llava.apply(NoOptimizer)

    def needs_argument(self: Any, lengths: list[int]) -> None:
        return None

    odd = type("LLaVATrainer", (Trainer,), {"_get_train_sampler": needs_argument})
    register(monkeypatch, "llava.train.llava_trainer", LLaVATrainer=odd)
    with pytest.raises(vift_llava.ViFTPatchError, match=r"_get_train_sampler has an incompatible signature.*v1.2.2"):
        vift_llava.apply(target="llava")
    assert odd.__dict__["_get_train_sampler"] is needs_argument


def test_trainer_cls_as_a_dotted_string(vift_llava: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = make_llava_trainer_class("MyTrainer")
    register(monkeypatch, "my_fork.trainer", MyTrainer=cls)
    with vift_llava.apply("my_fork.trainer:MyTrainer"):
        assert getattr(cls._get_train_sampler, "_vift_patch", False)
    with pytest.raises(vift_llava.ViFTPatchError, match="has no class 'Nope'"):
        vift_llava.apply("my_fork.trainer:Nope")


# ----------------------------------------------------------------------------------------------- data


def test_write_llava_json(vift_llava: ModuleType, tmp_path: Path) -> None:
    captions = write_caption_table(tmp_path, 5)
    texts = write_alpaca(tmp_path, 3)
    counts = vift_llava.write_llava_json(tmp_path / "out" / "mix.json", captions=[captions], texts=[texts])
    assert counts == {"captions": 5, "texts": 3}
    records = json.loads((tmp_path / "out" / "mix.json").read_text())
    with_image = [r for r in records if "image" in r]
    without = [r for r in records if "image" not in r]
    assert len(with_image) == 5 and len(without) == 3
    for record in with_image:
        assert record["conversations"][0]["from"] == "human"
        assert record["conversations"][0]["value"].startswith("<image>\n")
        assert record["conversations"][1]["from"] == "gpt" and "square" in record["conversations"][1]["value"]
        assert (tmp_path / record["image"]).is_file()  # relative to the image root (LLaVA's --image_folder)
    assert all("<image>" not in turn["value"] for r in without for turn in r["conversations"])
    signs = LazySupervisedDataset(records).modality_lengths
    assert [v > 0 for v in signs] == ["image" in r for r in records]
    vift_llava.write_llava_json(tmp_path / "abs.json", captions=[captions], absolute_image_paths=True)
    assert all(Path(r["image"]).is_absolute() for r in json.loads((tmp_path / "abs.json").read_text()))
    with pytest.raises(ValueError):
        vift_llava.write_llava_json(tmp_path / "none.json")


# ----------------------------------------------------------------------------------------------- end to end


def test_llava_trainer_trains_with_single_modality_steps(
    vift_llava: ModuleType, llava_cls: type, tmp_path: Path
) -> None:
    """A stand-in LLaVATrainer trains 3 steps on a tiny LLaVA: single-modality steps, per-role learning rates
    (the vision tower at lr 0 does not move, the connector does)."""
    from vift_plugin.data.collator import ViFTDataCollator

    data = tmp_path / "mix.json"
    vift_llava.write_llava_json(data, captions=[write_caption_table(tmp_path, 12)], texts=[write_alpaca(tmp_path, 8)])
    dataset = LazySupervisedDataset(json.loads(data.read_text()))
    model, processor = build_tiny_model("llava")
    model.train()
    collator = ViFTDataCollator(processor, image_root=tmp_path)
    seen: list[str] = []
    collate = recording_collate(collator, seen)
    args = LLaVATrainingArguments(
        **tiny_run_arguments(
            tmp_path, max_steps=3, mm_projector_lr=1e-2, group_by_modality_length=True, seed=0, logging_steps=1
        )
    )
    trainer = llava_cls(model=model, args=args, train_dataset=dataset, data_collator=collate)
    vision_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".vision_tower." in n}
    connector_before = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    with vift_llava.apply(vision_lr=0.0):
        trainer.train()
        assert isinstance(get_sampler(trainer.get_train_dataloader()), ModalityGroupedSampler)
    assert len(seen) >= 6  # accelerate collates one batch ahead
    assert_trained_grouped(trainer, seen, 3, {"vision": 0.0, "connector": 1e-2, "language": 1e-3})
    # each role's rate is logged beside transformers' learning_rate, which is the first group's (vision)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert entry["learning_rate"] == 0.0
        assert entry["learning_rate/vision"] == 0.0
        assert entry["learning_rate/connector"] == 1e-2
        assert entry["learning_rate/language"] == 1e-3
    assert "log" not in llava_cls.__dict__  # the log wrapper went with the patch
    assert "image" in seen[:6]  # 3 image steps and 2 text steps exist: 3 steps cannot all be text
    for name, parameter in model.named_parameters():
        if name in vision_before:
            assert torch.equal(parameter, vision_before[name]), name
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, connector_before)


def test_patches_need_no_transformers_5_from_vift_plugin(tmp_path: Path) -> None:
    """LLaVA pins transformers 4.37 and vift_plugin requires 5.x; installed with --no-deps, the parts of
    vift_plugin the patches use (sampler, role table, converters) must import without transformers at all."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "for name in ('transformers', 'peft', 'datasets', 'accelerate'): sys.modules[name] = None\n"
        f"sys.path[:0] = [{str(root / 'patches' / 'llava')!r}, {str(root / 'patches' / 'llama_factory')!r}]\n"
        "import torch, vift_llava, vift_llamafactory\n"
        "from vift_plugin.training.roles import parameters_by_role\n"
        "from vift_plugin.data.sampler import ModalityGroupedSampler\n"
        "assert len(parameters_by_role(torch.nn.Linear(2, 2))['language']) == 2\n"
        "assert len(list(ModalityGroupedSampler(['image', 'text'] * 4, batch_size=2))) == 8\n"
        f"vift_llava.write_llava_json({str(tmp_path / 'o.json')!r}, texts=[{str(write_alpaca(tmp_path, 2))!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "o.json").read_text())) == 2


def test_launcher_applies_then_runs_upstream_train(
    vift_llava: ModuleType, llava_cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], dict[str, Any], bool]] = []

    def train(**kwargs: Any) -> None:
        calls.append((list(sys.argv), kwargs, getattr(llava_cls.create_optimizer, "_vift_patch", False)))

    register(monkeypatch, "llava.train.train", train=train)
    monkeypatch.setattr(sys, "argv", ["vift_llava.py"])
    vift_llava.main(["--vift-vision-lr", "2e-6", "--vift-attn-implementation", "sdpa", "--data_path", "x.json"])
    (handle,) = vift_llava.active_patches()
    handle.remove()
    assert calls == [(["vift_llava.py", "--data_path", "x.json"], {"attn_implementation": "sdpa"}, True)]
    assert handle.config.vision_lr == 2e-6
