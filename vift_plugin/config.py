"""``FusionConfig``: the settings of ability-fused inference, validated and saved as JSON."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

FUSION_CONFIG_NAME = "vift_fusion_config.json"


@dataclass
class FusionConfig:
    """How the text-only hidden states ``t`` are fused into the multimodal prefill ``x``.

    At each fused decoder layer ``l`` and each aligned text position ``P`` (``Q`` in the text-only
    pass): ``live`` sets ``x[P] = alpha * x[P] + beta * t[Q]``; ``official`` sets
    ``x[P] = x[P] + beta * t[Q] + (alpha - 1) * m[P]`` with ``m`` the unfused multimodal pass.
    """

    alpha: float = field(default=1.0, metadata={"help": "Weight of the multimodal hidden states h(v, q)."})
    beta: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the text-only hidden states h(q); paper: 0.1 reasoning, 0.15 instruction following."
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layer indices to fuse at (negative counts from the end); None = the top half."},
    )
    tokens: Literal["after_image", "all_text"] = field(
        default="after_image",
        metadata={"help": "'after_image': the text after the last image; 'all_text': every text token."},
    )
    mode: Literal["live", "official"] = field(
        default="live",
        metadata={"help": "'live' scales the running states; 'official' reproduces the authors' arithmetic."},
    )
    layers_path: str | None = field(
        default=None,
        metadata={"help": "Dotted path to the decoder's layer ModuleList when it cannot be found automatically."},
    )
    text_cache_size: int = field(
        default=0,
        metadata={"help": "Text prompts whose text-only states are kept (LRU); 0 disables the cache."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"alpha must be a number, got {self.alpha!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)):
            raise TypeError(f"beta must be a number, got {self.beta!r}")
        self.alpha, self.beta = float(self.alpha), float(self.beta)
        for name in ("alpha", "beta"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (the multimodal states carry the image), got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.beta > 0.4:
            warnings.warn(
                f"beta={self.beta} > 0.4: the paper reports garbled output above 0.4 (use 0.1-0.15).",
                stacklevel=3,
            )
        if self.tokens not in ("after_image", "all_text"):
            raise ValueError(f"tokens must be 'after_image' or 'all_text', got {self.tokens!r}")
        if self.mode not in ("live", "official"):
            raise ValueError(f"mode must be 'live' or 'official', got {self.mode!r}")
        if self.layers is not None:
            layers = list(self.layers)
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"layers must be a non-empty list of layer indices, got {self.layers!r}")
            self.layers = layers
        if not isinstance(self.text_cache_size, int) or self.text_cache_size < 0:
            raise ValueError(f"text_cache_size must be an int >= 0, got {self.text_cache_size!r}")

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The sorted, non-negative indices of the fused layers for a decoder of ``num_layers``."""
        if self.layers is None:
            return list(range(num_layers // 2, num_layers))
        resolved = set()
        for index in self.layers:
            if not -num_layers <= index < num_layers:
                raise ValueError(f"layer index {index} is out of range for a decoder with {num_layers} layers")
            resolved.add(index % num_layers)
        return sorted(resolved)

    def replace(self, **changes: Any) -> FusionConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``vift_fusion_config.json`` into ``directory`` (atomically) and return its path."""
        path = Path(directory) / FUSION_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json_string(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        """Build from a dict, ignoring (and logging) keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("FusionConfig: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> FusionConfig:
        """Load from a JSON file or from a directory holding ``vift_fusion_config.json``."""
        file = Path(path)
        if file.is_dir():
            file = file / FUSION_CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(f"no fusion config at {file}")
        from vift_plugin.data.files import read_json_document

        data = read_json_document(file)
        if not isinstance(data, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def parse(cls, value: str | os.PathLike[str] | dict[str, Any]) -> FusionConfig:
        """From a dict, inline JSON (``'{"beta": 0.15}'``), a JSON file, or a folder holding
        ``vift_fusion_config.json``: what ``--fusion-config`` and ``fusion_config`` accept."""
        if isinstance(value, dict):
            return cls.from_dict(value)
        text = os.fspath(value)
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"fusion config {text!r} is not valid JSON: {error}") from error
            if not isinstance(data, dict):
                raise ValueError(f"fusion config {text!r} must be a JSON object")
            return cls.from_dict(data)
        return cls.from_pretrained(text)
