"""``ViFTTrainer``: a transformers ``Trainer`` with modality-grouped steps, per-role learning rates,
per-modality loss logging, and saves that reload into fused inference."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from vift_plugin.data.sampler import sampler_for_trainer
from vift_plugin.fusion import IMAGE_INPUT_KEYS
from vift_plugin.loading import load_trainable_weights, save_trainable_weights
from vift_plugin.training.arguments import ViFTTrainingArguments
from vift_plugin.training.checkpoints import (
    final_save_failure,
    load_full_weights,
    resolve_resume,
    save_failure,
    set_aside,
)
from vift_plugin.training.distributed import fsdp_off_warning
from vift_plugin.training.roles import (
    ROLES,
    check_modalities_train,
    idle_rate_messages,
    logged_learning_rates,
    parameters_by_role,
    role_param_groups,
    track_step_learning_rates,
)

logger = logging.getLogger(__name__)


def batch_modality(inputs: dict[str, Any]) -> str:
    """``image`` when the batch carries image tensors, else ``text``."""
    return "image" if any(inputs.get(key) is not None for key in IMAGE_INPUT_KEYS) else "text"


class ViFTTrainer(Trainer):
    """``Trainer`` for ViFT. Use with :class:`ViFTTrainingArguments` and a dataset that has a
    ``modality`` column (and ``length``, for length grouping), e.g. from ``mix_datasets``.

    - ``_get_train_sampler`` returns a :class:`ModalityGroupedSampler` sized by the trainer's
      per-device batch, world size and gradient accumulation, seeded by ``data_seed``/``seed``;
    - the optimizer has one parameter group per role (and decay/no-decay), at ``vision_lr``,
      ``connector_lr`` and ``language_lr``; logs carry each role's rate of the logged step as
      ``learning_rate/vision``, ``learning_rate/connector`` and ``learning_rate/language`` beside
      transformers' ``learning_rate`` (the first group's only); a rate set for a role that has no trainable
      parameter is warned about, unless ``freeze_<role>`` froze it on purpose;
    - logs carry ``loss_image`` and ``loss_text``: the training loss per optimizer step of each
      modality since the previous log, on the scale of ``loss`` (every step is single-modality, so
      this is the caption loss vs the text-instruction loss; local to the logging rank);
    - saves add the processor, the non-LoRA trainable weights and a ``FusionConfig``; a failed save
      (a checkpoint or the final ``save_model``) is a
      :class:`~vift_plugin.training.checkpoints.CheckpointSaveError` that names what to resume from;
    - resuming (``True`` or a path) restores every trained weight, LoRA or not, from the newest
      *complete* checkpoint; newer half-written ones are renamed ``checkpoint-N.incomplete``.
    """

    args: ViFTTrainingArguments

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ViFTTrainingArguments):
            raise TypeError(f"ViFTTrainer needs ViFTTrainingArguments, got {type(self.args).__name__}.")
        unsharded = fsdp_off_warning(self.args, self.is_fsdp_enabled)
        if unsharded and self.is_world_process_zero():
            logger.warning(unsharded)
        self._modality_losses: dict[str, list[torch.Tensor]] = defaultdict(list)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset: Any = self.train_dataset if train_dataset is None else train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if not self.args.group_by_modality:
            return super()._get_train_sampler(train_dataset)
        if self.args.modality_column not in columns:
            raise ValueError(
                f"group_by_modality needs a {self.args.modality_column!r} column in the training dataset "
                f"(columns: {columns}); build it with vift_plugin.data.mix_datasets or set group_by_modality=False."
            )
        length_column = self.args.length_column_name
        sampler = sampler_for_trainer(
            self,
            dataset[self.args.modality_column],
            dataset[length_column] if length_column in columns else None,
            remainder=self.args.remainder,
            length_window=self.args.length_window,
        )
        model: Any = self.model
        trainable = [
            role for role, named in parameters_by_role(model).items() if any(p.requires_grad for _, p in named)
        ]
        check_modalities_train({str(m): len(ix) for m, ix in sampler.groups.items()}, trainable)
        return sampler

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        opt_model: Any = self.model if model is None else model
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            rates = self.args.role_learning_rates()
            named = parameters_by_role(opt_model)
            self._report_idle_rates(named)
            groups = role_param_groups(named, decay, self.args.weight_decay, rates)
            if not groups:
                raise ValueError("No trainable parameters: check the freeze_* and LoRA settings.")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            track_step_learning_rates(self.optimizer)
        return self.optimizer

    def _report_idle_rates(self, named: dict[Any, list[tuple[str, torch.nn.Parameter]]]) -> None:
        """Warn where ``<role>_lr`` is set but the role trains nothing, so the rate is silently unused.

        A role frozen by this run's own ``freeze_<role>`` is only logged at INFO: a recipe that sets
        ``vision_lr`` once for two stages and freezes the encoder in the first does so on purpose.
        """
        if not self.is_world_process_zero():
            return
        settings = {
            role: (f"{role}_lr", float(rate))
            for role in ROLES
            if (rate := getattr(self.args, f"{role}_lr")) is not None
        }
        deliberate = set(self.args.frozen_roles())
        for role, setting in settings.items():
            hint: dict[str, str] | None = {role: f"freeze_{role} is set."} if role in deliberate else None
            for message in idle_rate_messages(named, {role: setting}, hint):
                logger.log(logging.INFO if role in deliberate else logging.WARNING, message)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        modality = batch_modality(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._modality_losses[modality].append(loss.detach())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            steps = self.args.gradient_accumulation_steps
            for modality, losses in sorted(self._modality_losses.items()):
                if losses:
                    logs[f"loss_{modality}"] = round(float(torch.stack(losses).sum()) * steps / len(losses), 6)
            self._modality_losses.clear()
        if "learning_rate" in logs and self.optimizer is not None:
            logs.update(logged_learning_rates(self.optimizer, logs["learning_rate"]))
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        checkpoint, skipped = resolve_resume(resume_from_checkpoint, str(self.args.output_dir))
        for folder, why in skipped if self.is_world_process_zero() else []:
            aside = set_aside(folder).name
            logger.warning("%s is incomplete (%s): set aside as %s; resuming from %s.", folder, why, aside, checkpoint)
        if skipped:
            self.accelerator.wait_for_everyone()
        return super().train(checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Restore every trained weight: full weights under the model's own names (``Trainer`` loads
        them under the saved names and misses renamed ones), or the adapter plus the non-LoRA
        trained weights (the connector), which the adapter does not hold."""
        target: Any = self.model if model is None else model
        if self._restores_full_weights(target):
            load_full_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_trainable_weights(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best, model = self.state.best_model_checkpoint, self.model
        if best is not None and model is not None and self._restores_full_weights(model):
            load_full_weights(model, best)
            return
        super()._load_best_model()
        if best is not None and model is not None:
            load_trainable_weights(model, best)

    def _restores_full_weights(self, model: Any) -> bool:
        from peft import PeftModel

        distributed = self.is_fsdp_enabled or self.is_deepspeed_enabled
        return not distributed and not isinstance(self.accelerator.unwrap_model(model), PeftModel)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            raise save_failure(folder, error, run_dir) from error

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call:  # a checkpoint: _save_checkpoint owns its failures
            return super().save_model(output_dir, _internal_call)
        try:
            super().save_model(output_dir, _internal_call)
        except Exception as error:
            raise final_save_failure(output_dir or str(self.args.output_dir), error) from error

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        folder = str(output_dir if output_dir is not None else self.args.output_dir)
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):
            save_trainable_weights(model, folder, state_dict)
        self.args.fusion().save_pretrained(folder)
