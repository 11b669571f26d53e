"""Ability-fused inference: ``enable_vift(model)`` makes ``model.generate`` fuse text-only states.

A ``FusionGenerationMixin`` joins the model's class and forward pre-hooks sit on every decoder layer.
The hooks do nothing unless a fused ``generate`` call has armed them, and only for the prefill
forward of that call (sequence length > 1 at the first layer); decode steps are never touched.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vift_plugin.alignment import (
    Alignment,
    align_by_removal,
    align_by_suffix,
    image_token_ids_from_config,
    image_token_ids_from_processor,
)
from vift_plugin.config import FusionConfig
from vift_plugin.layers import find_decoder_layers, unwrap_model

IMAGE_INPUT_KEYS = ("pixel_values", "image_embeds")


@dataclass
class _Pass:
    """What the hooks do during one armed ``generate`` call."""

    action: Literal["capture", "fuse"]
    layers: set[int]
    batch_size: int = 1
    armed: bool = True
    prefill: bool = False
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    config: FusionConfig | None = None
    rows: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    text_states: dict[int, torch.Tensor] = field(default_factory=dict)
    mm_states: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class FusionStats:
    """What fused ``generate`` calls cost beyond a plain call, counted by :func:`count_fusion_passes`.

    ``text_passes`` text-only prefills encoded ``text_rows`` prompts (identical prompts of a batch
    once); ``cached_rows`` prompts came from the text cache instead. ``unfused_passes`` are the extra
    multimodal prefills of ``mode="official"`` with ``alpha != 1``. ``captured_layers`` sums the decoder
    layers each of those passes kept inputs of.
    """

    fused_calls: int = 0
    text_passes: int = 0
    text_rows: int = 0
    cached_rows: int = 0
    unfused_passes: int = 0
    captured_layers: int = 0


_COUNTERS: list[FusionStats] = []


@contextmanager
def count_fusion_passes() -> Iterator[FusionStats]:
    """Count, in the yielded ``FusionStats``, every fused ``generate`` call of this process inside the block."""
    stats = FusionStats()
    _COUNTERS.append(stats)
    try:
        yield stats
    finally:
        _COUNTERS[:] = [counter for counter in _COUNTERS if counter is not stats]


def _count(**amounts: int) -> None:
    for counter in _COUNTERS:
        for name, amount in amounts.items():
            setattr(counter, name, getattr(counter, name) + amount)


def _expand(rows: torch.Tensor, positions: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and positions after ``generate`` repeated each row ``factor`` times (beams, samples)."""
    if factor == 1:
        return rows, positions
    expanded = (rows[:, None] * factor + torch.arange(factor, device=rows.device)).flatten()
    return expanded, positions.repeat_interleave(factor)


