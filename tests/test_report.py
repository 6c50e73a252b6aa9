"""Aggregation and reports on hand-built stores, against hand-computed values."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml
from conftest import hand_store, run_cli

from peftbench.config import PSCPConfig
from peftbench.pscp import pscp
from peftbench.report import build_report, current_records
from peftbench.report.aggregate import PAPER_REFERENCE, aggregate, fmt, pscp_sensitivity, with_reference
from peftbench.report.compare import compare
from peftbench.report.plots import pareto_front
from peftbench.report.tables import latex, latex_escape, markdown, runs_csv, summary_json

COSTS = {"lora": (1000, 0.0, 2.0), "bitfit": (100, 0.0, 1.0)}
ROWS = [("lora", "a", 0, "done", 80.0), ("lora", "a", 1, "done", 90.0), ("lora", "a", 2, "done", 70.0),
        ("lora", "b", 0, "done", 50.0), ("lora", "b", 1, "done", 60.0),
        ("bitfit", "a", 0, "done", 95.0), ("bitfit", "a", 1, "done", 85.0), ("bitfit", "b", 0, "failed", None)]
T_975 = {2: 4.302652730}  # Student t quantile, df 2


@pytest.fixture
def store(tmp_path):
    return hand_store(tmp_path, ROWS, COSTS)


def test_cells_and_method_summaries(store):
    summary = aggregate(store.records(), categories={"a": "glue", "b": "superglue"})
    a, b = summary.cell("lora", "a"), summary.cell("lora", "b")
    assert (a.score_mean, a.score_sd, a.n_seeds) == (80.0, pytest.approx(10.0), 3)
    assert a.ci95 == pytest.approx(T_975[2] * 10.0 / math.sqrt(3))
    assert b.score_sd == pytest.approx(statistics.stdev([50.0, 60.0]))
    assert b.ci95 is None and b.ci_range() is None  # 2 seeds: t = 12.7 would give ± 64, no CI at all
    # 80 ± 24.84 reaches past 100: clipped there, and marked
    assert a.ci_range() == (pytest.approx(80 - T_975[2] * 10 / math.sqrt(3)), 100.0, True)
    failed = summary.cell("bitfit", "b")
    assert failed.score_mean is None and failed.n_not_done == 1
    by = {s.method: s for s in summary.summaries}
    assert by["lora"].p_avg == pytest.approx((80 + 55) / 2)
    assert by["lora"].p_by_category == {"glue": 80.0, "superglue": 55.0}
    assert by["lora"].pscp == pytest.approx(pscp(67.5, 1000, 0.0, 2.0, PSCPConfig()))
    assert by["lora"].rank == 1 and by["lora"].mean_rank == 1.0
    # bitfit failed on task b: no P_avg over the tasks that happened to finish, no rank
    assert by["bitfit"].p_avg is None and by["bitfit"].pscp is None and by["bitfit"].rank is None
    assert by["bitfit"].p_by_category == {"glue": 90.0, "superglue": None}


def test_pscp_averages_each_cost_over_the_methods_finished_runs(tmp_path):
    """M_p, M_f and M_m are means over a method's finished runs, each run's extra FLOPs counted from
    0 (no method earns a bonus for a negative count); a failed run's costs do not count."""
    rows = [("m", "a", 0, "done", 70.0), ("m", "a", 1, "done", 90.0), ("m", "b", 0, "done", 50.0),
            ("m", "b", 1, "failed", None)]
    costs = {("m", "a", 0): (1000, 0.3, 1.0), ("m", "a", 1): (2000, -0.1, 3.0), ("m", "b", 0): (6000, 0.0, 5.0)}
    (summary,) = aggregate(hand_store(tmp_path, rows, costs).records()).summaries
    assert (summary.trainable_params, summary.extra_tflops, summary.peak_mem_gb) == (
        pytest.approx(3000), pytest.approx(0.1), pytest.approx(3.0))
    assert summary.p_avg == pytest.approx((80 + 50) / 2)
    assert summary.pscp == pytest.approx(pscp(65.0, 3000, 0.1, 3.0, PSCPConfig()))


