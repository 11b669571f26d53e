from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from vift_plugin import __version__
from vift_plugin.cli import main


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "ViFT" in capsys.readouterr().out


def test_console_script_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "vift_plugin", "--help"], capture_output=True, text=True, check=True)
    assert "tiny" in out.stdout


def test_tiny_subcommand_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    assert main(["tiny", "qwen2_vl", str(tmp_path / "ckpt")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt")
    assert model.config.model_type == "qwen2_vl"


def test_convert_text_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    source = tmp_path / "alpaca.json"
    rows = [{"instruction": "Add 2 and 2.", "input": "", "output": "4"}, {"instruction": "Say hi", "output": ""}]
    source.write_text(json.dumps(rows))
    output = tmp_path / "text.jsonl"
    assert main(["convert", "text", str(source), "-o", str(output)]) == 2
    assert "alpaca.json:1: turn 1 (assistant) is empty" in capsys.readouterr().err
    assert not output.exists()
    assert main(["convert", "text", str(source), "-o", str(output), "--skip-bad", "--to", "llava"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == [
        {"id": "0", "conversations": [{"from": "human", "value": "Add 2 and 2."}, {"from": "gpt", "value": "4"}]}
    ]
    assert "skipped 1 bad row(s)" in capsys.readouterr().out
