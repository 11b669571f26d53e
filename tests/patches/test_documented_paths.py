"""The integrations the documented ways: the re-export files under ``patches/`` (imported by path, run as
scripts) and ``python -m vift_plugin.integrations.*``, in an environment without transformers.

The launchers run in subprocesses against stand-in upstream packages written to a temporary folder:
each stand-in's ``train()``/``run_exp()`` prints the command line it got and whether the trainer
classes were patched. A ``transformers`` package that fails to import shadows the real one there, as
in LLaVA's environment where vift_plugin is installed with ``--no-deps`` beside an older release.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from transformers import Trainer

from tests.patches.conftest import ROOT, load_patch_file

HEAVY = ("transformers", "peft", "datasets", "accelerate", "pyarrow", "bitsandbytes")
LLAVA_ALIASES = ("apply_vift_to_llava", "patch_llava_trainer", "vift_llava_patch")

# Stand-in upstream packages: module path -> source. Methods have upstream's signatures.
STAND_INS = {
    "transformers/__init__.py": "raise ImportError('transformers is not installed in this environment')\n",
    "llava/__init__.py": "",
    "llava/train/__init__.py": "",
    "llava/train/llava_trainer.py": (
        "class LLaVATrainer:\n"
        "    def _get_train_sampler(self):\n        return None\n\n"
        "    def create_optimizer(self):\n        return None\n"
    ),
    "stand_in_report.py": (
        "import json, sys\n\n\n"
        "def report(**fields):\n"
        f"    heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "    print(json.dumps({'argv': sys.argv[1:], **fields, 'heavy': heavy}))\n"
    ),
    "llava/train/train.py": (
        "from llava.train.llava_trainer import LLaVATrainer\n"
        "from stand_in_report import report\n\n\n"
        "def train(**kwargs):\n"
        "    methods = (LLaVATrainer._get_train_sampler, LLaVATrainer.create_optimizer)\n"
        "    report(kwargs=kwargs, patched=[getattr(m, '_vift_patch', False) for m in methods])\n"
    ),
    "llamafactory/__init__.py": "",
    "llamafactory/train/__init__.py": "",
    "llamafactory/train/sft/__init__.py": "",
    "llamafactory/train/pt/__init__.py": "",
    "llamafactory/train/trainer_utils.py": (
        "def create_custom_optimizer(model, training_args, finetuning_args):\n    return None\n"
    ),
    "llamafactory/train/sft/trainer.py": (
        "class CustomSeq2SeqTrainer:\n"
        "    def _get_train_sampler(self, *args, **kwargs):\n        return None\n\n"
        "    def create_optimizer(self):\n        return None\n"
    ),
    "llamafactory/train/pt/trainer.py": (
        "class CustomTrainer:\n"
        "    def _get_train_sampler(self, *args, **kwargs):\n        return None\n\n"
        "    def create_optimizer(self):\n        return None\n"
    ),
    "llamafactory/train/tuner.py": (
        "from llamafactory.train.pt.trainer import CustomTrainer\n"
        "from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer\n"
        "from stand_in_report import report\n\n\n"
        "def run_exp():\n"
        "    methods = (CustomSeq2SeqTrainer.create_optimizer, CustomTrainer.create_optimizer)\n"
        "    report(patched=[getattr(m, '_vift_patch', False) for m in methods])\n"
    ),
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upstream")
    for relative, source in STAND_INS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(source, encoding="utf-8")
    return root


def run_launcher(command: list[str], upstream: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python *command`` from the stand-ins' folder; the JSON line the stand-in printed."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VIFT_")}
    environment.update(PYTHONPATH=os.pathsep.join([str(upstream), str(ROOT)]), **(env or {}))
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=upstream, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


LLAVA_FILE = str(ROOT / "patches/llava/vift_llava.py")
LLAMAFACTORY_FILE = str(ROOT / "patches/llama_factory/vift_llamafactory.py")


@pytest.mark.parametrize("command", [[LLAVA_FILE], ["-m", "vift_plugin.integrations.llava"]])
def test_llava_launchers_apply_then_run_upstream_train(command: list[str], upstream: Path) -> None:
    """``deepspeed patches/llava/vift_llava.py ...`` (as documented) and ``python -m``, without transformers."""
    arguments = ["--vift-vision-lr", "2e-6", "--vift-attn-implementation", "sdpa", "--data_path", "x.json"]
    printed = run_launcher([*command, *arguments], upstream)
    assert printed == {
        "argv": ["--data_path", "x.json"],
        "kwargs": {"attn_implementation": "sdpa"},
        "patched": [True, True],
        "heavy": [],
    }


@pytest.mark.parametrize("command", [[LLAMAFACTORY_FILE], ["-m", "vift_plugin.integrations.llamafactory"]])
def test_llamafactory_launchers_apply_then_run_exp(command: list[str], upstream: Path) -> None:
    """``torchrun ... patches/llama_factory/vift_llamafactory.py x.yaml`` and ``python -m``, without transformers."""
    arguments = ["--vift-connector-lr", "1e-5", "train.yaml"]
    printed = run_launcher([*command, *arguments], upstream, {"VIFT_VISION_LR": "2e-6"})
    assert printed == {"argv": ["train.yaml"], "patched": [True, True], "heavy": []}


@pytest.mark.parametrize(
    "command",
    [[LLAVA_FILE, "--help"], [LLAMAFACTORY_FILE, "--help"]],
)
def test_patch_files_show_their_options(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--vift-vision-lr" in result.stdout and "--vift-connector-lr" in result.stdout


def test_integrations_import_nothing_heavy() -> None:
    """The integrations import with torch, numpy and Pillow alone: transformers & co. only inside functions."""
    code = (
        "import sys\n"
        "import vift_plugin.integrations.llava, vift_plugin.integrations.llamafactory\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "relative", "package", "aliases"),
    [
        ("vift_llava", "patches/llava/vift_llava.py", "vift_plugin.integrations.llava", LLAVA_ALIASES),
        (
            "vift_llamafactory",
            "patches/llama_factory/vift_llamafactory.py",
            "vift_plugin.integrations.llamafactory",
            (),
        ),
    ],
)
def test_patch_files_re_export_the_integration(
    name: str, relative: str, package: str, aliases: tuple[str, ...]
) -> None:
    """``import vift_llava`` (the file, by path) is the integration: same objects, one registry of patches."""
    patch_file = load_patch_file(name, relative)
    integration: ModuleType = importlib.import_module(package)
    assert set(patch_file.__all__) == {*integration.__all__, *aliases}
    for public in integration.__all__:
        assert getattr(patch_file, public) is getattr(integration, public), public
    for alias in aliases:  # older names of apply, named in patches/llava/README.md
        assert getattr(patch_file, alias) is integration.apply
    assert patch_file.main is integration.main


def test_the_llava_patch_file_applies_and_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``with vift_llava.apply(...)`` and its older names, through the file."""
    patch_file = load_patch_file("vift_llava", "patches/llava/vift_llava.py")
    cls = type("LLaVATrainer", (Trainer,), {})
    for alias in ("apply", *LLAVA_ALIASES):
        with getattr(patch_file, alias)(cls, vision_lr=2e-6) as handle:
            assert patch_file.active_patches() == [handle] and handle.config.vision_lr == 2e-6
            assert getattr(cls.create_optimizer, "_vift_patch", False)
        assert "create_optimizer" not in cls.__dict__ and not patch_file.active_patches()
    with pytest.raises(patch_file.ViFTPatchError, match="has no method 'create_optimizer'"):
        patch_file.apply(type("NoTrainer", (), {"_get_train_sampler": lambda self: None}))
