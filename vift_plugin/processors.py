"""Loading processors where torchvision is absent, exactly as from a downloaded checkpoint.

In transformers 5.x, processors whose constructor takes a ``video_processor`` (Qwen2-VL, Qwen2.5-VL,
InternVL, ...) cannot be built without torchvision, and ``PixtralProcessor`` (Mistral 3) imports a
helper from the torchvision image processor. Images alone need none of that, so
:func:`load_processor` first tries ``AutoProcessor`` and, only when that fails for want of
torchvision, builds the same processor class without its video half.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoProcessor, ProcessorMixin
from transformers.utils import is_torchvision_available

__all__ = ["image_only_processor_class", "load_processor", "resolve_processor_class"]


def image_only_processor_class(base: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """Return ``base`` or, when its constructor takes a ``video_processor``, a subclass without it.

    The subclass keeps the base class's name, so a saved ``processor_config.json`` names the real
    class exactly as a downloaded checkpoint does, and its signature lists every other argument so
    that settings such as ``image_seq_length`` are saved and reloaded.
    """
    if "video_processor" not in inspect.signature(base.__init__).parameters:
        return base

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.pop("video_processor", None)
        base.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    signature = inspect.signature(base.__init__)
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in signature.parameters.items() if name != "video_processor"]
    )

    def from_args_and_dict(cls: Any, args: list[Any], processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        # The base method reads accepted names from ``__init__.__code__``, which the wrapper hides.
        return_unused = kwargs.pop("return_unused_kwargs", False)
        settings = {**processor_dict, **kwargs}
        for name in [*cls.get_attributes(), "auto_map", "processor_class", "video_processor"]:
            settings.pop(name, None)
        accepted = set(__init__.__signature__.parameters) - {"self"}  # type: ignore[attr-defined]
        processor = cls(*args, **{k: v for k, v in settings.items() if k in accepted})
        unused = {k: v for k, v in settings.items() if k not in accepted}
        return (processor, unused) if return_unused else processor

    namespace = {
        "__init__": __init__,
        "from_args_and_dict": classmethod(from_args_and_dict),
        "__doc__": f"{base.__name__} without a video processor.",
    }
    return type(base.__name__, (base,), namespace)


def _import_pixtral_processor_without_torchvision() -> type[ProcessorMixin]:
    """Import ``PixtralProcessor`` with its one torchvision helper taken from the PIL image processor."""
    package = "transformers.models.pixtral"
    tv_name = f"{package}.image_processing_pixtral"
    pil_module = importlib.import_module(f"{package}.image_processing_pil_pixtral")
    previous = sys.modules.get(tv_name)
    sys.modules[tv_name] = pil_module
    try:
        module = importlib.import_module(f"{package}.processing_pixtral")
    finally:
        if previous is None:
            del sys.modules[tv_name]
        else:
            sys.modules[tv_name] = previous
    cls: type[ProcessorMixin] = module.PixtralProcessor
    return cls


def resolve_processor_class(name: str) -> type[ProcessorMixin]:
    """The processor class called ``name``, usable for images even without torchvision."""
    if name == "PixtralProcessor" and not is_torchvision_available():
        return _import_pixtral_processor_without_torchvision()
    cls = getattr(transformers, name, None)
    if cls is None or not (inspect.isclass(cls) and issubclass(cls, ProcessorMixin)):
        raise ValueError(f"processor_class {name!r} is not a transformers processor class.")
    return image_only_processor_class(cls) if not is_torchvision_available() else cls


def load_processor(path: str | os.PathLike[str], **kwargs: Any) -> ProcessorMixin:
    """Load a checkpoint's processor: ``AutoProcessor`` when it can, an image-only build otherwise.

    The fallback is taken only when torchvision is missing and the checkpoint names a processor
    class in ``processor_config.json``; any other failure is raised unchanged.
    """
    try:
        processor: ProcessorMixin = AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, OSError, AttributeError):
        if is_torchvision_available():
            raise
        config_file = Path(path) / "processor_config.json"
        if not config_file.is_file():
            raise
        name = json.loads(config_file.read_text()).get("processor_class")
        if not name:
            raise
        processor = resolve_processor_class(name).from_pretrained(path, **kwargs)
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(
            f"{os.fspath(path)!r} has no multimodal processor (AutoProcessor returned "
            f"{type(processor).__name__}); is processor_config.json missing?"
        )
    return processor