def _left_pad(row: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    return torch.cat([torch.full((length - row.numel(),), fill, dtype=row.dtype), row])


class FusionHandle:
    """The hooks, settings and text-state cache that ``enable_vift`` attached to one model."""

    def __init__(self, model: nn.Module, config: FusionConfig, image_ids: set[int]) -> None:
        self.model: Any = model
        self.config = config
        self.image_ids = image_ids
        self.layers = find_decoder_layers(model, config.layers_path)
        config.resolve_layers(len(self.layers))
        self.original_class = type(model)
        self.active: _Pass | None = None
        self.text_cache: OrderedDict[tuple[Any, ...], dict[int, torch.Tensor]] = OrderedDict()
        self.handles: list[RemovableHandle] = [
            layer.register_forward_pre_hook(self._make_hook(index), with_kwargs=True)
            for index, layer in enumerate(self.layers)
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.active = None
        self.text_cache.clear()
        if type(self.model) is not self.original_class:
            self.model.__class__ = self.original_class

    def _make_hook(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            state = self.active
            if state is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                state.prefill = state.armed and hidden.shape[1] > 1
                state.armed = state.armed and not state.prefill
            if not state.prefill or index not in state.layers:
                return None
            if state.action == "capture":
                state.captured[index] = hidden.detach()
                return None
            fused = self._fuse(state, index, hidden)
            if args:
                return (fused, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fused}

        return hook

    @staticmethod
    def _fuse(state: _Pass, index: int, hidden: torch.Tensor) -> torch.Tensor:
        assert state.config is not None and state.rows is not None and state.positions is not None
        factor = hidden.shape[0] // state.batch_size
        rows, positions = _expand(state.rows.to(hidden.device), state.positions.to(hidden.device), factor)
        text = state.text_states[index].to(hidden.device, hidden.dtype).repeat_interleave(factor, dim=0)
        out = hidden.clone()
        current = out[rows, positions]
        alpha, beta = state.config.alpha, state.config.beta
        if state.mm_states:  # official mode with alpha != 1 (otherwise both modes are the live formula)
            unfused = state.mm_states[index].to(hidden.device, hidden.dtype).repeat_interleave(factor, dim=0)
            out[rows, positions] = current + beta * text + (alpha - 1.0) * unfused
        else:
            out[rows, positions] = alpha * current + beta * text
        return out

    def _capture(self, generate: Callable[..., Any], inputs: dict[str, Any], layers: set[int]) -> dict[int, Any]:
        """Layer inputs of the prefill of ``inputs``, computed exactly as ``generate`` would."""
        gen_config = copy.deepcopy(self.model.generation_config)
        gen_config.update(
            max_new_tokens=1,
            min_new_tokens=None,
            min_length=0,
            do_sample=False,
            num_beams=1,
            num_return_sequences=1,
            output_scores=False,
            return_dict_in_generate=False,
        )
        self.active = _Pass("capture", layers)
        try:
            with torch.no_grad():
                generate(**inputs, generation_config=gen_config)
            captured = self.active.captured
        finally:
            self.active = None
        missing = layers - set(captured)
        if missing:
            raise RuntimeError(
                f"ViFT captured no hidden states at decoder layers {sorted(missing)} of "
                f"{self.original_class.__name__}; the prefill did not run through the hooked layers."
            )
        return captured

    def _text_states(
        self, generate: Callable[..., Any], rows: list[dict[str, torch.Tensor]], layers: set[int], device: torch.device
    ) -> list[dict[int, torch.Tensor]]:
        """Per row, ``{layer: (T_row, H)}`` text-only layer inputs; identical rows are computed once."""
        keys = [(tuple(layers), *((k, tuple(v.tolist())) for k, v in sorted(row.items()))) for row in rows]
        results: dict[tuple[Any, ...], dict[int, torch.Tensor]] = {}
        for key in keys:
            if key in self.text_cache:
                self.text_cache.move_to_end(key)
                results[key] = self.text_cache[key]
        unique = dict(zip(keys, rows, strict=True))
        pending = [key for key in unique if key not in results]
        _count(cached_rows=len(unique) - len(pending))
        if pending:
            batch_rows = [unique[key] for key in pending]
            length = max(int(r["input_ids"].numel()) for r in batch_rows)
            pad_id = self.model.generation_config.pad_token_id
            pad_id = int(pad_id if pad_id is not None else 0)
            batch = {
                name: torch.stack(
                    [_left_pad(r[name], length, pad_id if name == "input_ids" else 0) for r in batch_rows]
                ).to(device)
                for name in batch_rows[0]
            }
            batch["attention_mask"] = torch.stack(
                [_left_pad(torch.ones_like(r["input_ids"]), length, 0) for r in batch_rows]
            ).to(device)
            captured = self._capture(generate, batch, layers)
            _count(text_passes=1, text_rows=len(pending), captured_layers=len(layers))
            for i, (key, row) in enumerate(zip(pending, batch_rows, strict=True)):
                n = int(row["input_ids"].numel())
                results[key] = {layer: captured[layer][i, length - n :] for layer in layers}
                if self.config.text_cache_size > 0:
                    self.text_cache[key] = results[key]
                    while len(self.text_cache) > self.config.text_cache_size:
                        self.text_cache.popitem(last=False)
        return [results[key] for key in keys]

    def fused_generate(
        self,
        generate: Callable[..., Any],
        config: FusionConfig,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        text_inputs: dict[str, Any] | None,
    ) -> Any:
        input_ids = kwargs["input_ids"]
        if text_inputs is None:
            alignment: Alignment = align_by_removal(kwargs, self.image_ids, config.tokens)
        else:
            alignment = align_by_suffix(kwargs, dict(text_inputs), self.image_ids, config.tokens)
        if alignment.num_pairs == 0:
            return generate(*args, **kwargs)
        _count(fused_calls=1)
        layers = set(config.resolve_layers(len(self.layers)))
        used = sorted(set(alignment.batch_index.tolist()))
        states = self._text_states(generate, [alignment.text_rows[b] for b in used], layers, input_ids.device)
        per_row = dict(zip(used, states, strict=True))
        state = _Pass(
            "fuse",
            layers,
            batch_size=int(input_ids.shape[0]),
            config=config,
            rows=alignment.batch_index,
            positions=alignment.mm_position,
        )
        pairs = list(zip(alignment.batch_index.tolist(), alignment.text_position.tolist(), strict=True))
        for layer in layers:
            state.text_states[layer] = torch.stack([per_row[b][layer][q] for b, q in pairs])
        needs_unfused = config.mode == "official" and config.alpha != 1.0
        with _reuse_image_features(self.model, enabled=needs_unfused):
            if needs_unfused:
                model_inputs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
                unfused = self._capture(generate, model_inputs, layers)
                _count(unfused_passes=1, captured_layers=len(layers))
                for layer in layers:
                    state.mm_states[layer] = unfused[layer][alignment.batch_index, alignment.mm_position]
            self.active = state
            try:
                return generate(*args, **kwargs)
            finally:
                self.active = None


@contextmanager
def _reuse_image_features(model: nn.Module, enabled: bool) -> Iterator[None]:
    """While active, ``get_image_features`` returns its last result for the same pixel tensor."""
    if not enabled:
        yield
        return
    patched = [m for m in model.modules() if callable(getattr(type(m), "get_image_features", None))]
    memo: list[tuple[torch.Tensor, Any]] = []

    def wrap(bound: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(bound)
        def get_image_features(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            for seen, result in memo:
                if seen.shape == pixel_values.shape and (
                    seen.data_ptr() == pixel_values.data_ptr() or torch.equal(seen, pixel_values)
                ):
                    return result
            result = bound(pixel_values, *args, **kwargs)
            memo.append((pixel_values, result))
            return result

        return get_image_features

    for module in patched:
        setattr(module, "get_image_features", wrap(getattr(module, "get_image_features")))  # noqa: B009, B010
    try:
        yield
    finally:
        for module in patched:
            del module.get_image_features


class FusionGenerationMixin:
    """Joins the model's class; ``generate`` fuses when image inputs are present.

    Extra ``generate`` keywords: ``vift`` (False for a plain call), ``vift_alpha``, ``vift_beta``,
    ``vift_layers``, ``vift_tokens``, ``vift_mode`` (per-call overrides) and ``vift_text_inputs``
    (the user's own text-only processor output, aligned on the longest common token suffix).
    """

    _vift_handle: FusionHandle

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args: Any,
        vift: bool = True,
        vift_alpha: float | None = None,
        vift_beta: float | None = None,
        vift_layers: list[int] | None = None,
        vift_tokens: str | None = None,
        vift_mode: str | None = None,
        vift_text_inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        parent_generate = super().generate  # type: ignore[misc]
        if inputs is not None:
            kwargs["input_ids"] = inputs
        has_images = any(kwargs.get(k) is not None for k in IMAGE_INPUT_KEYS)
        if not vift or not has_images or kwargs.get("input_ids") is None:
            return parent_generate(*args, **kwargs)
        overrides = {
            "alpha": vift_alpha,
            "beta": vift_beta,
            "layers": vift_layers,
            "tokens": vift_tokens,
            "mode": vift_mode,
        }
        handle = self._vift_handle
        config = handle.config.replace(**{k: v for k, v in overrides.items() if v is not None})
        return handle.fused_generate(parent_generate, config, args, kwargs, vift_text_inputs)


_FUSION_CLASSES: dict[type, type] = {}


def _fusion_class(cls: type) -> type:
    if cls not in _FUSION_CLASSES:
        _FUSION_CLASSES[cls] = type(f"ViFT{cls.__name__}", (FusionGenerationMixin, cls), {})
    return _FUSION_CLASSES[cls]


def enable_vift(
    model: nn.Module,
    config: FusionConfig | None = None,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    layers: list[int] | None = None,
    tokens: str | None = None,
    mode: str | None = None,
    layers_path: str | None = None,
    text_cache_size: int | None = None,
    processor: Any = None,
    image_token_ids: list[int] | None = None,
) -> nn.Module:
    """Patch ``model`` in place for ability-fused inference and return it.

    Keyword settings override ``config`` (default ``FusionConfig()``). Image spans are found from the
    model config's image token ids, plus every image-span token of ``processor`` when given (tile tags,
    image break/end tokens: recommended for Idefics3, Mistral 3 and InternVL), plus ``image_token_ids``.
    Works on PEFT-wrapped models: the underlying transformers model is patched. Everything is checked
    before the fusion already on the model (if any) is replaced, so a call that raises changes nothing.
    """
    overrides = {
        "alpha": alpha,
        "beta": beta,
        "layers": layers,
        "tokens": tokens,
        "mode": mode,
        "layers_path": layers_path,
        "text_cache_size": text_cache_size,
    }
    config = (config or FusionConfig()).replace(**{k: v for k, v in overrides.items() if v is not None})
    base: Any = unwrap_model(model)
    if not callable(getattr(base, "generate", None)):
        raise TypeError(f"{type(base).__name__} has no generate(); enable_vift needs a generative model.")
    ids = image_token_ids_from_config(base.config)
    if processor is not None:
        ids |= image_token_ids_from_processor(processor)
    ids |= set(image_token_ids or [])
    if not ids:
        raise ValueError(
            f"No image token id found in the config of {type(base).__name__}; pass processor= or image_token_ids=."
        )
    config.resolve_layers(len(find_decoder_layers(base, config.layers_path)))
    disable_vift(base)
    handle = FusionHandle(base, config, ids)
    base.__class__ = _fusion_class(type(base))
    base._vift_handle = handle
    return model


def disable_vift(model: nn.Module) -> nn.Module:
    """Remove every hook and restore the model's class; a no-op on a model without fusion."""
    base = unwrap_model(model)
    handle = base.__dict__.pop("_vift_handle", None)
    if handle is not None:
        handle.remove()
    return model


def fusion_config(model: nn.Module) -> FusionConfig | None:
    """The active ``FusionConfig`` of ``model``, or None when fusion is not enabled."""
    handle = unwrap_model(model).__dict__.get("_vift_handle")
    return handle.config if handle is not None else None


@contextmanager
def vift_fusion(model: nn.Module, config: FusionConfig | None = None, **settings: Any) -> Iterator[nn.Module]:
    """Apply fusion for the duration of a ``with`` block; the previous state is restored afterwards."""
    previous = unwrap_model(model).__dict__.get("_vift_handle")
    enable_vift(model, config, **settings)
    try:
        yield model
    finally:
        disable_vift(model)
        if previous is not None:
            enable_vift(model, previous.config, image_token_ids=sorted(previous.image_ids))
