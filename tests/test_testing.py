"""vift_plugin.testing: every family's tiny checkpoint loads like a downloaded one and generates."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from tests.conftest import conversation, encode
from vift_plugin import load_processor
from vift_plugin.testing import build_tiny_model, make_byte_tokenizer, make_tiny_checkpoint


def test_checkpoint_files_are_safetensors_and_name_real_classes(checkpoint_dir: Any, family: str) -> None:
    path: Path = checkpoint_dir(family)
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")), "weights must not be pickled"
    assert (path / "chat_template.jinja").read_text().strip()
    processor_class = json.loads((path / "processor_config.json").read_text())["processor_class"]
    import transformers

    assert hasattr(transformers, processor_class), processor_class
    assert AutoConfig.from_pretrained(path).model_type == family


def test_reload_batch_of_two_sizes_left_padded_and_generate(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    batch = encode(
        processor,
        [
            conversation("What colour is the shape?", 40, 60, "red"),
            conversation("Describe this wide picture in detail, please.", 90, 30, "blue"),
        ],
    )
    mask = batch["attention_mask"]
    assert mask.shape[0] == 2
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and mask[short, -1] == 1, "the shorter row must be left padded"
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_batched_rows_equal_single_rows(tiny: tuple[Any, Any]) -> None:
    """Left padding must not change what a row computes: the batch's logits equal each row alone."""
    model, processor = tiny
    convs = [conversation("What colour?", 40, 60, "red"), conversation("Describe it at length, please.", 90, 30)]
    batch = encode(processor, convs)
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]
        for row, conv in enumerate(convs):
            single = model(**encode(processor, [conv])).logits[:, -1]
            torch.testing.assert_close(batched[row : row + 1], single, atol=1e-4, rtol=1e-4)


def test_chat_template_places_the_image_and_generation_prompt(tiny: tuple[Any, Any]) -> None:
    _, processor = tiny
    text = processor.apply_chat_template(conversation("Hi there"), add_generation_prompt=True, tokenize=False)
    assert "Hi there" in text
    image_token = processor.image_token if hasattr(processor, "image_token") else "<image>"
    assert image_token in text or "<start_of_image>" in text


def test_make_tiny_checkpoint_is_seeded_and_leaves_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_tiny_model("llava", seed=1)
    b, _ = build_tiny_model("llava", seed=1)
    c, _ = build_tiny_model("llava", seed=2)
    assert torch.equal(torch.rand(3), expected)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    path = make_tiny_checkpoint("llava", tmp_path / "ckpt", seed=1)
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    assert torch.equal(reloaded.get_input_embeddings().weight, wa)


def test_unknown_family_names_the_choices() -> None:
    with pytest.raises(ValueError, match="qwen2_vl"):
        build_tiny_model("no_such_family")


def test_byte_tokenizer_round_trips_any_text(tmp_path: Path) -> None:
    tok = make_byte_tokenizer(["<s>", "</s>", "<image>"], bos_token="<s>", eos_token="</s>", pad_token="</s>")
    text = "Zürich 東京 <image> tabs\tand\nnewlines 🙂"
    ids = tok(text)["input_ids"]
    assert tok.convert_tokens_to_ids("<image>") in ids
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == ids


def test_load_processor_rejects_a_directory_without_processor(tmp_path: Path) -> None:
    make_byte_tokenizer(["<s>"], eos_token="<s>").save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="no multimodal processor"):
        load_processor(tmp_path)


VIDEO_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "internvl"]
STAND_INS = ["transforms", "transforms.v2", "transforms.v2.functional"]
VIDEO_MODULES = {
    "Qwen2VLVideoProcessor": "transformers.models.qwen2_vl.video_processing_qwen2_vl",
    "InternVLVideoProcessor": "transformers.models.internvl.video_processing_internvl",
}


