"""Report figures, each written as PNG and SVG: quality vs costs with Pareto fronts, a task × method
heatmap, per-task seed spread and cost bars. Labels are drawn literally (no math-text parsing).

Methods are told apart by colour and marker with one legend per figure rather than text beside each
point, which overlaps as soon as two methods cost about the same. A published reference
(`--reference`) was measured on another model, whose costs would squash ours into a corner: its
rows get a figure of their own, labelled with that model. Seed spread is drawn only when some
cell has two seeds or more: one point per method says nothing about spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from peftbench.report.aggregate import REFERENCE_MODELS, MethodSummary, Summary, fmt, stability

COSTS = (("trainable_params", "trainable parameters (M_p)", True), ("extra_tflops", "extra TFLOPs (M_f)", False),
         ("peak_mem_gb", "peak training memory, GB (M_m)", False))
MARKERS = "osD^vP*Xph<>"
PLACEHOLDERS = ("quality_vs_costs", "heatmap", "cost_bars")  # written, saying so, even when no run is stored
DPI = 110  # of every PNG the reports write
STYLE = {"text.parse_math": False, "svg.hashsalt": "peftbench", "font.size": 9}


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (cost, quality, name) that no other point dominates, that is, costs no more, is no worse,
    and is strictly better in at least one of the two. Methods with the same cost and quality do not
    dominate each other, so all of them are on the front (or none)."""
    front: list[tuple[float, float, str]] = []
    best = -np.inf
    for cost, quality, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best or (front and (cost, quality) == front[-1][:2]):
            front.append((cost, quality, name))
            best = quality
    return front


def write_plots(summary: Summary, out_dir: Path) -> dict[str, list[Path]]:
    """Every figure that has something to show; a figure that has not (one seed, no reference) is
    not written, and an earlier report's file of that name is removed so that it cannot pass for
    this one's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Callable[[Summary], Figure | None]] = {
        "quality_vs_costs": _quality_vs_costs, "heatmap": _heatmap, "seed_spread": _seed_spread,
        "cost_bars": _cost_bars, "reference_quality_vs_costs": _reference}
    written = {}
    with matplotlib.rc_context(STYLE):
        for name, draw in figures.items():
            paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
            fig = draw(summary) if summary.cells else (_empty() if name in PLACEHOLDERS else None)
            if fig is None:
                for path in paths:
                    path.unlink(missing_ok=True)
                continue
            save_cropped(fig, *paths)
            written[name] = paths
    return written


def save_cropped(fig: Figure, png: Path, svg: Path) -> None:
    """The figure as PNG and SVG, cropped to what is drawn (legends outside the axes included) as
    `bbox_inches="tight"` crops, with the box measured once for both files: "tight" lays the whole
    figure out twice more for every file it writes, a quarter of a report's plotting time."""
    fig.set_dpi(DPI)
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # places what is placed at draw time (titles, tick labels) before measuring
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
    fig.savefig(png, dpi=DPI, bbox_inches=box)
    fig.savefig(svg, bbox_inches=box, metadata={"Date": None})


def _empty() -> Figure:
    fig = Figure(figsize=(4, 1.5))
    ax = fig.subplots()
    ax.text(0.5, 0.5, "no runs of the current config", ha="center", va="center")
    ax.axis("off")
    return fig


def _scored(summary: Summary, reference: bool = False) -> list[MethodSummary]:
    """Methods with P_avg and PSCP: this grid's, or (`reference`) the published reference's."""
    return [s for s in summary.summaries if s.p_avg is not None and s.pscp is not None and s.reference == reference]


