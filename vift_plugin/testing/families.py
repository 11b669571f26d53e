"""Per-family recipes for tiny, randomly initialised vision-language checkpoints.

Each recipe returns a model config and a processor built from the family's real classes, with sizes
cut down so a model builds in well under a second: text hidden size 64, four decoder layers, a one or
two layer vision tower, images of a few dozen pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import transformers
from transformers import PretrainedConfig, PreTrainedTokenizerFast, ProcessorMixin
from transformers.processing_utils import VideosKwargs

from vift_plugin.processors import image_only_processor_class, resolve_processor_class
from vift_plugin.testing import chat_templates
from vift_plugin.testing.tokenizer import make_byte_tokenizer

TEXT_SIZES: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
)


@dataclass(frozen=True)
class FamilyRecipe:
    """How to build one family: its config and processor from a fresh tokenizer."""

    name: str
    build: Callable[[], tuple[PretrainedConfig, ProcessorMixin]]
    description: str


def _vocab(tokenizer: PreTrainedTokenizerFast) -> int:
    return len(tokenizer)


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]


QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer(
        list(QWEN2_VL_SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def _qwen_vl(name: str) -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = _qwen_tokenizer()
    pad, eos, vstart, vend, image, video = _ids(
        tok, "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    )
    text = dict(
        TEXT_SIZES,
        vocab_size=_vocab(tok),
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    )
    if name == "qwen2_vl":
        vision: dict[str, Any] = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        config: PretrainedConfig = transformers.Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=vstart,
            vision_end_token_id=vend,
        )
        processor_cls: type[ProcessorMixin] = transformers.Qwen2VLProcessor
    else:
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config = transformers.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=vstart,
            vision_end_token_id=vend,
        )
        processor_cls = transformers.Qwen2_5_VLProcessor
    image_processor = transformers.Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 16)
    processor = image_only_processor_class(processor_cls)(
        image_processor=image_processor, tokenizer=tok, chat_template=chat_templates.QWEN2_VL
    )
    return config, processor


def _llama_tokenizer(extra: list[str]) -> PreTrainedTokenizerFast:
    return make_byte_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", *extra],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _llama_text(tok: PreTrainedTokenizerFast, model_type: str = "llama") -> dict[str, Any]:
    bos, eos, pad = _ids(tok, "<s>", "</s>", "<pad>")
    return dict(
        TEXT_SIZES, model_type=model_type, vocab_size=_vocab(tok), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
    )


CLIP_VISION: dict[str, Any] = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=30,
    patch_size=6,
    projection_dim=32,
)


def _llava() -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = _llama_tokenizer(["<image>"])
    (image,) = _ids(tok, "<image>")
    config = transformers.LlavaConfig(
        text_config=_llama_text(tok),
        vision_config=dict(CLIP_VISION),
        image_token_index=image,
        image_seq_length=25,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=6,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.LLAVA,
    )
    return config, processor


def _llava_next() -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = _llama_tokenizer(["<image>", "[INST]", "[/INST]"])
    (image,) = _ids(tok, "<image>")
    pinpoints = [[30, 30], [30, 60], [60, 30], [60, 60]]
    config = transformers.LlavaNextConfig(
        text_config=_llama_text(tok, "mistral"),
        vision_config=dict(CLIP_VISION),
        image_token_index=image,
        image_grid_pinpoints=pinpoints,
        image_seq_length=25,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}, image_grid_pinpoints=pinpoints
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=6,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.LLAVA_NEXT,
    )
    return config, processor


SIGLIP_VISION: dict[str, Any] = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


def _idefics3() -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = make_byte_tokenizer(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<pad>",
            "<fake_token_around_image>",
            "<image>",
            "<end_of_utterance>",
            "<global-img>",
        ]
        + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
    )
    bos, eos, pad, image = _ids(tok, "<|begin_of_text|>", "<end_of_utterance>", "<pad>", "<image>")
    text = dict(
        TEXT_SIZES, model_type="llama", vocab_size=_vocab(tok), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = transformers.Idefics3Config(text_config=text, vision_config=vision, image_token_id=image, scale_factor=2)
    image_processor = transformers.Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
    )
    processor = transformers.Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=chat_templates.IDEFICS3
    )
    return config, processor


def _gemma_tokenizer(extra: list[str], named: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    return make_byte_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", *extra],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        named_tokens=named,
    )


def _gemma_text(tok: PreTrainedTokenizerFast, **extra: Any) -> dict[str, Any]:
    pad, eos, bos = _ids(tok, "<pad>", "<eos>", "<bos>")
    return dict(TEXT_SIZES, vocab_size=_vocab(tok), pad_token_id=pad, eos_token_id=eos, bos_token_id=bos, **extra)


def _gemma3() -> tuple[PretrainedConfig, ProcessorMixin]:
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _gemma_tokenizer(["<start_of_turn>", "<end_of_turn>", *named.values()], named)
    boi, eoi, image, eot = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<end_of_turn>")
    text = _gemma_text(
        tok, query_pre_attn_scalar=16, sliding_window=64, layer_types=["sliding_attention", "full_attention"] * 2
    )
    text["eos_token_id"] = [text["eos_token_id"], eot]
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config=dict(SIGLIP_VISION, vision_use_head=False),
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    image_processor = transformers.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = transformers.Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=chat_templates.GEMMA3
    )
    return config, processor


def _paligemma() -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = _gemma_tokenizer(["<image>"], {"image_token": "<image>"})
    (image,) = _ids(tok, "<image>")
    text = _gemma_text(tok, model_type="gemma")
    config = transformers.PaliGemmaConfig(
        text_config=text,
        vision_config=dict(SIGLIP_VISION, vision_use_head=False),
        image_token_index=image,
        vocab_size=text["vocab_size"],
        projection_dim=64,
        hidden_size=64,
    )
    image_processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # type: ignore[attr-defined]
    processor = transformers.PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=chat_templates.PALIGEMMA
    )
    return config, processor


def _mistral3() -> tuple[PretrainedConfig, ProcessorMixin]:
    tok = _llama_tokenizer(
        ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    )
    (image,) = _ids(tok, "[IMG]")
    vision = dict(
        model_type="pixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        head_dim=16,
    )
    config = transformers.Mistral3Config(
        text_config=_llama_text(tok, "mistral"),
        vision_config=vision,
        image_token_index=image,
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    image_processor = transformers.PixtralImageProcessorPil(
        size={"longest_edge": 64}, patch_size={"height": 8, "width": 8}
    )
    processor = resolve_processor_class("PixtralProcessor")(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=chat_templates.MISTRAL3,
    )
    return config, processor


def _internvl() -> tuple[PretrainedConfig, ProcessorMixin]:
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tok = make_byte_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        named_tokens=named,
    )
    pad, eos, image = _ids(tok, "<|endoftext|>", "<|im_end|>", "<IMG_CONTEXT>")
    text = dict(
        TEXT_SIZES, model_type="qwen2", vocab_size=_vocab(tok), bos_token_id=pad, eos_token_id=eos, pad_token_id=pad
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 32],
        patch_size=[8, 8],
    )
    config = transformers.InternVLConfig(
        text_config=text, vision_config=vision, image_token_id=image, image_seq_length=4, downsample_ratio=0.5
    )
    image_processor = transformers.GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = image_only_processor_class(transformers.InternVLProcessor)(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=chat_templates.INTERNVL
    )
    return config, processor


FAMILIES: dict[str, FamilyRecipe] = {
    r.name: r
    for r in [
        FamilyRecipe("qwen2_vl", lambda: _qwen_vl("qwen2_vl"), "Qwen2-VL: ViT + 2x2 patch merger, M-RoPE"),
        FamilyRecipe("qwen2_5_vl", lambda: _qwen_vl("qwen2_5_vl"), "Qwen2.5-VL: windowed ViT, M-RoPE"),
        FamilyRecipe("llava", _llava, "LLaVA-1.5: CLIP + MLP projector + Llama"),
        FamilyRecipe("llava_next", _llava_next, "LLaVA-NeXT: any-resolution tiles, Mistral"),
        FamilyRecipe("idefics3", _idefics3, "Idefics3: SigLIP + pixel shuffle + Llama, image splitting"),
        FamilyRecipe("gemma3", _gemma3, "Gemma 3: SigLIP + pooled soft tokens"),
        FamilyRecipe("paligemma", _paligemma, "PaliGemma: SigLIP + Gemma, prefix-LM"),
        FamilyRecipe("mistral3", _mistral3, "Mistral 3: Pixtral ViT + patch merger"),
        FamilyRecipe("internvl", _internvl, "InternVL 3 (hf): InternViT + pixel shuffle + Qwen2"),
    ]
}


def family_unavailable(name: str) -> str | None:
    """Why this environment cannot build ``name``'s tiny checkpoint (e.g. transformers < 5.18 needs
    torchvision for Idefics3's image processor), or None when it can."""
    try:
        FAMILIES[name].build()
    except ImportError as error:
        return str(error).strip().split(". ")[0] + "."
    return None


