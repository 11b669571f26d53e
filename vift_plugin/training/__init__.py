"""ViFT training on transformers ``Trainer``: arguments, role-aware model preparation, the trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vift_plugin._lazy import lazy_attributes

if TYPE_CHECKING:
    from vift_plugin.loading import load_vift
    from vift_plugin.training.arguments import DataArguments, ModelArguments, ViFTTrainingArguments
    from vift_plugin.training.model import load_model_and_processor, prepare_model
    from vift_plugin.training.roles import parameter_role, parameters_by_role
    from vift_plugin.training.trainer import ViFTTrainer

_WHERE = {
    "DataArguments": "vift_plugin.training.arguments",
    "ModelArguments": "vift_plugin.training.arguments",
    "ViFTTrainer": "vift_plugin.training.trainer",
    "ViFTTrainingArguments": "vift_plugin.training.arguments",
    "load_model_and_processor": "vift_plugin.training.model",
    "load_vift": "vift_plugin.loading",
    "parameter_role": "vift_plugin.training.roles",
    "parameters_by_role": "vift_plugin.training.roles",
    "prepare_model": "vift_plugin.training.model",
}

__all__ = [
    "DataArguments",
    "ModelArguments",
    "ViFTTrainer",
    "ViFTTrainingArguments",
    "load_model_and_processor",
    "load_vift",
    "parameter_role",
    "parameters_by_role",
    "prepare_model",
]

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
