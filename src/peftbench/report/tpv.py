"""The TPV section of a report: what the store's Task Prompt Vector study found (docs/tpv.md).

`tpv_summary` is pure aggregation over the study's stored runs (and, for similarity, the TPV and
prompt files they kept); the renderings (markdown, LaTeX, JSON, plots, HTML) only format it.
Everything is a mean over origins (and seeds) with its sd, as the paper reports.
"""

from __future__ import annotations

import base64
import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from peftbench.report.aggregate import fmt
from peftbench.report.tables import latex_escape
from peftbench.store import RunRecord


@dataclass
class Stat:
    mean: float | None
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [v for v in values if v is not None]
        if not values:
            return cls(None, None, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def text(self, digits: int = 1) -> str:
        if self.mean is None:
            return "—"
        return fmt(self.mean, digits) + (f" ± {fmt(self.sd, digits)}" if self.sd is not None else "")


@dataclass
class CombinationResult:
    tasks: list[str]
    lambdas: list[float]
    val_curve: list[Stat]  # mean validation score over the tasks, per λ (mean ± sd over origins)
    chosen: Stat  # λ chosen per origin
    scores: dict[str, Stat]  # each task's evaluation score at the chosen λ
    single: dict[str, Stat]  # each task's single-task score, same origins
    retained: dict[str, float | None]  # combined / single, in %


@dataclass
class TPVSummary:
    metric: str
    single: dict[str, Stat]  # task → single-task score over origins
    combinations: list[CombinationResult]
    origins: list[int]
    cross: dict[str, list[list[float | None]]]  # task → [i][j]: θ₀ⁱ + τʲ score
    cosine_tpv: dict[str, Any] = field(default_factory=dict)
    cosine_prompt: dict[str, Any] = field(default_factory=dict)
    few_shot: dict[str, dict[str, dict[int, Stat]]] = field(default_factory=dict)  # target → start → shots → score

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tpv_summary(records: Sequence[RunRecord], out_dir: Path, metric: str = "accuracy") -> TPVSummary | None:
    """Aggregate the done runs of a TPV study in its `metric` (a task without it: its primary
    metric); None when there are none."""
    done = [r for r in records if r.status == "done" and "tpv" in (r.config or {})]
    if not done:
        return None
    by_study: dict[str, list[RunRecord]] = defaultdict(list)
    for r in done:
        by_study[r.config["tpv"]["study"]].append(r)
    sources = by_study["source"]
    per_origin: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sources:
        per_origin[r.task][r.config["tpv"]["origin"]].append(_score(r, metric))
    single = {t: Stat.of([statistics.fmean(v) for v in o.values()]) for t, o in sorted(per_origin.items())}
    origins = sorted({r.config["tpv"]["origin"] for r in sources})
    return TPVSummary(
        metric=metric, single=single, combinations=_combinations(by_study["combination"], per_origin), origins=origins,
        cross=_cross(by_study["cross_origin"], origins, metric),
        cosine_tpv=similarity(sources, out_dir, prompts=False),
        cosine_prompt=similarity(sources, out_dir, prompts=True),
        few_shot=_few_shot(by_study["few_shot"], metric),
    )


def _combinations(runs: list[RunRecord], per_origin: dict[str, dict[int, list[float]]]) -> list[CombinationResult]:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[r.task].append(r)
    results = []
    for _, rs in sorted(groups.items()):
        tasks, lambdas = rs[0].config["tpv"]["tasks"], rs[0].metrics["lambdas"]
        curve = [over_origins(rs, lambda r, i=i: r.metrics["val_curve"][i]) for i in range(len(lambdas))]
        scores = {t: over_origins(rs, lambda r, t=t: r.metrics["scores"][t]) for t in tasks}
        used = {r.config["tpv"]["origin"] for r in rs}
        single = {t: Stat.of([statistics.fmean(per_origin[t][o]) for o in used if per_origin[t].get(o)]) for t in tasks}
        retained = {t: (100 * scores[t].mean / single[t].mean if single[t].mean else None) for t in tasks}
        results.append(CombinationResult(tasks, lambdas, curve, over_origins(rs, lambda r: r.metrics["lambda"]),
                                         scores, single, retained))
    return results


def over_origins(runs: Sequence[RunRecord], value: Any) -> Stat:
    """Mean ± sd over origins of `value(run)`, each origin's seeds averaged first: every figure of the
    section is over origins, as the single-task scores it is compared with (with several seeds an sd
    over every run would be held against an sd over origins)."""
    by_origin: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        by_origin[r.config["tpv"]["origin"]].append(value(r))
    return Stat.of([statistics.fmean(v) for _, v in sorted(by_origin.items())])


def _score(r: RunRecord, metric: str) -> float:
    return r.metrics.get(metric, r.metrics["score"])


def _cross(runs: list[RunRecord], origins: list[int], metric: str) -> dict[str, list[list[float | None]]]:
    cells: dict[str, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        cells[r.task][(r.config["tpv"]["origin"], r.config["tpv"]["source_origin"])].append(_score(r, metric))
    return {task: [[statistics.fmean(c[(i, j)]) if c.get((i, j)) else None for j in origins] for i in origins]
            for task, c in sorted(cells.items())}


def _few_shot(runs: list[RunRecord], metric: str) -> dict[str, dict[str, dict[int, Stat]]]:
    cells: dict[str, dict[str, dict[int, list[RunRecord]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        t = r.config["tpv"]
        cells[t["target"]][t["start"]][t["shots"]].append(r)
    return {target: {start: {k: over_origins(rs, lambda r: _score(r, metric)) for k, rs in sorted(by_shots.items())}
                     for start, by_shots in starts.items()}
            for target, starts in sorted(cells.items())}


def similarity(sources: list[RunRecord], out_dir: Path, *, prompts: bool) -> dict[str, Any]:
    """Cosine (token-averaged) between the kept vectors of every pair of tasks, over pairs of
    *different* origins (the paper's off-diagonal origin pairs): `matrix[a][b]` is mean ± sd over
    them; the diagonal is the same task across origins. Also the mean over all same-task and all
    different-task pairs. Each unordered pair of vectors counts once (the cosine is symmetric: the
    diagonal and the summaries once held every pair twice, which shrank their sd and doubled n)."""
    from peftbench.tpv import vectors
    from peftbench.tpv.runs import prompt_path, vector_path

    kept: dict[tuple[str, int], list[vectors.PromptVector]] = defaultdict(list)
    for r in sources:
        path = (prompt_path if prompts else vector_path)(out_dir, r.run_id)
        if path.is_file():
            kept[(r.task, r.config["tpv"]["origin"])].append(vectors.load(path)[0])
    tasks = sorted({t for t, _ in kept})
    unique = [(ta, tb, vectors.cosine(va, vb))
              for (ta, oa), (tb, ob) in itertools.combinations(sorted(kept), 2) if oa != ob
              for va, vb in itertools.product(kept[(ta, oa)], kept[(tb, ob)])]
    pairs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for ta, tb, c in unique:
        pairs[(ta, tb)].append(c)
        if ta != tb:
            pairs[(tb, ta)].append(c)  # the matrix shows both halves
    matrix = [[Stat.of(pairs[(a, b)]) for b in tasks] for a in tasks]
    same = Stat.of([c for a, b, c in unique if a == b])
    different = Stat.of([c for a, b, c in unique if a != b])
    return {"tasks": tasks, "matrix": matrix, "same_task": same, "different_tasks": different}


# --- renderings -------------------------------------------------------------------------------------------


def markdown(s: TPVSummary) -> str:
    lines = ["", "## Task Prompt Vectors", "", f"Origins: {', '.join(map(str, s.origins))}. Scores: {s.metric} (a "
             "task without it: its primary metric), mean ± sd over origins.", "",
             "### Single-task prompts (θ₀ + τ)", "",
             "| task | score |", "|---|---:|", *(f"| {t} | {st.text()} |" for t, st in s.single.items())]
    if s.combinations:
        lines += ["", "### Combinations θ₀ + λ·Σ τ (λ chosen on validation)", "",
                  "| tasks | λ | task | combined | single | kept % |", "|---|---:|---|---:|---:|---:|"]
        for c in s.combinations:
            for t in c.tasks:
                kept = c.retained[t]
                lines.append(f"| {' + '.join(c.tasks)} | {c.chosen.text(2)} | {t} | {c.scores[t].text()} | "
                             f"{c.single[t].text()} | {fmt(kept) if kept is not None else '—'} |")
    if s.cross:
        lines += ["", "### Cross-origin: θ₀ of origin i (rows) + τ of origin j (columns)", ""]
        for task, m in s.cross.items():
            lines += [f"**{task}**", "", "| i \\ j | " + " | ".join(map(str, s.origins)) + " |",
                      "|---|" + "---:|" * len(s.origins)]
            lines += [f"| {o} | " + " | ".join(fmt(v) for v in row) + " |" for o, row in zip(s.origins, m, strict=True)]
            lines.append("")
    for name, sim in (("TPVs", s.cosine_tpv), ("prompts", s.cosine_prompt)):
        if sim.get("tasks"):
            lines += ["", f"### Cosine similarity of {name} (token-averaged; mean ± sd over pairs of other origins)",
                      "", f"Same task: {sim['same_task'].text(3)}; different tasks: {sim['different_tasks'].text(3)}.",
                      "", "| | " + " | ".join(sim["tasks"]) + " |", "|---|" + "---:|" * len(sim["tasks"])]
            lines += [f"| {a} | " + " | ".join(x.text(3) for x in row) + " |"
                      for a, row in zip(sim["tasks"], sim["matrix"], strict=True)]
    for target, starts in s.few_shot.items():
        shots = sorted({k for by in starts.values() for k in by})
        lines += ["", f"### Few-shot on {target} (mean ± sd over origins)", "",
                  "| start | " + " | ".join(f"{k} shots" for k in shots) + " |", "|---|" + "---:|" * len(shots)]
        lines += [f"| {start} | " + " | ".join(by[k].text() if k in by else "—" for k in shots) + " |"
                  for start, by in starts.items()]
    return "\n".join(lines) + "\n"


def latex(s: TPVSummary) -> str:
    out = ["", "% Task Prompt Vectors", "\\begin{table}[t]", "\\centering", "\\small", "\\begin{tabular}{llccc}",
           "\\toprule", "Tasks & Task & Combined & Single & Kept (\\%) \\\\", "\\midrule"]
    for c in s.combinations:
        for t in c.tasks:
            out.append(f"{latex_escape(' + '.join(c.tasks))} & {latex_escape(t)} & {_pm(c.scores[t])} & "
                       f"{_pm(c.single[t])} & {fmt(c.retained[t])} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\caption{TPV combinations at the $\\lambda$ chosen on validation "
            "(mean $\\pm$ sd over origins).}", "\\end{table}"]
    for target, starts in s.few_shot.items():
        shots = sorted({k for by in starts.values() for k in by})
        out += ["", "\\begin{table}[t]", "\\centering", "\\small", "\\begin{tabular}{l" + "c" * len(shots) + "}",
                "\\toprule", "Start & " + " & ".join(map(str, shots)) + " \\\\", "\\midrule"]
        out += [f"{latex_escape(start)} & " + " & ".join(_pm(by[k]) if k in by else "--" for k in shots) + " \\\\"
                for start, by in starts.items()]
        out += ["\\bottomrule", "\\end{tabular}",
                f"\\caption{{Few-shot prompt tuning on {latex_escape(target)} by start (mean $\\pm$ sd over "
                f"origins).}}", "\\end{table}"]
    return "\n".join(out) + "\n"


def _pm(stat: Stat) -> str:
    return stat.text().replace("±", "$\\pm$")


def write_plots(s: TPVSummary, out_dir: Path) -> dict[str, Path]:
    """λ curves, cross-origin heatmaps, cosine heatmaps, few-shot curves: PNG (returned, for the page)
    and SVG, in the report's style (task names and origins are text, never math)."""
    import matplotlib
    from matplotlib.figure import Figure

    from peftbench.report.plots import STYLE, save_cropped

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def save(fig: Figure, name: str) -> None:
        path = out_dir / f"tpv_{name}.png"
        fig.tight_layout()
        save_cropped(fig, path, path.with_suffix(".svg"))
        written[name] = path

    with matplotlib.rc_context(STYLE):
        if s.combinations:
            fig = Figure(figsize=(6, 4))
            ax = fig.subplots()
            for c in s.combinations:
                means = [p.mean for p in c.val_curve]
                sds = [p.sd or 0.0 for p in c.val_curve]
                ax.plot(c.lambdas, means, marker="o", ms=3, label=" + ".join(c.tasks))
                ax.fill_between(c.lambdas, [m - d for m, d in zip(means, sds, strict=True)],
                                [m + d for m, d in zip(means, sds, strict=True)], alpha=0.15)
            ax.set(xlabel="λ", ylabel="mean validation score", title="TPV sums: validation score vs λ")
            ax.legend(fontsize=7)
            save(fig, "lambda_curves")
        if s.cross:
            fig = Figure(figsize=(3.2 * len(s.cross), 3.2))
            axes = fig.subplots(1, len(s.cross), squeeze=False)
            for ax, (task, m) in zip(axes[0], s.cross.items(), strict=True):
                _heat(ax, [[v if v is not None else float("nan") for v in row] for row in m], s.origins, s.origins,
                      f"{task}: θ₀ⁱ + τʲ", "origin j of τ", "origin i of θ₀")
            save(fig, "cross_origin")
        sims = [(n, sim) for n, sim in (("tpv", s.cosine_tpv), ("prompt", s.cosine_prompt)) if sim.get("tasks")]
        if sims:
            fig = Figure(figsize=(4.2 * len(sims), 3.6))
            axes = fig.subplots(1, len(sims), squeeze=False)
            for ax, (name, sim) in zip(axes[0], sims, strict=True):
                values = [[x.mean if x.mean is not None else float("nan") for x in row] for row in sim["matrix"]]
                _heat(ax, values, sim["tasks"], sim["tasks"], f"cosine of {name}s (origins i ≠ j)", "", "", digits=2)
            save(fig, "cosine")
        for target, starts in s.few_shot.items():
            fig = Figure(figsize=(6, 4))
            ax = fig.subplots()
            for start, by in starts.items():
                shots = sorted(by)
                means = [by[k].mean for k in shots]
                ax.errorbar(shots, means, yerr=[by[k].sd or 0.0 for k in shots], marker="o", ms=3, capsize=2,
                            label=start)
            ax.set(xlabel="shots", ylabel="score", title=f"few-shot prompt tuning on {target}")
            ax.set_xscale("symlog", linthresh=5)
            ax.legend(fontsize=7)
            save(fig, f"few_shot_{target}")
    return written


def _heat(ax: Any, values: list[list[float]], cols: Sequence[Any], rows: Sequence[Any], title: str, xlabel: str,
          ylabel: str, digits: int = 1) -> None:
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45 if digits > 1 else 0, fontsize=7)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, fmt(float(v), digits), ha="center", va="center", fontsize=6, color="white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def html(s: TPVSummary, plots: dict[str, Path]) -> str:
    """The section as HTML: the markdown tables' numbers as tables, the plots inline."""
    def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f'<table class="tpv"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    parts = ['<h2 id="tpv">Task Prompt Vectors</h2>', "<h3>Single-task prompts</h3>",
             table(["task", "score"], [[t, st.text()] for t, st in s.single.items()])]
    if s.combinations:
        parts += ["<h3>Combinations (λ chosen on validation)</h3>", table(
            ["tasks", "λ", "task", "combined", "single", "kept %"],
            [[" + ".join(c.tasks), c.chosen.text(2), t, c.scores[t].text(), c.single[t].text(), fmt(c.retained[t])]
             for c in s.combinations for t in c.tasks])]
    for sim_name, sim in (("TPVs", s.cosine_tpv), ("prompts", s.cosine_prompt)):
        if sim.get("tasks"):
            parts.append(f"<p>Cosine of {escape(sim_name)}: same task {escape(sim['same_task'].text(3))}, "
                         f"different tasks {escape(sim['different_tasks'].text(3))}.</p>")
    for target, starts in s.few_shot.items():
        shots = sorted({k for by in starts.values() for k in by})
        parts += [f"<h3>Few-shot on {escape(target)}</h3>", table(
            ["start", *(f"{k} shots" for k in shots)],
            [[start, *(by[k].text() if k in by else "—" for k in shots)] for start, by in starts.items()])]
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<figure><img alt="tpv {escape(name)}" src="data:image/png;base64,{data}"></figure>')
    return "".join(parts)