def _styles(names: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A (colour, marker) per method, the same in every panel of a figure."""
    colours = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: (colours(i % colours.N), MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def _quality_vs_costs(summary: Summary) -> Figure:
    return _quality_figure(_scored(summary), "Quality vs cost; the Pareto front (no method both cheaper and "
                                             "better) is joined in red, its methods ringed")


def _reference(summary: Summary) -> Figure | None:
    rows = _scored(summary, reference=True)
    if not rows:
        return None
    model = REFERENCE_MODELS.get(summary.reference or "", "another model")
    return _quality_figure(rows, f"Published reference {summary.reference} ({model}): another model's costs, "
                                 "so on axes of their own, not beside this grid's")


def _quality_figure(rows: list[MethodSummary], title: str) -> Figure:
    fig = Figure(figsize=(16, 3.8))
    axes = fig.subplots(1, 4)
    styles = _styles([s.method for s in rows])
    for ax, (key, label, log) in zip(axes, COSTS, strict=False):
        points = [(getattr(s, key), s.p_avg, s.method) for s in rows]
        _scatter_with_front(ax, points, styles, label, "P_avg", log)
    # PSCP is a benefit, not a cost: the front is computed on −PSCP and drawn on PSCP.
    _scatter_with_front(axes[3], [(-s.pscp, s.p_avg, s.method) for s in rows], styles, "PSCP", "P_avg", False,
                        negate_x=True)
    if rows:
        handles = [Line2D([], [], linestyle="", marker=marker, color=colour, label=name)
                   for name, (colour, marker) in styles.items()]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _scatter_with_front(ax, points: list[tuple[float, float, str]], styles: dict[str, tuple[tuple[float, ...], str]],
                        xlabel: str, ylabel: str, log: bool, negate_x: bool = False) -> None:
    if not points:
        ax.text(0.5, 0.5, "no complete method", ha="center", transform=ax.transAxes)
        return
    front = {name for _, _, name in pareto_front(points)}
    sign = -1 if negate_x else 1
    for cost, quality, name in points:
        colour, marker = styles[name]
        on = name in front
        ax.scatter(sign * cost, quality, s=60 if on else 30, color=colour, marker=marker, zorder=3,
                   edgecolors="tab:red" if on else "none", linewidths=1.5 if on else 0)
    line = sorted(pareto_front(points))
    ax.plot([sign * c for c, _, _ in line], [q for _, q, _ in line], color="tab:red", lw=1, zorder=2)
    if log:
        ax.set_xscale("symlog", linthresh=1)  # logarithmic, with room for the zero of `base`
        ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _power_of_ten(value: float, _position: int) -> str:
    """Tick labels as plain text (math text is off so that labels stay literal)."""
    return "0" if value == 0 else f"1e{round(np.log10(abs(value)))}"


def _heatmap(summary: Summary) -> Figure:
    data = np.array([[np.nan if (c := summary.cell(m, t)).score_mean is None else c.score_mean
                      for t in summary.tasks] for m in summary.methods], dtype=float)
    fig = Figure(figsize=(max(4, 0.55 * len(summary.tasks) + 2), max(2.5, 0.4 * len(summary.methods) + 1)))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(summary.tasks)), summary.tasks, rotation=60, ha="right")
    ax.set_yticks(range(len(summary.methods)), summary.methods)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            text = fmt(float(data[i, j]), 0)
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if np.isnan(data[i, j]) or data[i, j] < 60 else "black")
    fig.colorbar(image, ax=ax, label="score (mean over seeds)")
    ax.set_title("Task × method score (— = no done run)")
    return fig


def _seed_spread(summary: Summary) -> Figure | None:
    cells = [c for c in stability(summary) if len(c.scores) >= 2]
    if not cells:
        return None
    tasks = list(dict.fromkeys(c.task for c in cells))
    cols = min(4, max(1, len(tasks)))
    rows = -(-len(tasks) // cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, method in enumerate(summary.methods):
            scores = summary.cell(method, task).scores
            jitter = np.linspace(-0.15, 0.15, len(scores)) if len(scores) > 1 else [0.0]
            ax.scatter(np.full(len(scores), i) + jitter, scores, s=14)
        ax.set_xticks(range(len(summary.methods)), summary.methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle("Per-seed scores (stability across seeds)")
    fig.tight_layout()
    return fig


def _cost_bars(summary: Summary) -> Figure:
    """This grid's costs (a reference's, of another model, are in its own figure)."""
    rows = [s for s in summary.summaries if s.trainable_params is not None and not s.reference]
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, 3)
    for ax, (key, label, log) in zip(axes, COSTS, strict=True):
        values = [getattr(s, key) or 0 for s in rows]
        ax.bar(range(len(rows)), values, color="tab:blue")
        ax.set_xticks(range(len(rows)), [s.method for s in rows], rotation=60, ha="right", fontsize=7)
        if log and any(v > 0 for v in values):
            ax.set_yscale("symlog", linthresh=1)
            ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
        ax.set_title(label)
    fig.tight_layout()
    return fig
