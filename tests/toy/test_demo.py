"""``vift demo --quick`` end to end: a real model trained, fusion weights swept on dev, evaluated plain and
fused, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vift_plugin import FusionConfig
from vift_plugin.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--output-dir", str(root)]) == 0
    return root


def summary(root: Path, folder: str = "eval-vift") -> dict:
    return json.loads((root / folder / "summary.json").read_text(encoding="utf-8"))["modes"]


def test_fused_answers_follow_the_answer_format_more_often_than_plain(quick_demo: Path) -> None:
    plain, swept = summary(quick_demo)["plain"], summary(quick_demo, "eval-vift-swept")["fused"]
    assert plain["n"] == swept["n"] == 120
    assert swept["format_rate"] >= plain["format_rate"] + 0.25, (plain, swept)
    predictions = [json.loads(line) for line in (quick_demo / "eval-vift-swept" / "predictions.jsonl").open()]
    assert sum("answer :" in p["prediction"] for p in predictions) == swept["formatted"]


def test_swept_fusion_weights_come_from_dev_and_load(quick_demo: Path) -> None:
    chosen = FusionConfig.from_pretrained(quick_demo / "sweep-vift" / "best_fusion_config.json")
    rows = [json.loads(line) for line in (quick_demo / "sweep-vift" / "sweep.jsonl").open()]
    assert {row["n"] for row in rows} == {60}
    best = max(rows, key=lambda r: (r["accuracy"], r["format_rate"], -r["beta"], r["first_layer"]))
    assert (chosen.alpha, chosen.beta, chosen.layers) == (best["alpha"], best["beta"], best["layers"])
    used = json.loads((quick_demo / "eval-vift-swept" / "summary.json").read_text(encoding="utf-8"))["fusion_config"]
    assert (used["alpha"], used["beta"], used["layers"]) == (chosen.alpha, chosen.beta, chosen.layers)


def test_every_stage_learned(quick_demo: Path) -> None:
    for stage in ("stage0-language", "stage1-captions", "stage2-vift"):
        state = json.loads((quick_demo / stage / "trainer_state.json").read_text(encoding="utf-8"))
        losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        assert len(losses) >= 5 and losses[-1] < 0.7 * losses[0], (stage, losses)


def test_report_holds_the_measured_table_examples_and_curves(quick_demo: Path) -> None:
    report = (quick_demo / "report.md").read_text(encoding="utf-8")
    modes = summary(quick_demo)
    swept = summary(quick_demo, "eval-vift-swept")["fused"]
    for mode in ("plain", "fused"):
        assert f"{100 * modes[mode]['accuracy']:.1f}% | {100 * modes[mode]['format_rate']:.1f}% |" in report
    assert f"swept on dev) | {100 * swept['accuracy']:.1f}% | {100 * swept['format_rate']:.1f}% |" in report
    assert "## Example outputs" in report and "Guessing" in report and "## Fusion weights" in report
    assert "](sweep-vift/heatmap_alpha_1.png)" in report
    assert (quick_demo / "sweep-vift" / "heatmap_alpha_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