def test_a_method_whose_memory_was_measured_two_ways_is_noted(tmp_path):
    from peftbench.report import measurement_notes

    rows = [("m", "a", 0, "done", 70.0), ("m", "a", 1, "done", 90.0), ("n", "a", 0, "done", 50.0)]
    records = hand_store(tmp_path, rows).records()
    protocol = "; fixed protocol: AdamW, batch 4 x 512 tokens, 3 steps"
    for r, source in zip(records, ("cpu_rss_hwm_delta+weights", "cpu_live_tensor_peak+weights",
                                   "cpu_live_tensor_peak+weights"), strict=True):
        r.costs["peak_train_mem_source"] = source + protocol
    assert measurement_notes(records) == [
        "m: its runs' training memory was measured in 2 ways (cpu_live_tensor_peak+weights, "
        "cpu_rss_hwm_delta+weights); PSCP's M_m averages them"]
    assert measurement_notes(records[1:]) == []


def test_mean_rank_with_ties(tmp_path):
    rows = [(m, t, 0, "done", s) for m, t, s in [("x", "a", 90), ("y", "a", 80), ("z", "a", 80),
                                                 ("x", "b", 10), ("y", "b", 30), ("z", "b", 20)]]
    summary = aggregate(hand_store(tmp_path, rows).records())
    ranks = {s.method: s.mean_rank for s in summary.summaries}
    assert ranks == {"x": (1 + 3) / 2, "y": (2.5 + 1) / 2, "z": (2.5 + 2) / 2}


def test_pscp_sensitivity_marks_where_the_ranking_changes(tmp_path):
    # X: better but 1e8 parameters; Y: worse but free. Only β_p = 0.5 puts X first.
    rows = [("X", "a", 0, "done", 80.0), ("Y", "a", 0, "done", 70.0)]
    summary = aggregate(hand_store(tmp_path, rows, {"X": (1e8, 0.0, 0.0), "Y": (0, 0.0, 0.0)}).records())
    sensitivity = {r.betas: r for r in pscp_sensitivity(summary)}
    assert sensitivity[(0.5, 1.0, 1.0)].ranking == ["X", "Y"] and sensitivity[(0.5, 1.0, 1.0)].changed
    assert [b for b, r in sensitivity.items() if r.changed] == [(0.5, 1.0, 1.0)]
    assert sensitivity[(1.0, 1.0, 1.0)].pscp["X"] == pytest.approx(80 / 1.2)
    assert sensitivity[(2.0, 2.0, 2.0)].pscp["X"] == pytest.approx(80 / 1.2**2)


def test_paper_reference_rows(store):
    summary = with_reference(aggregate(store.records()), "peftbench-paper")
    refs = {s.method: s for s in summary.summaries if s.reference}
    assert len(refs) == 7 and all(s.rank is None for s in refs.values())
    assert refs["ln_tuning [peftbench-paper]"].pscp == pytest.approx(46.57, abs=0.005)
    beta1 = summary.constants.model_copy(update={"beta_p": 1, "beta_f": 1, "beta_m": 1})
    for method, (p, mp, mf, mm) in PAPER_REFERENCE.items():
        assert pscp(p, mp, mf, mm, beta1) == pytest.approx(
            {"ln_tuning": 60.19, "lora": 60.08, "bitfit": 58.38, "ia3": 55.62, "prefix_tuning": 33.18,
             "prompt_tuning": 29.49, "p_tuning": 29.26}[method], abs=0.005)


