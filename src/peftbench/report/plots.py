"""Report figures, each written as PNG and SVG: quality vs costs with Pareto fronts, a task × method
heatmap, per-task seed spread and cost bars. Labels are drawn literally (no math-text parsing)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from peftbench.report.aggregate import MethodSummary, Summary, stability  # noqa: E402

COSTS = (("trainable_params", "trainable parameters (M_p)", True), ("extra_tflops", "extra TFLOPs (M_f)", False),
         ("peak_mem_gb", "peak training memory, GB (M_m)", False))


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (cost, quality, name) that no other point beats on both (lower cost, higher quality)."""
    front, best = [], -np.inf
    for cost, quality, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            front.append((cost, quality, name))
            best = quality
    return front


def write_plots(summary: Summary, out_dir: Path) -> dict[str, list[Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"quality_vs_costs": _quality_vs_costs, "heatmap": _heatmap, "seed_spread": _seed_spread,
               "cost_bars": _cost_bars}
    written = {}
    with plt.rc_context({"text.parse_math": False, "svg.hashsalt": "peftbench", "font.size": 9}):
        for name, draw in figures.items():
            fig = draw(summary) if summary.cells else _empty()
            paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
            fig.savefig(paths[0], dpi=110, bbox_inches="tight")
            fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
            plt.close(fig)
            written[name] = paths
    return written


def _empty():
    fig, ax = plt.subplots(figsize=(4, 1.5))
    ax.text(0.5, 0.5, "no runs of the current config", ha="center", va="center")
    ax.axis("off")
    return fig


def _scored(summary: Summary) -> list[MethodSummary]:
    return [s for s in summary.summaries if s.p_avg is not None and s.pscp is not None]


def _quality_vs_costs(summary: Summary):
    rows = _scored(summary)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (key, label, log) in zip(axes, COSTS, strict=False):
        points = [(getattr(s, key), s.p_avg, s.method) for s in rows]
        _scatter_with_front(ax, points, label, "P_avg", log)
    # PSCP is a benefit, not a cost: the front is computed on −PSCP and drawn on PSCP.
    _scatter_with_front(axes[3], [(-s.pscp, s.p_avg, s.method) for s in rows], "PSCP", "P_avg", False,
                        negate_x=True)
    fig.suptitle("Quality vs cost; the Pareto front (no method both cheaper and better) is highlighted")
    return fig


def _scatter_with_front(ax, points, xlabel, ylabel, log, negate_x=False) -> None:
    if not points:
        ax.text(0.5, 0.5, "no complete method", ha="center", transform=ax.transAxes)
        return
    front = {name for _, _, name in pareto_front(points)}
    sign = -1 if negate_x else 1
    for cost, quality, name in points:
        on = name in front
        ax.scatter(sign * cost, quality, s=40 if on else 20, color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(name, (sign * cost, quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
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


def _heatmap(summary: Summary):
    data = np.array([[np.nan if (c := summary.cell(m, t)).score_mean is None else c.score_mean
                      for t in summary.tasks] for m in summary.methods], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.55 * len(summary.tasks) + 2), max(2.5, 0.4 * len(summary.methods) + 1)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(summary.tasks)), summary.tasks, rotation=60, ha="right")
    ax.set_yticks(range(len(summary.methods)), summary.methods)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            text = "—" if np.isnan(data[i, j]) else f"{data[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if np.isnan(data[i, j]) or data[i, j] < 60 else "black")
    fig.colorbar(image, ax=ax, label="score (mean over seeds)")
    ax.set_title("Task × method score (— = no done run)")
    return fig


def _seed_spread(summary: Summary):
    cells = stability(summary)
    tasks = list(dict.fromkeys(c.task for c in cells))
    cols = min(4, max(1, len(tasks)))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
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


def _cost_bars(summary: Summary):
    rows = [s for s in summary.summaries if s.trainable_params is not None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (key, label, log) in zip(axes, COSTS, strict=True):
        values = [getattr(s, key) or 0 for s in rows]
        ax.bar(range(len(rows)), values, color=["tab:gray" if s.reference else "tab:blue" for s in rows])
        ax.set_xticks(range(len(rows)), [s.method for s in rows], rotation=60, ha="right", fontsize=7)
        if log and any(v > 0 for v in values):
            ax.set_yscale("symlog", linthresh=1)
            ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
        ax.set_title(label)
    fig.tight_layout()
    return fig
