"""``vift demo --quick`` end to end: a real model trained, its image reliance measured, fusion weights swept on
dev, evaluated plain, fused and by the cascade, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vift_plugin import FusionConfig
from vift_plugin.cli import main

pytestmark = pytest.mark.slow  # every test reads one `vift demo --quick` run


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--output-dir", str(root)]) == 0
    return root


def summary(root: Path, folder: str = "eval-vift") -> dict:
    return json.loads((root / folder / "summary.json").read_text(encoding="utf-8"))["modes"]


def test_swept_fusion_changes_the_answers(quick_demo: Path) -> None:
    plain, swept = summary(quick_demo)["plain"], summary(quick_demo, "eval-vift-swept")["fused"]
    assert plain["n"] == swept["n"] == 120
    rows = [json.loads(line) for line in (quick_demo / "eval-vift" / "predictions.jsonl").open()]
    plain_answers = {row["id"]: row["prediction"] for row in rows if row["mode"] == "plain"}
    fused = [json.loads(line) for line in (quick_demo / "eval-vift-swept" / "predictions.jsonl").open()]
    changed = sum(row["prediction"] != plain_answers[row["id"]] for row in fused)
    assert changed >= 6, changed
    assert sum(row["correct"] for row in fused) == round(swept["accuracy"] * 120)


def test_swept_fusion_weights_come_from_dev_and_load(quick_demo: Path) -> None:
    chosen = FusionConfig.from_pretrained(quick_demo / "sweep-vift" / "best_fusion_config.json")
    rows = [json.loads(line) for line in (quick_demo / "sweep-vift" / "sweep.jsonl").open()]
    assert {row["n"] for row in rows} == {60}
    best = max(rows, key=lambda r: (r["accuracy"], r["format_rate"], -r["beta"], r["first_layer"]))
    assert (chosen.alpha, chosen.beta, chosen.layers) == (best["alpha"], best["beta"], best["layers"])
    used = json.loads((quick_demo / "eval-vift-swept" / "summary.json").read_text(encoding="utf-8"))["fusion_config"]
    assert (used["alpha"], used["beta"], used["layers"]) == (chosen.alpha, chosen.beta, chosen.layers)


STAGES = ("stage0-language", "stage1-align", "stage2-captions", "stage3-vift", "stage4-baseline")


def test_every_stage_learned(quick_demo: Path) -> None:
    for stage, drop in zip(STAGES, (0.3, 0.1, 0.1, 0.3, 0.3), strict=True):
        state = json.loads((quick_demo / stage / "trainer_state.json").read_text(encoding="utf-8"))
        losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        assert len(losses) >= 5 and losses[-1] < (1 - drop) * losses[0], (stage, losses)


def test_the_trained_model_looks_at_the_picture(quick_demo: Path) -> None:
    from vift_plugin.evaluation import load_model
    from vift_plugin.toy.perception import caption_losses

    world = quick_demo / "world"
    records = [json.loads(line) for line in (world / "captions.jsonl").open()][:64]
    losses = {}
    for stage in ("stage0-language", "stage3-vift"):
        model, processor = load_model(str(quick_demo / stage), dtype="float32")
        losses[stage] = caption_losses(model, processor, records, world)
    right, shuffled = losses["stage3-vift"]
    assert shuffled > right + 0.05, losses
    blind_right, blind_shuffled = losses["stage0-language"]
    assert abs(blind_shuffled - blind_right) < 0.01, losses
    reported = {row["stage"]: row for row in json.loads((quick_demo / "perception.json").read_text())}
    assert list(reported) == ["language", "align", "captions", "vift", "baseline"]
    assert reported["vift"]["shuffle_penalty"] > 0.05 and reported["vift"]["distinct_captions"] > 10


def test_cascade_answers_from_its_own_descriptions_and_beats_plain(quick_demo: Path) -> None:
    modes = summary(quick_demo)
    assert modes["cascade"]["accuracy"] >= modes["plain"]["accuracy"] + 0.1, modes
    rows = [json.loads(line) for line in (quick_demo / "eval-vift" / "predictions.jsonl").open()]
    cascade = [row for row in rows if row["mode"] == "cascade"]
    assert len(cascade) == 120 and all(row["description"] for row in cascade)
    assert all("description" not in row for row in rows if row["mode"] != "cascade")
    report = (quick_demo / "report.md").read_text(encoding="utf-8")
    assert f"{cascade[0]['description']} → {cascade[0]['prediction']}".replace("|", "\\|") in report


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
    assert "](results.png)" in report and (quick_demo / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Does the model look at the picture?" in report
    for stage in STAGES:
        assert f"]({stage}/loss.png)" in report
        assert (quick_demo / stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = [json.loads(line) for line in (quick_demo / "eval-vift" / "predictions.jsonl").open()]
    assert len(predictions) == 3 * 120
    formatted = sum(p["formatted"] for p in predictions if p["mode"] == "fused")
    assert formatted == round(modes["fused"]["format_rate"] * 120)


def test_second_run_reuses_the_trained_stages(quick_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (quick_demo / "stage3-vift" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--quick", "--output-dir", str(quick_demo)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (quick_demo / "stage3-vift" / "model.safetensors").stat().st_mtime_ns == before


def test_a_stage_trained_by_other_code_is_retrained_not_reused(
    quick_demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README once showed seeds whose stages had been reused from an older checkout: the stage record
    now holds a digest of the code, and a stage whose record names other code is trained again."""
    from vift_plugin.toy.demo import STAGE_RECORD_NAME, code_digest

    record_file = quick_demo / "stage2-captions" / STAGE_RECORD_NAME
    record = json.loads(record_file.read_text(encoding="utf-8"))
    assert record["code"] == code_digest()
    record_file.write_text(json.dumps({**record, "code": "an older checkout"}), encoding="utf-8")
    before = {stage: (quick_demo / stage / "model.safetensors").stat().st_mtime_ns for stage in STAGES}
    assert main(["demo", "--quick", "--output-dir", str(quick_demo)]) == 0
    out = capsys.readouterr().out
    assert "stage2-captions: it was trained by other code or settings ==" in out
    assert "stage3-vift: its start was retrained ==" in out and "stage4-baseline: its start was retrained ==" in out
    after = {stage: (quick_demo / stage / "model.safetensors").stat().st_mtime_ns for stage in STAGES}
    assert [stage for stage in STAGES if after[stage] != before[stage]] == list(STAGES[2:])