def test_compare_flags_differences_beyond_seed_noise(tmp_path):
    def summary(name, values):
        rows = [("m", "t", seed, "done", v) for seed, v in enumerate(values)]
        return aggregate(hand_store(tmp_path / name, rows).records())

    a, b, c = summary("a", [80, 82, 78]), summary("b", [81, 83, 77]), summary("c", [99, 100, 101])
    d = summary("d", [99])
    (same,) = compare(a, b)
    assert same.diff == pytest.approx(1 / 3) and same.exceeds_noise is False
    (far,) = compare(a, c)  # +20 with seed sds of 2 and 1: t ≈ 15.5 on ~3 df
    assert far.diff == pytest.approx(20.0) and far.exceeds_noise is True and far.p_value < 0.01
    (single,) = compare(a, d)
    assert single.exceeds_noise is None and single.p_value is None
    noisy = summary("noisy", [80, 90, 70])  # the same +20 within seed noise of sd 10: not beyond it
    assert compare(noisy, c)[0].exceeds_noise is False
    # the p-values are Welch's test on the raw seed scores, as scipy computes it from them
    from scipy import stats

    for x, y, got in [([80, 82, 78], [81, 83, 77], same), ([80, 82, 78], [99, 100, 101], far),
                      ([80, 90, 70], [99, 100, 101], compare(noisy, c)[0])]:
        assert got.p_value == pytest.approx(stats.ttest_ind(y, x, equal_var=False).pvalue, rel=1e-12)
    # no spread on either side (deterministic runs, e.g. zero-shot): a difference is real, none is not
    fixed, other = summary("fixed", [80, 80]), summary("other", [81, 81])
    assert (compare(fixed, other)[0].p_value, compare(fixed, other)[0].exceeds_noise) == (0.0, True)
    assert (compare(fixed, fixed)[0].p_value, compare(fixed, fixed)[0].exceeds_noise) == (1.0, False)


def test_compare_adjusts_for_many_cells_and_says_what_it_leaves_out(tmp_path):
    """Holm–Bonferroni over the tested cells, by hand; equal deterministic means that differ in the
    last bit are equal; methods, tasks and metrics not shared and failed runs are noted."""
    from peftbench.report.compare import holm, notes

    # p = 0.01, 0.04, 0.03, None, 0.2 → sorted 0.01×4, 0.03×3, 0.04×2, 0.2×1, kept monotone
    assert holm([0.01, 0.04, 0.03, None, 0.2]) == pytest.approx([0.04, 0.09, 0.09, None, 0.2])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []

    def summary(name, rows):
        return aggregate(hand_store(tmp_path / name, rows).records())

    score = 100 * 7 / 9  # the mean of seven copies is not the value to the last bit
    fixed_a = summary("fa", [("m", "t", seed, "done", score) for seed in range(7)])
    fixed_b = summary("fb", [("m", "t", seed, "done", score) for seed in range(2)])
    (same,) = compare(fixed_a, fixed_b)
    assert (same.p_value, same.exceeds_noise) == (1.0, False)
    a = summary("a", [("m", "t", 0, "done", 80), ("m", "t", 1, "done", 82), ("m", "t", 2, "failed", None),
                      ("m", "u", 0, "done", 50), ("only_a", "t", 0, "done", 1)])
    b = summary("b", [("m", "t", 0, "done", 90), ("m", "t", 1, "done", 91), ("m", "v", 0, "done", 3)])
    (row,) = compare(a, b)
    assert (row.n_a, row.not_done_a, row.n_b) == (2, 1, 2)
    said = notes(a, b, {"training": {"epochs": 3}, "methods": [{"name": "m", "learning_rate": 1}]},
                 {"training": {"epochs": 5}, "methods": [{"name": "m", "learning_rate": 2}]})
    assert said == ["methods only in A, not compared: only_a", "tasks only in A, not compared: u",
                    "tasks only in B, not compared: v",
                    "cells with runs not done, compared over their done seeds: m/t (A)",
                    "the two configs differ in training.epochs, methods[m]: the runs were not made alike"]
    b.primary_metrics["t"] = "accuracy"  # another metric: not subtracted
    assert compare(a, b)[0].diff is None and any("primary metric" in n for n in notes(a, b))


