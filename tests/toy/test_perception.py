"""The image-reliance probe: right vs shuffled pictures on a real (untrained) world model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vift_plugin.toy.data import WorldSizes, write_world
from vift_plugin.toy.perception import Perception, caption_losses, measure_perception, perception_table

SIZES = WorldSizes(captions=12, texts=4, scene_texts=2, visual_instructions=2, test=6, dev=2)


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Any, Any]:
    from vift_plugin.evaluation import load_model
    from vift_plugin.toy.checkpoint import make_world_checkpoint

    root = tmp_path_factory.mktemp("perception")
    world = write_world(root / "world", SIZES, seed=5)
    model, processor = load_model(str(make_world_checkpoint(root / "model", "tiny", seed=5)), dtype="float32")
    return world, model, processor


def records(world: dict[str, Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in world["captions"].read_text(encoding="utf-8").splitlines()]


def test_same_pictures_give_the_same_loss_other_pictures_another(world_and_model: Any) -> None:
    world, model, processor = world_and_model
    rows = records(world)
    one_picture = [{**row, "images": rows[0]["images"]} for row in rows]
    right, shuffled = caption_losses(model, processor, one_picture, world["captions"].parent, batch_size=5)
    assert right == shuffled
    right, shuffled = caption_losses(model, processor, rows, world["captions"].parent, batch_size=5)
    assert right != shuffled and right > 0
    batched = caption_losses(model, processor, rows, world["captions"].parent, batch_size=12)
    assert batched == pytest.approx((right, shuffled), rel=1e-5)


def test_one_record_is_refused(world_and_model: Any) -> None:
    world, model, processor = world_and_model
    with pytest.raises(ValueError, match="at least two caption records"):
        caption_losses(model, processor, records(world)[:1], world["captions"].parent)


def test_measure_and_table(world_and_model: Any) -> None:
    world, model, processor = world_and_model
    measured = measure_perception("base", model, processor, world, records=8, pictures=4, max_new_tokens=4)
    assert measured.pictures == 4 and 1 <= measured.distinct_captions <= 4
    assert measured.to_dict()["shuffle_penalty"] == measured.loss_shuffled_images - measured.loss_right_images
    table = perception_table([measured, Perception("x", 0.1, 2.0, 0.5, 9, 10)])
    assert "| x | 0.100 | 2.000 | 50.0% | 9 of 10 |" in table
