"""Caption and text-instruction files written as one LLaVA-format record file, for the trainers of
upstream codebases (the LLaVA and LLaMA-Factory integrations).

Kept out of :mod:`vift_plugin.data.files` because it drives the converters, which read and write
through that module: the I/O layer stays at the bottom and imports nothing of the plugin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from vift_plugin.data.writers import RecordWriter, partial_folder


def chunked(lines: Iterable[str], size: int = 4096) -> Iterator[list[str]]:
    """``lines`` in lists of ``size`` (the last one shorter)."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def jsonl_lines(path: str | os.PathLike[str], image_root: Path | None = None) -> Iterator[str]:
    """The non-blank JSON lines of ``path``; with ``image_root``, each ``image`` path made absolute under it."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            if image_root is None:
                yield line.rstrip("\n")
                continue
            record = json.loads(line)
            if "image" in record:
                record["image"] = str((image_root / record["image"]).resolve())
            yield json.dumps(record, ensure_ascii=False)


def write_llava_records(
    output: str | os.PathLike[str],
    *,
    captions: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str | os.PathLike[str]] = (),
    image_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verify_images: bool = True,
    skip_bad: bool = False,
    absolute_image_paths: bool = False,
) -> dict[str, int]:
    """One file of LLaVA-format records (``.json`` a list, ``.jsonl`` a line each) from caption and text files.

    Each file is converted with ``output_format="llava"`` into a scratch folder beside ``output``
    (``.<name>.XXXXXXXX.partial``, so a killed run's is removed by the next write of ``output``), then all
    are written atomically in order: captions first, then texts. Image paths are
    relative to ``image_root`` (default: each caption file's folder), absolute with ``absolute_image_paths``.
    Returns ``{"captions": n, "texts": m}``, the records written of each kind.
    """
    from vift_plugin.data.captions import convert_caption_file
    from vift_plugin.data.instructions import convert_instruction_file

    if not captions and not texts:
        raise ValueError("Give at least one caption file or text-instruction file.")
    target = Path(output)
    counts = {"captions": 0, "texts": 0}
    with partial_folder(target) as folder:
        parts: list[tuple[Path, Path | None]] = []
        for index, path in enumerate(captions):
            part = Path(folder) / f"captions-{index}.jsonl"
            root = Path(image_root) if image_root is not None else Path(path).resolve().parent
            report = convert_caption_file(
                path,
                part,
                output_format="llava",
                image_root=root,
                seed=seed,
                verify_images=verify_images,
                skip_bad=skip_bad,
            )
            counts["captions"] += report.written
            parts.append((part, root if absolute_image_paths else None))
        for index, path in enumerate(texts):
            part = Path(folder) / f"texts-{index}.jsonl"
            counts["texts"] += convert_instruction_file(path, part, output_format="llava", skip_bad=skip_bad).written
            parts.append((part, None))
        with RecordWriter(target) as writer:
            for part, part_root in parts:
                for chunk in chunked(jsonl_lines(part, part_root)):
                    writer.write(chunk)
    return counts
