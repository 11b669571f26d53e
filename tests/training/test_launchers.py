"""``vift train CONFIG.yaml`` under the launchers users run, two CPU processes: torchrun and
``accelerate launch``, and the CPU launch lines that go wrong upstream.

- ``torchrun --nproc_per_node 2`` and ``accelerate launch --multi_gpu --num_processes 2`` (torchrun
  underneath) with ``use_cpu: true`` train on two ranks over gloo.
- ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's multi-CPU launch is
  mpirun's job, given ``--mpirun_hostfile``); with ``ddp_backend: gloo`` that process used to die in
  accelerate's own setup ("Default process group has not been initialized"). Now it trains, and
  ``vift train`` warns that it trains alone.
- torchrun without ``use_cpu`` on a machine without GPUs leaves accelerate without a backend (each
  process rank 0 of 1): now an error before the model loads.

The epoch reached after N steps tells the world size: each optimizer step takes ``batch x world``
samples of the 32.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.training.multirank import Launch, accelerate_launch, launch, torchrun
from vift_plugin.testing import make_tiny_checkpoint
from vift_plugin.testing.records import write_toy_records

pytestmark = pytest.mark.slow  # launches training processes

VIFT_TRAIN = ["-m", "vift_plugin.cli", "train"]
SAMPLES, BATCH, STEPS = 32, 2, 2


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("launchers")
    checkpoint = make_tiny_checkpoint("qwen2_vl", tmp / "checkpoint")
    captions, texts = write_toy_records(tmp / "records", captions=SAMPLES // 2, texts=SAMPLES // 2)
    return {"tmp": tmp, "checkpoint": checkpoint, "captions": captions, "texts": texts}


def write_config(material: dict[str, Any], name: str, **overrides: Any) -> tuple[Path, Path]:
    """A one-stage LoRA config for the tiny checkpoint; returns (config file, output folder)."""
    out = material["tmp"] / name
    config = {
        "model_name_or_path": str(material["checkpoint"]),
        "caption_files": [str(material["captions"])],
        "text_files": [str(material["texts"])],
        "image_root": str(material["captions"].parent),
        "output_dir": str(out),
        "dtype": "float32",
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "max_steps": STEPS,
        "learning_rate": 1e-3,
        "use_lora": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        **overrides,
    }
    config = {k: v for k, v in config.items() if v is not None}
    path = material["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, out


def trained_world_size(run: Launch, out: Path) -> int:
    """The world size the run trained with, from the epoch its last step reached."""
    assert run.returncode == 0, run.tail()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    assert (out / "adapter_config.json").is_file()
    epoch = state["log_history"][-1]["epoch"]
    return round(epoch * SAMPLES / (STEPS * BATCH))


def test_vift_train_under_torchrun(material: dict[str, Any]) -> None:
    config, out = write_config(material, "torchrun")
    run = launch(torchrun([*VIFT_TRAIN, str(config)]), material["tmp"], timeout=240)
    assert trained_world_size(run, out) == 2


def test_vift_train_under_accelerate_launch(material: dict[str, Any]) -> None:
    """The working accelerate line on CPU: --multi_gpu (torchrun underneath), use_cpu in the config."""
    config, out = write_config(material, "accelerate")
    run = launch(
        accelerate_launch(["--multi_gpu", "--num_processes", "2"], [*VIFT_TRAIN, str(config)]),
        material["tmp"],
        timeout=240,
    )
    assert trained_world_size(run, out) == 2
    assert "vift train: warning" not in run.stderr


def test_accelerate_cpu_launch_trains_one_process_and_says_so(material: dict[str, Any]) -> None:
    config, out = write_config(material, "accelerate-cpu", ddp_backend="gloo")
    run = launch(
        accelerate_launch(["--cpu", "--num_processes", "2"], [*VIFT_TRAIN, str(config)]), material["tmp"], timeout=240
    )
    assert "Default process group has not been initialized" not in run.stderr
    assert trained_world_size(run, out) == 1
    assert "vift train: warning: this process was started by `accelerate launch --cpu`" in run.stderr
    assert "--multi_gpu --num_processes N" in run.stderr


def test_torchrun_without_use_cpu_is_an_error(material: dict[str, Any]) -> None:
    config, out = write_config(material, "no-use-cpu", use_cpu=None)
    run = launch(torchrun([*VIFT_TRAIN, str(config)]), material["tmp"], timeout=240)
    assert run.returncode != 0, run.tail()
    assert "the launcher started 2 processes, but accelerate sees a world of 1" in run.stderr
    assert "set use_cpu: true" in run.stderr
    assert not out.exists()


def test_a_bad_image_stops_every_rank_with_the_same_error(material: dict[str, Any]) -> None:
    """Rank 0 alone decodes the images and sends what it found: both ranks name the bad row and exit;
    none waits for the other (a hang would be a timeout here)."""
    records = material["tmp"] / "bad-records"
    shutil.copytree(material["captions"].parent, records)
    noise = Image.frombytes("RGB", (64, 64), bytes(random.Random(0).randrange(256) for _ in range(64 * 64 * 3)))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    (records / "images" / "0003.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    config, _ = write_config(
        material, "bad-image", caption_files=[str(records / "captions.jsonl")], image_root=str(records)
    )
    run = launch(torchrun([*VIFT_TRAIN, str(config)]), material["tmp"], timeout=240)
    assert not run.timed_out, run.tail()
    assert run.returncode != 0, run.tail()
    named = [line for line in run.stderr.splitlines() if "row 3 (id 'c3')" in line and "0003.png" in line]
    assert len(named) == 2 and all("truncated" in line for line in named), run.tail()
