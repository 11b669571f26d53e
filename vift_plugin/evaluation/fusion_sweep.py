"""Grid search of the fusion settings: fused accuracy at every alpha x beta x first fused layer.

Items are processed batch by batch, and each batch runs every grid point before the next batch, so
the text-only states of a batch are computed once per first layer (``text_cache_size`` covers a
batch) and shared by every alpha and beta. Points with ``alpha=1, beta=0`` reuse the plain answers:
fusion then reproduces plain ``generate`` token for token.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vift_plugin.config import FusionConfig
from vift_plugin.data.writers import atomic_output
from vift_plugin.evaluation.benchmark import BenchmarkItem, as_items
from vift_plugin.evaluation.evaluator import write_text
from vift_plugin.evaluation.runner import encoded_batches
from vift_plugin.evaluation.scoring import score_all, summarize
from vift_plugin.evaluation.settings import GenerationSettings
from vift_plugin.generation import generate_batch, progress_bar

logger = logging.getLogger(__name__)

DEFAULT_BETAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
SWEEP_NAME = "sweep.jsonl"
BEST_CONFIG_NAME = "best_fusion_config.json"
SWEEP_MD_NAME = "sweep.md"
NO_MATPLOTLIB = "matplotlib is not installed: no heatmaps written (pip install 'vift_plugin[plot]')."


@dataclass
class SweepPoint:
    """Fused scores at one grid point; ``layers`` is ``range(first_layer, num_layers)``."""

    alpha: float
    beta: float
    first_layer: int
    layers: list[int]
    summary: dict[str, Any]

    @property
    def accuracy(self) -> float:
        value: float = self.summary["accuracy"]
        return value

    @property
    def format_rate(self) -> float:
        value: float = self.summary["format_rate"]
        return value

    def rank_key(self) -> tuple[float, float, float, int, float]:
        """Higher is better: accuracy, then format rate, the smaller beta, the later first layer, alpha nearer 1."""
        return (self.accuracy, self.format_rate, -self.beta, self.first_layer, -abs(self.alpha - 1.0))


@dataclass
class SweepResult:
    points: list[SweepPoint]
    plain: dict[str, Any]
    base: FusionConfig
    num_layers: int
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> SweepPoint:
        return max(self.points, key=SweepPoint.rank_key)

    @property
    def best_config(self) -> FusionConfig:
        best = self.best
        return self.base.replace(alpha=best.alpha, beta=best.beta, layers=list(best.layers))

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "alpha": p.alpha,
                "beta": p.beta,
                "first_layer": p.first_layer,
                "layers": p.layers,
                "accuracy": p.accuracy,
                "format_rate": p.format_rate,
                "n": p.summary["n"],
                "correct": p.summary["correct"],
                "formatted": p.summary["formatted"],
                **({"by_type": p.summary["by_type"]} if "by_type" in p.summary else {}),
                "plain_accuracy": self.plain["accuracy"],
                "plain_format_rate": self.plain["format_rate"],
            }
            for p in self.points
        ]

    def to_markdown(self) -> str:
        best = self.best
        lines = [
            f"plain: accuracy {100 * self.plain['accuracy']:.1f}%, format rate {100 * self.plain['format_rate']:.1f}%"
            f" (n={self.plain['n']})",
            "",
            "| alpha | beta | first layer | accuracy | format rate |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in self.points:
            mark = " **best**" if p is best else ""
            lines.append(
                f"| {p.alpha:g} | {p.beta:g} | {p.first_layer} | {100 * p.accuracy:.1f}%{mark} "
                f"| {100 * p.format_rate:.1f}% |"
            )
        return "\n".join(lines) + "\n"


def resolve_first_layers(first_layers: Iterable[int] | None, num_layers: int) -> list[int]:
    """Sorted distinct non-negative first layers; negatives count from the end. Default: the layers
    at a quarter, half and three quarters of the decoder.

    What a valid set is (a non-empty list of ints, each in ``-num_layers..num_layers-1``) is
    :meth:`FusionConfig.resolve_layers`'s rule: the first layers are checked as fused layers would be.
    """
    if first_layers is None:
        return sorted({num_layers // 4, num_layers // 2, (3 * num_layers) // 4})
    chosen = list(first_layers)
    try:
        return FusionConfig(layers=chosen).resolve_layers(num_layers)
    except ValueError as error:
        raise ValueError(f"first_layers {chosen!r} (first fused layers, negative from the end): {error}") from None


def sweep(
    model: Any,
    processor: Any,
    items: str | os.PathLike[str] | Sequence[BenchmarkItem | Mapping[str, Any]],
    alphas: Iterable[float] = (1.0,),
    betas: Iterable[float] = DEFAULT_BETAS,
    first_layers: Iterable[int] | None = None,
    *,
    base_config: FusionConfig | None = None,
    settings: GenerationSettings | None = None,
    image_root: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> SweepResult:
    """Fused accuracy at every ``alpha x beta x first layer`` (fused layers ``range(first, num_layers)``),
    plain accuracy once as the reference; files written to ``output_dir`` by :func:`write_sweep`.

    Other settings (``mode``, ``tokens``, ``layers_path``) come from ``base_config``, else the model's
    enabled config, else ``FusionConfig()``; the model's own fusion state is restored afterwards.
    ``items``, ``image_root`` and ``settings`` (default :class:`GenerationSettings`) as in
    :func:`~vift_plugin.evaluation.evaluate`.
    """
    from vift_plugin.fusion import fusion_config, vift_fusion
    from vift_plugin.layers import find_decoder_layers

    settings = settings or GenerationSettings()
    benchmark = as_items(items, image_root, allow_remote_images=settings.allow_remote_images)
    markers = settings.markers
    base = base_config or fusion_config(model) or FusionConfig()
    num_layers = len(find_decoder_layers(model, base.layers_path))
    firsts = resolve_first_layers(first_layers, num_layers)
    alpha_list = list(dict.fromkeys(float(a) for a in alphas))
    beta_list = list(dict.fromkeys(float(b) for b in betas))
    if not alpha_list or not beta_list:
        raise ValueError("give at least one alpha and one beta")
    for a in alpha_list:
        for b in beta_list:
            base.replace(alpha=a, beta=b)  # validates (and warns about beta > 0.4) before any generation
    grid = [(a, b, f) for f in firsts for a in alpha_list for b in beta_list]
    plain: list[str] = []
    fused: dict[tuple[float, float, int], list[str]] = {point: [] for point in grid}
    cache = max(base.text_cache_size, settings.batch_size * len(firsts))
    extra = dict(settings.generate_kwargs or {})
    tokens = settings.max_new_tokens
    runs_per_item = 1 + sum(1 for a, b, _ in grid if not (a == 1.0 and b == 0.0))
    bar = progress_bar(len(benchmark) * runs_per_item, "sweep", settings.progress)
    try:
        with vift_fusion(model, base.replace(text_cache_size=cache), processor=processor):
            for chunk, inputs in encoded_batches(model, processor, benchmark, settings):
                reference = generate_batch(
                    model, processor, inputs, max_new_tokens=tokens, generate_kwargs={**extra, "vift": False}
                )
                plain += reference
                bar.update(len(chunk))
                for a, b, f in grid:
                    if a == 1.0 and b == 0.0:
                        fused[(a, b, f)] += reference
                        continue
                    overrides = {"vift_alpha": a, "vift_beta": b, "vift_layers": list(range(f, num_layers))}
                    fused[(a, b, f)] += generate_batch(
                        model, processor, inputs, max_new_tokens=tokens, generate_kwargs={**extra, **overrides}
                    )
                    bar.update(len(chunk))
    finally:
        bar.close()
    points = [
        SweepPoint(a, b, f, list(range(f, num_layers)), summarize(score_all(fused[(a, b, f)], benchmark, markers)))
        for a, b, f in grid
    ]
    result = SweepResult(points, summarize(score_all(plain, benchmark, markers)), base, num_layers)
    if output_dir is not None:
        write_sweep(result, output_dir)
    return result


def write_best_config(config: FusionConfig, path: str | os.PathLike[str]) -> Path:
    """``config`` as JSON at ``path`` (the ``save_pretrained`` format, so ``from_pretrained(path)`` reads it)."""
    with atomic_output(path) as handle:
        handle.write(config.to_json_string())
    return Path(path)


def write_sweep(result: SweepResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``sweep.jsonl``, ``sweep.md``, ``best_fusion_config.json`` and ``heatmap_alpha_<a>.png`` per alpha
    (heatmaps only with matplotlib: otherwise a note in ``result.notes`` and a logged warning)."""
    folder = Path(out_dir)
    files: dict[str, Path] = {"sweep": folder / SWEEP_NAME, "markdown": folder / SWEEP_MD_NAME}
    with atomic_output(files["sweep"]) as handle:
        for row in result.rows():
            handle.write(json.dumps(row) + "\n")
    write_text(files["markdown"], result.to_markdown())
    files["best_config"] = write_best_config(result.best_config, folder / BEST_CONFIG_NAME)
    try:
        files.update(plot_heatmaps(result, folder))
    except ImportError:
        logger.warning(NO_MATPLOTLIB)
        if NO_MATPLOTLIB not in result.notes:
            result.notes.append(NO_MATPLOTLIB)
    result.files.update(files)
    return files


