from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vift_plugin import FusionConfig


def test_json_round_trip_is_sorted_and_exact(tmp_path: Path) -> None:
    config = FusionConfig(alpha=0.9, beta=0.15, layers=[-2, -1], tokens="all_text", mode="official", text_cache_size=4)
    path = config.save_pretrained(tmp_path)
    text = path.read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert FusionConfig.from_pretrained(tmp_path) == config
    assert FusionConfig.from_pretrained(path) == config
    assert not list(tmp_path.glob("*.tmp"))


def test_load_ignores_unknown_keys_and_logs_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "vift_fusion_config.json").write_text(json.dumps({"beta": 0.2, "from_the_future": 1}))
    with caplog.at_level(logging.WARNING):
        assert FusionConfig.from_pretrained(tmp_path) == FusionConfig(beta=0.2)
    assert "from_the_future" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha must be > 0"),
        ({"beta": -0.1}, ValueError, "beta must be >= 0"),
        ({"beta": "0.1"}, TypeError, "beta must be a number"),
        ({"tokens": "images"}, ValueError, "tokens must be"),
        ({"mode": "fast"}, ValueError, "mode must be"),
        ({"layers": []}, ValueError, "layers must be"),
        ({"layers": [1.5]}, ValueError, "layers must be"),
        ({"text_cache_size": -1}, ValueError, "text_cache_size"),
    ],
)
def test_validation_names_the_problem(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FusionConfig(**kwargs)  # type: ignore[arg-type]


def test_large_beta_warns() -> None:
    with pytest.warns(UserWarning, match="0.4"):
        FusionConfig(beta=0.5)


def test_resolve_layers() -> None:
    assert FusionConfig().resolve_layers(28) == list(range(14, 28))
    assert FusionConfig().resolve_layers(5) == [2, 3, 4]
    assert FusionConfig(layers=[-1, 0, 3]).resolve_layers(4) == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        FusionConfig(layers=[4]).resolve_layers(4)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no fusion config"):
        FusionConfig.from_pretrained(tmp_path)
