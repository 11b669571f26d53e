#!/usr/bin/env python3
"""The GPU check in one command: every figure the README lacks without a GPU, recorded in one folder.

    bash scripts/gpu_check.sh                          # one CUDA GPU, at most 8 minutes
    bash scripts/gpu_check.sh --out /tmp/gpu_check     # the folder (default gpu_check/<date>_<time>)
    bash scripts/gpu_check.sh --dry-run                # CPU: the same steps at tiny sizes (the tests run this)

Steps, each a subprocess with its own timeout inside a total budget (``--budget-s``, 480 s on a GPU):
a failed or timed-out step is recorded with the tail of its output and the next one runs.

- ``env``: GPU, driver, Python and package versions;
- ``pytest_gpu``: the tests marked ``gpu`` (``tests/test_gpu.py``: bf16 fusion identity, QLoRA backward,
  fused generate of a 4-bit model);
- ``fused_generate``: tiny Qwen2-VL and LLaVA checkpoints loaded with ``device_map="auto"`` (bf16) and
  with 4-bit weights: fused ``generate`` at alpha 1, beta 0 (live and official) equals plain ``generate``
  token for token, and beta 0.3 changes the logits (the fusion really ran);
- ``bench_fusion``: ``benchmarks/bench_fusion.py --size qwen2-vl-2b`` in bf16: plain ms, live and official ratios;
- ``train_2b_lora`` and ``train_7b_qlora``: ``benchmarks/bench_train.py``: peak GiB and s/step;
- ``demo_quick``: ``vift demo --quick`` on the GPU: wall time and exact match per row.

Writes ``summary.json`` (every step: status, wall time, command, figures), ``summary.md`` (the same as
tables, ready for the README's benchmark section) and ``logs/<step>.log``; scratch files go to ``work/``.
Nothing is downloaded: every model is built from a config with random weights. Exit status 0 when
every step passed, 1 otherwise, 2 when there is no GPU and ``--dry-run`` was not given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPU_BUDGET_S = 480.0
DRY_BUDGET_S = 300.0
TAIL_LINES = 40
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "safetensors", "pytest")


@dataclass(frozen=True)
class Context:
    """Where a run writes and whether it is the CPU dry run."""

    out: Path
    dry_run: bool

    @property
    def work(self) -> Path:
        return self.out / "work"

    def result(self, step: str) -> Path:
        """The JSON file a step writes its figures to."""
        return self.work / f"{step}.json"


@dataclass(frozen=True)
class Step:
    """One check: its command on a GPU and in the dry run, its timeout, and how to read its figures."""

    name: str
    what: str
    command: Callable[[Context], list[str]]
    timeout_s: float
    dry_timeout_s: float
    figures: Callable[[Context], dict[str, Any]]
    # Seconds below which the step is not started at all (it could not finish in what is left).
    minimum_s: float = 20.0


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _internal(step: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        args = ["scripts/gpu_check.py", "--run-step", step, "--out", str(ctx.out)]
        return _python(*args, *(["--dry-run"] if ctx.dry_run else []))

    return command


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _json_figures(step: str) -> Callable[[Context], dict[str, Any]]:
    return lambda ctx: _read_json(ctx.result(step))


# ----------------------------------------------------------------------------------------- step commands


def _pytest_command(ctx: Context) -> list[str]:
    xml = ctx.work / "pytest_gpu.xml"
    return _python(
        "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py", f"--junitxml={xml}"
    )


def _pytest_figures(ctx: Context) -> dict[str, Any]:
    root = ElementTree.parse(ctx.work / "pytest_gpu.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise ValueError("no testsuite in the JUnit XML")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _bench_fusion_command(ctx: Context) -> list[str]:
    size = ["--size", "small", "--repeats", "1", "--new-tokens", "2", "--device", "cpu"] if ctx.dry_run else []
    gpu = ["--size", "qwen2-vl-2b", "--repeats", "5", "--device", "cuda"]
    return _python("benchmarks/bench_fusion.py", *(size or gpu), "--json", str(ctx.result("bench_fusion")))


def _bench_train_command(step: str, size: str, mode: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        shape = ["--size", "small", "--tokens", "300", "--steps", "1"] if ctx.dry_run else ["--size", size]
        return _python("benchmarks/bench_train.py", *shape, "--mode", mode, "--json", str(ctx.result(step)))

    return command


def _train_figures(step: str) -> Callable[[Context], dict[str, Any]]:
    def figures(ctx: Context) -> dict[str, Any]:
        data = _read_json(ctx.result(step))
        (row,) = data["rows"]
        return {
            "device": data["device"],
            "size": row["size"],
            "mode": row["mode"],
            "tokens": row["tokens"],
            "s_per_step": round(row["s/step"], 4),
            "peak_GiB": round(row["peak GiB"], 3),
            "peak_kind": row["peak kind"],
            "trainable_M": round(row["trainable M"], 2),
        }

    return figures


def _demo_command(ctx: Context) -> list[str]:
    if ctx.dry_run:  # a tiny world and a step per stage: the demo's plumbing, within the test suite's budget
        return _internal("demo_tiny")(ctx)
    return _python("-m", "vift_plugin", "demo", "--quick", "--fresh", "--output-dir", str(ctx.work / "demo"))


def _demo_figures(ctx: Context) -> dict[str, Any]:
    results = _read_json(ctx.work / "demo" / "results.json")
    return {
        "exact_match": {row["key"]: round(row["summary"]["accuracy"], 4) for row in results["rows"]},
        "report": str(ctx.work / "demo" / "report.md"),
    }


STEPS: list[Step] = [
    Step("env", "GPU, driver and package versions", _internal("env"), 60, 60, _json_figures("env"), 5),
    Step(
        "pytest_gpu",
        "tests marked gpu (tests/test_gpu.py)",
        _pytest_command,
        120,
        90,
        _pytest_figures,
    ),
    Step(
        "fused_generate",
        'fused generate at alpha 1, beta 0 == plain, token for token: device_map="auto" (bf16) and 4-bit',
        _internal("fused_generate"),
        120,
        90,
        _json_figures("fused_generate"),
    ),
    Step(
        "bench_fusion",
        "benchmarks/bench_fusion.py --size qwen2-vl-2b, bf16: plain ms, live and official ratios",
        _bench_fusion_command,
        150,
        90,
        _json_figures("bench_fusion"),
        45,
    ),
    Step(
        "train_2b_lora",
        "benchmarks/bench_train.py --size qwen2-vl-2b --mode lora: peak GiB, s/step",
        _bench_train_command("train_2b_lora", "qwen2-vl-2b", "lora"),
        150,
        90,
        _train_figures("train_2b_lora"),
        45,
    ),
    Step(
        "demo_quick",
        "vift demo --quick on the GPU: wall time, exact match per row",
        _demo_command,
        150,
        90,
        _demo_figures,
        30,
    ),
    Step(
        "train_7b_qlora",
        "benchmarks/bench_train.py --size qwen2-vl-7b --mode qlora: peak GiB, s/step",
        _bench_train_command("train_7b_qlora", "qwen2-vl-7b", "qlora"),
        300,
        90,
        _train_figures("train_7b_qlora"),
        90,
    ),
]


# ----------------------------------------------------------------------------------------- internal steps


def env_step(ctx: Context) -> dict[str, Any]:
    """Versions and the device, so every figure can be read against what produced it."""
    import importlib.metadata

    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    figures: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "versions": versions,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(
            gpu=props.name,
            gpu_memory_GiB=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        figures["driver"] = done.stdout.strip() or None
    return figures


def _conversation(question: str, width: int, height: int, colour: str) -> list[dict[str, Any]]:
    from PIL import Image

    image = Image.new("RGB", (width, height), colour)
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def fused_generate_step(ctx: Context) -> dict[str, Any]:
    """alpha 1, beta 0 must reproduce plain generate exactly on dispatched and on 4-bit models.

    Both loadings change how the decoder layers run (accelerate's hooks move tensors between devices;
    bitsandbytes swaps the linear layers), which is where fusion's pre-hooks could go wrong. A batch of
    two left-padded prompts of different image sizes; greedy, 8 new tokens. beta 0.3 must change the
    first step's logits, so the identity is not the fusion silently switched off.
    """
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from vift_plugin import disable_vift, enable_vift, load_processor
    from vift_plugin.testing import make_tiny_checkpoint
    from vift_plugin.training.model import unquantized_modules

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    greedy: dict[str, Any] = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cases: list[dict[str, Any]] = []
    for family in ("qwen2_vl",) if ctx.dry_run else ("qwen2_vl", "llava"):
        path = make_tiny_checkpoint(family, ctx.work / f"tiny-{family}")
        processor = load_processor(path)
        processor.tokenizer.padding_side = "left"
        batch: Any = processor.apply_chat_template(
            [
                _conversation("What colour is the shape?", 40, 60, "red"),
                _conversation("Describe the picture in detail, please.", 90, 30, "blue"),
            ],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        loadings: dict[str, dict[str, Any]] = {
            "device_map_auto": dict(device_map="auto", dtype=dtype),
            "4bit": dict(
                device_map="auto",
                dtype=dtype,
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=dtype,
                    llm_int8_skip_modules=unquantized_modules(family),
                ),
            ),
        }
        for loading, kwargs in loadings.items():
            case: dict[str, Any] = {"family": family, "loading": loading}
            cases.append(case)
            try:
                model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
                inputs = batch.to(model.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                case["devices"] = sorted({str(p.device) for p in model.parameters()})
                case["quantized_linears"] = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
                with torch.inference_mode():
                    plain = model.generate(**inputs, **greedy)
                    for mode in ("live", "official"):
                        enable_vift(model, processor=processor, alpha=1.0, beta=0.0, mode=mode)
                        fused = model.generate(**inputs, **greedy)
                        case[f"{mode}_tokens_equal"] = bool(torch.equal(fused.sequences, plain.sequences))
                        case[f"{mode}_max_score_diff"] = float((fused.scores[0] - plain.scores[0]).abs().max())
                    enable_vift(model, processor=processor, alpha=1.0, beta=0.3, mode="live")
                    moved = model.generate(**inputs, **greedy).scores[0]
                    case["beta_0.3_changes_logits"] = not bool(torch.allclose(moved, plain.scores[0]))
                    disable_vift(model)
                case["new_tokens"] = int(plain.sequences.shape[1] - inputs["input_ids"].shape[1])
                case["ok"] = bool(
                    case["live_tokens_equal"] and case["official_tokens_equal"] and case["beta_0.3_changes_logits"]
                )
                if loading == "4bit" and not case["quantized_linears"]:
                    case["ok"] = False
                    case["error"] = "no Linear4bit layer after loading with load_in_4bit"
                del model
            except Exception as error:  # recorded; the other cases still run
                case["ok"] = False
                case["error"] = f"{type(error).__name__}: {error}"
            if cuda:
                torch.cuda.empty_cache()
    passed = sum(case["ok"] for case in cases)
    return {"cases": cases, "passed": passed, "total": len(cases), "ok": passed == len(cases)}


def demo_tiny_step(ctx: Context) -> dict[str, Any]:
    """The dry run's demo: ``vift demo --quick``'s pipeline on a world of a few dozen records, a step a stage.

    ``--quick`` alone takes about a minute on 2 CPU cores; this keeps every stage, the perception
    probe, evaluation and the report, at sizes that check the plumbing in seconds.
    """
    from vift_plugin.toy.data import WorldSizes
    from vift_plugin.toy.demo import DemoConfig, run_demo

    sizes = WorldSizes(captions=48, texts=48, scene_texts=16, visual_instructions=16, test=12, dev=6)
    steps = {f"{stage}_steps": 1 for stage in ("language", "align", "caption", "vift")}
    config = DemoConfig.quick(
        output_dir=str(ctx.work / "demo"), sizes=sizes, baseline=False, sweep=False, fresh=True, batch_size=8, **steps
    )
    report = run_demo(config)
    return {"report": str(report)}


INTERNAL_STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "env": env_step,
    "fused_generate": fused_generate_step,
    "demo_tiny": demo_tiny_step,
}


def run_internal(name: str, ctx: Context) -> int:
    """Run one in-script step in this process (a subprocess of the check) and write its figures."""
    figures = INTERNAL_STEPS[name](ctx)
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.result(name).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return 0 if figures.get("ok", True) else 1


# ----------------------------------------------------------------------------------------- the runner


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def run_step(step: Step, ctx: Context, remaining_s: float) -> dict[str, Any]:
    """Run ``step`` as a subprocess within its timeout (and what is left of the budget); never raises."""
    command = step.command(ctx)
    record: dict[str, Any] = {"name": step.name, "what": step.what, "command": " ".join(command)}
    limit = step.dry_timeout_s if ctx.dry_run else step.timeout_s
    timeout = min(limit, remaining_s)
    if timeout < min(limit, 5.0 if ctx.dry_run else step.minimum_s):
        return {**record, "status": "skipped", "wall_s": 0.0, "error": f"budget: {remaining_s:.0f} s left"}
    log = ctx.out / "logs" / f"{step.name}.log"
    record["log"] = str(log.relative_to(ctx.out))
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        handle.write(f"$ {record['command']}\n")
        handle.flush()
        process = subprocess.Popen(
            command, cwd=ROOT, env=_child_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the step's own process group: it and its children
            process.wait()
            returncode = None
    record["wall_s"] = round(time.perf_counter() - start, 2)
    record["returncode"] = returncode
    try:
        record["figures"] = step.figures(ctx)
    except Exception as error:  # a step that died early wrote no figures
        record["figures"] = {}
        if returncode == 0:
            returncode = -1
            record["error"] = f"no figures: {type(error).__name__}: {error}"
    if returncode is None:
        record["status"] = "timeout"
        record["error"] = f"killed after {timeout:.0f} s"
    else:
        record["status"] = "passed" if returncode == 0 else "failed"
    if record["status"] != "passed":
        record["output_tail"] = _tail(log)
    return record


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def headline(record: dict[str, Any]) -> str:
    """The step's figures in one line, for the summary table."""
    figures = record.get("figures") or {}
    name = record["name"]
    if not figures:
        return record.get("error", "")
    if name == "env":
        device = figures.get("gpu") or "CPU (no CUDA)"
        versions = figures["versions"]
        return f"{device}; torch {versions['torch']}, transformers {versions['transformers']}"
    if name == "pytest_gpu":
        return ", ".join(f"{figures[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    if name == "fused_generate":
        return f"{figures['passed']}/{figures['total']} cases identical (and beta 0.3 changes the logits)"
    if name == "bench_fusion":
        ms, ratio = figures["median_ms"], figures["ratio"]
        return f"plain {ms['plain']:.1f} ms; live {ratio['live']:.3f}x, official {ratio['official']:.3f}x"
    if name.startswith("train_"):
        return f"peak {figures['peak_GiB']:.2f} GiB, {figures['s_per_step']:.3f} s/step, {figures['tokens']} tokens"
    if name == "demo_quick":
        return f"{record['wall_s']:.0f} s; exact match " + _fmt(figures["exact_match"])
    return _fmt(figures)


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: one table of the steps, then each step's figures and, when it failed, its output."""
    kind = "dry run on CPU (tiny sizes: checks the plumbing, not the figures)" if summary["dry_run"] else "GPU run"
    lines = [
        f"# GPU check, {summary['started']}",
        "",
        f"{kind}; device: {summary['device']}; {summary['wall_s']:.0f} s of a {summary['budget_s']:.0f} s budget; "
        f"{'all steps passed' if summary['ok'] else 'some steps did not pass'}.",
        "",
        "| step | status | wall s | figures |",
        "| --- | --- | --- | --- |",
    ]
    for record in summary["steps"]:
        cell = headline(record).replace("|", "/")
        lines.append(f"| `{record['name']}` | {record['status']} | {record['wall_s']:.1f} | {cell} |")
    for record in summary["steps"]:
        lines += ["", f"## `{record['name']}`: {record['what']}", "", f"`{record['command']}`", ""]
        figures = record.get("figures") or {}
        if record["name"] == "fused_generate" and figures:
            lines += ["| family | loading | devices | 4-bit linears | live equal | official equal | beta 0.3 moves |"]
            lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
            for case in figures["cases"]:
                cells = [
                    case["family"],
                    case["loading"],
                    ", ".join(case.get("devices", [])),
                    case.get("quantized_linears", "-"),
                    case.get("live_tokens_equal", "-"),
                    case.get("official_tokens_equal", "-"),
                    case.get("beta_0.3_changes_logits", case.get("error", "-")),
                ]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        elif figures:
            lines += ["| figure | value |", "| --- | --- |"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in figures.items()]
        if record.get("error"):
            lines += ["", f"Error: {record['error']}"]
        if record.get("output_tail"):
            lines += ["", "```", record["output_tail"], "```"]
    return "\n".join(lines) + "\n"


def default_out() -> Path:
    return ROOT / "gpu_check" / datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default gpu_check/<date>_<time>)")
    parser.add_argument("--dry-run", action="store_true", help="on CPU, the same steps at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=None, help=f"total seconds (default {GPU_BUDGET_S:.0f})")
    parser.add_argument("--only", default=None, help="comma list of steps to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--run-step", choices=sorted(INTERNAL_STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ctx = Context((args.out or default_out()).resolve(), args.dry_run)
    if args.run_step:
        return run_internal(args.run_step, ctx)
    steps = STEPS
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {step.name for step in STEPS})
        if unknown:
            parser.error(f"unknown steps {unknown}; choose from {[step.name for step in STEPS]}")
        steps = [step for step in STEPS if step.name in wanted]
    if args.list:
        for step in steps:
            print(f"{step.name:15s} {' '.join(step.command(ctx))}")
        return 0
    device = "CPU (dry run)"
    if not args.dry_run:  # the dry run leaves torch to the steps: one import fewer on a small CPU
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; run with --dry-run for the CPU form.", file=sys.stderr)
            return 2
        device = torch.cuda.get_device_name()
    budget = args.budget_s or (DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S)
    (ctx.out / "logs").mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    summary: dict[str, Any] = {
        "tool": "scripts/gpu_check.py",
        "started": started.isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "device": device,
        "budget_s": budget,
        "steps": [],
    }
    begin = time.perf_counter()
    for step in steps:
        remaining = budget - (time.perf_counter() - begin)
        print(f"[gpu_check] {step.name}: {step.what}", flush=True)
        record = run_step(step, ctx, remaining)
        summary["steps"].append(record)
        print(
            f"[gpu_check] {step.name}: {record['status']} in {record['wall_s']:.1f} s  {headline(record)}", flush=True
        )
    summary["wall_s"] = round(time.perf_counter() - begin, 2)
    summary["ok"] = all(record["status"] == "passed" for record in summary["steps"])
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (ctx.out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(f"[gpu_check] {'all steps passed' if summary['ok'] else 'some steps did not pass'}; see {ctx.out}/summary.md")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
