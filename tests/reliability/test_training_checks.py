"""Issue 14, items 5 and 11: ``vift train`` refuses, before the model loads and with exit code 2,
data that would never train (a modality with no optimizer step, an epoch with no step, text batches
that reach no trainable weight) and bad settings (malformed YAML, zero gradient accumulation); any
sample the sampler drops is a visible warning with counts."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vift_plugin.cli import main
from vift_plugin.data.collator import ViFTDataCollator
from vift_plugin.testing.records import write_toy_records
from vift_plugin.training import ModelArguments, ViFTTrainer, ViFTTrainingArguments, load_model_and_processor
from vift_plugin.training.arguments import DataArguments
from vift_plugin.training.run import build_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """12 caption and 8 text records under ``tmp_path/data``."""
    write_toy_records(tmp_path / "data", captions=12, texts=8)
    return tmp_path / "data"


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the weights fails the test: the check must come first."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("vift_plugin.training.model.load_training_model", refuse)


def error_line(stderr: str) -> str:
    """The one ``vift train: error:`` line (progress bars may precede it), never a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("vift train: error: "), stderr
    return errors[0]


def write_config(path: Path, checkpoint: Path, data: Path, **settings: Any) -> Path:
    config = {
        "model_name_or_path": str(checkpoint),
        "output_dir": str(path.parent / "run"),
        "image_root": str(data),
        "caption_files": [str(data / "captions.jsonl")],
        "text_files": [str(data / "text.jsonl")],
        "freeze_vision": True,
        "max_steps": 2,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **settings,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            dict(per_device_train_batch_size=3, gradient_accumulation_steps=3),
            r"12 image, 8 text with 9 samples per optimizer step .* give no step of text.*remainder='fill'",
        ),
        (dict(per_device_train_batch_size=16), r"give no optimizer step at all.*smaller per-device batch"),
        (
            dict(freeze_language=True),
            r"8 text sample\(s\) but only connector train\(s\).*Unfreeze the language model",
        ),
    ],
    ids=["text-never-trained", "no-step-at-all", "text-reaches-no-trainable-role"],
)
def test_data_that_would_never_train_is_refused_before_the_model_loads(
    settings: dict[str, Any],
    expected: str,
    data: Path,
    checkpoint_dir: Any,
    tmp_path: Path,
    no_model_load: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "cfg.yaml", checkpoint_dir("qwen2_vl"), data, **settings)
    assert main(["train", str(config)]) == 2
    error = error_line(capsys.readouterr().err)
    assert re.search(expected, error), error
    assert not (tmp_path / "run").exists()


def test_fill_keeps_the_modality_the_drop_would_starve(
    data: Path, checkpoint_dir: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dict(per_device_train_batch_size=3, gradient_accumulation_steps=3, remainder="fill", max_steps=3)
    config = write_config(tmp_path / "cfg.yaml", checkpoint_dir("qwen2_vl"), data, **settings)
    assert main(["train", str(config)]) == 0
    assert (tmp_path / "run" / "trainer_state.json").is_file()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "leaves out" in r.getMessage()]


def test_dropped_samples_are_a_warning_with_counts(
    data: Path, checkpoint_dir: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "cfg.yaml", checkpoint_dir("qwen2_vl"), data, per_device_train_batch_size=5)
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(config)]) == 0
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "leaves out" in r.getMessage()
    ]
    assert warnings == [
        "every epoch leaves out 2 image and 3 text sample(s) (of 12 image, 8 text) that do not fill "
        "an optimizer step of 5; to keep them, use remainder='fill' (--remainder fill), or a smaller "
        "per-device batch or gradient accumulation."
    ]


def test_trainer_refuses_text_data_when_only_the_connector_trains(
    data: Path, checkpoint_dir: Any, tmp_path: Path
) -> None:
    """The library path (no ``vift train``) fails before the first step, not mid-run in backward()."""
    args = ViFTTrainingArguments(
        output_dir=str(tmp_path / "run"),
        image_root=str(data),
        freeze_vision=True,
        freeze_language=True,
        per_device_train_batch_size=2,
        max_steps=2,
        report_to=[],
        use_cpu=True,
    )
    model, processor = load_model_and_processor(ModelArguments(str(checkpoint_dir("qwen2_vl"))), args)
    data_args = DataArguments(caption_files=[str(data / "captions.jsonl")], text_files=[str(data / "text.jsonl")])
    dataset = build_dataset(data_args, processor, args)
    trainer = ViFTTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=ViFTDataCollator(processor, image_root=data)
    )
    with pytest.raises(ValueError, match=r"8 text sample\(s\) but only connector train\(s\)"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(
    ("config_text", "flags", "expected"),
    [
        ("model_name_or_path: [unclosed\n", [], r"cfg.yaml: not valid YAML \(line 2, column 1\)"),
        ("model_name_or_path: x\n\tbad: tab\n", [], r"cfg.yaml: not valid YAML \(line 2"),
        (
            None,
            ["--gradient_accumulation_steps", "0"],
            r"gradient_accumulation_steps must be a positive integer, got 0\.",
        ),
        (None, ["--per_device_train_batch_size", "0"], r"per_device_train_batch_size must be a positive integer"),
    ],
    ids=["unclosed-bracket", "tab-indent", "accumulation-0", "batch-0"],
)
def test_bad_config_or_settings_are_one_line_errors(
    config_text: str | None,
    flags: list[str],
    expected: str,
    data: Path,
    checkpoint_dir: Any,
    tmp_path: Path,
    no_model_load: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "cfg.yaml"
    if config_text is None:
        write_config(config, checkpoint_dir("qwen2_vl"), data)
    else:
        config.write_text(config_text)
    assert main(["train", str(config), *flags]) == 2
    error = error_line(capsys.readouterr().err)
    assert re.search(expected, error), error


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda text: text[: len(text) - 20], r"text.jsonl:8: invalid JSON .*truncated\?"),
        (lambda text: text.replace("plus", "pl\udce9s", 1), r"text.jsonl:1: not UTF-8"),
    ],
    ids=["truncated", "not-utf8"],
)
def test_a_bad_record_file_is_named_before_the_model_loads(
    damage: Any,
    expected: str,
    data: Path,
    checkpoint_dir: Any,
    tmp_path: Path,
    no_model_load: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    texts = data / "text.jsonl"
    texts.write_bytes(damage(texts.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))
    config = write_config(tmp_path / "cfg.yaml", checkpoint_dir("qwen2_vl"), data)
    assert main(["train", str(config)]) == 2
    assert re.search(expected, error_line(capsys.readouterr().err))


def test_a_truncated_image_is_named_before_the_model_loads_or_skipped_when_asked(
    data: Path,
    checkpoint_dir: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    picture = data / "images" / "0003.png"
    picture.write_bytes(picture.read_bytes()[: picture.stat().st_size // 2])
    config = write_config(tmp_path / "cfg.yaml", checkpoint_dir("qwen2_vl"), data)
    with monkeypatch.context() as patch:
        patch.setattr("vift_plugin.training.model.load_training_model", lambda *a, **k: pytest.fail("model loaded"))
        assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and "vift train: error: 1 row(s) have an image that cannot be used" in error
    assert re.search(r"row 3 \(id 'c3'\): .*0003.png.*truncated", error), error
    assert "--skip_bad_images true" in error
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(config), "--skip_bad_images", "true"]) == 0
    assert any("left out 1 row(s) of 12" in r.getMessage() and "0003.png" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "trainer_state.json").is_file()
