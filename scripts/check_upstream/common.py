"""What both upstream checks share: recording micro-batches, judging steps and rates, the summary.

The drivers run inside an upstream package's own virtual environment (old transformers, and for
LLaVA an old torch), so this module imports only the standard library (Pillow for the toy images);
torch is used through the objects the trainer hands over. The checks judge the patch from what
upstream really did: the rows of every micro-batch the trainer received (not the sampler's plan),
the optimizer's param groups and the trainer's log history.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("vision", "connector", "language")
RATE_PREFIX = "learning_rate/"


def version_of(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(upstream: str) -> dict[str, str]:
    """Python, torch, transformers, the upstream package and the plugin, as installed in this venv."""
    return {
        "python": platform.python_version(),
        "torch": version_of("torch"),
        "transformers": version_of("transformers"),
        upstream: version_of(upstream),
        "vift_plugin": version_of("vift_plugin"),
    }


@dataclass
class BatchRecorder:
    """Every micro-batch the trainer's ``training_step`` received: its optimizer step and row modalities.

    ``classify(inputs)`` turns one batch into ``"image"``/``"text"`` per row, from the tensors alone.
    The optimizer step is read from ``trainer.state.global_step`` at the call, which the training
    loop advances only after an optimizer step, so micro-batches of one accumulated step share it.
    """

    classify: Callable[[Mapping[str, Any]], list[str]]
    batches: list[tuple[int, list[str]]] = field(default_factory=list)
    trainer: Any = None

    def wrap(self, trainer_cls: type) -> Callable[[], None]:
        """Wrap ``trainer_cls.training_step`` (as resolved on the class); return a function that restores it."""
        owner: Any = trainer_cls  # a Trainer subclass; typed loosely, as upstream's classes are untyped here
        had_own = "training_step" in vars(owner)
        original = owner.training_step
        recorder = self

        def training_step(trainer: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            recorder.trainer = trainer
            recorder.batches.append((int(trainer.state.global_step), recorder.classify(inputs)))
            return original(trainer, model, inputs, *args, **kwargs)

        owner.training_step = training_step

        def restore() -> None:
            if had_own:
                owner.training_step = original
            else:
                del owner.training_step

        return restore

    def steps(self) -> dict[int, list[list[str]]]:
        """``{optimizer step (1-based): [rows of each micro-batch]}``."""
        grouped: dict[int, list[list[str]]] = {}
        for step, rows in self.batches:
            grouped.setdefault(step + 1, []).append(rows)
        return grouped


@dataclass
class Report:
    """The findings of one check; ``failures`` empty means PASS."""

    upstream: str
    versions: dict[str, str]
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.failures.append(line)

    def expect(self, ok: bool, line: str) -> None:
        if not ok:
            self.fail(line)

    def print(self, out: Any = None) -> int:
        """Print the summary; return the exit status (0 PASS, 1 FAIL)."""
        out = out or sys.stdout
        status = "FAIL" if self.failures else "PASS"
        print(f"\n==== check_upstream {self.upstream}: {status} ====", file=out)
        print("versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()), file=out)
        for line in self.lines:
            print(line, file=out)
        for line in self.failures:
            print(f"FAIL: {line}", file=out)
        print(f"wall time of the check: {time.monotonic() - self.started:.0f} s", file=out)
        print(f"==== {status} ====", file=out)
        return 1 if self.failures else 0

    def write_json(self, path: Path) -> None:
        payload = {
            "upstream": self.upstream,
            "status": "FAIL" if self.failures else "PASS",
            "versions": self.versions,
            "lines": self.lines,
            "failures": self.failures,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def check_steps(report: Report, recorder: BatchRecorder, *, expected_steps: int, accumulation: int) -> None:
    """(a) Every optimizer step single-modality, from the rows of the micro-batches the trainer received."""
    steps = recorder.steps()
    report.expect(len(steps) == expected_steps, f"{len(steps)} optimizer steps recorded, expected {expected_steps}")
    mixed, kinds, step_lines = [], set(), []
    for step, micro in sorted(steps.items()):
        modalities = sorted({row for rows in micro for row in rows})
        kinds.update(modalities)
        label = modalities[0] if len(modalities) == 1 else "MIXED"
        step_lines.append(f"  step {step:2d}: {label:5s}  micro-batches: " + " | ".join(" ".join(r) for r in micro))
        report.expect(
            len(micro) == accumulation, f"step {step} had {len(micro)} micro-batches, expected {accumulation}"
        )
        if len(modalities) != 1:
            mixed.append(step)
    report.expect(not mixed, f"mixed optimizer steps: {mixed}")
    report.expect(kinds == {"image", "text"}, f"the run saw {sorted(kinds)} steps only; the check needs both")
    report.note(f"(a) single-modality optimizer steps: {len(steps) - len(mixed)}/{len(steps)} (rows of each batch)")
    report.lines.extend(step_lines)


def check_rates(
    report: Report,
    optimizer: Any,
    named_parameters: Iterable[tuple[str, Any]],
    expected: Mapping[str, float],
    role_by_name: Callable[[str], str],
) -> set[str]:
    """(b) The optimizer's param groups: one role each, at its configured rate, holding that role's parameters.

    ``role_by_name`` is the check's own, independent reading of the parameter names. Returns the
    roles that have trainable parameters.
    """
    names = {id(p): n for n, p in named_parameters}
    seen: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        role = group.get("role")
        if role is None:
            report.fail(f"param group {index} has no 'role' key (the patch's create_optimizer did not run)")
            continue
        if not group["params"]:
            continue
        lr = float(group.get("initial_lr", group["lr"]))
        seen.setdefault(role, lr)
        report.expect(
            math.isclose(lr, expected[role], rel_tol=1e-9),
            f"group {index} ({role}) lr {lr:g}, expected {expected[role]:g}",
        )
        wrong = [names.get(id(p), "?") for p in group["params"] if role_by_name(names.get(id(p), "?")) != role]
        report.expect(not wrong, f"group {index} ({role}) holds parameters of another role: {wrong[:3]}")
    report.note(
        "(b) optimizer param groups: "
        + ", ".join(f"{role} {seen[role]:g}" for role in ROLES if role in seen)
        + "  (expected "
        + ", ".join(f"{role} {expected[role]:g}" for role in ROLES if role in seen)
        + ")"
    )
    return set(seen)


def check_logged_rates(
    report: Report, logs: list[dict[str, Any]], expected: Mapping[str, float], roles: set[str], where: str
) -> None:
    """(b) Every training log line carries ``learning_rate/<role>`` for each trained role, at its rate."""
    lines = [log for log in logs if "loss" in log]
    report.expect(bool(lines), f"{where}: no training log lines")
    bad = []
    for log in lines:
        for role in roles:
            value = log.get(RATE_PREFIX + role)
            if value is None or not math.isclose(float(value), expected[role], rel_tol=1e-6):
                bad.append((log.get("step", log.get("current_steps")), role, value))
    report.expect(not bad, f"{where}: learning_rate/<role> missing or off: {bad[:4]}")
    keys = sorted({k for log in lines for k in log if k.startswith(RATE_PREFIX)})
    last = lines[-1] if lines else {}
    shown = ", ".join(f"{k} {float(last[k]):g}" for k in keys if k in last)
    report.note(f"(b) logged in {where} ({len(lines)} lines): {shown}")
    losses = [float(log["loss"]) for log in lines]
    report.expect(all(math.isfinite(x) for x in losses), f"{where}: non-finite loss {losses}")


def write_toy_inputs(root: Path, captions: int = 26, texts: int = 18) -> tuple[Path, Path]:
    """A caption table (``{"image", "caption"}`` rows over coloured squares) and an Alpaca text file.

    These are formats the patches' data writers read. Written here rather than with
    ``vift_plugin.testing`` because that package imports transformers 5 names, which LLaVA's
    transformers 4.36 lacks. Image paths are relative to ``root``.
    """
    from PIL import Image

    colours = ("red", "green", "blue", "yellow", "white", "black")
    sizes = ((28, 28), (56, 28), (56, 56))
    (root / "images").mkdir(parents=True, exist_ok=True)
    table, alpaca = root / "captions.jsonl", root / "alpaca.json"
    with table.open("w", encoding="utf-8") as handle:
        for i in range(captions):
            name = f"images/{i:04d}.png"
            Image.new("RGB", sizes[i % len(sizes)], colours[i % len(colours)]).save(root / name)
            handle.write(json.dumps({"image": name, "caption": f"A {colours[i % len(colours)]} square."}) + "\n")
    rows = [
        {"instruction": f"What is {i % 7} plus {i // 7 + 1}?", "input": "", "output": str(i % 7 + i // 7 + 1)}
        for i in range(texts)
    ]
    alpaca.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return table, alpaca
