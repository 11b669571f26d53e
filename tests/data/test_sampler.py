"""Property and unit tests of :mod:`vift_plugin.data.sampler`.

The sampler yields one global index stream; a ``DataLoader`` cuts it into per-device batches of
``batch_size`` and ``accelerate`` deals global batch ``j`` to rank ``j % world_size``, so one optimizer
step is ``step_size = batch_size * world_size * gradient_accumulation_steps`` consecutive indices.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader

from vift_plugin.data.sampler import ModalityGroupedBatchSampler, ModalityGroupedSampler

MODALITY_NAMES = ("image", "text", "video")

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Data:
    modalities: list[str]
    lengths: list[int] | None

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.modalities)


@dataclass
class Config:
    batch_size: int
    world_size: int
    gradient_accumulation_steps: int
    remainder: str
    seed: int
    epoch: int

    @property
    def step_size(self) -> int:
        return self.batch_size * self.world_size * self.gradient_accumulation_steps


@st.composite
def sample_sets(draw: Any, with_lengths: bool | None = None) -> Data:
    """1-3 modalities with 0..200 samples each, interleaved; lengths None, or ints in 0..3000 (zeros, ties)."""
    k = draw(st.integers(1, 3))
    counts = draw(st.lists(st.integers(0, 200), min_size=k, max_size=k))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    modalities = [name for name, count in zip(MODALITY_NAMES, counts, strict=False) for _ in range(count)]
    rng.shuffle(modalities)
    total = len(modalities)
    kinds = ["drawn", "random", "palette"] if with_lengths else ["none", "drawn", "random", "palette"]
    kind = "none" if with_lengths is False else draw(st.sampled_from(kinds))
    lengths: list[int] | None
    if kind == "none":
        lengths = None
    elif kind == "drawn" and total <= 48:
        lengths = draw(st.lists(st.integers(0, 3000), min_size=total, max_size=total))
    elif kind == "palette":
        # Few distinct values: many ties, and zeros when the palette has them.
        palette = draw(st.lists(st.integers(0, 3000), min_size=1, max_size=6))
        lengths = [rng.choice(palette) for _ in range(total)]
    else:
        high = draw(st.integers(0, 3000))
        zero_rate = draw(st.sampled_from([0.0, 0.1, 0.5]))
        lengths = [0 if rng.random() < zero_rate else rng.randint(0, high) for _ in range(total)]
    return Data(modalities, lengths)


def config_strategy(remainders: tuple[str, ...] = ("drop", "fill")) -> st.SearchStrategy[Config]:
    return st.builds(
        Config,
        batch_size=st.integers(1, 4),
        world_size=st.integers(1, 8),
        gradient_accumulation_steps=st.integers(1, 8),
        remainder=st.sampled_from(remainders),
        seed=st.integers(-(2**40), 2**40),
        epoch=st.integers(0, 1000),
    )


configs = config_strategy()


def build(data: Data, cfg: Config, **overrides: Any) -> ModalityGroupedSampler:
    kwargs: dict[str, Any] = dict(
        batch_size=cfg.batch_size,
        world_size=cfg.world_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
        remainder=cfg.remainder,
    )
    kwargs.update(overrides)
    sampler = ModalityGroupedSampler(data.modalities, data.lengths, **kwargs)
    sampler.set_epoch(cfg.epoch)
    return sampler


def chunks(stream: list[int], size: int) -> list[list[int]]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


# --------------------------------------------------------------------------- length, steps, coverage


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=configs)
def test_length_is_whole_steps_and_matches_iteration(data: Data, cfg: Config) -> None:
    sampler = build(data, cfg)
    assert sampler.step_size == cfg.step_size
    stream = list(sampler)
    assert len(stream) == len(sampler)
    assert len(stream) % cfg.step_size == 0
    assert all(isinstance(i, int) and 0 <= i < len(data.modalities) for i in stream)
    per_modality = sum(
        (n // cfg.step_size + (cfg.remainder == "fill" and n % cfg.step_size > 0)) * cfg.step_size
        for n in data.counts.values()
    )
    assert len(stream) == per_modality


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=configs)
def test_every_optimizer_step_has_a_single_modality(data: Data, cfg: Config) -> None:
    stream = list(build(data, cfg))
    for step in chunks(stream, cfg.step_size):
        assert len(step) == cfg.step_size
        assert len({data.modalities[i] for i in step}) == 1, step


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=config_strategy(("drop",)))
def test_drop_leaves_out_exactly_the_remainder_and_reports_it(data: Data, cfg: Config) -> None:
    sampler = build(data, cfg)
    stream = list(sampler)
    assert len(stream) == len(set(stream)), "an index appears twice with remainder='drop'"
    kept = Counter(data.modalities[i] for i in stream)
    assert set(sampler.num_dropped) == set(data.counts)
    for modality, n in data.counts.items():
        missing = n - kept[modality]
        assert missing == n % cfg.step_size
        assert sampler.num_dropped[modality] == missing


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=config_strategy(("fill",)))
def test_fill_keeps_everything_and_tops_up_within_the_modality(data: Data, cfg: Config) -> None:
    sampler = build(data, cfg)
    stream = list(sampler)
    seen = Counter(stream)
    assert set(seen) == set(range(len(data.modalities))), "some sample is missing with remainder='fill'"
    assert sampler.num_dropped == {m: 0 for m in data.counts}
    extra: Counter[str] = Counter()
    for index, times in seen.items():
        extra[data.modalities[index]] += times - 1
    for modality, n in data.counts.items():
        assert extra[modality] < cfg.step_size
        assert extra[modality] == (-n) % cfg.step_size
        # Top-ups are spread over the modality: no sample is repeated more often than needed.
        most = max(seen[i] for i, m in enumerate(data.modalities) if m == modality)
        assert most <= 1 + -(-extra[modality] // n)
    # A duplicate always sits in a step of its own modality (the step is single-modality).
    for step in chunks(stream, cfg.step_size):
        assert len({data.modalities[i] for i in step}) == 1


# --------------------------------------------------------------------------- determinism


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=configs, global_seeds=st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=2))
def test_stream_depends_only_on_seed_and_epoch(data: Data, cfg: Config, global_seeds: list[int]) -> None:
    first = build(data, cfg)
    second = build(data, cfg)
    streams = []
    for sampler, global_seed in zip((first, second), global_seeds, strict=True):
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        np.random.seed(global_seed)
        state = torch.random.get_rng_state()
        python_state = random.getstate()
        numpy_state = np.random.get_state()[1].copy()
        streams.append(list(sampler))
        assert torch.equal(torch.random.get_rng_state(), state), "iterating consumed the global torch RNG"
        assert random.getstate() == python_state
        assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert streams[0] == streams[1]
    # Iterating twice in the same epoch repeats the epoch; so does the batch sampler's view of it.
    assert list(first) == streams[0]


def test_different_epochs_and_seeds_give_different_orders() -> None:
    modalities = ["image"] * 40 + ["text"] * 24
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in modalities]
    for lens in (None, lengths):
        sampler = ModalityGroupedSampler(modalities, lens, batch_size=2, world_size=2, seed=7)
        assert len(sampler) // sampler.step_size >= 3
        orders = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        assert len({tuple(o) for o in orders}) == 4, "epochs repeat the same order"
        assert all(sorted(o) == sorted(orders[0]) for o in orders)  # nothing dropped, so same multiset
        other_seed = ModalityGroupedSampler(modalities, lens, batch_size=2, world_size=2, seed=8)
        assert list(other_seed) != orders[0]
    # The steps' modality sequence is shuffled too, not only the samples within a modality.
    step_modalities = set()
    for epoch in range(8):
        sampler.set_epoch(epoch)
        steps = chunks(list(sampler), sampler.step_size)
        step_modalities.add(tuple(modalities[s[0]] for s in steps))
    assert len(step_modalities) > 1


def test_set_epoch_is_what_selects_the_order() -> None:
    modalities = ["image"] * 30 + ["text"] * 30
    a = ModalityGroupedSampler(modalities, batch_size=3, seed=1)
    b = ModalityGroupedSampler(modalities, batch_size=3, seed=1)
    a.set_epoch(5)
    assert list(a) != list(b)
    b.set_epoch(5)
    assert list(a) == list(b)


# --------------------------------------------------------------------------- length grouping


@PROPERTY_SETTINGS
@given(data=sample_sets(with_lengths=True), cfg=config_strategy(("drop",)))
def test_whole_modality_sort_puts_neighbouring_lengths_in_a_batch(data: Data, cfg: Config) -> None:
    sampler = build(data, cfg, length_window=None)
    stream = list(sampler)
    assert data.lengths is not None
    lengths = data.lengths
    kept_lengths: dict[str, list[int]] = {}
    for i in stream:
        kept_lengths.setdefault(data.modalities[i], []).append(lengths[i])
    for values in kept_lengths.values():
        values.sort()
    for batch in chunks(stream, cfg.batch_size):
        modality = data.modalities[batch[0]]
        batch_lengths = [lengths[i] for i in batch]
        low, high = min(batch_lengths), max(batch_lengths)
        values = kept_lengths[modality]
        between = max(0, bisect.bisect_left(values, high) - bisect.bisect_right(values, low))
        inside = sum(low < x < high for x in batch_lengths)
        assert between == inside, (
            f"{between - inside} other {modality} sample(s) have a length strictly between {low} and {high}"
        )


@PROPERTY_SETTINGS
@given(data=sample_sets(with_lengths=True), cfg=configs, window=st.one_of(st.none(), st.integers(1, 4)))
def test_batches_of_a_step_do_not_interleave_in_length(data: Data, cfg: Config, window: int | None) -> None:
    """Windows are whole steps, so inside a step each per-device batch is a contiguous length range."""
    sampler = build(data, cfg, length_window=window)
    assert data.lengths is not None
    lengths = data.lengths
    for step in chunks(list(sampler), cfg.step_size):
        ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in chunks(step, cfg.batch_size))
        for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False):
            assert high <= low, f"batches interleave in length inside a step: {ranges}"


def padding_fraction(stream: list[int], lengths: list[int], batch_size: int) -> float:
    padded = used = 0
    for batch in chunks(stream, batch_size):
        batch_lengths = [lengths[i] for i in batch]
        padded += len(batch) * max(batch_lengths)
        used += sum(batch_lengths)
    return (padded - used) / padded


def test_length_grouping_cuts_padding() -> None:
    rng = random.Random(1234)
    lengths = [rng.randint(1, 2000) for _ in range(5000)]
    modalities = [rng.choice(["image", "text"]) for _ in range(5000)]
    grouped = ModalityGroupedSampler(modalities, lengths, batch_size=8)
    ungrouped = ModalityGroupedSampler(modalities, None, batch_size=8)
    with_lengths = padding_fraction(list(grouped), lengths, 8)
    without = padding_fraction(list(ungrouped), lengths, 8)
    assert without > 0.3
    assert with_lengths < 0.05
    assert with_lengths < 0.1 * without
    whole = ModalityGroupedSampler(modalities, lengths, batch_size=8, length_window=None)
    assert padding_fraction(list(whole), lengths, 8) < 0.01


def test_lengths_do_not_change_which_samples_are_kept() -> None:
    rng = random.Random(5)
    modalities = ["image"] * 53 + ["text"] * 29
    lengths = [rng.randint(0, 100) for _ in modalities]
    a = ModalityGroupedSampler(modalities, lengths, batch_size=2, world_size=3, seed=3)
    b = ModalityGroupedSampler(modalities, None, batch_size=2, world_size=3, seed=3)
    assert sorted(a) == sorted(b)


# --------------------------------------------------------------------------- rank sharding


@PROPERTY_SETTINGS
@given(data=sample_sets(), cfg=configs)
def test_batch_sampler_is_the_accelerate_sharding_of_the_stream(data: Data, cfg: Config) -> None:
    sampler = build(data, cfg)
    global_batches = chunks(list(sampler), cfg.batch_size)
    per_rank = len(global_batches) // cfg.world_size
    assert per_rank * cfg.world_size == len(global_batches)
    for rank in range(cfg.world_size):
        batch_sampler = ModalityGroupedBatchSampler(sampler, rank=rank)
        batches = list(batch_sampler)
        assert len(batch_sampler) == len(batches) == per_rank
        assert batches == [global_batches[k * cfg.world_size + rank] for k in range(per_rank)]
    # Micro-batch k of every rank belongs to optimizer step k // gradient_accumulation_steps: all ranks
    # see the same modality at the same step.
    rank_batches = [list(ModalityGroupedBatchSampler(sampler, rank=r)) for r in range(cfg.world_size)]
    for k in range(per_rank):
        assert len({data.modalities[rb[k][0]] for rb in rank_batches}) == 1


@settings(max_examples=25, deadline=None)
@given(data=sample_sets(), cfg=configs)
def test_batch_sampler_matches_accelerate_batch_sampler_shard(data: Data, cfg: Config) -> None:
    from accelerate.data_loader import BatchSamplerShard

    sampler = build(data, cfg)
    for rank in range(cfg.world_size):
        shard = BatchSamplerShard(
            BatchSampler(sampler, cfg.batch_size, drop_last=False),
            num_processes=cfg.world_size,
            process_index=rank,
        )
        assert list(shard) == list(ModalityGroupedBatchSampler(sampler, rank=rank))


def test_batch_sampler_set_epoch_and_invalid_rank() -> None:
    sampler = ModalityGroupedSampler(["image"] * 24 + ["text"] * 24, batch_size=2, world_size=3)
    batch_sampler = ModalityGroupedBatchSampler(sampler, rank=1)
    batch_sampler.set_epoch(4)
    assert sampler.epoch == 4
    assert list(batch_sampler) == chunks(list(sampler), 2)[1::3]
    for rank in (-1, 3, 10):
        with pytest.raises(ValueError, match="rank must be in"):
            ModalityGroupedBatchSampler(sampler, rank=rank)


# --------------------------------------------------------------------------- resumption


RESUME_MODALITIES = ["image"] * 100 + ["text"] * 37 + ["video"] * 9


@pytest.mark.parametrize("remainder", ["drop", "fill"])
@pytest.mark.parametrize("k", [0, 1, 7, 31, -1, "all"])
def test_skip_first_batches_resumes_the_same_epoch(remainder: str, k: int | str) -> None:
    from accelerate import skip_first_batches

    rng = random.Random(9)
    modalities = RESUME_MODALITIES[:]
    rng.shuffle(modalities)
    lengths = [rng.randint(0, 700) for _ in modalities]
    sampler = ModalityGroupedSampler(
        modalities, lengths, batch_size=2, world_size=2, gradient_accumulation_steps=2, seed=11, remainder=remainder
    )
    sampler.set_epoch(3)
    dataloader = DataLoader(list(range(len(modalities))), sampler=sampler, batch_size=2)
    batches = [b.tolist() for b in dataloader]
    assert batches == chunks(list(sampler), 2)
    skip = len(batches) if k == "all" else (len(batches) - 1 if k == -1 else int(k))
    torch.manual_seed(12345)  # resuming in a process whose global RNG differs
    sampler.set_epoch(3)
    resumed = [b.tolist() for b in skip_first_batches(dataloader, skip)]
    assert resumed == batches[skip:]


# --------------------------------------------------------------------------- validation and construction


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": -2}, "batch_size must be a positive integer"),
        ({"batch_size": 2.0}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "world_size": 0}, "world_size must be a positive integer"),
        ({"batch_size": 2, "gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive"),
        ({"batch_size": 2, "remainder": "other"}, "remainder must be 'drop' or 'fill'"),
        ({"batch_size": 2, "length_window": 0}, "length_window must be a positive"),
        ({"batch_size": 2, "lengths": [1, 2, 3]}, "Got 3 lengths for 4 samples"),
        ({"batch_size": 2, "lengths": [1, 2, -1, 4]}, "lengths must be >= 0"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, Any], message: str) -> None:
    kwargs = dict(kwargs)
    lengths = kwargs.pop("lengths", None)
    with pytest.raises(ValueError, match=message):
        ModalityGroupedSampler(["image", "text", "image", "text"], lengths, **kwargs)


def test_empty_dataset_and_too_few_samples() -> None:
    empty = ModalityGroupedSampler([], [], batch_size=2)
    assert len(empty) == 0 and list(empty) == [] and empty.num_dropped == {}
    few = ModalityGroupedSampler(["image"] * 3 + ["text"] * 5, batch_size=2, world_size=4)
    assert len(few) == 0 and list(few) == []
    assert few.num_dropped == {"image": 3, "text": 5}
    filled = ModalityGroupedSampler(["image"] * 3 + ["text"], batch_size=2, world_size=4, remainder="fill")
    stream = list(filled)
    assert len(stream) == len(filled) == 16
    assert Counter(stream)[3] == 8  # a lone text sample fills its whole step
    assert sorted(set(stream)) == [0, 1, 2, 3]


def test_from_dataset() -> None:
    from datasets import Dataset

    rng = random.Random(2)
    modalities = [rng.choice(["image", "text"]) for _ in range(60)]
    lengths = [rng.randint(0, 300) for _ in range(60)]
    dataset = Dataset.from_dict({"modality": modalities, "length": lengths, "x": list(range(60))})
    kwargs: dict[str, Any] = dict(batch_size=2, world_size=2, seed=4)
    from_ds = ModalityGroupedSampler.from_dataset(dataset, **kwargs)
    assert list(from_ds) == list(ModalityGroupedSampler(modalities, lengths, **kwargs))
    assert from_ds.lengths is not None and from_ds.lengths.tolist() == lengths
    without_lengths = ModalityGroupedSampler.from_dataset(dataset, length_column=None, **kwargs)
    assert without_lengths.lengths is None
    assert list(without_lengths) == list(ModalityGroupedSampler(modalities, None, **kwargs))
    renamed = dataset.rename_column("modality", "kind").remove_columns("length")
    custom = ModalityGroupedSampler.from_dataset(renamed, modality_column="kind", **kwargs)
    assert custom.lengths is None and list(custom) == list(without_lengths)
    with pytest.raises(ValueError, match="no 'modality' column"):
        ModalityGroupedSampler.from_dataset(renamed, **kwargs)
    with pytest.raises(ValueError, match="no 'kind' column"):
        ModalityGroupedSampler.from_dataset(dataset, modality_column="kind", **kwargs)