@dataclass(frozen=True)
class VideoProcessorSpec:
    """What a family's video processor saves beyond the settings it shares with the image processor.

    ``shared`` names the class's own settings (not in ``VideosKwargs``) that it takes from the image
    processor; ``defaults`` are its video-only settings at the class's defaults, as ``to_dict`` writes them.
    """

    class_name: str
    shared: tuple[str, ...]
    defaults: dict[str, Any]


QWEN2_VL_VIDEO = VideoProcessorSpec(
    "Qwen2VLVideoProcessor",
    shared=("patch_size", "temporal_patch_size", "merge_size"),
    defaults=dict(do_sample_frames=False, min_frames=4, max_frames=768, max_video_tokens=128000, return_metadata=False),
)

# Families whose transformers processor also takes a video processor (``AutoVideoProcessor`` maps their
# model type to these classes); the other six are image-only.
VIDEO_PROCESSORS: dict[str, VideoProcessorSpec] = {
    "qwen2_vl": QWEN2_VL_VIDEO,
    "qwen2_5_vl": QWEN2_VL_VIDEO,
    "internvl": VideoProcessorSpec(
        "InternVLVideoProcessor",
        shared=(),
        defaults=dict(do_sample_frames=False, initial_shift=True, return_metadata=False),
    ),
}


def video_processor_config(family: str, processor: ProcessorMixin) -> dict[str, Any] | None:
    """The ``video_preprocessor_config.json`` a real checkpoint of ``family`` carries, or None if it has none.

    Upstream loaders (``AutoProcessor`` with torchvision installed, hence LLaMA-Factory) build the full
    processor and fail on a folder without it. The video processor classes import torchvision, which
    the plugin does not require, so the dict is written from the image processor's settings (the same
    size, patching and normalisation, so videos and images are cut alike) plus the class's video-only
    defaults: exactly what the class's ``to_dict`` returns for those settings.
    """
    spec = VIDEO_PROCESSORS.get(family)
    if spec is None:
        return None
    image_settings = processor.image_processor.to_dict()
    accepted = set(VideosKwargs.__annotations__) | set(spec.shared)
    config = {k: v for k, v in image_settings.items() if k in accepted and v is not None}
    config.update(spec.defaults)
    config["video_processor_type"] = spec.class_name
    return dict(sorted(config.items()))
