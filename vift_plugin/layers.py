"""Finding the language model's decoder layers in any vision-language model."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_TOWER_NAMES = re.compile(r"(^|\.)(vision|visual|vision_tower|vision_model|image|audio|vit|mm_projector|merger)")


def unwrap_model(model: Any) -> nn.Module:
    """The transformers model under PEFT (``PeftModel`` -> ``LoraModel`` -> model) or DDP wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__.endswith(
            ("DataParallel", "DistributedDataParallel")
        ):
            model = model.module
    return model


def _resolve_path(model: nn.Module, path: str) -> nn.Module:
    module: nn.Module = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(f"layers_path={path!r}: {type(module).__name__} has no attribute {part!r}")
        module = getattr(module, part)
    return module


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """Return the ``ModuleList`` of the language model's decoder layers.

    Tried in order: ``layers_path`` (a dotted path from the unwrapped model), ``get_decoder().layers``,
    ``get_decoder().model.layers`` (Llama4 style), then the longest ``ModuleList`` outside any vision or
    audio tower.
    """
    base: Any = unwrap_model(model)
    if layers_path is not None:
        found = _resolve_path(base, layers_path)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise ValueError(f"layers_path={layers_path!r} is a {type(found).__name__}, not a non-empty ModuleList")
        return found
    decoder = None
    if hasattr(base, "get_decoder"):
        try:
            decoder = base.get_decoder()
        except (AttributeError, NotImplementedError, ValueError):
            decoder = None
    if isinstance(decoder, nn.Module):
        for candidate in (getattr(decoder, "layers", None), getattr(getattr(decoder, "model", None), "layers", None)):
            if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
                return candidate
    lists = [
        (name, module)
        for name, module in base.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and name.endswith("layers")
        and not _TOWER_NAMES.search(name)
    ]
    if lists:
        return max(lists, key=lambda item: len(item[1]))[1]
    raise ValueError(
        f"Could not find the decoder layers of {type(base).__name__}. Pass layers_path='...' to enable_vift "
        f"(or FusionConfig) with the dotted path to the language model's layer ModuleList, "
        f"e.g. layers_path='model.language_model.layers'."
    )
