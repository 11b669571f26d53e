"""Train a tiny LLaVA with the real ``llava-torch`` package, patched by ``patches/llava/vift_llava.py``.

Run by ``scripts/check_upstream.sh llava`` with the python of a venv that holds the registry's
``llava-torch`` (its own pins: torch 2.0.1, transformers 4.36.2) and the plugin installed with ``pip
install --no-deps -e``. The stand-in tests in ``tests/patches`` check the patch against upstream's
names and signatures; only this run shows that upstream's own ``train()`` (argument parsing, model
and vision tower loading, ``LazySupervisedDataset``, collator, ``LLaVATrainer``) ends up with
single-modality optimizer steps and per-role learning rates. Nothing is downloaded: the model is a
tiny random ``LlavaLlamaForCausalLM`` built from LLaVA's own classes, the vision tower a tiny
``CLIPVisionModel`` saved to a folder (LLaVA's builder loads a tower by path), and the tokenizer a
small SentencePiece model trained here (LLaVA loads a slow LLaMA tokenizer). It fails (exit 1) when:

(a) any optimizer step mixes image and text-only rows, judged from the micro-batches the trainer
    received: an image row holds LLaVA's ``IMAGE_TOKEN_INDEX`` and a non-blank image tensor, a text
    row neither (LLaVA gives text-only samples an all-zero image); rows where the two disagree fail;
(b) the optimizer's groups are not one role each at its rate (connector ``--mm_projector_lr``,
    language ``--learning_rate``; LLaVA's CLIP tower freezes itself, so the vision rate set here must
    warn and leave no vision group), or the logs lack ``learning_rate/<role>``.
"""

from __future__ import annotations

import argparse
import io
import logging
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

RATES = {"vision": 1e-5, "connector": 5e-5, "language": 1e-4}
BATCH, ACCUMULATION = 2, 2
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def llava_role(name: str) -> str:
    """The check's own reading of LLaVA parameter names."""
    if "mm_projector" in name:
        return "connector"
    return "vision" if "vision_tower" in name else "language"


def image_rows(image_token_index: int) -> Any:
    """``classify(inputs)``: ``image`` for rows with the image token and a non-blank image, ``text`` for neither."""

    def classify(inputs: Mapping[str, Any]) -> list[str]:
        has_token = (inputs["input_ids"] == image_token_index).any(dim=1)
        images = inputs["images"]
        has_pixels = images.flatten(1).abs().sum(dim=1) > 0
        rows = []
        for token, pixels in zip(has_token.tolist(), has_pixels.tolist(), strict=True):
            rows.append("image" if token and pixels else "text" if not (token or pixels) else "DISAGREE")
        return rows

    return classify


def train_tokenizer(folder: Path, texts: list[str]) -> None:
    """A slow ``LlamaTokenizer`` over a SentencePiece model trained on ``texts`` (unk 0, bos 1, eos 2)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"), legacy=True).save_pretrained(folder)


def build_models(work: Path, texts: list[str]) -> tuple[Path, Path]:
    """A tiny LLaVA language model (no vision modules yet: LLaVA's train() adds them) and a tiny CLIP tower."""
    import torch
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaTokenizer

    tower = work / "tiny-clip"
    torch.manual_seed(0)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        )
    )
    clip.save_pretrained(tower)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(tower)

    model_dir = work / "tiny-llava"
    train_tokenizer(model_dir, texts)
    vocab = len(LlamaTokenizer.from_pretrained(model_dir))
    config = LlavaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlavaLlamaForCausalLM(config).save_pretrained(model_dir)
    return model_dir, tower


def write_dataset(work: Path) -> tuple[Path, Path, list[str]]:
    """Toy captions and text instructions as one LLaVA JSON, through the patch's own writer."""
    import json

    import vift_llava

    records = work / "records"
    captions, texts = write_toy_inputs(records)
    data_path = work / "vift_mix.json"
    counts = vift_llava.write_llava_json(data_path, captions=[captions], texts=[texts], image_root=records)
    print(f"[check] dataset: {counts}", flush=True)
    corpus = [SYSTEM, "USER: ASSISTANT:"]
    for row in json.loads(data_path.read_text()):
        corpus += [turn["value"].replace("<image>", " ") for turn in row["conversations"]]
    return data_path, records, corpus