def heatmap_name(alpha: float) -> str:
    return f"heatmap_alpha_{alpha:g}.png"


def plot_heatmaps(result: SweepResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """One PNG per alpha: fused accuracy (%) with x = beta, y = first fused layer, every cell annotated;
    the best point outlined. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    best = result.best
    files: dict[str, Path] = {}
    for alpha in dict.fromkeys(p.alpha for p in result.points):
        points = [p for p in result.points if p.alpha == alpha]
        betas = sorted({p.beta for p in points})
        firsts = sorted({p.first_layer for p in points})
        grid = [[math.nan] * len(betas) for _ in firsts]
        for p in points:
            grid[firsts.index(p.first_layer)][betas.index(p.beta)] = 100 * p.accuracy
        figure = Figure(figsize=(1.2 + 0.9 * len(betas), 1.4 + 0.6 * len(firsts)))
        axis = figure.add_subplot()
        image = axis.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=100)
        axis.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        axis.set_yticks(range(len(firsts)), [str(f) for f in firsts])
        axis.set_xlabel("beta")
        axis.set_ylabel("first fused layer")
        axis.set_title(f"fused accuracy (%), alpha={alpha:g}; plain {100 * result.plain['accuracy']:.1f}%")
        for row, values in enumerate(grid):
            for column, value in enumerate(values):
                colour = "black" if value > 60 else "white"
                axis.text(column, row, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=8)
        if best.alpha == alpha:
            from matplotlib.patches import Rectangle

            x, y = betas.index(best.beta), firsts.index(best.first_layer)
            axis.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        figure.colorbar(image, ax=axis, label="accuracy (%)")
        figure.tight_layout()
        path = folder / heatmap_name(alpha)
        temporary = path.with_name(f".{path.name}.partial")
        figure.savefig(temporary, dpi=110, format="png")
        os.replace(temporary, path)
        files[f"heatmap_alpha_{alpha:g}"] = path
    return files