def test_numbers_are_rounded_as_a_reader_rounds_the_stored_value():
    """Halves away from zero on the printed digits, the same on every surface (the heatmap printed a
    52.5 cell mean as 52, half to even, and an f-string prints 61.415 as 61.41, the binary float)."""
    cases = [(61.415, 2, "61.42"), (52.5, 0, "53"), (2.5, 0, "3"), (0.125, 2, "0.13"), (-52.5, 0, "-53"),
             (70.547, 0, "71"), (0.1 + 0.2, 1, "0.3"), (1.0, 3, "1.000"), (100, 1, "100.0"), (-0.04, 1, "0.0"),
             (-0.3, 0, "0"), (None, 1, "—"),
             (float("nan"), 2, "—")]
    assert [fmt(value, digits) for value, digits, _ in cases] == [text for _, _, text in cases]


def test_pareto_front_against_every_pair():
    """The quality-vs-cost plot's front, against the definition checked pair by pair, on small
    integer grids where equal costs, equal qualities and identical methods are common (two methods
    with the same cost and quality were once drawn one on and one off the front)."""
    import random

    rng = random.Random(0)
    for _ in range(3000):
        points = [(float(rng.randint(0, 3)), float(rng.randint(0, 3)), f"m{i}") for i in range(rng.randint(1, 7))]
        undominated = {name for cost, quality, name in points
                       if not any(c <= cost and q >= quality and (c, q) != (cost, quality) for c, q, _ in points)}
        assert {name for _, _, name in pareto_front(points)} == undominated, points


def test_latex_and_markdown(store):
    summary = aggregate(store.records())
    assert latex_escape("p_tuning & 50% <x>") == r"p\_tuning \& 50\% \textless{}x\textgreater{}"
    tex = latex(summary)
    assert "\\toprule" in tex and "80.0 $\\pm$ 10.0" in tex and "\\bottomrule" in tex
    header = " & ".join(latex_escape(f"{t} ({summary.primary_metrics[t]})") for t in summary.tasks)
    assert f"Method & {header} & $P_{{avg}}$" in tex  # scores of different metrics are not alike: named
    md = markdown(summary)
    assert "| lora | 80.0 ± 10.0 | 55.0 ± 7.1 |" in md and "failed" in md and "PSCP sensitivity" in md
    for s in summary.summaries:  # memory and PSCP with the same digits in both (LaTeX had memory to 2)
        memory, score = fmt(s.peak_mem_gb, 3), fmt(s.pscp, 2)
        assert f"& {memory} & {score} \\\\" in tex and f"| {memory} | {score} |" in md, s.method


def test_report_shows_only_the_current_configs_runs(tmp_path):
    from peftbench.config import validate_config
    from peftbench.plan import plan_runs

    cfg = validate_config({"methods": ["lora"], "tasks": ["qs_arith"], "seeds": [0], "pscp": {"beta_p": 1.0}})
    (run,) = plan_runs(cfg)
    store = hand_store(tmp_path, [("lora", "qs_arith", 0, "done", 40.0), ("lora", "qs_arith", 0, "done", 90.0)])
    with store._connect() as db:  # give the first row the current plan's id; the second is an older config's
        db.execute("UPDATE runs SET run_id = ? WHERE run_id = 'run000'", (run.run_id,))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    store.set_plan([run.run_id])  # what a grid records
    records, other = current_records(store.records(), store.plan())
    assert [r.run_id for r in records] == [run.run_id] and other == 1
    report = build_report(tmp_path)
    assert report.summary.summaries[0].p_avg == 40.0
    assert report.summary.summaries[0].pscp == pytest.approx(pscp(40.0, 1000, 0.0, 1.0, PSCPConfig(beta_p=1.0)))
    assert report.notes == []


