"""Issue 14, items 6 and 7: every float setting is finite, and a failed ``enable_vift`` changes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import conversation, encode
from tests.evaluation.conftest import colour_rows, write_jsonl
from vift_plugin import FusionConfig, enable_vift, fusion_config
from vift_plugin.cli import main

BAD = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_fusion_config_refuses_nan_and_inf(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        FusionConfig(**{name: value})
    with pytest.raises(ValueError, match="finite"):
        FusionConfig().replace(**{name: value})


@pytest.mark.parametrize("value", BAD)
def test_training_and_data_arguments_refuse_nan_and_inf(tmp_path: Path, value: float) -> None:
    from vift_plugin.data.mixing import resample
    from vift_plugin.training.arguments import DataArguments, ViFTTrainingArguments

    common: dict[str, Any] = dict(output_dir=str(tmp_path), report_to="none")
    for name in ("alpha", "beta"):
        with pytest.raises(ValueError, match="fusion_config: .*finite"):
            ViFTTrainingArguments(**common, fusion_config=json.dumps({name: value}))
    for name in ("vision_lr", "connector_lr", "language_lr"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            ViFTTrainingArguments(**common, **{name: value})
    with pytest.raises(ValueError, match="lora_dropout"):
        ViFTTrainingArguments(**common, lora_dropout=value)
    for name in ("caption_ratio", "text_ratio"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            DataArguments(caption_files=["c.jsonl"], **{name: value})
    with pytest.raises(ValueError, match="finite"):
        resample([1, 2, 3], value)


@pytest.mark.parametrize("field", ["alpha", "beta"])
def test_demo_config_refuses_nan_before_training(field: str) -> None:
    from vift_plugin.toy.demo import DemoConfig

    with pytest.raises(ValueError, match="finite"):
        DemoConfig(**{field: math.nan})
    with pytest.raises(ValueError, match="finite"):
        DemoConfig(sweep_betas=(0.1, math.inf))


@pytest.mark.parametrize(
    ("command", "flags"),
    [("eval", ["--beta", "nan"]), ("eval", ["--alpha", "inf"]), ("sweep", ["--betas", "0.1", "nan"])],
)
def test_cli_refuses_nan_and_inf(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, flags: list[str]
) -> None:
    data = write_jsonl(tmp_path / "bench.jsonl", colour_rows(tmp_path)[:2])
    out = tmp_path / "out"
    argv = [command, str(checkpoint_dir("qwen2_vl")), "--data", str(data), "--no-progress", "--output-dir", str(out)]
    assert main([*argv, *flags]) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"layers": [99]}, "out of range"),
        ({"beta": math.nan}, "finite"),
        ({"layers_path": "model.nowhere"}, "has no attribute"),
        ({"alpha": -1.0}, "alpha must be > 0"),
    ],
)
def test_a_failed_enable_vift_leaves_the_fusion_that_was_on(
    tiny: tuple[Any, Any], bad: dict[str, Any], message: str
) -> None:
    model, processor = tiny
    inputs = encode(processor, [conversation("What colour is it?")])
    enable_vift(model, beta=0.4, processor=processor)
    before = fusion_config(model)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with pytest.raises((ValueError, AttributeError, TypeError), match=message):
        enable_vift(model, processor=processor, **bad)
    assert fusion_config(model) == before == FusionConfig(beta=0.4)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"alpha": 1.0,\n "beta": 0.1', r"vift_fusion_config.json:2: invalid JSON"),
        (b'{"alpha": 1.0,\n "beta": 0.1, "note": "caf\xe9"}', r"vift_fusion_config.json:2: not UTF-8"),
        (b'\xef\xbb\xbf{"alpha": 1.0, "beta": 0.25}', None),
    ],
    ids=["truncated", "not-utf8", "bom"],
)
def test_a_damaged_fusion_config_file_is_named(content: bytes, expected: str | None, tmp_path: Path) -> None:
    (tmp_path / "vift_fusion_config.json").write_bytes(content)
    if expected is None:
        assert FusionConfig.from_pretrained(tmp_path).beta == 0.25
        return
    with pytest.raises(ValueError, match=expected):
        FusionConfig.from_pretrained(tmp_path)
