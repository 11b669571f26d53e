"""Data pipeline figures, measured in one run: caption conversion throughput and padding per batch.

A. ``convert_caption_file`` (``verify_images=False``) on synthetic LAION-style JSONL rows (an image
   path such as ``img/000123.jpg`` and a caption of 5-60 words), each run in a fresh interpreter that
   prints its ``ru_maxrss`` and, on Linux, the peak RSS of the conversion alone (``VmHWM`` reset after
   the imports). Runs at N/10 and N rows (chat ``messages`` to ``.jsonl``) show that streaming keeps
   memory flat; a third run writes LLaVA ``conversations`` to a ``.json`` array at N rows. Target:
   >= 100k captions/s (ConversionReport.seconds; interpreter start and imports are shown apart).

B. Padding on a simulated paper-like mix: caption samples (image tokens uniform in [256, 1000] plus
   10-80 caption tokens) and text samples (50-2000 tokens). Each per-device batch is padded to its own
   longest sample; the padding fraction is sum(batch_size * max - sum) / sum(batch_size * max) over
   all per-device batches of one epoch. Compared: ``ModalityGroupedSampler`` (default, whole-modality
   and small length windows), a plain random sampler, and a LLaVA-style modality-length grouped
   sampler (re-implemented here from its description). An optimizer step is ``batch_size *
   world_size * grad_accum`` consecutive indices; a step "mixes" when it holds both modalities.
   Target: <= 5% padding and 0 mixed steps.

    python benchmarks/bench_data.py                 # 1M rows; 1.7M captions + 200K texts
    python benchmarks/bench_data.py --quick         # 100k rows; 170k + 20k samples (seconds)
    python benchmarks/bench_data.py --only sampler --batch-size 8 --world-size 64 --grad-accum 2
    python benchmarks/bench_data.py --only converter --profile     # plus a cProfile of the converter
    python benchmarks/bench_data.py --only converter --gc-freeze   # converter with gc.freeze() after imports
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "a the an of on in with and at near under over beside two three several small large old young red blue "
    "green white black yellow brown grey dog cat man woman child people car bus bicycle street road house "
    "building tree trees grass field beach sea water river boat sky cloud mountain snow city table plate food "
    "pizza cake coffee cup window door room kitchen bed chair sofa book phone computer screen sign light "
    "night day sunset standing sitting walking running holding looking playing eating riding wearing shirt "
    "hat dress jacket shoes bag ball game team player crowd park garden flower flowers bird horse cow sheep "
    "train plane airport station bridge wall painting photo picture close up view background front"
).split()

CHILD = """
import json, resource, sys, time
from vift_plugin.data.captions import convert_caption_file

source, output, output_format, freeze = sys.argv[1:5]
if freeze == "1":  # move the objects of the imports (torch, transformers) out of the cyclic GC's reach
    import gc

    gc.freeze()


def status(key):  # Linux /proc/self/status figure in bytes, or None
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


after_import = status("VmRSS")
try:  # Linux: reset VmHWM (the peak-RSS mark) to the current RSS, so it then measures the conversion alone
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    reset = True
except OSError:
    reset = False
start = time.perf_counter()
report = convert_caption_file(source, output, output_format=output_format, verify_images=False)
call = time.perf_counter() - start
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
print(json.dumps(dict(read=report.read, written=report.written, seconds=report.seconds, call=call,
                      after_import=after_import, convert_peak=status("VmHWM") if reset else None,
                      maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)))
