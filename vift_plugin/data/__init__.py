"""ViFT's data: caption and text-instruction converters, mixing, modality-grouped sampling, collation."""

from vift_plugin.data.captions import (
    CAPTION_READERS,
    captions_to_messages,
    convert_caption_file,
    convert_captions,
    read_caption_rows,
    register_caption_format,
)
from vift_plugin.data.collator import ViFTDataCollator
from vift_plugin.data.files import RowError
from vift_plugin.data.images import ImageError, load_image
from vift_plugin.data.instructions import convert_instruction_file, convert_instructions, instructions_to_messages
from vift_plugin.data.mixing import add_modality_and_length, mix_datasets
from vift_plugin.data.queries import QueryPool
from vift_plugin.data.report import ConversionReport
from vift_plugin.data.sampler import ModalityGroupedBatchSampler, ModalityGroupedSampler

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
