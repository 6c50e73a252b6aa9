"""Reports over a results directory: aggregation (pure) and its renderings."""

from __future__ import annotations

from pathlib import Path

import yaml

from peftbench.config import BenchConfig, PSCPConfig, validate_config
from peftbench.plan import plan_runs
from peftbench.report.aggregate import Summary, aggregate
from peftbench.report.tables import markdown, rich_tables, runs_csv, summary_json
from peftbench.store import RunRecord, Store
from peftbench.utils import atomic_write_text

__all__ = ["CONFIG_FILE", "build_summary", "current_records", "write_artifacts", "rich_tables", "markdown",
           "runs_csv", "summary_json"]
CONFIG_FILE = "config.yaml"


def current_config(out_dir: Path) -> BenchConfig | None:
    """The config of the last `run` into this directory (written there by `run`)."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return validate_config(yaml.safe_load(path.read_text()) or {}, source=str(path))


def current_records(store: Store) -> tuple[list[RunRecord], int]:
    """The runs of the directory's current config, and how many other runs the store holds.

    Runs of an earlier config (say, other epochs) stay in the store; averaging them in would
    count them as extra seeds, so reports show only the current plan's runs.
    """
    records = store.records()
    cfg = current_config(store.out_dir)
    if cfg is None:
        return records, 0
    ids = {r.run_id for r in plan_runs(cfg)}
    kept = [r for r in records if r.run_id in ids]
    return kept, len(records) - len(kept)


def build_summary(store: Store, records: list[RunRecord]) -> Summary:
    cfg = current_config(store.out_dir)
    constants = cfg.pscp if cfg else PSCPConfig()
    return aggregate(records, constants)


def write_artifacts(store: Store, summary: Summary, records: list[RunRecord]) -> list[Path]:
    """leaderboard.md, results.csv (one row per run) and summary.json beside the store."""
    out = store.out_dir
    files = {
        out / "leaderboard.md": markdown(summary),
        out / "results.csv": runs_csv(records),
        out / "summary.json": summary_json(summary),
    }
    for path, text in files.items():
        atomic_write_text(path, text)
    return list(files)
