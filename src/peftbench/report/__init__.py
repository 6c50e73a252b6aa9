"""Reports over a results directory: pure aggregation, then its renderings and artefacts.

Everything is computed from the stored runs every time; nothing is typed in. `write_report`
writes every artefact; the CLI prints one rendering.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from peftbench.config import BenchConfig, PSCPConfig, validate_config
from peftbench.jsonsafe import dumps_json
from peftbench.report.aggregate import REFERENCES, Summary, aggregate, with_reference
from peftbench.report.stability import StrategyRow, strategy_of, strategy_rows
from peftbench.report.tables import latex, markdown, rich_tables, runs_csv, summary_json
from peftbench.report.tpv import TPVSummary, tpv_summary
from peftbench.store import IDENTITY_VERSION, TPV_PLAN, RunRecord, Store
from peftbench.utils import atomic_write_text

__all__ = ["CONFIG_FILE", "REFERENCES", "Report", "build_report", "write_report", "rich_tables", "markdown",
           "runs_csv", "summary_json", "latex", "report_markdown", "report_json", "report_latex"]
CONFIG_FILE = "config.yaml"


@dataclass
class Report:
    store: Store
    records: list[RunRecord]
    other_runs: int
    summary: Summary
    title: str
    notes: list[str]  # what a reader must know before trusting the numbers (printed and in the artefacts)
    tpv: TPVSummary | None = None  # the config's Task Prompt Vector study, when it has one
    strategies: list[StrategyRow] = field(default_factory=list)  # when the grid compares mitigation strategies


def current_config(out_dir: Path) -> BenchConfig | None:
    """The config of the last `run` into this directory (written there by `run`)."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return validate_config(yaml.safe_load(path.read_text()) or {}, source=str(path))


def current_records(records: list[RunRecord], plan: list[str] | None) -> tuple[list[RunRecord], int]:
    """The runs of the directory's current plan (`Store.plan`, the last grid run into it) among a
    store's `records`, and how many other runs the store holds.

    Runs of an earlier config (say, other epochs) stay in the store; averaging them in would
    count them as extra seeds, so reports show only the current plan's runs.
    """
    if plan is None:
        return records, 0
    ids = set(plan)
    kept = [r for r in records if r.run_id in ids]
    return kept, len(records) - len(kept)


def version_notes(shown: list[RunRecord], all_records: list[RunRecord]) -> list[str]:
    """Say so when the store holds runs identified by an older run-id version: before version 3,
    generation used transformers' cached `generate`, which decodes prompt tuning, prefix tuning and
    P-tuning wrongly with peft 0.21 + transformers 5.24 (their scores are not comparable)."""
    def old(records: list[RunRecord]) -> list[RunRecord]:
        return [r for r in records if (r.config or {}).get("version", IDENTITY_VERSION) < IDENTITY_VERSION]

    notes = []
    if old_shown := old(shown):
        methods = ", ".join(sorted({r.method for r in old_shown}))
        notes.append(f"{len(old_shown)} run(s) shown ({methods}) were recorded by an older peftbench (run-id version "
                     f"< {IDENTITY_VERSION}), whose decoder scored prompt, prefix and P-tuning wrongly; re-run their "
                     f"config to recompute them")
    if hidden := len(old(all_records)) - len(old_shown):
        notes.append(f"{hidden} run(s) in this store were recorded by an older peftbench (run-id version "
                     f"< {IDENTITY_VERSION}) and are not shown; their scores are not comparable with these")
    return notes


def measurement_notes(shown: list[RunRecord]) -> list[str]:
    """Say so when one method's runs had their training memory measured in different ways (a grid
    resumed across a change of the measurement, or across devices): PSCP's M_m averages them."""
    sources: dict[str, set[str]] = {}
    for r in shown:
        if r.status == "done" and r.costs and r.costs.get("peak_train_mem_source"):
            sources.setdefault(r.method, set()).add(str(r.costs["peak_train_mem_source"]).split(";")[0])
    return [f"{method}: its runs' training memory was measured in {len(ways)} ways ({', '.join(sorted(ways))}); "
            f"PSCP's M_m averages them" for method, ways in sorted(sources.items()) if len(ways) > 1]


def task_categories(records: list[RunRecord]) -> dict[str, str]:
    """Each task's category, as its runs recorded it (user tasks included, no registry needed)."""
    categories = {}
    for r in records:
        task = (r.config or {}).get("task")
        categories[r.task] = (task.get("category") if isinstance(task, dict) else None) or "other"
    return categories


def tpv_metric(cfg: BenchConfig | None) -> str:
    """The metric a store's TPV study is reported in: its config's, else accuracy (the paper's)."""
    return cfg.tpv.metric if cfg is not None and cfg.tpv is not None else "accuracy"


