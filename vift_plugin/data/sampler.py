"""Modality-grouped sampling: every optimizer step is all-image or all-text, on every rank.

The sampler yields one global index stream, the way ``Trainer`` and ``accelerate`` expect: the
data loader cuts it into per-device batches of ``batch_size`` and ``accelerate`` deals batch ``j``
to rank ``j % world_size``. One optimizer step therefore consumes ``batch_size * world_size *
gradient_accumulation_steps`` consecutive indices, and the stream is built from whole steps of a
single modality. LLaVA's modality-length grouping ends each epoch with one batch that mixes the
leftovers of both modalities; with text-only samples that step skips the vision tower on some
ranks, which hangs DeepSpeed ZeRO-3 and FSDP. Here leftovers are dropped (and counted) or filled
with more samples of the same modality, so no step ever mixes.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

Remainder = Literal["drop", "fill"]


def check_remainder(value: str) -> Remainder:
    """``value`` as a :data:`Remainder`, or a ValueError naming the two choices."""
    if value == "drop":
        return "drop"
    if value == "fill":
        return "fill"
    raise ValueError(f"remainder must be 'drop' or 'fill', got {value!r}.")


class ModalityGroupedSampler(Sampler[int]):
    """Global index stream of single-modality optimizer steps, length-grouped within a modality.

    Per epoch, with a private ``torch.Generator`` seeded from ``(seed, epoch)``:

    1. each modality's indices are shuffled; its remainder modulo the step size is dropped
       (``remainder="drop"``) or topped up with other samples of the same modality (``"fill"``);
    2. with ``lengths``, each window of ``length_window`` steps is sorted by length, so the
       ``batch_size`` samples of a per-device batch have neighbouring lengths (little padding);
    3. the steps of all modalities are shuffled together, and so are the batches inside a step.

    Args:
        modalities: one label per sample (``"image"``/``"text"``; any hashable works).
        lengths: token length per sample, or ``None`` for no length grouping.
        batch_size: per-device batch size.
        world_size: number of data-parallel ranks.
        gradient_accumulation_steps: micro-batches per optimizer step on each rank.
        seed: base seed; the order depends only on ``seed`` and the epoch (:meth:`set_epoch`).
        remainder: ``"drop"`` or ``"fill"``; see above.
        length_window: steps per length-sorting window; ``None`` sorts a whole modality at once.
    """

    def __init__(
        self,
        modalities: Sequence[Any],
        lengths: Sequence[int] | None = None,
        *,
        batch_size: int,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        remainder: Remainder = "drop",
        length_window: int | None = 64,
    ) -> None:
        for name, value in (
            ("batch_size", batch_size),
            ("world_size", world_size),
            ("gradient_accumulation_steps", gradient_accumulation_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        check_remainder(remainder)
        if length_window is not None and length_window < 1:
            raise ValueError(f"length_window must be a positive number of steps or None, got {length_window!r}.")
        if lengths is not None:
            if len(lengths) != len(modalities):
                raise ValueError(f"Got {len(lengths)} lengths for {len(modalities)} samples; they must match.")
            self.lengths: torch.Tensor | None = torch.as_tensor(list(lengths), dtype=torch.long)
            if self.lengths.numel() and int(self.lengths.min()) < 0:
                raise ValueError("lengths must be >= 0.")
        else:
            self.lengths = None
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.step_size = self.batch_size * self.world_size * self.gradient_accumulation_steps
        self.seed = int(seed)
        self.remainder: Remainder = remainder
        self.length_window = length_window
        self.epoch = 0
        groups: dict[Any, list[int]] = {}
        for index, modality in enumerate(modalities):
            groups.setdefault(modality, []).append(index)
        self.groups = {
            m: torch.tensor(ix, dtype=torch.long) for m, ix in sorted(groups.items(), key=lambda kv: str(kv[0]))
        }
        self._length = sum(self._kept(len(ix)) for ix in self.groups.values())

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        modality_column: str = "modality",
        length_column: str | None = "length",
        **kwargs: Any,
    ) -> ModalityGroupedSampler:
        """Build from a ``datasets.Dataset`` with a modality column and (optionally) a length column."""
        columns = getattr(dataset, "column_names", [])
        if modality_column not in columns:
            raise ValueError(
                f"The dataset has no {modality_column!r} column (columns: {columns}); build it with "
                "vift_plugin.data.mix_datasets or pass modality_column=."
            )
        lengths = dataset[length_column] if length_column and length_column in columns else None
        return cls(dataset[modality_column], lengths, **kwargs)

    def _kept(self, n: int) -> int:
        """How many samples of a modality with ``n`` samples one epoch yields."""
        full, rest = divmod(n, self.step_size)
        return (full + (1 if rest and self.remainder == "fill" else 0)) * self.step_size

    @property
    def num_dropped(self) -> dict[Any, int]:
        """Samples per modality left out of every epoch by ``remainder="drop"`` (which ones varies)."""
        if self.remainder == "fill":
            return {m: 0 for m in self.groups}
        return {m: len(ix) % self.step_size for m, ix in self.groups.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def step_description(self) -> str:
        return (
            f"{self.step_size} samples per optimizer step (per-device batch {self.batch_size} x {self.world_size} "
            f"device(s) x gradient accumulation {self.gradient_accumulation_steps})"
        )

    def check_coverage(self) -> str | None:
        """Raise when an epoch has no step, or a modality loses all its samples (it would never train);
        else the warning to show when ``remainder="drop"`` leaves samples out of every epoch, or None."""
        sizes = {m: len(ix) for m, ix in self.groups.items()}
        starved = [m for m, n in sizes.items() if n and not self._kept(n)]
        fix = "use remainder='fill' (--remainder fill), or a smaller per-device batch or gradient accumulation"
        if not len(self) or starved:
            counts = ", ".join(f"{n} {m}" for m, n in sizes.items()) or "no samples"
            lost = "no optimizer step at all" if not len(self) else f"no step of {', '.join(map(str, starved))}"
            raise ValueError(
                f"{counts} with {self.step_description()} and remainder={self.remainder!r} give {lost}: "
                f"that data would never be trained. {fix[0].upper()}{fix[1:]}."
            )
        dropped = " and ".join(f"{k} {m}" for m, k in self.num_dropped.items() if k)
        if not dropped:
            return None
        counts = ", ".join(f"{n} {m}" for m, n in sizes.items())
        return (
            f"every epoch leaves out {dropped} sample(s) (of {counts}) that do not fill an optimizer step of "
            f"{self.step_size}; to keep them, {fix}."
        )

    def __len__(self) -> int:
        return self._length

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed % 2**64, self.epoch % 2**64]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator()
        generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
        return generator

    def _modality_steps(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(num_steps, step_size)`` indices of one modality for this epoch."""
        n = len(indices)
        order = indices[torch.randperm(n, generator=generator)]
        rest = n % self.step_size
        if rest and self.remainder == "drop":
            order = order[: n - rest]
        elif rest:
            missing = self.step_size - rest
            draws = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-missing // n))])
            order = torch.cat([order, indices[draws[:missing]]])
        if self.lengths is not None and len(order):
            window = len(order) if self.length_window is None else self.length_window * self.step_size
            chunks = [c[torch.argsort(-self.lengths[c], stable=True)] for c in order.split(window)]
            order = torch.cat(chunks)
        return order.view(-1, self.step_size)

    def _steps(self) -> torch.Tensor:
        """``(num_steps, step_size)``: this epoch's optimizer steps in order."""
        generator = self._generator()
        per_modality = [self._modality_steps(ix, generator) for ix in self.groups.values()]
        steps = torch.cat(per_modality) if per_modality else torch.empty(0, self.step_size, dtype=torch.long)
        steps = steps[torch.randperm(len(steps), generator=generator)]
        micro = self.world_size * self.gradient_accumulation_steps
        batches = steps.view(len(steps), micro, self.batch_size)
        shuffle = torch.argsort(torch.rand(len(steps), micro, generator=generator), dim=1)
        batches = torch.gather(batches, 1, shuffle.unsqueeze(-1).expand_as(batches))
        return batches.reshape(len(steps), self.step_size)

    def __iter__(self) -> Iterator[int]:
        dropped = {m: k for m, k in self.num_dropped.items() if k}
        if dropped:
            counts = ", ".join(f"{k} {m}" for m, k in dropped.items())
            logger.info(
                "ModalityGroupedSampler epoch %d: leaving out %s sample(s) that do not fill a %d-sample "
                "optimizer step (remainder='drop'; use remainder='fill' to keep them).",
                self.epoch,
                counts,
                self.step_size,
            )
        yield from self._steps().flatten().tolist()


