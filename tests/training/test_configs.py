"""The example ``vift train`` configs parse into the argument dataclasses with the values they intend.

Each YAML in ``examples/configs`` goes through ``plan_stages`` and ``parse_stage`` exactly as
``vift train`` does. ``--use_cpu True`` is added so that ``bf16: true`` parses on a machine without a
GPU, and ``--deepspeed`` is dropped when deepspeed is not installed (``TrainingArguments`` imports it);
the DeepSpeed files themselves are checked as JSON.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from vift_plugin.training import DataArguments, ModelArguments, ViFTTrainingArguments
from vift_plugin.training.run import load_config, parse_stage, plan_stages

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"
DEEPSPEED = ROOT / "examples" / "deepspeed"
ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

# file stem -> (base checkpoint, LoRA?, load_in_bits of stage 2)
SINGLE_GPU = {
    "qwen2vl_2b_lora": ("Qwen/Qwen2-VL-2B-Instruct", True, None),
    "qwen2vl_2b_qlora": ("Qwen/Qwen2-VL-2B-Instruct", True, 4),
    "llava15_7b_lora": ("llava-hf/llava-1.5-7b-hf", True, None),
    "llava15_7b_qlora": ("llava-hf/llava-1.5-7b-hf", True, 4),
}
EXPECTED = {*SINGLE_GPU, "paper_full"}


def parsed_stages(path: Path, tmp_path: Path) -> list[tuple[str, list[str], tuple[Any, Any, Any]]]:
    """``[(name, argv, (model_args, data_args, training_args)), ...]`` with outputs under ``tmp_path``."""
    config = load_config(path)
    config["output_dir"] = str(tmp_path / path.stem)
    stages = []
    for name, argv in plan_stages(config, ["--use_cpu", "True"]):
        parse_argv = list(argv)
        if "--deepspeed" in parse_argv and not HAS_DEEPSPEED:
            at = parse_argv.index("--deepspeed")
            del parse_argv[at : at + 2]
        stages.append((name, argv, parse_stage(parse_argv)))
    return stages


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_every_expected_config_is_there() -> None:
    assert {p.stem for p in ALL_CONFIGS} >= EXPECTED
    assert (DEEPSPEED / "zero2.json").is_file() and (DEEPSPEED / "zero3.json").is_file()


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_parses_into_two_stages(path: Path, tmp_path: Path) -> None:
    stages = parsed_stages(path, tmp_path)
    assert [name for name, _, _ in stages] == ["stage1", "stage2"]
    (_, _, (model1, data1, args1)), (_, _, (model2, data2, args2)) = stages
    for model_args, data_args, args in ((model1, data1, args1), (model2, data2, args2)):
        assert isinstance(model_args, ModelArguments)
        assert isinstance(data_args, DataArguments)
        assert isinstance(args, ViFTTrainingArguments)
        assert args.bf16 and args.gradient_checkpointing
        assert model_args.dtype == "bfloat16"
        assert args.group_by_modality and args.remainder == "drop"
        assert args.image_root == "data/images"
        assert args.report_to == []
    # stage k writes to output_dir/<name>; stage 2 starts from stage 1's output
    assert args1.output_dir == str(tmp_path / path.stem / "stage1")
    assert args2.output_dir == str(tmp_path / path.stem / "stage2")
    assert model2.model_name_or_path == args1.output_dir
    # stage 1: captions only, LLaVA-style (only the connector trains)
    assert data1.caption_files and not data1.text_files and data1.dataset_dir is None
    assert args1.frozen_roles() == ["vision", "language"]
    assert not args1.use_lora and model1.load_in_bits is None
    # stage 2: captions + text instructions, the connector trains
    assert data2.caption_files and data2.text_files and data2.dataset_dir is None
    assert all(f.endswith(".jsonl") for f in [*data1.caption_files, *data2.caption_files, *data2.text_files])
    assert not args2.freeze_connector and not args2.freeze_language


@pytest.mark.parametrize("stem", sorted(SINGLE_GPU))
def test_single_gpu_lora_configs(stem: str, tmp_path: Path) -> None:
    base, use_lora, bits = SINGLE_GPU[stem]
    (_, _, (model1, _, args1)), (_, _, (model2, _, args2)) = parsed_stages(CONFIGS / f"{stem}.yaml", tmp_path)
    assert model1.model_name_or_path == base
    assert args2.use_lora is use_lora and model2.load_in_bits == bits
    assert args2.lora_r == 64 and args2.lora_alpha == 128 and args2.lora_roles == ["language"]
    assert args2.lora_layers == "all"
    assert args2.frozen_roles() == ["vision"]  # vision frozen, connector in full, language through LoRA
    assert args2.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args2.deepspeed is None and args1.deepspeed is None
    for args in (args1, args2):
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        assert 64 <= global_batch <= 128, f"{stem}: global batch {global_batch} on one GPU"
        assert args.per_device_train_batch_size <= 8
    if stem.startswith("qwen2vl"):
        assert args1.max_pixels == args2.max_pixels == 512 * 28 * 28
    if bits == 4:
        assert "paged" in str(args2.optim.value)
    assert args2.role_learning_rates()["connector"] == pytest.approx(2e-6)


def test_paper_full_config(tmp_path: Path) -> None:
    stages = parsed_stages(CONFIGS / "paper_full.yaml", tmp_path)
    (_, argv1, (_, data1, args1)), (_, argv2, (model2, data2, args2)) = stages
    for argv in (argv1, argv2):  # ZeRO-3 config named by a path relative to the repository root
        deepspeed = option(argv, "--deepspeed")
        assert deepspeed is not None and (ROOT / deepspeed).is_file()
        assert json.loads((ROOT / deepspeed).read_text())["zero_optimization"]["stage"] == 3
    if HAS_DEEPSPEED:
        assert args2.deepspeed is not None
    rates = {"vision": 1e-5, "connector": 2e-6, "language": 1e-5}
    assert args2.role_learning_rates() == pytest.approx(rates)
    assert (args2.vision_lr, args2.connector_lr, args2.language_lr) == pytest.approx((1e-5, 2e-6, 1e-5))
    assert not args2.use_lora and model2.load_in_bits is None
    assert args2.frozen_roles() == []  # full fine-tuning
    assert not args1.use_lora and args1.frozen_roles() == ["vision", "language"]
    assert args2.fusion().alpha == 1.0 and args2.fusion().beta == pytest.approx(0.1)
    # stage 1 ~1M captions, stage 2 ~1.7M captions + 200K texts: separate caption files
    assert data1.caption_files != data2.caption_files and data2.text_files


@pytest.mark.parametrize(("name", "stage"), [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs(name: str, stage: int) -> None:
    config = json.loads((DEEPSPEED / name).read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert config["bf16"]["enabled"] == "auto"
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    # no optimizer/scheduler: the Trainer builds its own, with ViFT's per-role learning rates
    assert "optimizer" not in config and "scheduler" not in config
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("stem", sorted(SINGLE_GPU))
def test_vift_train_dry_run(stem: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vift_plugin.cli import main

    assert main(["train", str(CONFIGS / f"{stem}.yaml"), "--dry-run", "--use_cpu", "True"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== stage")]
    assert lines == [
        f"== stage stage1: {SINGLE_GPU[stem][0]} -> runs/{stem}/stage1",
        f"== stage stage2: runs/{stem}/stage1 -> runs/{stem}/stage2",
    ]
