"""Train a tiny Qwen2-VL with the real LLaMA-Factory, patched by ``patches/llama_factory/vift_llamafactory.py``.

Run by ``scripts/check_upstream.sh llamafactory`` with the python of a venv that holds the registry's
``llamafactory`` and the plugin installed with ``pip install --no-deps -e``. The stand-in tests in
``tests/patches`` check the patch against upstream's names and signatures; only this run shows that
upstream's real trainer, data pipeline and collator, driven through ``run_exp``, end up with
single-modality optimizer steps and per-module learning rates. It fails (exit 1) when:

(a) any optimizer step mixes image and text-only rows, judged from the micro-batches the trainer
    received (a row is an image row when it holds Qwen2-VL image tokens that are attended to:
    LLaMA-Factory pads an all-text batch with an attention-masked blank image, which does not count);
(b) the optimizer's param groups are not one role each at the configured rate (vision, connector,
    language), or the trainer state or ``trainer_log.jsonl`` lack ``learning_rate/<role>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import (
    BatchRecorder,
    Report,
    check_logged_rates,
    check_rates,
    check_steps,
    versions,
    write_toy_inputs,
)

RATES = {"vision": 1e-5, "connector": 5e-5, "language": 1e-4}  # language = LLaMA-Factory's learning_rate
BATCH, ACCUMULATION = 2, 2


def qwen2_vl_role(name: str) -> str:
    """The check's own reading of Qwen2-VL parameter names (the merger is the connector)."""
    if "visual.merger" in name:
        return "connector"
    return "vision" if "visual." in name else "language"


def image_rows(image_token_id: int) -> Any:
    """``classify(inputs)``: a row is ``image`` when it holds an attended image token, else ``text``."""

    def classify(inputs: Mapping[str, Any]) -> list[str]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        attended = (ids == image_token_id) & (mask != 0)
        return ["image" if bool(row.any()) else "text" for row in attended]

    return classify


def tiny_checkpoint(work: Path, given: str | None) -> Path:
    """The tiny Qwen2-VL folder: ``given`` (built elsewhere), else one written here by the plugin."""
    if given:
        return Path(given)
    from vift_plugin.testing import make_tiny_checkpoint

    return make_tiny_checkpoint("qwen2_vl", work / "tiny-qwen2_vl")


def write_dataset(work: Path) -> Path:
    """Toy captions and text instructions, in LLaMA-Factory's format, through the patch's own writer."""
    import vift_llamafactory

    captions, texts = write_toy_inputs(work / "records")
    dataset_dir = work / "data"
    counts = vift_llamafactory.write_llamafactory_dataset(
        dataset_dir, "vift_mix", captions=[captions], texts=[texts], image_root=work / "records"
    )
    print(f"[check] dataset: {counts}", flush=True)
    return dataset_dir


def main() -> int:
    """Build the tiny model and data, train through upstream with the patch applied, judge; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="the vift_plugin checkout")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (model, data, output)")
    parser.add_argument("--model", default=None, help="a tiny qwen2_vl checkpoint built elsewhere")
    parser.add_argument("--steps", type=int, default=12, help="12 crosses the end of the first epoch (10 steps)")
    parser.add_argument("--report", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument(
        "--no-grouping", action="store_true", help="control run: the patch's sampler off, so (a) must fail"
    )
    args = parser.parse_args()

    report = Report("llamafactory", versions("llamafactory"))
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.repo / "patches" / "llama_factory"))
    import vift_llamafactory  # the documented way: the patch file on sys.path
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
    from llamafactory.train.tuner import run_exp

    model_dir = tiny_checkpoint(args.work, args.model)
    image_token_id = int(json.loads((model_dir / "config.json").read_text())["image_token_id"])
    dataset_dir = write_dataset(args.work)
    originals = {name: vars(CustomSeq2SeqTrainer)[name] for name in ("_get_train_sampler", "create_optimizer")}

    recorder = BatchRecorder(image_rows(image_token_id))
    output_dir = args.work / "output"
    handle = vift_llamafactory.apply(
        vision_lr=RATES["vision"], connector_lr=RATES["connector"], group_by_modality=not args.no_grouping
    )
    restore = recorder.wrap(CustomSeq2SeqTrainer)
    try:
        run_exp(
            args={
                "model_name_or_path": str(model_dir),
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "full",
                "freeze_vision_tower": False,
                "freeze_multi_modal_projector": False,
                "dataset": "vift_mix",
                "dataset_dir": str(dataset_dir),
                "template": "qwen2_vl",
                "cutoff_len": 256,
                "image_max_pixels": 56 * 56,
                "overwrite_cache": True,
                "output_dir": str(output_dir),
                "overwrite_output_dir": True,
                "per_device_train_batch_size": BATCH,
                "gradient_accumulation_steps": ACCUMULATION,
                "learning_rate": RATES["language"],
                "lr_scheduler_type": "constant",
                "max_steps": args.steps,
                "logging_steps": 1,
                "save_strategy": "no",
                "report_to": "none",
                "use_cpu": True,
                "seed": 0,
            }
        )
    finally:
        restore()
        handle.remove()

    trainer = recorder.trainer
    if trainer is None:
        report.fail("the trainer's training_step never ran")
        return finish(report, args.report)
    check_steps(report, recorder, expected_steps=args.steps, accumulation=ACCUMULATION)
    roles = check_rates(report, trainer.optimizer, trainer.model.named_parameters(), RATES, qwen2_vl_role)
    report.expect(roles == set(RATES), f"trained roles {sorted(roles)}, expected {sorted(RATES)}")
    check_logged_rates(report, trainer.state.log_history, RATES, roles, "trainer state")
    log_file = output_dir / "trainer_log.jsonl"
    lines = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    check_logged_rates(report, lines, RATES, roles, log_file.name)
    restored = all(vars(CustomSeq2SeqTrainer)[name] is fn for name, fn in originals.items())
    report.expect(restored, "handle.remove() did not restore the original methods")
    report.note(f"patch removed, originals restored: {restored}")
    return finish(report, args.report)


def finish(report: Report, path: Path | None) -> int:
    """Write the JSON report (for scripts that keep results) and print the summary; the exit status."""
    if path is not None:
        report.write_json(path)
    return report.print()


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    sys.exit(main())
