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
