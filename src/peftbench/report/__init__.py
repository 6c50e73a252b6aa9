"""Reports over a results directory: aggregation (pure) and its renderings."""

from __future__ import annotations

from pathlib import Path

import yaml

from peftbench.pscp import PSCPConstants
from peftbench.report.aggregate import Summary, aggregate
from peftbench.report.tables import markdown, rich_tables, runs_csv, summary_json
from peftbench.store import Store
from peftbench.utils import atomic_write_text

__all__ = ["build_summary", "write_artifacts", "rich_tables", "markdown", "runs_csv", "summary_json"]


def pscp_constants(out_dir: Path) -> PSCPConstants:
    """The PSCP constants of the config that produced the results (defaults if it is not there)."""
    path = Path(out_dir) / "config.yaml"
    if path.is_file():
        pscp = (yaml.safe_load(path.read_text()) or {}).get("pscp") or {}
        return PSCPConstants(**pscp)
    return PSCPConstants()


def build_summary(store: Store) -> Summary:
    return aggregate(store.records(), pscp_constants(store.out_dir))


def write_artifacts(store: Store, summary: Summary) -> list[Path]:
    """leaderboard.md, results.csv (one row per run) and summary.json beside the store."""
    out = store.out_dir
    files = {
        out / "leaderboard.md": markdown(summary),
        out / "results.csv": runs_csv(store.records()),
        out / "summary.json": summary_json(summary),
    }
    for path, text in files.items():
        atomic_write_text(path, text)
    return list(files)
