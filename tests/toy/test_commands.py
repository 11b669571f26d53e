"""``vift demo`` argument handling: the quick and the full demo keep their outputs apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vift_plugin.cli import main
from vift_plugin.toy import demo


@pytest.mark.parametrize(
    ("argv", "output_dir", "model_size"),
    [
        (["demo"], "vift_demo", "demo"),
        (["demo", "--quick"], "vift_demo_quick", "tiny"),
        (["demo", "--quick", "--output-dir", "elsewhere"], "elsewhere", "tiny"),
    ],
)
def test_quick_and_full_demo_default_to_separate_folders(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], output_dir: str, model_size: str
) -> None:
    seen: list[demo.DemoConfig] = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    assert main(argv) == 0
    assert [(c.output_dir, c.model_size) for c in seen] == [(output_dir, model_size)]


def test_command_line_overrides_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[demo.DemoConfig] = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    argv = ["demo", "--quick", "--beta", "0.3", "--recipe", "restate", "--vift-steps", "7", "--align-steps", "9"]
    main([*argv, "--no-baseline", "--no-sweep"])
    (config,) = seen
    assert (config.beta, config.recipe, config.vift_steps, config.align_steps, config.baseline, config.sweep) == (
        0.3,
        "restate",
        7,
        9,
        False,
        False,
    )
    assert demo.DemoConfig().baseline and [p.name for p in demo.DemoConfig().stages()][-1] == "baseline"
    assert config.language_steps == demo.DemoConfig.quick().language_steps


def test_unknown_recipe_is_named() -> None:
    with pytest.raises(ValueError, match="recipe must be one of .*'talk'"):
        demo.DemoConfig(recipe="talk")


def fake_run(config: demo.DemoConfig) -> Path:
    """A run's result files with accuracies that depend on the seed: 0.2, 0.3, 0.4 plain; 0.5 + seed/10 cascade."""
    root = Path(config.output_dir)
    root.mkdir(parents=True)
    rows = [
        {
            "key": "vift-plain",
            "label": "ViFT",
            "mode": "plain",
            "predictions": [],
            "summary": {"accuracy": 0.2 + config.seed / 10, "by_type": {"colour": {"accuracy": config.seed / 4}}},
        },
        {
            "key": "vift-cascade",
            "label": "ViFT",
            "mode": "cascade",
            "predictions": [],
            "summary": {"accuracy": 0.5 + config.seed / 10, "by_type": {"colour": {"accuracy": 1.0}}},
        },
    ]
    (root / "results.json").write_text(json.dumps({"seed": config.seed, "rows": rows}))
    stage = {
        "stage": "vift",
        "loss_right_images": 0.1,
        "loss_shuffled_images": 2.0 + config.seed,
        "caption_exact_match": 0.5,
        "distinct_captions": 9,
    }
    (root / "perception.json").write_text(json.dumps([stage]))
    (root / "report.md").write_text("run")
    return root / "report.md"


def test_seeds_report_mean_and_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "run_demo", fake_run)
    assert main(["demo", "--quick", "--seeds", "0", "1", "2", "1", "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["seed-0", "seed-1", "seed-2"]
    report = (tmp_path / "report.md").read_text()
    assert "| ViFT (captions + text only) | plain | 30.0% (20.0-40.0) | 25.0% (0.0-50.0) |" in report
    assert (
        "| cascade (describe, then answer from the description) | 60.0% (50.0-70.0) | 100.0% (100.0-100.0) |" in report
    )
    assert "vift 0.100 vs 4.000" in report and "(seed-2/report.md)" in report
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
