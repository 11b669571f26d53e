"""ViFT for Hugging Face vision-language models: caption + text-only training, ability-fused inference."""

from vift_plugin._version import __version__
from vift_plugin.config import FusionConfig
from vift_plugin.fusion import FusionGenerationMixin, disable_vift, enable_vift, fusion_config, vift_fusion
from vift_plugin.layers import find_decoder_layers
from vift_plugin.processors import load_processor

__all__ = [
    "FusionConfig",
    "FusionGenerationMixin",
    "__version__",
    "disable_vift",
    "enable_vift",
    "find_decoder_layers",
    "fusion_config",
    "load_processor",
    "vift_fusion",
]
