"""``vift eval`` and ``vift sweep`` end to end on tiny checkpoints, checked against in-process runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.evaluation.conftest import colour_rows, read_jsonl, write_jsonl
from vift_plugin import FusionConfig, fusion_config
from vift_plugin.cli import main
from vift_plugin.evaluation import GenerationSettings, evaluate, read_benchmark
from vift_plugin.evaluation.answers import normalize_answer
from vift_plugin.evaluation.scoring import summary_from_rows
from vift_plugin.loading import load_model

NEW_TOKENS = "6"
QUIET = ["--max-new-tokens", NEW_TOKENS, "--no-progress", "--batch-size", "3"]


def answers_of(model: Any, processor: Any, data: Path, modes: list[str], fusion: FusionConfig | None = None) -> Any:
    result = evaluate(
        model,
        processor,
        read_benchmark(data),
        modes,
        fusion=fusion,
        settings=GenerationSettings(max_new_tokens=int(NEW_TOKENS), batch_size=3, progress=False),
    )
    return {mode: result.predictions(mode) for mode in modes}


def keyed(rows: list[dict[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows if row["mode"] == mode}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_eval_writes_consistent_results(
    family: str, checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(checkpoint_dir(family))
    rows = colour_rows(tmp_path)
    rows.append({"id": "mc", "image": rows[0]["image"], "question": "Which?", "choices": ["red", "blue"], "answer": 0})
    data = write_jsonl(tmp_path / "bench.jsonl", rows)
    model, processor = load_model(path)
    expected = answers_of(model, processor, data, ["plain", "fused"], FusionConfig(beta=0.3))
    # Two open items are made right in plain mode: their reference is the model's own plain answer
    # (two whose answer is not all punctuation, which normalises to nothing and is never right).
    scorable = [i for i, answer in enumerate(expected["plain"][:-1]) if normalize_answer(answer)]
    right = {rows[i]["id"] for i in scorable[:2]}
    assert len(right) == 2
    for index in scorable[:2]:
        rows[index]["answer"] = expected["plain"][index]
    write_jsonl(data, rows)

    out = tmp_path / "out"
    assert main(["eval", path, "--data", str(data), "--beta", "0.3", "--output-dir", str(out), *QUIET]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "summary.json", "summary.md"}
    predictions = read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == 2 * len(rows)
    assert [(r["id"], r["mode"]) for r in predictions[:3]] == [("q0", "plain"), ("q0", "fused"), ("q1", "plain")]
    plain, fused = keyed(predictions, "plain"), keyed(predictions, "fused")
    assert [plain[r["id"]]["prediction"] for r in rows] == expected["plain"]
    assert [fused[r["id"]]["prediction"] for r in rows] == expected["fused"]
    assert expected["plain"] != expected["fused"]  # fusion really ran
    assert {i for i, r in plain.items() if r["correct"]} >= right
    assert plain["mc"]["answer"] == 0 and "choice" in plain["mc"] and plain["q1"]["type"] == "shade"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_items"] == len(rows)
    assert summary["fusion_config"] == FusionConfig(beta=0.3).to_dict()
    for mode, by_id in (("plain", plain), ("fused", fused)):
        assert summary["modes"][mode] == summary_from_rows(by_id.values())
    assert summary["modes"]["plain"]["correct"] >= 2
    assert set(summary["modes"]["plain"]["by_type"]) == {"colour", "shade", "(none)"}
    markdown = (out / "summary.md").read_text()
    assert markdown in printed
    accuracy = 100 * summary["modes"]["plain"]["accuracy"]
    assert f"| plain | {accuracy:.1f}% |" in markdown


def saved_run(checkpoint_dir: Any, tmp_path: Path, beta: float) -> Path:
    """A saved ViFT run without an adapter: full weights, the processor and a fusion config."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint_dir("qwen2_vl"), run)
    FusionConfig(beta=beta).save_pretrained(run)
    return run


