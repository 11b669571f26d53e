"""Smoke runs of the examples and benchmarks on tiny checkpoints, as a user would start them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tiny models gain nothing from more threads, and on a busy machine several threads per process spin.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a repository script in a fresh interpreter; return its stdout, failing with its stderr.

    ``env`` adds to the inherited environment (e.g. ``ONE_THREAD``)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env} if env else None,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_fused_generate_example(checkpoint_dir: Any, family: str) -> None:
    stdout = run_script(
        "examples/fused_generate.py",
        "--model",
        str(checkpoint_dir(family)),
        "--max-new-tokens",
        "5",
        "--beta",
        "0.3",
        env=ONE_THREAD,
    )
    assert "plain:" in stdout and "fused:" in stdout


@pytest.mark.slow
def test_fusion_benchmark_runs_and_prints_ratios() -> None:
    stdout = run_script("benchmarks/bench_fusion.py", "--repeats", "1", "--new-tokens", "4")
    assert "ratios: live" in stdout and "official" in stdout


@pytest.mark.slow
def test_data_benchmark_runs_and_prints_figures() -> None:
    stdout = run_script(
        "benchmarks/bench_data.py", "--rows", "2000", "--captions", "6000", "--texts", "1000", "--batch-size", "4"
    )
    assert "captions/s" in stdout and "ModalityGroupedSampler" in stdout and "LLaVA-style" in stdout
    default = re.search(r"ModalityGroupedSampler window=\d+ \(default\)\s+[\d,]+\s+([\d.]+)%\s+(\d+)/", stdout)
    assert default is not None, stdout
    assert float(default.group(1)) <= 5.0 and default.group(2) == "0", "<= 5% padding, no mixed step"


@pytest.mark.slow
def test_training_benchmark_runs_lora_and_qlora() -> None:
    stdout = run_script("benchmarks/bench_train.py", "--size", "small", "--steps", "1", "--tokens", "400")
    rows = [line.split() for line in stdout.splitlines() if line.startswith("small ")]
    assert [row[1] for row in rows] == ["lora", "qlora"]
    assert all(int(row[2]) == 400 and float(row[3]) > 0 for row in rows)


# ------------------------------------------------------------------------------------- training examples

TRAIN_RUNS = [
    pytest.param("examples/train_qwen2vl_lora.py", "qwen2_vl", [], "visual.merger.", id="qwen2vl-lora"),
    pytest.param("examples/train_llava_lora.py", "llava", [], "multi_modal_projector.", id="llava-lora"),
    pytest.param(
        "examples/train_qwen2vl_lora.py", "qwen2_vl", ["--load-in-4bit"], "visual.merger.", id="qwen2vl-qlora"
    ),
]


@pytest.mark.slow  # trains
@pytest.mark.parametrize(("script", "family", "extra", "connector"), TRAIN_RUNS)
def test_train_lora_example(
    checkpoint_dir: Any, tmp_path: Path, script: str, family: str, extra: list[str], connector: str
) -> None:
    """Trains through ViFTTrainer, logs per-modality losses, saves the adapter, the connector and the
    fusion config, reloads with load_vift and answers plain and fused."""
    from safetensors import safe_open

    from vift_plugin.testing.records import write_toy_records

    captions, texts = write_toy_records(tmp_path / "data", captions=8, texts=8)
    out, checkpoint = tmp_path / "run", checkpoint_dir(family)
    stdout = run_script(
        script,
        *("--model", str(checkpoint), "--captions", str(captions), "--texts", str(texts)),
        *("--image-root", str(tmp_path / "data"), "--output-dir", str(out), "--max-steps", "4"),
        *("--batch-size", "2", "--grad-accum", "1", "--logging-steps", "1", "--max-new-tokens", "4"),
        *("--fusion-beta", "0.15", "--save-steps", "100", *extra),
        env=ONE_THREAD,
    )
    assert "training set: 8 caption and 8 text records" in stdout
    assert re.search(
        r"^trainable parameters: vision 0 / [\d,]+ trainable \| connector ([\d,]+) / \1 trainable", stdout, re.M
    )
    losses = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4]
    assert all(("loss_image" in e) != ("loss_text" in e) for e in losses), "every step is a single modality"
    assert {"loss_image", "loss_text"} <= {key for e in losses for key in e}
    assert len(re.findall(r"^step +\d+: loss \d+\.\d+, loss_(image|text)", stdout, re.M)) == 4
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(checkpoint.resolve())
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    with safe_open(str(out / "vift_trainable_weights.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and all(connector in name for name in names), names
    assert json.loads((out / "vift_fusion_config.json").read_text())["beta"] == 0.15
    assert re.search(r"^plain: .+\nfused: .+$", stdout, re.M)


# ------------------------------------------------------------------------------------- data conversion


def test_convert_captions_example_generated_sample(checkpoint_dir: Any, tmp_path: Path) -> None:
    """With no input: converts a generated LLaVA-Pretrain JSON and an Alpaca/ShareGPT file, reports the
    skipped rows, and writes a mix that reloads with modality and length columns."""
    from datasets import load_from_disk

    out = tmp_path / "data"
    stdout = run_script(
        "examples/convert_captions.py",
        "--model",
        str(checkpoint_dir("qwen2_vl")),
        "--output-dir",
        str(out),
        env=ONE_THREAD,
    )
    assert "read 7 row(s)" in stdout and "wrote 5 to" in stdout and "empty caption" in stdout
    assert "image file not found" in stdout and "read 5 row(s)" in stdout and "wrote 4 to" in stdout
    assert len((out / "captions.rejects.jsonl").read_text().splitlines()) == 2
    assert len((out / "text.rejects.jsonl").read_text().splitlines()) == 1
    mixed = load_from_disk(str(out / "mix"))
    assert mixed["modality"] == ["image"] * 5 + ["text"] * 4
    assert all(n > 0 for n in mixed["length"])
    assert min(n for n, m in zip(mixed["length"], mixed["modality"], strict=True) if m == "image") > 64
    assert "--captions" in stdout.splitlines()[-1] and "--texts" in stdout.splitlines()[-1]


def test_convert_captions_example_coco_and_sharegpt(checkpoint_dir: Any, tmp_path: Path) -> None:
    """Given inputs: COCO caption annotations (two captions of one image) and a ShareGPT file."""
    from datasets import load_from_disk
    from PIL import Image

    (tmp_path / "train2017").mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "train2017" / f"{i:012d}.jpg")
    coco = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(2)],
        "annotations": [
            {"id": 10, "image_id": 0, "caption": "A red card."},
            {"id": 11, "image_id": 0, "caption": "Something red fills the frame."},
            {"id": 12, "image_id": 1, "caption": "A blue card."},
        ],
    }
    sharegpt = [
        {"id": "s1", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "s2", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    (tmp_path / "sharegpt.json").write_text(json.dumps(sharegpt))
    out = tmp_path / "out"
    stdout = run_script(
        "examples/convert_captions.py",
        *("--model", str(checkpoint_dir("llava")), "--captions", str(tmp_path / "captions_train2017.json")),
        *("--texts", str(tmp_path / "sharegpt.json"), "--image-root", str(tmp_path / "train2017")),
        *("--output-dir", str(out), "--text-ratio", "2"),
        env=ONE_THREAD,
    )
    assert "read 3 row(s)" in stdout and "wrote 3 to" in stdout and "skipped" not in stdout
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["images"] for r in records] == [["000000000000.jpg"]] * 2 + [["000000000001.jpg"]]
    mixed = load_from_disk(str(out / "mix"))
    assert mixed["modality"].count("image") == 3 and mixed["modality"].count("text") == 4  # texts resampled x2


# ------------------------------------------------------------------------------------- batched inference


def _answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(("family", "source"), [("qwen2_vl", "--images"), ("llava", "--pairs")])
def test_batch_fused_inference_example(checkpoint_dir: Any, tmp_path: Path, family: str, source: str) -> None:
    """Left-padded batches over images of different sizes: one JSONL line per image/question, plain,
    fused and the extra beta each a string, in input order."""
    from PIL import Image

    (tmp_path / "pics").mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (40 + 12 * i, 36), colour).save(tmp_path / "pics" / f"{i}.png")
    questions = ["What colour is it?", "Is there anything written in the picture?"]
    if source == "--pairs":
        pairs = [{"image": f"{i}.png", "question": q} for i in range(3) for q in questions[: i % 2 + 1]]
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        flags = ["--pairs", str(tmp_path / "pairs.jsonl"), "--image-root", str(tmp_path / "pics")]
        expected = [(p["image"], p["question"]) for p in pairs]
    else:
        flags = ["--images", str(tmp_path / "pics"), "--question", questions[0], "--question", questions[1]]
        expected = [(str(tmp_path / "pics" / f"{i}.png"), q) for i in range(3) for q in questions]
    output = tmp_path / "answers.jsonl"
    stdout = run_script(
        "examples/batch_fused_inference.py",
        *("--model", str(checkpoint_dir(family)), *flags, "--batch-size", "4", "--max-new-tokens", "4"),
        *("--also-beta", "0.2", "--output", str(output)),
        env=ONE_THREAD,
    )
    rows = _answers(output)
    assert [(r["image"], r["question"]) for r in rows] == expected
    for row in rows:
        assert all(isinstance(row[key], str) for key in ("plain", "fused", "fused_beta_0.2")), row
    assert stdout.count("plain: ") == stdout.count("fused: ") == len(expected)
    assert f"wrote {len(expected)} answer(s)" in stdout


def test_batch_fused_inference_fusion_config_identity(checkpoint_dir: Any, tmp_path: Path) -> None:
    """Generated pictures; a fusion config with alpha=1, beta=0 makes the fused answers the plain ones."""
    (tmp_path / "fusion.json").write_text(json.dumps({"alpha": 1.0, "beta": 0.0}))
    output = tmp_path / "answers.jsonl"
    stdout = run_script(
        "examples/batch_fused_inference.py",
        *("--model", str(checkpoint_dir("qwen2_vl")), "--fusion-config", str(tmp_path / "fusion.json")),
        *("--batch-size", "3", "--max-new-tokens", "6", "--output", str(output)),
        env=ONE_THREAD,
    )
    rows = _answers(output)
    assert len(rows) == 10 and len({r["image"] for r in rows}) == 5  # 5 generated pictures x 2 default questions
    assert all(r["plain"] == r["fused"] for r in rows)
    assert "beta=0.0" in stdout


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("examples/batch_fused_inference.py", ("--images", "no-such-folder"), "--images no-such-folder: no such file"),
        ("examples/batch_fused_inference.py", ("--pairs", "missing.jsonl"), "--pairs missing.jsonl: no such file"),
        ("examples/convert_captions.py", ("--captions", "missing.json"), "--captions missing.json: no such file"),
        ("examples/convert_captions.py", ("--texts", "missing.json"), "--texts missing.json: no such file"),
        ("examples/fused_generate.py", ("--image", "missing.jpg"), "--image missing.jpg: no such file"),
    ],
)
def test_examples_name_a_missing_input_without_a_traceback(
    tmp_path: Path, script: str, args: tuple[str, ...], message: str
) -> None:
    """Checked before any model is loaded (the model path does not even exist) and before any output."""
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--model", str(tmp_path / "no-model"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
    )
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
