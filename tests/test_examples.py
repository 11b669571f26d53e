"""Smoke runs of the examples and benchmarks on tiny checkpoints, as a user would start them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str) -> str:
    """Run a repository script in a fresh interpreter; return its stdout, failing with its stderr."""
    out = subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_fused_generate_example(checkpoint_dir: Any, family: str) -> None:
    stdout = run_script(
        "examples/fused_generate.py", "--model", str(checkpoint_dir(family)), "--max-new-tokens", "5", "--beta", "0.3"
    )
    assert "plain:" in stdout and "fused:" in stdout


def test_fusion_benchmark_runs_and_prints_ratios() -> None:
    stdout = run_script("benchmarks/bench_fusion.py", "--repeats", "1", "--new-tokens", "4")
    assert "ratios: live" in stdout and "official" in stdout


def test_data_benchmark_runs_and_prints_figures() -> None:
    stdout = run_script(
        "benchmarks/bench_data.py", "--rows", "2000", "--captions", "6000", "--texts", "1000", "--batch-size", "4"
    )
    assert "captions/s" in stdout and "ModalityGroupedSampler" in stdout and "LLaVA-style" in stdout
    default = re.search(r"ModalityGroupedSampler window=\d+ \(default\)\s+[\d,]+\s+([\d.]+)%\s+(\d+)/", stdout)
    assert default is not None, stdout
    assert float(default.group(1)) <= 5.0 and default.group(2) == "0", "<= 5% padding, no mixed step"


def test_training_benchmark_runs_lora_and_qlora() -> None:
    stdout = run_script("benchmarks/bench_train.py", "--size", "small", "--steps", "1", "--tokens", "400")
    rows = [line.split() for line in stdout.splitlines() if line.startswith("small ")]
    assert [row[1] for row in rows] == ["lora", "qlora"]
    assert all(int(row[2]) == 400 and float(row[3]) > 0 for row in rows)