def test_a_store_mixing_run_id_versions_says_so(tmp_path):
    """Runs recorded before the decoder fix (run-id version 2) are flagged wherever they are counted."""
    from peftbench.plan import IDENTITY_VERSION

    store = hand_store(tmp_path, [("lora", "qs_arith", 0, "done", 40.0), ("prompt_tuning", "qs_arith", 0, "done", 9.0)])
    with store._connect() as db:
        db.execute("UPDATE runs SET config = ? WHERE run_id = 'run001'", (json.dumps({"version": 2}),))
        db.execute("UPDATE runs SET config = ? WHERE run_id = 'run000'", (json.dumps({"version": IDENTITY_VERSION}),))
    (note,) = build_report(tmp_path).notes  # no config.yaml: every run is shown, the old one flagged
    assert note.startswith("1 run(s) shown (prompt_tuning) were recorded by an older peftbench")
    result = run_cli("report", "--out", str(tmp_path), "--format", "md")
    assert f"note: {note}\n" in result.stderr
    assert f"> **Note:** {note}" in result.stdout and note in (tmp_path / "leaderboard.md").read_text()
    assert "Note:</strong> 1 run(s) shown" in (tmp_path / "leaderboard.html").read_text()


def test_the_leaderboard_shows_each_methods_invalid_output_rate(tmp_path):
    store = hand_store(tmp_path, [("lora", "a", 0, "done", 40.0), ("lora", "b", 0, "done", 60.0)])
    with store._connect() as db:
        db.execute("""UPDATE runs SET metrics = json_set(metrics, '$.invalid_rate', 0.25) WHERE run_id = 'run001'""")
    summary = build_report(tmp_path).summary
    assert summary.summaries[0].invalid_rate == pytest.approx(0.125)  # mean of the cells: 0 and 0.25
    md = markdown(summary)
    assert "| rank | method | P_avg | invalid % |" in md and "| 1 | lora | 50.0 | 12.5 |" in md


def test_every_metric_a_run_reports_reaches_the_csv_json_and_markdown(tmp_path):
    """No column list to edit: a metric nobody listed (here `my_metric`) is in every artefact."""
    import csv
    import io

    store = hand_store(tmp_path, [("lora", "a", 0, "done", 40.0), ("lora", "a", 1, "done", 60.0)])
    with store._connect() as db:
        db.execute("UPDATE runs SET metrics = json_set(metrics, '$.my_metric', 10.0) WHERE run_id = 'run000'")
        db.execute("UPDATE runs SET metrics = json_set(metrics, '$.my_metric', 20.0) WHERE run_id = 'run001'")
    report = build_report(tmp_path)
    rows = list(csv.DictReader(io.StringIO(runs_csv(report.records))))
    assert [r["my_metric"] for r in rows] == ["10.0", "20.0"]
    (cell,) = json.loads(summary_json(report.summary))["cells"]
    assert cell["metrics"] == {"my_metric": 15.0}
    assert "| lora | a | my_metric 15.0 |" in markdown(report.summary)


def test_average_ranks_are_scipys_rankdata():
    """Our ranks (1 = smallest, ties share their mean rank) against scipy's, on lists full of ties."""
    import random

    from scipy.stats import rankdata

    from peftbench.report.aggregate import average_ranks

    rng = random.Random(0)
    for _ in range(300):
        values = [float(rng.randint(0, 4)) for _ in range(rng.randint(1, 9))]
        assert average_ranks(values) == [float(r) for r in rankdata(values)], values
    assert average_ranks([-90.0, -80.0, -90.0]) == [1.5, 3.0, 1.5]


def test_the_report_command_imports_no_model_library(store):
    """`peftbench report` reads a store and draws: importing torch (through a helper module) made it
    take 5.8 s instead of 3 s here. The report writes everything and loads none of these (scipy
    it may: the confidence intervals of this store's 3 seeds use its t quantiles)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom peftbench.cli import main\nsys.argv = ['peftbench', 'report', '--out', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'torch', 'transformers', 'peft', 'datasets', 'accelerate', 'sklearn'}))")
    result = subprocess.run([sys.executable, "-c", probe, str(store.out_dir)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"
    assert (store.out_dir / "leaderboard.html").is_file() and (store.out_dir / "plots" / "heatmap.svg").is_file()