"""


# --------------------------------------------------------------------------------------------- A


def write_caption_rows(path: Path, rows: int, seed: int, image_column: str, chunk: int = 50_000) -> None:
    """``rows`` JSONL lines ``{image_column: "img/000123.jpg", "caption": "5-60 words"}``, in chunks.

    Captions are drawn from a pool of up to 16,384 distinct random captions (the converter caches
    nothing, so repeats cost it the same), which keeps generation fast and this process small.
    """
    rng = np.random.default_rng(seed)
    n_words = rng.integers(5, 61, size=min(rows, 1 << 14))
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(n_words.sum())).tolist()]
    ends = np.cumsum(n_words).tolist()
    pool = [" ".join(words[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    template = '{"' + image_column + '": "img/%06d.jpg", "caption": "%s"}'
    with open(path, "w", encoding="utf-8") as handle:
        for first in range(0, rows, chunk):
            picks = rng.integers(0, len(pool), size=min(chunk, rows - first)).tolist()
            handle.write("\n".join([template % (first + i, pool[k]) for i, k in enumerate(picks)]) + "\n")


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def run_converter(source: Path, output: Path, output_format: str, gc_freeze: bool = False) -> dict[str, Any]:
    """One ``convert_caption_file`` in a fresh interpreter; its report, timings and peak RSS."""
    command = [sys.executable, "-c", CHILD, str(source), str(output), output_format, "1" if gc_freeze else "0"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"converter subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    result["output_bytes"] = output.stat().st_size
    output.unlink()
    return result


def bench_converter(args: argparse.Namespace) -> None:
    rows = args.rows
    small = max(1, rows // 10)
    print(
        f"A. convert_caption_file(verify_images=False), LAION-style JSONL ({args.image_column!r} + 'caption', "
        f"5-60 words), one fresh interpreter per run{', gc.freeze() after imports' if args.gc_freeze else ''}"
    )
    with tempfile.TemporaryDirectory(prefix="vift-bench-data-", dir=args.tmpdir) as folder:
        root = Path(folder)
        inputs = {}
        for n in sorted({small, rows}):
            start = time.perf_counter()
            inputs[n] = root / f"captions_{n}.jsonl"
            write_caption_rows(inputs[n], n, args.seed, args.image_column)
            size = inputs[n].stat().st_size
            print(f"   generated {n:,} rows ({size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.1f}s")
        runs = [("messages", small, ".jsonl"), ("messages", rows, ".jsonl"), ("llava", rows, ".json")]
        results = []
        print(
            f"   {'output':17s} {'rows':>10s} {'convert s':>9s} {'process s':>9s} {'captions/s':>10s} "
            f"{'out MiB':>7s} {'RSS after import':>16s} {'peak RSS convert':>16s} {'ru_maxrss':>10s}"
        )
        for output_format, n, suffix in runs:
            output = root / f"out_{output_format}_{n}{suffix}"
            result = run_converter(inputs[n], output, output_format, args.gc_freeze)
            if result["read"] != n or result["written"] != n:
                raise RuntimeError(f"expected {n} rows read and written, got {result['read']}/{result['written']}")
            results.append(result)
            print(
                f"   {f'{output_format} ({suffix})':17s} {n:>10,d} {result['seconds']:9.2f} {result['wall']:9.2f} "
                f"{n / result['seconds']:>10,.0f} {result['output_bytes'] / 2**20:7,.0f} "
                f"{mib(result['after_import']):>16s} {mib(result['convert_peak']):>16s} {mib(result['maxrss']):>10s}"
            )
    low, high, llava = results
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(
        f"   messages, {small:,} vs {rows:,} rows ({rows // small}x): ru_maxrss {mib(low['maxrss'])} vs "
        f"{mib(high['maxrss'])}; peak RSS while converting {mib(low['convert_peak'])} vs {mib(high['convert_peak'])}"
    )
    for name, result in (("messages", high), ("llava", llava)):
        speed = rows / result["seconds"]
        verdict = "met" if speed >= 100_000 else "MISSED"
        print(f"   {name:8s} at {rows:,} rows: {speed:,.0f} captions/s (target >= 100,000: {verdict})")
    print(
        "   convert s: ConversionReport.seconds; process s: the whole subprocess (interpreter start and imports "
        "included); peak RSS convert: VmHWM after /proc/self/clear_refs reset it post-import (Linux); "
        "ru_maxrss: getrusage(RUSAGE_SELF) in the child at the end (whole process, imports included; on Linux "
        f"never below this script's own peak at spawn, {mib(parent_peak)})"
    )
    print("   temporary files deleted")


def profile_converter(args: argparse.Namespace, rows: int = 200_000, top: int = 20) -> None:
    """cProfile of one in-process ``convert_caption_file`` run (messages, ``.jsonl``) on ``rows`` rows."""
    from vift_plugin.data.captions import convert_caption_file

    with tempfile.TemporaryDirectory(prefix="vift-bench-data-", dir=args.tmpdir) as folder:
        source = Path(folder) / "captions.jsonl"
        write_caption_rows(source, rows, args.seed, args.image_column)
        profiler = cProfile.Profile()
        profiler.enable()
        report = convert_caption_file(source, Path(folder) / "out.jsonl", verify_images=False)
        profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    speed = report.rows_per_second
    print(f"\nA'. cProfile of convert_caption_file on {rows:,} rows ({speed:,.0f} rows/s under the profiler)")
    print(stream.getvalue().split("\n", 4)[-1].rstrip().replace(os.getcwd() + os.sep, ""))


# --------------------------------------------------------------------------------------------- B


def llava_modality_grouped(
    is_image: np.ndarray, lengths: np.ndarray, batch_size: int, world_size: int, rng: np.random.Generator
) -> list[int]:
    """LLaVA-style modality-length grouping, written from its description (not LLaVA's code).

    Per modality: permute, cut into megabatches of ``world_size * batch_size``, sort each by length
    (descending) and deal its samples greedily to ``world_size`` per-device chunks (each sample to the
    chunk with the smallest total length that still has room). The incomplete last megabatch of each
    modality is set aside; full megabatches of both modalities are shuffled together, and one extra
    megabatch made of both leftovers (mixing modalities) is appended.
    """
    mega = world_size * batch_size
    megabatches: list[np.ndarray] = []
    leftovers: list[np.ndarray] = []
    for mask in (is_image, ~is_image):
        indices = np.flatnonzero(mask)
        order = indices[rng.permutation(len(indices))]
        full = len(order) // mega
        if len(order) % mega:
            rest = order[full * mega :]
            leftovers.append(rest[np.argsort(-lengths[rest], kind="stable")])
        if not full:
            continue
        groups = order[: full * mega].reshape(full, mega)
        groups = np.take_along_axis(groups, np.argsort(-lengths[groups], axis=1, kind="stable"), axis=1)
        sizes = lengths[groups]
        # Greedy balancing, all megabatches at once: one pass per position in the descending order.
        totals = np.zeros((full, world_size), dtype=np.int64)
        counts = np.zeros((full, world_size), dtype=np.int64)
        dealt = np.empty_like(groups)
        rows = np.arange(full)
        for position in range(mega):
            chunk = np.argmin(np.where(counts < batch_size, totals, np.iinfo(np.int64).max), axis=1)
            dealt[rows, chunk * batch_size + counts[rows, chunk]] = groups[:, position]
            totals[rows, chunk] += sizes[:, position]
            counts[rows, chunk] += 1
        megabatches.extend(dealt)
    order = rng.permutation(len(megabatches))
    stream = [megabatches[i] for i in order]
    if leftovers:
        stream.append(np.concatenate(leftovers))
    return np.concatenate(stream).tolist() if stream else []


def padding_fraction(stream: np.ndarray, lengths: np.ndarray, batch_size: int) -> float:
    """Padded-away share of all per-device batches, each padded to its own longest sample."""
    full = len(stream) // batch_size * batch_size
    batches = lengths[stream[:full]].reshape(-1, batch_size)
    padded = int(batches.max(axis=1).sum()) * batch_size
    real = int(batches.sum())
    tail = lengths[stream[full:]]
    if len(tail):
        padded += int(tail.max()) * len(tail)
        real += int(tail.sum())
    return (padded - real) / padded if padded else 0.0


def mixed_steps(stream: np.ndarray, is_image: np.ndarray, step_size: int) -> tuple[int, int]:
    """``(steps holding both modalities, all steps)``; an incomplete last step counts as a step."""
    full = len(stream) // step_size * step_size
    images = is_image[stream[:full]].reshape(-1, step_size).sum(axis=1)
    mixed = int(((images > 0) & (images < step_size)).sum())
    steps = full // step_size
    tail = is_image[stream[full:]]
    if len(tail):
        steps += 1
        mixed += int(0 < tail.sum() < len(tail))
    return mixed, steps


def bench_sampler(args: argparse.Namespace) -> None:
    import torch  # imported here, after part A, so the converter subprocesses do not inherit a large peak RSS

    from vift_plugin.data.sampler import ModalityGroupedSampler

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(args.seed)
    n_captions, n_texts = args.captions, args.texts
    caption_lengths = rng.integers(256, 1001, size=n_captions) + rng.integers(10, 81, size=n_captions)
    text_lengths = rng.integers(50, 2001, size=n_texts)
    # The mixed dataset, rows interleaved at random as after a shuffled concatenation.
    mix = rng.permutation(n_captions + n_texts)
    lengths = np.concatenate([caption_lengths, text_lengths])[mix]
    is_image = mix < n_captions
    modalities = np.where(is_image, "image", "text").tolist()
    length_list = lengths.tolist()
    bs, ws, accum = args.batch_size, args.world_size, args.grad_accum
    step_size = bs * ws * accum
    print(
        f"\nB. padding per device batch: {n_captions:,} caption samples (256-1000 image + 10-80 text tokens), "
        f"{n_texts:,} text samples (50-2000 tokens); batch_size={bs}, world_size={ws}, grad_accum={accum} "
        f"(step = {step_size} samples), seed={args.seed}, torch threads={torch.get_num_threads()}"
    )

    def ours(window: int | None) -> Callable[[], tuple[list[int], float]]:
        def build() -> tuple[list[int], float]:
            start = time.perf_counter()
            sampler = ModalityGroupedSampler(
                modalities,
                length_list,
                batch_size=bs,
                world_size=ws,
                gradient_accumulation_steps=accum,
                seed=args.seed,
                length_window=window,
            )
            init = time.perf_counter() - start
            return list(sampler), init

        return build

    def plain() -> tuple[list[int], float]:
        generator = torch.Generator().manual_seed(args.seed)
        return torch.randperm(len(lengths), generator=generator).tolist(), 0.0

    def llava() -> tuple[list[int], float]:
        return llava_modality_grouped(is_image, lengths, bs, ws, np.random.default_rng(args.seed)), 0.0

    default_window = ModalityGroupedSampler.__init__.__kwdefaults__["length_window"]
    samplers: list[tuple[str, Callable[[], tuple[list[int], float]]]] = [
        (f"ModalityGroupedSampler window={default_window} (default)", ours(default_window)),
        ("ModalityGroupedSampler window=None", ours(None)),
        (f"ModalityGroupedSampler window={args.small_window}", ours(args.small_window)),
        ("random (torch.randperm)", plain),
        ("LLaVA-style modality-length grouped", llava),
    ]
    print(f"   {'sampler':46s} {'samples':>10s} {'padding':>8s} {'mixed steps':>15s} {'init s':>7s} {'epoch s':>8s}")
    results = {}
    for name, build in samplers:
        start = time.perf_counter()
        order, init = build()
        seconds = time.perf_counter() - start - init
        stream = np.asarray(order, dtype=np.int64)
        padding = padding_fraction(stream, lengths, bs)
        mixed, steps = mixed_steps(stream, is_image, step_size)
        results[name] = (padding, mixed)
        init_text = f"{init:7.2f}" if init else f"{'-':>7s}"
        print(
            f"   {name:46s} {len(stream):>10,d} {padding:8.2%} {f'{mixed:,}/{steps:,}':>15s} {init_text} {seconds:8.2f}"
        )
    padding, mixed = results[samplers[0][0]]
    verdict = "met" if padding <= 0.05 and mixed == 0 else "MISSED"
    print(
        f"   ModalityGroupedSampler (default window={default_window}): padding {padding:.2%}, {mixed} mixed steps "
        f"(target <= 5% padding, 0 mixed steps: {verdict})"
    )
    if padding > 0.05:
        passing = [name for name, (p, m) in results.items() if "ModalityGrouped" in name and p <= 0.05 and m == 0]
        print(f"   reaching the target instead: {', '.join(passing) or 'none of the windows tried'}")
    print(
        "   samples: indices in one epoch (ModalityGroupedSampler drops each modality's remainder modulo the "
        "step); init s: building the sampler; epoch s: one epoch's order as a list of ints"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: 100k rows, 170k captions + 20k texts")
    parser.add_argument("--only", choices=("converter", "sampler"), help="run one part only")
    parser.add_argument("--rows", type=int, default=1_000_000, help="caption rows to convert (A)")
    parser.add_argument("--image-column", choices=("url", "image"), default="url", help="image column name (A)")
    parser.add_argument("--tmpdir", default=None, help="folder for the temporary files (A)")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() in the converter process after its imports (A)"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile the converter on 200k rows (A)")
    parser.add_argument("--captions", type=int, default=1_700_000, help="caption samples (B)")
    parser.add_argument("--texts", type=int, default=200_000, help="text samples (B)")
    parser.add_argument("--batch-size", type=int, default=16, help="per-device batch size (B)")
    parser.add_argument("--world-size", type=int, default=8, help="data-parallel ranks (B)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (B)")
    parser.add_argument("--small-window", type=int, default=4, help="small length_window to compare (B)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (B; 0: default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:  # smaller defaults; sizes given explicitly still win
        parser.set_defaults(rows=100_000, captions=170_000, texts=20_000)
        args = parser.parse_args()
    if args.only != "sampler":
        bench_converter(args)
        if args.profile:
            profile_converter(args)
    if args.only != "converter":
        bench_sampler(args)


if __name__ == "__main__":
    main()
