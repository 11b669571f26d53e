"""Helpers for the tests that launch two training processes on CPU (gloo): ports, environment, logs.

Not a test module: imported by ``test_distributed.py``, ``test_sharded.py`` and ``test_launchers.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCELERATE = str(BIN / "accelerate")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NO_DEEPSPEED = "deepspeed is not installed (pip install deepspeed; its CPU accelerator runs ZeRO over gloo)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rank_env(tmp: Path) -> dict[str, str]:
    """One thread per rank (the CI machine has 2 cores), offline, no GPU, a private datasets cache."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp / "hf_datasets"),
        "CUDA_VISIBLE_DEVICES": "",
    }


@dataclass
class Launch:
    """A finished (or timed-out) launch: exit status (None on timeout), output, wall time."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, n: int = 4000) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f} s; stderr tail:\n{self.stderr[-n:]}"


def launch(command: list[str], tmp: Path, timeout: float) -> Launch:
    """Run ``command`` from the repository root; a timeout is a result (a hang), not an exception."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=rank_env(tmp))
    except subprocess.TimeoutExpired as error:
        out, err = (
            x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (error.stdout, error.stderr)
        )
        return Launch(None, out, err, time.perf_counter() - start)
    return Launch(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def torchrun(script_or_module: list[str], processes: int = 2) -> list[str]:
    return [
        *TORCHRUN,
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *script_or_module,
    ]


def accelerate_launch(options: list[str], script_or_module: list[str]) -> list[str]:
    """``accelerate launch`` with the defaults it would warn about spelled out."""
    return [
        ACCELERATE,
        "launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *options,
        *script_or_module,
    ]
