"""PSCP reproduces the paper's table for β = 1 and β = 2, as a function and through the CLI; it refuses a
score outside 0–100, never rises with a cost, and the report's P is never negative."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftbench.config import PSCPConfig
from peftbench.pscp import pscp

PAPER = [  # method, P, M_p, M_f, M_m, PSCP β=1, PSCP β=2
    ("ln_tuning", 77.8, 266_240, 0, 27.43, 60.19, 46.57),
    ("lora", 80.1, 14_680_064, 0, 27.75, 60.08, 45.06),
    ("bitfit", 75.3, 163_840, 0, 27.20, 58.38, 45.26),
    ("ia3", 74.7, 196_608, 0.31, 28.41, 55.62, 41.41),
    ("prefix_tuning", 45.9, 34_177_536, 0.01, 27.61, 33.18, 23.98),
    ("prompt_tuning", 50.0, 409_600, 1.67, 42.47, 29.49, 17.39),
    ("p_tuning", 51.7, 53_130_752, 1.68, 34.53, 29.26, 16.56),
]


@pytest.mark.parametrize("row", PAPER, ids=[r[0] for r in PAPER])
def test_paper_table(row):
    _, p, mp, mf, mm, beta1, beta2 = row
    assert pscp(p, mp, mf, mm, PSCPConfig(beta_p=1, beta_f=1, beta_m=1)) == pytest.approx(beta1, abs=0.005)
    assert pscp(p, mp, mf, mm) == pytest.approx(beta2, abs=0.005)


def test_cli_reproduces_the_table():
    for _, p, mp, mf, mm, beta1, beta2 in PAPER:
        for beta, expected in ((1, beta1), (2, beta2)):
            out = subprocess.run(
                [sys.executable, "-m", "peftbench.cli", "pscp", "--score", str(p), "--params", str(mp),
                 "--tflops", str(mf), "--mem-gb", str(mm), "--beta", str(beta)],
                capture_output=True, text=True, check=True,
            )
            assert out.stdout.strip() == f"{expected:.2f}"


def test_costs_reduce_the_score_monotonically():
    assert pscp(80, 0, 0, 0) == 80
    assert pscp(80, 1e9, 0, 0) < pscp(80, 1e8, 0, 0) < 80
    with pytest.raises(ValueError):
        pscp(80, -1, 0, 0)


def test_a_golden_value_by_hand():
    # each cost equal to its constant halves the score once per unit of β: 60 · 2⁻¹ · 2⁻¹ · 2⁻¹ = 7.5
    assert pscp(60.0, 5e8, 10.0, 94.0, PSCPConfig(beta_p=1, beta_f=1, beta_m=1)) == 7.5
    # β = 2 (the default): 60 · 4⁻³ = 0.9375; mixed: 80 · 1.2⁻² · 1.5⁻¹ · 1.5⁻⁰·⁵ = 80 / (1.44 · 1.5 · √1.5)
    assert pscp(60.0, 5e8, 10.0, 94.0) == 0.9375
    assert pscp(80.0, 1e8, 5.0, 47.0, PSCPConfig(beta_p=2, beta_f=1, beta_m=0.5)) == pytest.approx(
        80 / (1.44 * 1.5 * 1.5**0.5), rel=1e-12)
    assert pscp(80.0, 1e8, 5.0, 47.0, PSCPConfig(beta_p=2, beta_f=1, beta_m=0.5)) == pytest.approx(30.2406, abs=5e-5)


@pytest.mark.parametrize("score", [-0.1, 100.5, 120.0, float("nan"), float("inf"), -float("inf")])
def test_a_score_outside_0_to_100_is_refused(score):
    with pytest.raises(ValueError, match="0–100"):
        pscp(score, 0, 0, 0)


@pytest.mark.parametrize("costs", [(-1, 0, 0), (0, -0.5, 0), (0, 0, -2), (float("nan"), 0, 0)])
def test_a_negative_or_nan_cost_is_refused(costs):
    with pytest.raises(ValueError, match="non-negative"):
        pscp(50.0, *costs)


def test_cli_refuses_a_score_outside_0_to_100():
    out = subprocess.run([sys.executable, "-m", "peftbench.cli", "pscp", "--score", "120", "--params", "0",
                          "--tflops", "0", "--mem-gb", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: PSCP needs a score P in 0–100, got 120.0") and "Traceback" not in out.stderr


scores = st.floats(min_value=0, max_value=100)
costs = st.floats(min_value=0, max_value=1e15)
constants = st.builds(PSCPConfig, c_p=st.floats(1e-3, 1e12), c_f=st.floats(1e-3, 1e6), c_m=st.floats(1e-3, 1e6),
                      beta_p=st.floats(0, 5), beta_f=st.floats(0, 5), beta_m=st.floats(0, 5))


@settings(max_examples=3000, deadline=None)
@given(score=scores, cost=st.tuples(costs, costs, costs), more=costs, which=st.integers(0, 2), k=constants)
def test_pscp_never_rises_with_a_cost(score, cost, more, which, k):
    """For any P in 0–100, any non-negative costs and constants: raising one cost never raises PSCP,
    and PSCP stays in 0–P."""
    higher = list(cost)
    higher[which] += more
    before, after = pscp(score, *cost, k), pscp(score, *higher, k)
    assert 0 <= after <= before <= score


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.floats(-100, 100), min_size=1, max_size=3), min_size=1, max_size=6))
def test_the_aggregated_p_is_never_negative(task_scores):
    """Any metric values in −100–100 (correlations go below 0), any number of tasks and seeds: P is
    the mean of each task's seed mean floored at 0, never negative, and PSCP accepts it."""
    from peftbench.report.aggregate import aggregate
    from peftbench.store import RunRecord

    records = [RunRecord(f"r{t}-{s}", "m", f"task{t}", s, "done", {}, {"score": v, "invalid_rate": 1.0},
                         {"trainable_params": 1e6, "extra_tflops": 0.0, "peak_train_mem_gb": 1.0}, None, None, None,
                         None, 1) for t, seeds in enumerate(task_scores) for s, v in enumerate(seeds)]
    (summary,) = aggregate(records).summaries
    expected = sum(max(sum(seeds) / len(seeds), 0.0) for seeds in task_scores) / len(task_scores)
    assert summary.p_avg >= 0 and summary.p_avg == pytest.approx(expected, abs=1e-9)
    assert 0 <= summary.pscp <= summary.p_avg
