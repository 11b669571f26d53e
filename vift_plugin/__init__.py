"""ViFT for Hugging Face vision-language models: caption + text-only training, ability-fused inference."""

from vift_plugin._version import __version__
from vift_plugin.processors import load_processor

__all__ = ["__version__", "load_processor"]