def build_report(out_dir: Path, *, reference: str | None = None) -> Report:
    store = Store.open(out_dir)
    cfg = current_config(store.out_dir)
    everything = store.records()
    study_ids = set(store.plan(TPV_PLAN) or [])
    records, other = current_records([r for r in everything if r.run_id not in study_ids], store.plan())
    metric = tpv_metric(cfg)
    study = tpv_summary([r for r in everything if r.run_id in study_ids], store.out_dir, metric) if study_ids else None
    summary = aggregate(records, cfg.pscp if cfg else PSCPConfig(), task_categories(records),
                        [t.name for t in cfg.tasks] if cfg else ())
    if reference:
        summary = with_reference(summary, reference)
    return Report(store, records, other, summary, title=f"peftbench — {cfg.name if cfg else store.out_dir.name}",
                  notes=version_notes(records, everything) + measurement_notes(records), tpv=study,
                  strategies=strategy_rows(records) if any(strategy_of(r) != "default" for r in records) else [])


def _predictions(store: Store, records: list[RunRecord], limit: int) -> dict[str, list[dict]]:
    sample = {}
    for r in records:
        path = store.predictions_path(r.run_id)
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                sample[r.run_id] = [json.loads(line) for _, line in zip(range(limit), fh, strict=False)]
    return sample


def report_markdown(report: Report) -> str:
    """The leaderboard's markdown, with the TPV section when the store has a study (alone when the
    config ran only a study)."""
    from peftbench.report import stability, tpv

    main = markdown(report.summary, report.notes) if report.summary.methods or report.tpv is None else ""
    main += stability.markdown(report.strategies) if report.strategies else ""
    return main + (tpv.markdown(report.tpv) if report.tpv is not None else "")


def report_json(report: Report) -> str:
    from peftbench.report import stability

    data = json.loads(summary_json(report.summary))
    if report.strategies:
        data["stability_by_strategy"] = stability.to_json(report.strategies)
    if report.tpv is not None:
        data["tpv"] = report.tpv.to_json()
    return dumps_json(data, indent=2)


def report_latex(report: Report) -> str:
    from peftbench.report import stability, tpv

    main = latex(report.summary) if report.summary.methods or report.tpv is None else ""
    main += stability.latex(report.strategies) if report.strategies else ""
    return main + (tpv.latex(report.tpv) if report.tpv is not None else "")


DIGEST_FILE = ".report-digest"


def report_digest(report: Report) -> str:
    """What the report files are made from: the config, the plan, every stored run's id, status and
    attempts, and this peftbench — the files are rewritten when it changes."""
    from peftbench import __version__

    config = report.store.out_dir / CONFIG_FILE
    parts = [__version__, config.read_text() if config.is_file() else "", *(report.store.plan() or []),
             *sorted(f"{r.run_id}:{r.status}:{r.attempts}" for r in report.store.records())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def write_report_if_changed(report: Report) -> bool:
    """`write_report`, unless the files there were made from exactly this (`report_digest`)."""
    digest_file = report.store.out_dir / DIGEST_FILE
    digest = report_digest(report)
    fresh = (report.store.out_dir / "leaderboard.html").is_file() and digest_file.is_file() \
        and digest_file.read_text() == digest
    if not fresh:
        write_report(report)
        atomic_write_text(digest_file, digest)
    return not fresh


def write_report(report: Report) -> list[Path]:
    """leaderboard.md/.html, results.csv (one row per run), summary.json, tables.tex and plots/ beside the store."""
    from peftbench.report import stability, tpv
    from peftbench.report.html import PREDICTION_SAMPLE, render_html
    from peftbench.report.plots import write_plots

    out = report.store.out_dir
    texts = {
        out / "leaderboard.md": report_markdown(report),
        out / "results.csv": runs_csv(report.records),
        out / "summary.json": report_json(report),
        out / "tables.tex": report_latex(report),
    }
    for path, text in texts.items():
        atomic_write_text(path, text)
    plots = write_plots(report.summary, out / "plots")
    tpv_plots = tpv.write_plots(report.tpv, out / "plots") if report.tpv is not None else {}
    strategy_plot = stability.write_plot(report.strategies, out / "plots")
    predictions = _predictions(report.store, report.records, PREDICTION_SAMPLE)
    extra = (stability.html(report.strategies, strategy_plot) if report.strategies else "") + \
        (tpv.html(report.tpv, tpv_plots) if report.tpv is not None else "")
    html = render_html(report.summary, report.records, plots, predictions, title=report.title, notes=report.notes,
                       extra=extra)
    atomic_write_text(out / "leaderboard.html", html)
    pngs = [*tpv_plots.values(), *([strategy_plot] if strategy_plot else [])]
    return [*texts, *(p for paths in plots.values() for p in paths),
            *(p for png in pngs for p in (png, png.with_suffix(".svg"))), out / "leaderboard.html"]
