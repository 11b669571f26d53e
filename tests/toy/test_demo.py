"""``vift demo --quick`` end to end: a real model trained, evaluated plain and fused, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vift_plugin.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--output-dir", str(root)]) == 0
    return root


def summary(root: Path) -> dict:
    return json.loads((root / "eval-vift" / "summary.json").read_text(encoding="utf-8"))["modes"]


@pytest.mark.xfail(
    reason="Not reached yet: at this scale fusion (beta 0.1-1.5, top-half or all layers) leaves the answer format "
    "of the shapes-world model unchanged (README, Limitations); the assertion stays to show when a recipe does.",
    strict=False,
)
def test_fused_answers_follow_the_answer_format_more_often_than_plain(quick_demo: Path) -> None:
    modes = summary(quick_demo)
    assert modes["plain"]["n"] == modes["fused"]["n"] == 120
    assert modes["fused"]["format_rate"] > modes["plain"]["format_rate"]


def test_every_stage_learned(quick_demo: Path) -> None:
    for stage in ("stage0-language", "stage1-captions", "stage2-vift"):
        state = json.loads((quick_demo / stage / "trainer_state.json").read_text(encoding="utf-8"))
        losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        assert len(losses) >= 5 and losses[-1] < 0.7 * losses[0], (stage, losses)


def test_report_holds_the_measured_table_examples_and_curves(quick_demo: Path) -> None:
    report = (quick_demo / "report.md").read_text(encoding="utf-8")
    modes = summary(quick_demo)
    for mode in ("plain", "fused"):
        assert f"{100 * modes[mode]['accuracy']:.1f}%" in report
    assert "## Example outputs" in report and "Guessing" in report
    for stage in ("stage0-language", "stage1-captions", "stage2-vift"):
        assert f"]({stage}/loss.png)" in report
        assert (quick_demo / stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = [json.loads(line) for line in (quick_demo / "eval-vift" / "predictions.jsonl").open()]
    assert len(predictions) == 2 * 120
    formatted = sum(p["formatted"] for p in predictions if p["mode"] == "fused")
    assert formatted == round(modes["fused"]["format_rate"] * 120)


def test_second_run_reuses_the_trained_stages(quick_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (quick_demo / "stage2-vift" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--quick", "--output-dir", str(quick_demo)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (quick_demo / "stage2-vift" / "model.safetensors").stat().st_mtime_ns == before
