"""``vift demo`` argument handling: the quick and the full demo keep their outputs apart."""

from __future__ import annotations

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
    main(["demo", "--quick", "--beta", "0.3", "--recipe", "restate", "--vift-steps", "7", "--baseline", "--no-sweep"])
    (config,) = seen
    assert (config.beta, config.recipe, config.vift_steps, config.baseline, config.sweep) == (
        0.3,
        "restate",
        7,
        True,
        False,
    )
    assert config.language_steps == demo.DemoConfig.quick().language_steps


def test_unknown_recipe_is_named() -> None:
    with pytest.raises(ValueError, match="recipe must be one of .*'talk'"):
        demo.DemoConfig(recipe="talk")
