from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from vift_plugin import enable_vift, find_decoder_layers


def test_finds_the_language_model_layers(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    layers = find_decoder_layers(model)
    assert len(layers) == model.config.get_text_config().num_hidden_layers
    names = {id(m): n for n, m in model.named_modules()}
    assert "vision" not in names[id(layers)] and "visual" not in names[id(layers)]


def test_through_peft_and_with_an_explicit_path(tiny: tuple[Any, Any]) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    layers = find_decoder_layers(model)
    path = next(n for n, m in model.named_modules() if m is layers)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert find_decoder_layers(peft_model) is layers
    assert find_decoder_layers(peft_model, layers_path=path) is layers


class _NoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)


class _OddModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision_model = nn.Module()
        self.vision_model.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(6)])
        self.stack = nn.Module()
        self.stack.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])


def test_error_names_the_class_and_the_override() -> None:
    with pytest.raises(ValueError, match=r"_NoLayers.*layers_path="):
        find_decoder_layers(_NoLayers())
    odd = _OddModel()
    with pytest.raises(ValueError, match="_OddModel"):
        find_decoder_layers(odd)
    assert find_decoder_layers(odd, layers_path="stack.blocks") is odd.stack.blocks
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        find_decoder_layers(odd, layers_path="stack.nope")
    with pytest.raises(ValueError, match="not a non-empty ModuleList"):
        find_decoder_layers(odd, layers_path="stack")


def test_enable_rejects_out_of_range_layers_and_non_generative_models(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    with pytest.raises(ValueError, match="out of range"):
        enable_vift(model, processor=processor, layers=[99])
    assert not hasattr(model, "_vift_handle")
    with pytest.raises(TypeError, match="no generate"):
        enable_vift(_NoLayers())
    assert torch.is_tensor(next(model.parameters()))
