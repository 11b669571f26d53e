"""Smoke runs of the examples and benchmarks on tiny checkpoints, as a user would start them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_fused_generate_example(checkpoint_dir: Any, family: str) -> None:
    path = checkpoint_dir(family)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "fused_generate.py"),
            "--model",
            str(path),
            "--max-new-tokens",
            "5",
            "--beta",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "plain:" in out.stdout and "fused:" in out.stdout


def test_fusion_benchmark_runs_and_prints_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fusion.py"), "--repeats", "1", "--new-tokens", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratios: live" in out.stdout and "official" in out.stdout
