"""The shapes world: deterministic files, held-out scenes, pictures that show what the words say."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from vift_plugin.toy.checkpoint import make_word_tokenizer
from vift_plugin.toy.data import ANSWER_MARKER, CAPTION_REQUEST, WorldSizes, write_world
from vift_plugin.toy.world import BACKGROUND, CELL, COLOURS, GRID, IMAGE_SIZE, questions, random_scene

SMALL = WorldSizes(captions=30, texts=40, scene_texts=15, visual_instructions=20, test=25, dev=10)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    write_world(tmp_path / "a", SMALL, seed=3)
    write_world(tmp_path / "b", SMALL, seed=3)
    write_world(tmp_path / "c", SMALL, seed=4)
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) == 30 + 20 + 25 + 10 + 7
    assert a != c and a.keys() == c.keys()


@pytest.mark.parametrize("recipe", ["direct", "restate"])
def test_counts_and_held_out_scenes(tmp_path: Path, recipe: str) -> None:
    files = write_world(tmp_path, SMALL, seed=0, recipe=recipe)
    counts = {name: len(rows(path)) for name, path in files.items()}
    assert counts == {"captions": 30, "text": 40, "scene_texts": 15, "visual_instructions": 20, "test": 25, "dev": 10}
    test_scenes = {row["caption"] for row in rows(files["test"])}
    dev_scenes = {row["caption"] for row in rows(files["dev"])}
    trained = {row["messages"][1]["content"][0]["text"] for row in rows(files["captions"])}
    for row in rows(files["text"]):
        scene, question = row["messages"][0]["content"]
        trained.add(scene["text"])
        response = row["messages"][1]["content"][0]["text"]
        assert question["text"].startswith("question: ") and response.endswith(row_answer(response))
        assert response.startswith(f"scene: {scene['text']} {ANSWER_MARKER}" if recipe == "restate" else ANSWER_MARKER)
    assert len(trained) > 60 and trained.isdisjoint(test_scenes) and trained.isdisjoint(dev_scenes)
    assert len(dev_scenes) == 10 and dev_scenes.isdisjoint(test_scenes)
    for row in rows(files["text"]):
        assert row["images"] == [] and ANSWER_MARKER in row["messages"][1]["content"][0]["text"]
    for row in rows(files["scene_texts"]):
        scene, request = row["messages"][0]["content"]
        assert row["images"] == [] and request["text"] == CAPTION_REQUEST
        assert row["messages"][1]["content"][0]["text"] == scene["text"] and scene["text"] not in test_scenes
    for name in ("test", "dev"):
        for row in rows(files[name]):
            assert (tmp_path / row["image"]).is_file() and row["type"] in ("colour", "shape", "position", "count")


def row_answer(response: str) -> str:
    return response.split(f"{ANSWER_MARKER} ")[-1]


def test_visual_prompts_put_the_image_where_the_text_prompts_put_the_scene(tmp_path: Path) -> None:
    files = write_world(tmp_path, SMALL, seed=2)
    for name in ("captions", "visual_instructions"):
        for row in rows(files[name]):
            first, second = row["messages"][0]["content"]
            assert first["type"] == "image" and second["type"] == "text" and len(row["images"]) == 1
    for row in rows(files["text"]):
        assert [part["type"] for part in row["messages"][0]["content"]] == ["text", "text"]


@pytest.mark.parametrize("seed", range(5))
def test_picture_shows_the_described_colours_in_their_cells(seed: int) -> None:
    scene = random_scene(random.Random(seed))
    image = scene.render()
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    occupied = {s.cell: s for s in scene.shapes}
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        box = image.crop((col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL))
        colours = {c for _, c in box.getcolors(CELL * CELL) or []}
        if cell in occupied:
            assert COLOURS[occupied[cell].colour] in colours
        else:
            assert colours == {BACKGROUND}


@pytest.mark.parametrize("seed", range(20))
def test_questions_have_the_scene_answers(seed: int) -> None:
    scene = random_scene(random.Random(seed))
    for q in questions(scene):
        if q.type == "count" and q.text == "how many shapes are there?":
            assert q.answer == ("zero", "one", "two", "three")[len(scene.shapes)]
        elif q.type == "colour":
            kind = q.text.removeprefix("what colour is the ").removesuffix("?")
            assert [s.colour for s in scene.shapes if s.kind == kind] == [q.answer]
        elif q.type == "position":
            assert any(q.text == f"where is the {s.colour} {s.kind}?" and s.position == q.answer for s in scene.shapes)


def test_word_tokenizer_knows_every_word_and_round_trips(tmp_path: Path) -> None:
    files = write_world(tmp_path, SMALL, seed=1)
    tokenizer = make_word_tokenizer()
    for path in files.values():
        for row in rows(path):
            texts = [p["text"] for m in row.get("messages", []) for p in m["content"] if p["type"] == "text"]
            texts += [row[k] for k in ("question", "answer", "caption") if k in row]
            for text in texts:
                ids = tokenizer(text)["input_ids"]
                assert tokenizer.unk_token_id not in ids, text
                assert (
                    tokenizer.decode(ids).split()
                    == text.replace(",", " ,").replace(".", " .").replace("?", " ?").replace(":", " :").split()
                )


def test_checkpoint_loads_like_a_downloaded_one(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from vift_plugin import load_processor
    from vift_plugin.toy.checkpoint import make_world_checkpoint

    path = make_world_checkpoint(tmp_path / "ckpt", "tiny")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_processor(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.model_type == "qwen2"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the scene."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    picture = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    batch = processor(text=[text], images=[picture], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == GRID * GRID
    features = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    assert [f.shape for f in features] == [(GRID * GRID, model.config.text_config.hidden_size)]  # one per cell
    assert model(**batch).logits.shape[-1] == model.config.text_config.vocab_size


def test_documented_model_sizes_are_the_built_ones() -> None:
    """The parameter counts in ``--model-size``'s help, the README and docs/demo.md are those of the models built."""
    from dataclasses import fields

    from vift_plugin.toy.checkpoint import build_world_model
    from vift_plugin.toy.demo import DemoConfig

    root = Path(__file__).resolve().parents[2]
    counts = {size: sum(p.numel() for p in build_world_model(size)[0].parameters()) for size in ("demo", "tiny")}
    demo, tiny = (f"{counts[size] / 1e6:.1f}M" for size in ("demo", "tiny"))
    help_text = next(f.metadata["help"] for f in fields(DemoConfig) if f.name == "model_size")
    assert f"'demo' ({demo} parameters)" in help_text and f"'tiny' ({tiny}," in help_text
    assert f"a {demo}-parameter vision-language model" in (root / "README.md").read_text(encoding="utf-8")
    assert f"About {demo} parameters." in (root / "docs" / "demo.md").read_text(encoding="utf-8")