def test_saved_run_is_loaded_with_its_fusion_config(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = saved_run(checkpoint_dir, tmp_path, beta=0.35)
    data = write_jsonl(tmp_path / "bench.jsonl", colour_rows(tmp_path))
    model, processor = load_model(str(run))
    assert fusion_config(model) == FusionConfig(beta=0.35)
    saved = answers_of(model, processor, data, ["fused"])["fused"]
    default = answers_of(model, processor, data, ["fused"], FusionConfig())["fused"]
    assert saved != default  # so the comparison below can tell the two configs apart

    out = tmp_path / "out"
    assert main(["eval", str(run), "--data", str(data), "--modes", "fused", "--output-dir", str(out), *QUIET]) == 0
    assert "beta=0.35" in capsys.readouterr().out
    rows = read_jsonl(out / "predictions.jsonl")
    assert {r["mode"] for r in rows} == {"fused"}
    assert [r["prediction"] for r in rows] == saved
    assert json.loads((out / "summary.json").read_text())["fusion_config"]["beta"] == 0.35

    override = tmp_path / "override"
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(data),
                "--modes",
                "fused",
                "--beta",
                "0.1",
                "--output-dir",
                str(override),
                *QUIET,
            ]
        )
        == 0
    )
    assert [r["prediction"] for r in read_jsonl(override / "predictions.jsonl")] == default


def test_sweep_heatmap_and_best_config_feed_back_into_eval(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(checkpoint_dir("qwen2_vl"))
    rows = colour_rows(tmp_path)
    data = write_jsonl(tmp_path / "bench.jsonl", rows)
    model, processor = load_model(path)
    target = FusionConfig(beta=0.3, layers=[2, 3])
    answers = answers_of(model, processor, data, ["fused"], target)["fused"]
    other = answers_of(model, processor, data, ["fused"], FusionConfig(beta=0.3, layers=[3]))["fused"]
    plain = answers_of(model, processor, data, ["plain"])["plain"]
    assert answers != other and answers != plain and all(normalize_answer(a) for a in answers)
    # The references are the answers at (beta 0.3, first layer 2): that point alone scores 100%.
    write_jsonl(data, [{**row, "answer": answer} for row, answer in zip(rows, answers, strict=True)])

    out = tmp_path / "sweep"
    argv = ["sweep", path, "--data", str(data), "--betas", "0", "0.3", "--first-layers", "2", "-1"]
    assert main([*argv, "--output-dir", str(out), *QUIET]) == 0
    assert "best: alpha=1 beta=0.3 first layer=2 accuracy=100.0%" in capsys.readouterr().out
    points = read_jsonl(out / "sweep.jsonl")
    assert [(p["beta"], p["first_layer"], p["layers"]) for p in points] == [
        (0.0, 2, [2, 3]),
        (0.3, 2, [2, 3]),
        (0.0, 3, [3]),
        (0.3, 3, [3]),
    ]
    assert [p["accuracy"] for p in points][1] == 1.0 and max(p["accuracy"] for i, p in enumerate(points) if i != 1) < 1
    assert points[0]["accuracy"] == points[2]["accuracy"] == points[0]["plain_accuracy"]  # beta 0 is plain

    with Image.open(out / "heatmap_alpha_1.png") as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()
    best = FusionConfig.from_pretrained(out / "best_fusion_config.json")
    assert (best.alpha, best.beta, best.layers) == (1.0, 0.3, [2, 3])

    again = tmp_path / "again"
    argv = [
        "eval",
        path,
        "--data",
        str(data),
        "--modes",
        "fused",
        "--fusion-config",
        str(out / "best_fusion_config.json"),
    ]
    assert main([*argv, "--output-dir", str(again), *QUIET]) == 0
    assert json.loads((again / "summary.json").read_text())["modes"]["fused"]["accuracy"] == 1.0


def test_cli_reports_bad_rows_and_missing_images(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = colour_rows(tmp_path)
    data = write_jsonl(tmp_path / "bench.jsonl", [rows[0], {**rows[1], "question": 3}])
    path = str(checkpoint_dir("qwen2_vl"))
    assert main(["eval", path, "--data", str(data), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"vift eval: error: {data}:2: 'question' must be a non-empty string" in capsys.readouterr().err
    write_jsonl(data, [rows[0], {**rows[1], "image": "gone.png"}])
    assert main(["sweep", path, "--data", str(data), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{data}:2: {tmp_path / 'gone.png'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
