"""Argument dataclasses for ViFT training: the model to load, the data, and ``ViFTTrainingArguments``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from vift_plugin.config import FusionConfig
from vift_plugin.data.sampler import Remainder, check_remainder
from vift_plugin.training.distributed import check_world_size, single_process_backend

LORA_LAYER_CHOICES = "'all', 'intermediate' (the middle half of the decoder layers) or 'START-END' (0-based, inclusive)"


@dataclass
class ModelArguments:
    """Which checkpoint to fine-tune and how to load it."""

    model_name_or_path: str = field(metadata={"help": "Checkpoint path or hub id (a LoRA output continues from it)."})
    load_in_bits: int | None = field(
        default=None, metadata={"help": "4 or 8: quantize the language model with bitsandbytes (QLoRA)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float16 or float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa or flash_attention_2."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow checkpoint code (off by default)."})

    def __post_init__(self) -> None:
        if self.load_in_bits not in (None, 4, 8):
            raise ValueError(f"load_in_bits must be 4, 8 or unset, got {self.load_in_bits}.")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}.")


@dataclass
class DataArguments:
    """Training records: converted caption and text files, or a mixed dataset (``vift convert``)."""

    caption_files: list[str] | None = field(
        default=None, metadata={"help": "Caption records (.jsonl/.json from `vift convert captions`)."}
    )
    text_files: list[str] | None = field(
        default=None, metadata={"help": "Text-instruction records (.jsonl/.json from `vift convert text`)."}
    )
    dataset_dir: str | None = field(
        default=None, metadata={"help": "A mixed dataset folder from `vift convert mix` (instead of the files)."}
    )
    caption_ratio: float = field(default=1.0, metadata={"help": "Resample the captions to this many times."})
    text_ratio: float = field(
        default=1.0, metadata={"help": "Resample the text records to this many times their size."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N records of each source."})
    skip_bad_images: bool = field(
        default=False,
        metadata={"help": "Leave out (and count) rows whose image cannot be decoded, instead of stopping."},
    )

    def __post_init__(self) -> None:
        if not (self.caption_files or self.text_files or self.dataset_dir):
            raise ValueError("Give caption_files and/or text_files, or dataset_dir.")
        if self.dataset_dir and (self.caption_files or self.text_files):
            raise ValueError("Give either dataset_dir or caption_files/text_files, not both.")
        for name in ("caption_ratio", "text_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


@dataclass
class ViFTTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what ViFT adds. Every field is also a ``vift train`` option.

    Parameters that control the learning rates and what trains:
        vision_lr, connector_lr, language_lr: each role's rate (paper: 1e-5, 2e-6, 1e-5); unset means
            ``learning_rate``.
        freeze_vision, freeze_connector, freeze_language: keep a role's weights fixed.

    Parameters that control the batches:
        group_by_modality: every optimizer step all-image or all-text (:class:`ModalityGroupedSampler`).
        modality_column: the dataset column holding ``"image"``/``"text"``.
        remainder: leftovers that do not fill a step, ``"drop"`` (counted, warned) or ``"fill"``.
        length_window: steps per length-sorting window; ``None`` sorts a whole modality.

    Parameters that control LoRA:
        use_lora, lora_r, lora_alpha, lora_dropout: the adapters.
        lora_target: the roles whose linear layers get adapters (``["language"]``).
        lora_layers: which language layers: ``"all"``, ``"intermediate"`` or ``"START-END"``.

    Parameters that control the images:
        image_root, max_pixels, allow_remote_images: as in the collator and ``vift convert``.

    Parameters that control inference after training:
        fusion_config: the :class:`~vift_plugin.FusionConfig` saved with the run (a JSON file, a folder
            holding ``vift_fusion_config.json``, or inline JSON); default ``FusionConfig()``.
    """

    vision_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision encoder (paper 1e-5); default learning_rate."}
    )
    connector_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the connector/projector (paper 2e-6); default learning_rate."}
    )
    language_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the language model (paper 1e-5); default learning_rate."}
    )
    freeze_vision: bool = field(default=False, metadata={"help": "Keep the vision encoder frozen."})
    freeze_connector: bool = field(default=False, metadata={"help": "Keep the connector frozen."})
    freeze_language: bool = field(default=False, metadata={"help": "Keep the language model frozen (no LoRA on it)."})
    group_by_modality: bool = field(
        default=True, metadata={"help": "Single-modality optimizer steps (ModalityGroupedSampler)."}
    )
    modality_column: str = field(default="modality", metadata={"help": "Dataset column with 'image'/'text'."})
    remainder: Remainder = field(
        default="drop", metadata={"help": "Leftovers that do not fill a step: 'drop' (counted) or 'fill'."}
    )
    length_window: int | None = field(
        default=64, metadata={"help": "Steps per length-sorting window of the sampler; None sorts each modality."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target: list[str] = field(
        default_factory=lambda: ["language"],
        metadata={"help": "Roles whose linear layers get LoRA: language, vision, connector (one or more)."},
    )
    lora_layers: str = field(default="all", metadata={"help": f"Language layers adapted: {LORA_LAYER_CHOICES}."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Downscale images to at most this many pixels (image tokens dominate memory)."}
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder that image paths resolve under."})
    allow_remote_images: bool = field(
        default=False,
        metadata={"help": "Fetch http(s) image references (public hosts only, with a timeout and a size cap)."},
    )
    fusion_config: str | None = field(
        default=None,
        metadata={
            "help": "FusionConfig saved with the run: a JSON file, a folder holding vift_fusion_config.json, "
            "or inline JSON such as '{\"beta\": 0.15}'; default alpha 1.0, beta 0.1."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the record columns: the collator needs messages and images."}
    )

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        # accelerate 1.15 crashes on a ddp_backend in a single process (vift_plugin.training.distributed)
        self.ddp_backend = single_process_backend(self.ddp_backend)
        super().__post_init__()
        state = getattr(self, "distributed_state", None)
        kind = getattr(getattr(state, "distributed_type", None), "value", None)
        check_world_size(self.world_size, self.use_cpu, None if kind is None else str(kind))
        self.remainder = check_remainder(self.remainder)
        if isinstance(self.lora_target, str):
            self.lora_target = [self.lora_target]
        self.lora_target = [role.strip() for entry in self.lora_target for role in entry.split(",") if role.strip()]
        unknown = set(self.lora_roles) - {"vision", "connector", "language"}
        if unknown:
            raise ValueError(f"lora_target names unknown roles {sorted(unknown)}; use language, vision, connector.")
        for name in ("vision_lr", "connector_lr", "language_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if not (math.isfinite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        self.fusion()
        parse_layer_range(self.lora_layers, 8)
        if self.freeze_vision and self.freeze_connector and self.freeze_language and not self.use_lora:
            raise ValueError("Every role is frozen and LoRA is off: nothing would train.")

    @property
    def lora_roles(self) -> list[str]:
        return list(self.lora_target)

    def fusion(self) -> FusionConfig:
        """The :class:`FusionConfig` named by ``fusion_config`` (``FusionConfig()`` when unset)."""
        if self.fusion_config is None:
            return FusionConfig()
        try:
            return FusionConfig.parse(self.fusion_config)
        except (OSError, ValueError) as error:
            raise ValueError(f"fusion_config: {error}") from error

    def role_learning_rates(self) -> dict[str, float]:
        return {
            "vision": self.learning_rate if self.vision_lr is None else self.vision_lr,
            "connector": self.learning_rate if self.connector_lr is None else self.connector_lr,
            "language": self.learning_rate if self.language_lr is None else self.language_lr,
        }

    def trainable_roles(self) -> list[str]:
        """Roles with trainable weights: those not frozen, plus those LoRA adapts."""
        lora = self.lora_roles if self.use_lora else []
        return [role for role in ("vision", "connector", "language") if role not in self.frozen_roles() or role in lora]

    def frozen_roles(self) -> list[str]:
        return [role for role in ("vision", "connector", "language") if getattr(self, f"freeze_{role}")]


def parse_layer_range(spec: str, num_layers: int) -> list[int]:
    """Layer indices named by ``spec`` ('all', 'intermediate', 'START-END') out of ``num_layers``."""
    if spec == "all":
        return list(range(num_layers))
    if spec == "intermediate":
        return list(range(num_layers // 4, num_layers - num_layers // 4))
    start, sep, end = spec.partition("-")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        raise ValueError(f"lora_layers must be {LORA_LAYER_CHOICES}, got {spec!r}.")
    first, last = int(start), int(end)
    if first > last:
        raise ValueError(f"lora_layers {spec!r}: START must not exceed END.")
    return [i for i in range(first, last + 1) if i < num_layers]
