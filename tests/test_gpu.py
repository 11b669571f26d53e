"""Checks that need a CUDA GPU (marked ``gpu``; skipped where torch sees none): fusion's identity in bf16
and on a 4-bit model dispatched with ``device_map="auto"``, and a QLoRA backward pass.

On CPU the same properties are tested in float32 (tests/test_fusion.py, tests/training); what only a GPU
shows is bf16 kernels, bitsandbytes' CUDA 4-bit layers and accelerate's dispatch. ``scripts/gpu_check.sh``
runs these and records the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

from tests.conftest import conversation, encode
from vift_plugin import enable_vift, load_processor

pytestmark = pytest.mark.gpu

SCORES: dict[str, Any] = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)


def on_cuda(batch: Any, dtype: torch.dtype) -> dict[str, Any]:
    """``batch`` on the GPU, floating tensors (pixels) in ``dtype``."""
    return {
        key: value.to("cuda", dtype=dtype) if value.is_floating_point() else value.to("cuda")
        for key, value in batch.items()
        if isinstance(value, torch.Tensor)
    }


def two_prompts(processor: Any) -> Any:
    return encode(
        processor,
        [
            conversation("What colour is the shape?", 40, 60, "red"),
            conversation("Describe the picture in detail, please.", 90, 30, "blue"),
        ],
    )


def assert_identity_and_effect(model: Any, processor: Any, batch: dict[str, Any], mode: str) -> None:
    """alpha 1, beta 0 gives plain generate's tokens (and logits within bf16 rounding); beta 0.3 moves them."""
    with torch.inference_mode():
        plain = model.generate(**batch, **SCORES)
        enable_vift(model, processor=processor, alpha=1.0, beta=0.0, mode=mode)
        fused = model.generate(**batch, **SCORES)
        assert torch.equal(fused.sequences, plain.sequences)
        for a, b in zip(fused.scores, plain.scores, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-2)
        enable_vift(model, processor=processor, alpha=1.0, beta=0.3, mode=mode)
        moved = model.generate(**batch, **SCORES).scores[0]
    assert not torch.allclose(moved, plain.scores[0]), "beta 0.3 changed nothing: was the fusion applied?"


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "gemma3"])
@pytest.mark.parametrize("mode", ["live", "official"])
def test_bf16_alpha_one_beta_zero_equals_plain_generate(checkpoint_dir: Any, family: str, mode: str) -> None:
    path = checkpoint_dir(family)
    model: Any = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    processor = load_processor(path)
    assert_identity_and_effect(model, processor, on_cuda(two_prompts(processor), torch.bfloat16), mode)


@pytest.mark.parametrize("mode", ["live", "official"])
def test_4bit_model_dispatched_with_device_map_auto_fuses_exactly(checkpoint_dir: Any, mode: str) -> None:
    from vift_plugin.training.model import unquantized_modules

    path = checkpoint_dir("qwen2_vl")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=unquantized_modules("qwen2_vl"),
    )
    model = AutoModelForImageTextToText.from_pretrained(
        path, device_map="auto", dtype=torch.bfloat16, quantization_config=quantization
    ).eval()
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    processor = load_processor(path)
    assert_identity_and_effect(model, processor, on_cuda(two_prompts(processor), torch.bfloat16), mode)


def test_qlora_backward_gives_finite_gradients_on_every_lora_weight(checkpoint_dir: Any, tmp_path: Path) -> None:
    """One caption batch through a 4-bit Qwen2-VL with LoRA (what ``vift train`` builds for QLoRA)."""
    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.data.schema import caption_messages
    from vift_plugin.training import ModelArguments, ViFTTrainingArguments, load_model_and_processor

    args = ViFTTrainingArguments(
        output_dir=str(tmp_path),
        use_lora=True,
        freeze_vision=True,
        gradient_checkpointing=True,
        bf16=True,
        report_to=[],
    )
    model_args = ModelArguments(str(checkpoint_dir("qwen2_vl")), load_in_bits=4, dtype="bfloat16")
    model, processor = load_model_and_processor(model_args, args)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    records = [
        {"messages": caption_messages("Describe the image.", f"A {colour} square."), "images": [image]}
        for colour, image in (("red", Image.new("RGB", (56, 56), "red")), ("blue", Image.new("RGB", (84, 56), "blue")))
    ]
    batch = on_cuda(ViFTDataCollator(processor)(records), torch.bfloat16)
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad}
    assert lora
    for name, parameter in lora.items():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert any(bool(p.grad.abs().sum() > 0) for p in lora.values() if p.grad is not None)
