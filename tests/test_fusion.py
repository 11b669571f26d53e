"""Ability-fused inference over every tiny family: identity, the formula, batching, clean removal."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tests.conftest import conversation, encode
from vift_plugin import (
    FusionConfig,
    count_fusion_passes,
    disable_vift,
    enable_vift,
    find_decoder_layers,
    fusion_config,
    vift_fusion,
)
from vift_plugin.alignment import align_by_removal
from vift_plugin.fusion import FusionStats

GREEDY: dict[str, Any] = dict(max_new_tokens=4, do_sample=False)
SCORES: dict[str, Any] = dict(GREEDY, output_scores=True, return_dict_in_generate=True)


def two_prompts(processor: Any) -> Any:
    return encode(
        processor,
        [
            conversation("What colour is the shape?", 40, 60, "red"),
            conversation("Describe the picture in detail, please.", 90, 30, "blue"),
        ],
    )


def first_scores(model: Any, batch: Any, **kwargs: Any) -> torch.Tensor:
    return model.generate(**batch, **SCORES, **kwargs).scores[0]


def lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, exclude_modules=r".*(vision|visual).*"
    )
    return get_peft_model(model, config).eval()


@pytest.mark.parametrize("wrap", ["plain", "peft"])
@pytest.mark.parametrize("mode", ["live", "official"])
def test_alpha_one_beta_zero_reproduces_plain_generate(tiny: tuple[Any, Any], wrap: str, mode: str) -> None:
    model, processor = tiny
    if wrap == "peft":
        model = lora(model)
    batch = two_prompts(processor)
    plain = model.generate(**batch, **SCORES)
    enable_vift(model, processor=processor, alpha=1.0, beta=0.0, mode=mode)
    fused = model.generate(**batch, **SCORES)
    assert torch.equal(fused.sequences, plain.sequences)
    for a, b in zip(fused.scores, plain.scores, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("wrap", ["plain", "peft"])
def test_fusion_changes_the_prefill_when_beta_positive(tiny: tuple[Any, Any], wrap: str) -> None:
    model, processor = tiny
    if wrap == "peft":
        model = lora(model)
    batch = two_prompts(processor)
    plain = first_scores(model, batch)
    enable_vift(model, processor=processor, beta=0.3)
    fused = first_scores(model, batch)
    assert not torch.allclose(fused, plain)
    assert torch.equal(first_scores(model, batch, vift=False), plain)
    official = first_scores(model, batch, vift_mode="official", vift_alpha=0.8)
    assert not torch.allclose(official, fused)


def _capture_layer(model: Any, index: int, prepend: bool, store: list[torch.Tensor]) -> Any:
    layer = find_decoder_layers(model)[index]

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        store.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return layer.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend)


@pytest.mark.parametrize("mode", ["live", "official"])
def test_formula_by_hand_at_one_layer(tiny: tuple[Any, Any], mode: str) -> None:
    model, processor = tiny
    alpha, beta = 0.9, 0.25
    batch = two_prompts(processor)
    enable_vift(model, processor=processor, alpha=alpha, beta=beta, mode=mode)
    handle = model._vift_handle
    layer = len(handle.layers) - 1
    alignment = align_by_removal(dict(batch), handle.image_ids, "after_image")
    assert alignment.num_pairs > 0

    # t: the text-only layer inputs, from a plain generate over the text-only rows (one at a time).
    text_states = []
    for b in range(2):
        row = {k: v[None] for k, v in alignment.text_rows[b].items()}
        store: list[torch.Tensor] = []
        hook = _capture_layer(model, layer, True, store)
        try:
            model.generate(**row, attention_mask=torch.ones_like(row["input_ids"]), max_new_tokens=1, vift=False)
        finally:
            hook.remove()
        text_states.append(store[0][0])
    unfused: list[torch.Tensor] = []
    hook = _capture_layer(model, layer, True, unfused)
    try:
        model.generate(**batch, max_new_tokens=1, vift=False)
    finally:
        hook.remove()

    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    hooks = [_capture_layer(model, layer, True, before), _capture_layer(model, layer, False, after)]
    try:
        model.generate(**batch, max_new_tokens=3, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    # The fused call first runs the text-only (and, official, the unfused) prefill through the layer;
    # the fused prefill is the last full-width forward, followed by the decode steps.
    width = batch["input_ids"].shape[1]
    prefill = max(i for i, h in enumerate(before) if h.shape == (2, width, h.shape[2]))
    before, after = before[prefill:], after[prefill:]
    x, y = before[0], after[0]
    rows, pos = alignment.batch_index, alignment.mm_position
    t = torch.stack([text_states[int(b)][int(q)] for b, q in zip(rows, alignment.text_position, strict=True)])
    if mode == "live":
        expected = alpha * x[rows, pos] + beta * t
    else:
        expected = x[rows, pos] + beta * t + (alpha - 1) * unfused[0][rows, pos]
    torch.testing.assert_close(y[rows, pos], expected, atol=1e-5, rtol=1e-4)
    untouched = torch.ones(x.shape[:2], dtype=torch.bool)
    untouched[rows, pos] = False
    assert torch.equal(y[untouched], x[untouched])
    assert len(before) == 3, "one prefill and two decode steps"
    for decode_before, decode_after in zip(before[1:], after[1:], strict=True):
        assert decode_before.shape[1] == 1
        assert torch.equal(decode_before, decode_after)


def test_left_padded_batch_equals_rows_one_by_one(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    convs = [
        conversation("What colour is the shape?", 40, 60, "red"),
        conversation("Describe the picture in detail, please.", 90, 30, "blue"),
    ]
    enable_vift(model, processor=processor, beta=0.3)
    batch = encode(processor, convs)
    batched = model.generate(**batch, **SCORES)
    width = batch["input_ids"].shape[1]
    for row, conv in enumerate(convs):
        single_batch = encode(processor, [conv])
        single = model.generate(**single_batch, **SCORES)
        n = single_batch["input_ids"].shape[1]
        assert torch.equal(batched.sequences[row, width:], single.sequences[0, n:])
        torch.testing.assert_close(batched.scores[0][row], single.scores[0][0], atol=1e-4, rtol=1e-4)


def _hooks_left(model: Any) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_disable_restores_an_unpatched_model(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    reference = copy.deepcopy(model)
    original_class = type(model)
    batch = two_prompts(processor)
    model.generate(**batch, **GREEDY)  # transformers installs its own output-recording hooks lazily
    hooks_before = _hooks_left(model)
    enable_vift(model, processor=processor, beta=0.3)
    assert _hooks_left(model) == hooks_before + len(find_decoder_layers(model))
    assert type(model) is not original_class and fusion_config(model) == FusionConfig(beta=0.3)
    model.generate(**batch, **GREEDY)
    disable_vift(model)
    assert type(model) is original_class and fusion_config(model) is None
    assert _hooks_left(model) == hooks_before
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    assert torch.equal(model.generate(**batch, **GREEDY), reference.generate(**batch, **GREEDY))


class _Boom(StoppingCriteria):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("boom")


def test_exception_inside_generate_leaves_the_model_clean(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    reference = copy.deepcopy(model)
    batch = two_prompts(processor)
    enable_vift(model, processor=processor, beta=0.3, mode="official", alpha=0.9)
    with pytest.raises(RuntimeError, match="boom"):
        model.generate(**batch, **GREEDY, stopping_criteria=StoppingCriteriaList([_Boom()]))
    assert model._vift_handle.active is None
    assert not any("get_image_features" in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    with pytest.raises(RuntimeError, match="boom"):
        with vift_fusion(model, beta=0.2):
            raise RuntimeError("boom")
    assert fusion_config(model) == FusionConfig(beta=0.3, mode="official", alpha=0.9)
    disable_vift(model)
    assert torch.equal(model.generate(**batch, **GREEDY), reference.generate(**batch, **GREEDY))


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_beam_search_sampling_and_streamer(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    batch = two_prompts(processor)
    beams = dict(max_new_tokens=4, num_beams=2, do_sample=False)
    plain_beams = model.generate(**batch, **beams)
    torch.manual_seed(0)
    plain_sample = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=5)
    enable_vift(model, processor=processor, beta=0.0)
    assert torch.equal(model.generate(**batch, **beams), plain_beams)
    torch.manual_seed(0)
    assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=5), plain_sample)
    fused_beams = model.generate(**batch, **beams, vift_beta=0.3, num_return_sequences=2)
    assert fused_beams.shape[0] == 4

    single = encode(processor, [conversation("What colour is the shape?")])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    result: dict[str, torch.Tensor] = {}
    thread = threading.Thread(
        target=lambda: result.update(out=model.generate(**single, **GREEDY, vift_beta=0.3, streamer=streamer))
    )
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    new_tokens = result["out"][0, single["input_ids"].shape[1] :]
    assert streamed == processor.tokenizer.decode(new_tokens, skip_special_tokens=False)


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3"])
def test_all_text_fuses_more_tokens_and_user_text_inputs_align(tiny: tuple[Any, Any], family: str) -> None:
    model, processor = tiny
    batch = two_prompts(processor)
    enable_vift(model, processor=processor, beta=0.3)
    ids = model._vift_handle.image_ids
    after, everything = (align_by_removal(dict(batch), ids, t).num_pairs for t in ("after_image", "all_text"))
    assert 0 < after < everything
    default = first_scores(model, batch)
    assert not torch.allclose(first_scores(model, batch, vift_tokens="all_text"), default)

    text_only = encode(
        processor,
        [
            [{"role": "user", "content": [{"type": "text", "text": q}]}]
            for q in ("What colour is the shape?", "Describe the picture in detail, please.")
        ],
    )
    user = first_scores(model, batch, vift_text_inputs=dict(text_only))
    assert not torch.allclose(user, first_scores(model, batch, vift=False))
    if family == "qwen2_vl":  # its template without the image is exactly the prompt minus the image span
        torch.testing.assert_close(user, default, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_text_cache_serves_one_question_over_many_images(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    convs = [conversation("What colour is the shape?", 40 + 10 * i, 60, c) for i, c in enumerate(["red", "blue"])]
    batch = encode(processor, convs)
    enable_vift(model, processor=processor, beta=0.3)
    uncached = first_scores(model, batch)
    enable_vift(model, processor=processor, beta=0.3, text_cache_size=8)
    layers = len(FusionConfig().resolve_layers(len(find_decoder_layers(model))))
    with count_fusion_passes() as stats:
        torch.testing.assert_close(first_scores(model, batch), uncached, atol=1e-5, rtol=1e-5)
        # identical questions share one text-only row
        assert stats == FusionStats(fused_calls=1, text_passes=1, text_rows=1, captured_layers=layers)
        torch.testing.assert_close(first_scores(model, batch), uncached, atol=1e-5, rtol=1e-5)
        # the second call is served from the cache
        assert stats == FusionStats(fused_calls=2, text_passes=1, text_rows=1, cached_rows=1, captured_layers=layers)
    assert len(model._vift_handle.text_cache) == 1
    first_scores(model, batch)
    assert stats.fused_calls == 2, "the counter stops at the end of the block"


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "gemma3"])
def test_official_mode_runs_the_vision_encoder_once(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    batch = two_prompts(processor)
    calls: list[int] = []
    tower = next(m for name, m in model.named_modules() if name.endswith(("visual", "vision_tower")))
    tower.register_forward_hook(lambda *args: calls.append(1))
    model.generate(**batch, **GREEDY)
    assert len(calls) == 1
    enable_vift(model, processor=processor, mode="official", alpha=0.8, beta=0.2)
    calls.clear()
    with count_fusion_passes() as stats:
        model.generate(**batch, **GREEDY)
    assert len(calls) == 1
    assert (stats.fused_calls, stats.text_passes, stats.unfused_passes) == (1, 1, 1)


def test_text_only_inputs_generate_plainly(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    text_only = processor.tokenizer(["Hello there"], return_tensors="pt")
    plain = model.generate(**text_only, **GREEDY)
    enable_vift(model, processor=processor, beta=0.3)
    assert torch.equal(model.generate(**text_only, **GREEDY), plain)
