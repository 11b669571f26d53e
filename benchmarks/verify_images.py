"""Image verification cost in ``vift convert captions``: every image decoded, 1 thread vs several.

Writes N random-noise 256x256 JPEGs (quality 90, about 50 KB each: noise is the worst case for the
entropy decoder) and a caption JSONL naming them, then times ``convert_caption_file`` with
``verify_images=True`` at each thread count and once with ``verify_images=False`` (paths only) for
reference. Rows per second come from ``ConversionReport.seconds``; the first (untimed) pass warms
the page cache so every timed run decodes from memory.

    python benchmarks/verify_images.py                        # 2,000 images; 1, 2, 4 and 8 threads
    python benchmarks/verify_images.py --rows 500 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vift_plugin.data.captions import convert_caption_file


def write_images(folder: Path, rows: int, size: int) -> Path:
    """``rows`` noise JPEGs under ``folder/img`` and ``folder/captions.jsonl`` naming them."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    with open(folder / "captions.jsonl", "w", encoding="utf-8") as handle:
        for index in range(rows):
            name = f"img/{index:06d}.jpg"
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name, quality=90)
            handle.write(json.dumps({"id": index, "image": name, "caption": f"noise picture {index}"}) + "\n")
    return folder / "captions.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        source = write_images(Path(tmp), args.rows, args.size)
        output = Path(tmp) / "out.jsonl"
        convert_caption_file(source, output, verify_threads=max(args.threads))  # warm the page cache
        print(f"{args.rows} rows of {args.size}x{args.size} JPEGs, {cpus} CPU(s) available")
        reports = [
            (f"verify, {n} thread(s)", convert_caption_file(source, output, verify_threads=n)) for n in args.threads
        ]
        reports.append(("no verification", convert_caption_file(source, output, verify_images=False)))
        for label, report in reports:
            print(f"  {label:22s} {report.seconds:7.2f} s  {report.rows_per_second:9,.0f} rows/s")


if __name__ == "__main__":
    main()
