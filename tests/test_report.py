"""Aggregation on a hand-built store: means, sample sds, P_avg, PSCP, ranks, missing cells."""

from __future__ import annotations

import statistics

import pytest
import yaml

from peftbench.config import PSCPConfig
from peftbench.pscp import pscp
from peftbench.report import build_summary, current_records
from peftbench.report.aggregate import aggregate
from peftbench.store import Store

COSTS = {"lora": (1000, 0.0, 2.0), "bitfit": (100, 0.0, 1.0)}


def add(store: Store, run_id: str, method: str, task: str, seed: int, status: str, score: float | None) -> None:
    store.register([(run_id, method, task, seed, {})])
    store.claim(run_id)
    params, tflops, mem = COSTS[method]
    metrics = {"score": score, "invalid_rate": 0.1} if score is not None else None
    costs = {"trainable_params": params, "extra_tflops": tflops, "peak_train_mem_gb": mem}
    store.finish(run_id, status, metrics=metrics, costs=costs if metrics else None, error=None)


@pytest.fixture
def store(tmp_path):
    s = Store.create(tmp_path)
    for i, (m, t, seed, score) in enumerate([
        ("lora", "a", 0, 80.0), ("lora", "a", 1, 90.0), ("lora", "a", 2, 70.0),
        ("lora", "b", 0, 50.0), ("lora", "b", 1, 60.0),
        ("bitfit", "a", 0, 95.0), ("bitfit", "a", 1, 85.0),
    ]):
        add(s, f"r{i}", m, t, seed, "done", score)
    add(s, "r9", "bitfit", "b", 0, "failed", None)
    return s


def test_cells_and_method_summaries(store):
    summary = aggregate(store.records())
    cell = {(c.method, c.task): c for c in summary.cells}
    assert cell["lora", "a"].score_mean == 80.0
    assert cell["lora", "a"].score_sd == pytest.approx(10.0)  # ddof = 1
    assert cell["lora", "b"].score_sd == pytest.approx(statistics.stdev([50.0, 60.0]))
    assert cell["bitfit", "b"].score_mean is None and cell["bitfit", "b"].n_not_done == 1
    by = {s.method: s for s in summary.summaries}
    assert by["lora"].p_avg == pytest.approx((80 + 55) / 2)
    assert by["lora"].pscp == pytest.approx(pscp(67.5, 1000, 0.0, 2.0, PSCPConfig()))
    assert by["lora"].rank == 1
    # bitfit failed on task b: no P_avg over the tasks that happened to finish, no rank
    assert by["bitfit"].p_avg is None and by["bitfit"].pscp is None and by["bitfit"].rank is None


def test_report_shows_only_the_current_configs_runs(tmp_path):
    from peftbench.config import validate_config
    from peftbench.plan import plan_runs

    data = {"methods": ["lora"], "tasks": ["qs_arith"], "seeds": [0], "pscp": {"beta_p": 1.0}}
    cfg = validate_config(data)
    (run,) = plan_runs(cfg)
    store = Store.create(tmp_path)
    add(store, run.run_id, "lora", "qs_arith", 0, "done", 40.0)
    add(store, "stale-run-of-an-older-config", "lora", "qs_arith", 0, "done", 90.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    records, other = current_records(store)
    assert [r.run_id for r in records] == [run.run_id] and other == 1
    summary = build_summary(store, records)
    assert summary.summaries[0].p_avg == 40.0
    assert summary.summaries[0].pscp == pytest.approx(pscp(40.0, 1000, 0.0, 2.0, PSCPConfig(beta_p=1.0)))