@pytest.fixture
def video_processor_class() -> Iterator[Any]:
    """``video_processor_class(name)``: transformers' real video processor class, even without torchvision.

    The class modules import ``torchvision.transforms.v2.functional`` at the top but need none of it
    to build, save or load a processor's settings, so empty stand-in modules let the test compare the
    plugin's file with what the class itself reads and writes. The stand-ins and the class modules
    imported through them are removed afterwards, so no later test sees them.
    """
    from transformers.utils import is_torchvision_available

    stand_ins = [] if is_torchvision_available() else ["torchvision", *(f"torchvision.{n}" for n in STAND_INS)]
    for name in stand_ins:
        sys.modules[name] = types.ModuleType(name)
    imported: list[str] = []

    def get(name: str) -> Any:
        module_name = VIDEO_MODULES[name]
        if module_name not in sys.modules:
            imported.append(module_name)
        return getattr(importlib.import_module(module_name), name)

    try:
        yield get
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
        for module_name in imported if stand_ins else []:
            sys.modules.pop(module_name, None)
            package, _, child = module_name.rpartition(".")
            if hasattr(sys.modules.get(package), child):
                delattr(sys.modules[package], child)


def test_video_processor_families_match_transformers_auto_mapping() -> None:
    """The plugin's families with a video processor are those ``AutoVideoProcessor`` maps, for all nine.

    Read from transformers' sources: without torchvision, importing the auto module blanks its mapping.
    """
    from vift_plugin.testing.families import FAMILIES, VIDEO_PROCESSORS

    upstream: dict[str, str] = {}
    for module in ["auto_mappings", "video_processing_auto"]:
        spec = importlib.util.find_spec(f"transformers.models.auto.{module}")
        assert spec is not None and spec.origin is not None
        source = Path(spec.origin).read_text()
        # 5.24 writes ("qwen2_vl", {"torchvision": "Qwen2VLVideoProcessor"}), 5.15 ("qwen2_vl", "Qwen2VLVideoProcessor")
        upstream.update(re.findall(r'\("(\w+)",\s*(?:\{"torchvision":\s*)?"(\w+VideoProcessor)"', source))
    assert upstream.get("qwen2_vl") == "Qwen2VLVideoProcessor", "transformers' mapping format changed"
    for name in FAMILIES:
        ours = VIDEO_PROCESSORS.get(name)
        assert (ours.class_name if ours else None) == upstream.get(name), name


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_preprocessor_config_is_what_the_real_class_writes(
    checkpoint_dir: Any, family: str, video_processor_class: Any
) -> None:
    """The saved file loads into transformers' video processor and saves back unchanged, like a real one."""
    from transformers.video_processing_utils import BaseVideoProcessor

    path: Path = checkpoint_dir(family)
    saved = json.loads((path / "video_preprocessor_config.json").read_text())
    # transformers' own lookup (used by AutoVideoProcessor) finds the file; no torchvision needed for that.
    found, _ = BaseVideoProcessor.get_video_processor_dict(path)
    assert found == saved
    cls = video_processor_class(saved["video_processor_type"])
    video = cls.from_pretrained(path)
    assert json.loads(video.to_json_string()) == saved
    image = json.loads((path / "processor_config.json").read_text())["image_processor"]
    for key in ["size", "image_mean", "image_std", "resample", "patch_size", "temporal_patch_size", "merge_size"]:
        assert saved.get(key) == image.get(key), key
    if family != "internvl":
        # min/max pixels of the image processor bound the frames too, and the patching fits the vision tower.
        vision = AutoConfig.from_pretrained(path).vision_config
        assert video.size.shortest_edge == image["size"]["shortest_edge"]
        assert video.size.longest_edge == image["size"]["longest_edge"]
        assert (video.patch_size, video.temporal_patch_size) == (vision.patch_size, vision.temporal_patch_size)
        assert video.merge_size == vision.spatial_merge_size


def test_only_video_families_get_a_video_preprocessor_config(checkpoint_dir: Any, family: str) -> None:
    path: Path = checkpoint_dir(family)
    assert (path / "video_preprocessor_config.json").is_file() == (family in VIDEO_FAMILIES)
    assert load_processor(path).image_processor is not None