def main() -> int:
    """Build the tiny model and data, train through upstream with the patch applied, judge; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="the vift_plugin checkout")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (model, data, output)")
    parser.add_argument("--steps", type=int, default=12, help="12 crosses the end of the first epoch (10 steps)")
    parser.add_argument("--report", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument(
        "--no-grouping", action="store_true", help="control run: upstream's sampler kept, so (a) must fail"
    )
    args = parser.parse_args()

    report = Report("llava-torch", versions("llava-torch"))
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.repo / "patches" / "llava"))
    import vift_llava  # the documented way: the patch file on sys.path
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import train

    data_path, image_folder, corpus = write_dataset(args.work)
    model_dir, tower = build_models(args.work, corpus)
    originals = {name: vars(LLaVATrainer)[name] for name in ("_get_train_sampler", "create_optimizer")}

    warnings = _capture("vift_llava")
    recorder = BatchRecorder(image_rows(IMAGE_TOKEN_INDEX))
    sys.argv = [
        "train",
        *("--model_name_or_path", str(model_dir), "--version", "v1"),
        *("--data_path", str(data_path), "--image_folder", str(image_folder), "--lazy_preprocess", "True"),
        *("--vision_tower", str(tower), "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2"),
        *("--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad"),
        *("--group_by_modality_length", "True", "--bf16", "True", "--use_cpu", "True"),
        *("--output_dir", str(args.work / "output"), "--max_steps", str(args.steps), "--save_strategy", "no"),
        *("--per_device_train_batch_size", str(BATCH), "--gradient_accumulation_steps", str(ACCUMULATION)),
        *("--learning_rate", str(RATES["language"]), "--mm_projector_lr", str(RATES["connector"])),
        *("--lr_scheduler_type", "constant", "--weight_decay", "0.0", "--logging_steps", "1"),
        *("--model_max_length", "256", "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "0"),
    ]
    with vift_llava.apply(vision_lr=RATES["vision"], sampler=not args.no_grouping):
        restore = recorder.wrap(LLaVATrainer)
        try:
            train()
        finally:
            restore()

    trainer = recorder.trainer
    if trainer is None:
        report.fail("the trainer's training_step never ran")
        return finish(report, args.report)
    check_steps(report, recorder, expected_steps=args.steps, accumulation=ACCUMULATION)
    roles = check_rates(report, trainer.optimizer, trainer.model.named_parameters(), RATES, llava_role)
    report.expect(roles == {"connector", "language"}, f"trained roles {sorted(roles)}, expected connector, language")
    check_logged_rates(report, trainer.state.log_history, RATES, roles, "trainer state")
    vision_warnings = [message for message in warnings if "vision" in message]
    report.expect(bool(vision_warnings), "no warning that vision_lr has no trainable vision parameter")
    shown = vision_warnings[0][:160] + "..." if vision_warnings else "none"
    report.note(f"vision_lr={RATES['vision']:g} with LLaVA's frozen CLIP tower, warning: {shown}")
    restored = all(vars(LLaVATrainer)[name] is fn for name, fn in originals.items())
    report.expect(restored, "removing the patch did not restore the original methods")
    report.note(f"patch removed, originals restored: {restored}")
    return finish(report, args.report)


def _capture(logger_name: str) -> list[str]:
    """Warnings of ``logger_name``, collected into the returned list."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    logging.getLogger(logger_name).addHandler(Collect())
    return messages


def finish(report: Report, path: Path | None) -> int:
    """Write the JSON report (for scripts that keep results) and print the summary; the exit status."""
    if path is not None:
        report.write_json(path)
    return report.print()


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    sys.exit(main())