class ModalityGroupedBatchSampler(Sampler[list[int]]):
    """One rank's per-device batches of a :class:`ModalityGroupedSampler`, for a plain ``DataLoader``.

    Use as ``DataLoader(dataset, batch_sampler=ModalityGroupedBatchSampler(sampler, rank=rank))``
    when no ``accelerate``/``Trainer`` shards the batches. Rank ``r`` gets global batches ``j`` with
    ``j % world_size == r``, which is what ``accelerate`` does with the plain sampler.
    """

    def __init__(self, sampler: ModalityGroupedSampler, rank: int = 0) -> None:
        if not 0 <= rank < sampler.world_size:
            raise ValueError(f"rank must be in [0, {sampler.world_size}), got {rank}.")
        self.sampler = sampler
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // (self.sampler.batch_size * self.sampler.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        s = self.sampler
        batches = s._steps().view(-1, s.world_size, s.batch_size)[:, self.rank]
        yield from batches.tolist()


def sampler_for_trainer(
    trainer: Any,
    modalities: Sequence[Any],
    lengths: Sequence[int] | None,
    *,
    remainder: Remainder = "drop",
    length_window: int | None = 64,
) -> ModalityGroupedSampler:
    """A :class:`ModalityGroupedSampler` sized and seeded by a transformers ``Trainer``'s arguments.

    The per-device batch is the trainer's ``_train_batch_size`` (else ``args.train_batch_size``, else
    ``args.per_device_train_batch_size``); the world size and gradient accumulation come from ``args``
    (default 1), the seed is ``args.data_seed`` where set, else ``args.seed``. Needs no transformers import.
    Raises when a modality or the whole epoch would get no step (:meth:`ModalityGroupedSampler.check_coverage`).
    """
    args = trainer.args
    batch_size = (
        getattr(trainer, "_train_batch_size", None)
        or getattr(args, "train_batch_size", None)
        or args.per_device_train_batch_size
    )
    data_seed = getattr(args, "data_seed", None)
    sampler = ModalityGroupedSampler(
        modalities,
        lengths,
        batch_size=int(batch_size),
        world_size=int(getattr(args, "world_size", 1) or 1),
        gradient_accumulation_steps=int(getattr(args, "gradient_accumulation_steps", 1) or 1),
        seed=int(data_seed if data_seed is not None else args.seed),
        remainder=remainder,
        length_window=length_window,
    )
    message = sampler.check_coverage()
    if message:
        logger.warning(message)
    return sampler
