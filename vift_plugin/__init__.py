"""ViFT for Hugging Face vision-language models: caption + text-only training, ability-fused inference.

Names are imported on first use, so ``vift --help`` and the data converters start without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vift_plugin._lazy import lazy_attributes
from vift_plugin._version import __version__

if TYPE_CHECKING:
    from vift_plugin.cascade import CascadeAnswer, cascade_generate
    from vift_plugin.config import FusionConfig
    from vift_plugin.fusion import (
        FusionGenerationMixin,
        count_fusion_passes,
        disable_vift,
        enable_vift,
        fusion_config,
        vift_fusion,
    )
    from vift_plugin.layers import find_decoder_layers
    from vift_plugin.loading import load_vift
    from vift_plugin.processors import load_processor

_WHERE = {
    "CascadeAnswer": "vift_plugin.cascade",
    "cascade_generate": "vift_plugin.cascade",
    "FusionConfig": "vift_plugin.config",
    "FusionGenerationMixin": "vift_plugin.fusion",
    "count_fusion_passes": "vift_plugin.fusion",
    "disable_vift": "vift_plugin.fusion",
    "enable_vift": "vift_plugin.fusion",
    "find_decoder_layers": "vift_plugin.layers",
    "fusion_config": "vift_plugin.fusion",
    "load_processor": "vift_plugin.processors",
    "load_vift": "vift_plugin.loading",
    "vift_fusion": "vift_plugin.fusion",
}

__all__ = [
    "CascadeAnswer",
    "FusionConfig",
    "FusionGenerationMixin",
    "__version__",
    "cascade_generate",
    "count_fusion_passes",
    "disable_vift",
    "enable_vift",
    "find_decoder_layers",
    "fusion_config",
    "load_processor",
    "load_vift",
    "vift_fusion",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
