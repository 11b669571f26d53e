"""``scripts/gpu_check.py``: the dry run on CPU runs every step at tiny sizes and records them; a failed
or timed-out step is recorded and the run goes on; the GPU form names the real sizes and refuses a CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # a whole dry run of the GPU check, and the script in subprocesses

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
STEPS = ["env", "pytest_gpu", "fused_generate", "bench_fusion", "train_2b_lora", "demo_quick", "train_7b_qlora"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One whole dry run (about 50 s on 2 CPU cores), shared by the tests that read what it wrote."""
    out = tmp_path_factory.mktemp("gpu_check") / "run"
    return out, run("--dry-run", "--out", str(out))


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_dry_run_passes_every_step_and_records_its_figures(dry_run: tuple[Path, Any]) -> None:
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["ok"] is True
    assert summary["wall_s"] <= summary["budget_s"]
    steps = {record["name"]: record for record in summary["steps"]}
    assert list(steps) == STEPS
    for name, record in steps.items():
        assert record["status"] == "passed", (name, record.get("output_tail"))
        assert record["wall_s"] > 0 and record["command"] and (out / record["log"]).is_file()
    env = steps["env"]["figures"]
    assert env["cuda_available"] is False and env["versions"]["transformers"]
    tests = steps["pytest_gpu"]["figures"]
    assert tests["skipped"] == tests["tests"] >= 3 and tests["failures"] == tests["errors"] == 0  # no CUDA here
    fused = steps["fused_generate"]["figures"]
    assert fused["ok"] and fused["passed"] == fused["total"] == 2
    assert {case["loading"] for case in fused["cases"]} == {"device_map_auto", "4bit"}
    for case in fused["cases"]:
        assert case["live_tokens_equal"] and case["official_tokens_equal"] and case["beta_0.3_changes_logits"]
        assert case["new_tokens"] == 8
    assert next(c for c in fused["cases"] if c["loading"] == "4bit")["quantized_linears"] > 0
    fusion = steps["bench_fusion"]["figures"]
    assert fusion["size"] == "small" and fusion["median_ms"]["plain"] > 0
    assert set(fusion["ratio"]) == {"live", "official"} and all(r > 0 for r in fusion["ratio"].values())
    for name, mode in (("train_2b_lora", "lora"), ("train_7b_qlora", "qlora")):
        figures = steps[name]["figures"]
        assert figures["mode"] == mode and figures["size"] == "small"  # tiny in the dry run
        assert figures["peak_GiB"] > 0 and figures["s_per_step"] > 0 and figures["tokens"] > 256
    assert {"vift-plain", "vift-fused", "vift-cascade"} <= set(steps["demo_quick"]["figures"]["exact_match"])


def test_dry_run_markdown_lists_each_step_with_status_time_and_figures(dry_run: tuple[Path, Any]) -> None:
    out, _ = dry_run
    text = (out / "summary.md").read_text()
    assert "dry run on CPU" in text and "all steps passed" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == STEPS
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == "passed" and float(cells[2]) > 0 and cells[3]
    assert "ms; live" in text and "official" in text and "s/step" in text and "2/2 cases identical" in text
    for name in STEPS:
        assert f"## `{name}`" in text


def test_gpu_form_names_the_real_sizes(tmp_path: Path) -> None:
    done = run("--list", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    commands = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert list(commands) == STEPS
    assert "--size qwen2-vl-2b" in commands["bench_fusion"] and "--device cuda" in commands["bench_fusion"]
    assert "--size qwen2-vl-2b" in commands["train_2b_lora"] and "--mode lora" in commands["train_2b_lora"]
    assert "--size qwen2-vl-7b" in commands["train_7b_qlora"] and "--mode qlora" in commands["train_7b_qlora"]
    assert "demo --quick" in commands["demo_quick"] and "--vift-steps" not in commands["demo_quick"]
    assert "-m gpu" in commands["pytest_gpu"]
    assert not tmp_path.joinpath("summary.json").exists()


def test_gpu_form_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run("--out", str(tmp_path / "run"), "--only", "env", timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_failed_or_timed_out_step_is_recorded_and_the_run_goes_on(gpu_check: ModuleType, tmp_path: Path) -> None:
    ctx = gpu_check.Context(tmp_path, dry_run=True)
    (tmp_path / "logs").mkdir()
    ctx.work.mkdir()

    def python(code: str) -> Any:
        return lambda _: [sys.executable, "-c", code]

    def no_figures(_: Any) -> dict[str, Any]:
        raise FileNotFoundError("no result file")

    crash = gpu_check.Step("crash", "exits 3", python("print('boom'); raise SystemExit(3)"), 60, 60, no_figures)
    hang = gpu_check.Step("hang", "sleeps", python("import time; time.sleep(60)"), 60, 1.5, no_figures)
    silent = gpu_check.Step("silent", "exits 0, writes nothing", python("pass"), 60, 60, no_figures)
    records = [gpu_check.run_step(step, ctx, remaining_s=100) for step in (crash, hang, silent)]
    assert [r["status"] for r in records] == ["failed", "timeout", "failed"]
    assert records[0]["returncode"] == 3 and "boom" in records[0]["output_tail"]
    assert records[1]["wall_s"] < 30 and "killed after" in records[1]["error"]
    assert "no figures" in records[2]["error"]
    late = gpu_check.run_step(silent, ctx, remaining_s=1)
    assert late["status"] == "skipped" and "budget" in late["error"]
    summary = {"started": "now", "dry_run": True, "device": "CPU", "wall_s": 3.0, "budget_s": 100.0, "ok": False}
    text = gpu_check.markdown({**summary, "steps": [*records, late]})
    assert "some steps did not pass" in text and "| `crash` | failed |" in text and "| `hang` | timeout |" in text
    assert "boom" in text and "| `silent` | skipped |" in text
