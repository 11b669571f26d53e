"""ViFT's data: caption and text-instruction converters, mixing, modality-grouped sampling, collation.

Names are imported on first use, so the converters run without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vift_plugin._lazy import lazy_attributes

if TYPE_CHECKING:
    from vift_plugin.data.caption_formats import CAPTION_READERS, read_caption_rows, register_caption_format
    from vift_plugin.data.captions import captions_to_messages, convert_caption_file, convert_captions
    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.data.files import ImageError, RowError
    from vift_plugin.data.images import check_images, load_image
    from vift_plugin.data.instructions import convert_instruction_file, convert_instructions, instructions_to_messages
    from vift_plugin.data.mixing import add_modality_and_length, mix_datasets
    from vift_plugin.data.queries import QueryPool
    from vift_plugin.data.report import ConversionReport
    from vift_plugin.data.sampler import ModalityGroupedBatchSampler, ModalityGroupedSampler

_WHERE = {
    "CAPTION_READERS": "vift_plugin.data.caption_formats",
    "ConversionReport": "vift_plugin.data.report",
    "ImageError": "vift_plugin.data.files",
    "ModalityGroupedBatchSampler": "vift_plugin.data.sampler",
    "ModalityGroupedSampler": "vift_plugin.data.sampler",
    "QueryPool": "vift_plugin.data.queries",
    "RowError": "vift_plugin.data.files",
    "ViFTDataCollator": "vift_plugin.data.collator",
    "add_modality_and_length": "vift_plugin.data.mixing",
    "captions_to_messages": "vift_plugin.data.captions",
    "check_images": "vift_plugin.data.images",
    "convert_caption_file": "vift_plugin.data.captions",
    "convert_captions": "vift_plugin.data.captions",
    "convert_instruction_file": "vift_plugin.data.instructions",
    "convert_instructions": "vift_plugin.data.instructions",
    "instructions_to_messages": "vift_plugin.data.instructions",
    "load_image": "vift_plugin.data.images",
    "mix_datasets": "vift_plugin.data.mixing",
    "read_caption_rows": "vift_plugin.data.caption_formats",
    "register_caption_format": "vift_plugin.data.caption_formats",
}

__all__ = [
    "CAPTION_READERS",
    "ConversionReport",
    "ImageError",
    "ModalityGroupedBatchSampler",
    "ModalityGroupedSampler",
    "QueryPool",
    "RowError",
    "ViFTDataCollator",
    "add_modality_and_length",
    "captions_to_messages",
    "check_images",
    "convert_caption_file",
    "convert_captions",
    "convert_instruction_file",
    "convert_instructions",
    "instructions_to_messages",
    "load_image",
    "mix_datasets",
    "read_caption_rows",
    "register_caption_format",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
