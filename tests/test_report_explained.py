"""Reports that explain themselves (issue 16, findings 3 and 4): every figure below is computed by hand
in the test, and each rendering (markdown, HTML, terminal) is checked for what it must say."""

from __future__ import annotations

import html
import io
import math
import os
import re
import statistics
import subprocess
import sys

import pytest
import yaml
from conftest import hand_store, run_cli
from rich.console import Console

from peftbench.pscp import pscp
from peftbench.report import build_report, write_report
from peftbench.report.aggregate import PAPER_REFERENCE, aggregate, task_order, with_reference
from peftbench.report.html import render_html
from peftbench.report.plots import (
    DPI,
    STYLE,
    _cost_bars,
    _heatmap,
    _quality_vs_costs,
    _reference,
    save_cropped,
    write_plots,
)
from peftbench.report.tables import ci_texts, flops_text, markdown, rich_tables

T_975_DF2 = 4.302652730  # Student t quantile 0.975, 2 degrees of freedom


def set_metric(store, run_id: str, key: str, value) -> None:
    with store._connect() as db:
        db.execute(f"UPDATE runs SET metrics = json_set(metrics, '$.{key}', ?) WHERE run_id = ?", (value, run_id))


def terminal(summary, width: int = 120) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(rich_tables(summary))
    return console.export_text()


def html_headers(page: str, table_id: str) -> list[str]:
    head = re.search(f'<table id="{table_id}"><thead><tr>(.*?)</tr></thead>', page).group(1)
    return re.findall(r"<th>(.*?)</th>", head)


def test_every_rendering_states_the_formula_its_constants_and_ps_rule(tmp_path):
    rows = [(m, t, 0, "done", s) for m, t, s in [("lora", "stsb", 60.0), ("lora", "sst2", 80.0),
                                                 ("bitfit", "stsb", 50.0), ("bitfit", "sst2", 70.0)]]
    hand_store(tmp_path, rows, {"lora": (1000, 0.0, 2.0), "bitfit": (100, 0.0, 1.0)})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"methods": ["lora", "bitfit"], "tasks": ["stsb", "sst2"],
                                                          "pscp": {"beta_p": 1, "beta_f": 1, "beta_m": 1, "c_m": 50}}))
    report = build_report(tmp_path)
    lora = next(s for s in report.summary.summaries if s.method == "lora")
    assert lora.pscp == pytest.approx(70.0 / (1 + 1000 / 5e8) / (1 + 2.0 / 50))  # the config's constants
    write_report(report)
    md, page = (tmp_path / "leaderboard.md").read_text(), (tmp_path / "leaderboard.html").read_text()
    text = terminal(report.summary, width=200)
    formula = "PSCP = P · (1 + M_p/C_p)^−β_p · (1 + M_f/C_f)^−β_f · (1 + M_m/C_m)^−β_m — higher is better."
    for rendering in (md, html.unescape(page), " ".join(text.split())):  # the terminal wraps the caption
        assert formula in rendering
        assert "C_p = 500,000,000 trainable parameters, C_f = 10 extra TFLOPs, C_m = 50 GB, β = 1." in rendering
        assert "the mean over tasks of each task's score floored at 0" in rendering
        assert "the same PSCP shares a rank" in rendering
    assert '<div id="pscp-formula"><p>PSCP = P' in page


def test_a_broken_task_cannot_cancel_another_nor_turn_cost_into_a_reward(tmp_path):
    """Issue 16: Pearson −87.3 on STS-B from all-invalid outputs made P negative, and then the method
    with the most parameters ranked first. Both methods here score the same; one costs 10⁹ parameters."""
    rows = [(m, t, 0, "done", s) for m in ("lean", "heavy") for t, s in (("stsb", -87.3), ("sst2", 10.0))]
    hand_store(tmp_path, rows, {"lean": (1000, 0.0, 1.0), "heavy": (1e9, 0.0, 1.0)})
    summary = build_report(tmp_path).summary
    by = {s.method: s for s in summary.summaries}
    assert by["lean"].p_avg == by["heavy"].p_avg == 5.0  # (max(−87.3, 0) + 10) / 2
    assert by["lean"].p_by_category == {"glue": 5.0}
    mem = (1 + 1 / 94) ** -2
    assert by["lean"].pscp == pytest.approx(5.0 * (1 + 1000 / 5e8) ** -2 * mem)
    assert by["heavy"].pscp == pytest.approx(5.0 * 3.0 ** -2 * mem)  # 1 + 10⁹ / (5·10⁸) = 3
    assert (by["lean"].rank, by["heavy"].rank) == (1, 2)
    with pytest.raises(ValueError, match="0–100"):  # the unfloored mean, −38.65, is refused outright
        pscp(statistics.fmean([-87.3, 10.0]), 1e9, 0.0, 1.0)
    assert summary.cell("lean", "stsb").score_mean == -87.3  # the score table keeps the metric as measured
    assert "| heavy | 10.0 | -87.3 |" in markdown(summary)


def test_the_same_pscp_shares_a_rank(tmp_path):
    rows = [(m, "a", 0, "done", s) for m, s in (("x", 80.0), ("y", 80.0), ("z", 70.0), ("w", 60.0))]
    summary = aggregate(hand_store(tmp_path, rows).records())
    assert {s.method: s.rank for s in summary.summaries} == {"x": 1, "y": 1, "z": 3, "w": 4}
    md = markdown(summary)
    assert "| 1 | x |" in md and "| 1 | y |" in md and "| 3 | z |" in md and "| 4 | w |" in md


def test_tasks_are_grouped_by_category_then_in_the_configs_order(tmp_path):
    categories = {"wsc": "superglue", "cola": "glue", "mine": "user", "gsm8k": "math", "sst2": "glue",
                  "mmlu": "other", "cb": "superglue", "apps": "code", "yours": "user2"}
    listed = ["sst2", "wsc", "cola", "cb", "yours", "mine"]
    assert task_order(list(categories), categories, listed) == [
        "sst2", "cola", "wsc", "cb", "mmlu", "gsm8k", "apps", "yours", "mine"]
    assert task_order(list(categories), categories) == [  # no config: the paper's categories, then by name
        "cola", "sst2", "cb", "wsc", "mmlu", "gsm8k", "apps", "mine", "yours"]

    rows = [("lora", t, 0, "done", 50.0) for t in ("wsc", "cola", "mmlu", "sst2", "cb")]
    hand_store(tmp_path, rows)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"methods": ["lora"],
                                                          "tasks": ["mmlu", "sst2", "wsc", "cb", "cola"]}))
    summary = build_report(tmp_path).summary
    assert summary.tasks == ["sst2", "cola", "wsc", "cb", "mmlu"]
    assert list(summary.categories.values()) == ["glue", "glue", "superglue", "superglue", "other"]
    md = markdown(summary)
    section = md.split("## Score by")[1].split("\n## ")[0]
    assert [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| ")] == [
        "task", "sst2", "cola", "wsc", "cb", "mmlu"]


def test_each_tasks_primary_metric_is_named(tmp_path):
    rows = [(m, t, 0, "done", 50.0) for m in ("lora", "bitfit") for t in ("stsb", "sst2", "cb")]
    store = hand_store(tmp_path, rows)
    for run_id, metric in (("run000", "pearson"), ("run002", "macro_f1"), ("run003", "pearson"),
                           ("run005", "macro_f1")):
        set_metric(store, run_id, "primary_metric", metric)
    report = build_report(tmp_path)
    summary = report.summary
    assert summary.primary_metrics == {"stsb": "pearson", "sst2": "f1", "cb": "macro_f1"}
    md = markdown(summary)  # 3 tasks > 2 methods: tasks are rows, with category and metric
    assert "| task | category | metric | bitfit | lora |" in md
    assert "| stsb | glue | pearson | 50.0 | 50.0 |" in md and "| cb | superglue | macro_f1 | 50.0 | 50.0 |" in md
    write_report(report)
    page = (tmp_path / "leaderboard.html").read_text()
    assert html_headers(page, "scores")[:3] == ["task", "category", "metric"]
    assert '<td class="label" data-sort="">pearson</td>' in page
    few = aggregate([r for r in store.records() if r.task == "stsb"])  # 1 task, 2 methods: methods are rows
    assert "| method | stsb (pearson) |" in markdown(few)
    assert "stsb (pearson)" in terminal(few)


def test_confidence_intervals_need_three_seeds_and_stay_in_the_scale(tmp_path):
    cells = {("m1", "a"): [80, 90, 70], ("m1", "b"): [50, 52, 48], ("m2", "a"): [0, 100, 0],
             ("m2", "b"): [-80, -90, -70], ("m3", "a"): [60, 70], ("m3", "b"): [55]}
    rows = [(m, t, seed, "done", float(v)) for (m, t), values in cells.items() for seed, v in enumerate(values)]
    summary = aggregate(hand_store(tmp_path, rows).records())

    def half(values):
        return T_975_DF2 * statistics.stdev(values) / math.sqrt(3)

    assert half([80, 90, 70]) == pytest.approx(24.84, abs=0.005)
    assert half([50, 52, 48]) == pytest.approx(4.968, abs=1e-3)
    assert half([0, 100, 0]) > 50  # an interval wider than the whole 0–100 scale
    expected = {
        ("m1", "a"): ("± 24.84", "55.2–100.0 (clipped)"),  # 80 + 24.84 > 100
        ("m1", "b"): ("± 4.97", "45.0–55.0"),
        ("m2", "a"): ("wider than the scale", "0.0–100.0 (clipped)"),
        ("m2", "b"): ("± 24.84", "-100.0–-55.2 (clipped)"),  # a negative correlation: the scale is −100–100
        ("m3", "a"): ("n too small", "—"),
        ("m3", "b"): ("n too small", "—"),
    }
    assert {key: ci_texts(summary.cell(*key)) for key in cells} == expected
    md = markdown(summary)
    assert "| m1 | a | 3 | 80.0 | 10.00 | ± 24.84 | 70.0 | 90.0 | 10.00 | 55.2–100.0 (clipped) |" in md
    assert "| m3 | a | 2 | 65.0 | 7.07 | n too small | 60.0 | 70.0 | 5.00 | — |" in md


@pytest.mark.parametrize(("tflops", "text"), [
    (None, "—"), (0.0, "0"), (1.2e-7, "120 kFLOPs"), (3.4e-10, "340 FLOPs"), (0.01, "10 GFLOPs"),
    (0.31, "310 GFLOPs"), (1.68, "1.68 TFLOPs"), (2.5e-6, "2.5 MFLOPs"), (1500.0, "1.5 PFLOPs"),
])
def test_extra_flops_are_shown_in_a_readable_unit(tflops, text):
    assert flops_text(tflops) == text


def test_extra_flops_column_in_every_rendering(tmp_path):
    hand_store(tmp_path, [("prompt_tuning", "a", 0, "done", 50.0)], {"prompt_tuning": (400, 1.2e-7, 1.0)})
    report = build_report(tmp_path)
    write_report(report)
    assert "| 1 | prompt_tuning | 50.0 | 0.0 | 1.00 | 400 | 120 kFLOPs | 1.000 |" in markdown(report.summary)
    assert '<td data-sort="1.2e-07">120 kFLOPs</td>' in (tmp_path / "leaderboard.html").read_text()
    assert "120 kFLOPs" in terminal(report.summary) and "0.000000" not in terminal(report.summary)


def test_a_p_column_per_category_only_when_there_are_several(tmp_path):
    one = aggregate(hand_store(tmp_path / "one", [("lora", t, 0, "done", 50.0) for t in ("sst2", "cola")]).records(),
                    categories={"sst2": "glue", "cola": "glue"})
    assert html_headers(render_html(one, [], {}, {}, title="t"), "leaderboard")[:4] == [
        "rank", "method", "P_avg", "invalid %"]
    two = aggregate(hand_store(tmp_path / "two", [("lora", "sst2", 0, "done", 40.0),
                                                  ("lora", "cb", 0, "done", 70.0)]).records(),
                    categories={"sst2": "glue", "cb": "superglue"})
    page = render_html(two, [], {}, {}, title="t")
    assert html_headers(page, "leaderboard")[:6] == ["rank", "method", "P_avg", "P glue", "P superglue", "invalid %"]
    assert '<td data-sort="55.0">55.0</td><td data-sort="40.0">40.0</td><td data-sort="70.0">70.0</td>' in page


def test_the_invalid_output_rate_is_a_percentage_in_the_runs_table(tmp_path):
    store = hand_store(tmp_path, [("lora", "a", 0, "done", 40.0)])
    set_metric(store, "run000", "invalid_rate", 0.25)
    write_report(build_report(tmp_path))
    page = (tmp_path / "leaderboard.html").read_text()
    assert html_headers(page, "runs")[-1] == "invalid %" and '<td data-sort="25.0">25.0</td></tr>' in page


def points(ax) -> set[tuple[float, float]]:
    return {tuple(float(v) for v in c.get_offsets()[0]) for c in ax.collections}


def test_plots_keep_the_reference_apart_and_name_methods_in_a_legend(tmp_path):
    rows = [(m, "a", seed, "done", s + seed) for m, s in (("lora", 60.0), ("bitfit", 50.0)) for seed in (0, 1)]
    summary = with_reference(aggregate(hand_store(tmp_path, rows, {"lora": (1000, 0.0, 2.0),
                                                                   "bitfit": (100, 0.0, 1.0)}).records()),
                             "peftbench-paper")
    ours = _quality_vs_costs(summary)
    assert points(ours.axes[0]) == {(1000.0, 60.5), (100.0, 50.5)}  # (M_p, P_avg) of this grid only
    assert points(ours.axes[2]) == {(2.0, 60.5), (1.0, 50.5)}
    assert [t.get_text() for t in ours.legends[0].get_texts()] == ["lora", "bitfit"]
    assert all(not ax.texts for ax in ours.axes)  # no text beside points, so none can overlap
    paper = _reference(summary)
    assert points(paper.axes[0]) == {(float(mp), p) for p, mp, _, _ in PAPER_REFERENCE.values()}
    assert "Llama-3-8B-Instruct" in paper.get_suptitle()
    bars = _cost_bars(summary)
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["lora", "bitfit"]
    assert _reference(aggregate(hand_store(tmp_path / "plain", rows).records())) is None


def test_figures_are_cropped_as_matplotlibs_own_tight_box_crops_them(tmp_path):
    """`save_cropped` measures the box once for both files; matplotlib's `bbox_inches="tight"`,
    which measures it again for every file, is the reference: the same PNG pixel for pixel, legend
    outside the axes included, and an SVG of the same size in inches."""
    import matplotlib
    import numpy as np
    from matplotlib.image import imread

    rows = [(m, t, 0, "done", s) for m, s in (("lora", 60.0), ("bitfit", 50.0)) for t in ("a", "b")]
    summary = aggregate(hand_store(tmp_path, rows, {"lora": (1000, 0.0, 2.0), "bitfit": (100, 0.0, 1.0)}).records())
    with matplotlib.rc_context(STYLE):
        for draw in (_quality_vs_costs, _heatmap, _cost_bars):
            ours, theirs = tmp_path / f"{draw.__name__}", tmp_path / f"{draw.__name__}_tight"
            save_cropped(draw(summary), ours.with_suffix(".png"), ours.with_suffix(".svg"))
            reference = draw(summary)
            reference.savefig(theirs.with_suffix(".png"), dpi=DPI, bbox_inches="tight")
            reference.savefig(theirs.with_suffix(".svg"), bbox_inches="tight")
            assert np.array_equal(imread(ours.with_suffix(".png")), imread(theirs.with_suffix(".png")))
            sizes = [[float(v) for v in re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', p.read_text()).groups()]
                     for p in (ours.with_suffix(".svg"), theirs.with_suffix(".svg"))]
            assert sizes[0] == pytest.approx(sizes[1], abs=3.0)  # points; the reference measures text at 72 dpi


def test_seed_spread_only_with_two_seeds_or_more(tmp_path):
    single = aggregate(hand_store(tmp_path / "single", [("lora", "a", 0, "done", 50.0)]).records())
    out = tmp_path / "plots"
    out.mkdir()
    (out / "seed_spread.png").write_bytes(b"an earlier report's figure")
    assert set(write_plots(single, out)) == {"quality_vs_costs", "heatmap", "cost_bars"}
    assert not (out / "seed_spread.png").exists() and not (out / "reference_quality_vs_costs.png").exists()
    two = aggregate(hand_store(tmp_path / "two", [("lora", "a", s, "done", 50.0 + s) for s in (0, 1)]).records())
    assert set(write_plots(two, out)) == {"quality_vs_costs", "heatmap", "seed_spread", "cost_bars"}


def test_a_redirected_table_is_as_wide_as_it_needs_not_80_columns(tmp_path):
    """`peftbench report > log` (a pipe here, a Slurm job's output file in practice): rich would
    wrap the tables to 80 columns and split 1,234,567 across lines; each value stays on one line."""
    tasks = [f"qs_{t}" for t in ("sentiment", "topic", "arith", "feedback")]
    hand_store(tmp_path, [("lora", t, 0, "done", 50.0) for t in tasks], {"lora": (1_234_567, 0.0, 2.0)})
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    printed = subprocess.run([sys.executable, "-m", "peftbench.cli", "report", "--out", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=600, check=True).stdout
    assert max(len(line) for line in printed.splitlines()) > 80
    assert "1,234,567" in printed and "…" not in printed
    narrow = run_cli("report", "--out", str(tmp_path), env={"COLUMNS": "80"}).stdout  # a width asked for is kept
    assert max(len(line) for line in narrow.splitlines()) <= 80


def test_the_terminal_table_stays_readable_with_24_tasks_and_labels_reference_rows(tmp_path):
    tasks = ["mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola", "record", "multirc", "boolq", "wic",
             "wsc", "cb", "copa", "mmlu", "piqa", "siqa", "hellaswag", "winogrande", "openbookqa", "math_qa",
             "gsm8k", "svamp"]
    rows = [(m, t, s, "done", 50.0 + s + i) for m in ("lora", "prompt_tuning", "bitfit")
            for i, t in enumerate(tasks) for s in (0, 1)]
    hand_store(tmp_path, rows)
    summary = build_report(tmp_path, reference="peftbench-paper").summary
    text = terminal(summary, width=120)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 120
    lines = [line for line in text.splitlines() if line.startswith("│ ")]
    starts = [line.split("│")[1].strip() for line in lines[:24]]
    assert starts == task_order(tasks, summary.categories)  # tasks as rows, grouped by category
    sst2 = next(line for line in lines if line.startswith("│ sst2 "))
    # sst2 is the 4th task: its seeds scored 50 + 3 and 51 + 3 for every method
    assert [c.strip() for c in sst2.split("│")[1:-1]] == ["sst2", "glue", "f1", *["53.5 ± 0.7"] * 3]
    assert "│ —    │ lora [peftbench-paper]" in text  # the reference rows keep their label
    assert "published figures measured on Llama-3-8B-Instruct" in text


def test_every_figure_draws_a_label_as_the_text_it_is(tmp_path):
    """A method or task name is a user's string: drawn as mathtext, `$\\frac{a}$` raised while the
    report was written (the stability and TPV figures did not use the report's style) and `$x$`
    would have turned italic. Every figure writes PNG and SVG with the label verbatim."""
    import matplotlib

    from peftbench.report.aggregate import Spread
    from peftbench.report.stability import StrategyRow, write_plot
    from peftbench.report.tpv import Stat, TPVSummary
    from peftbench.report.tpv import write_plots as tpv_plots

    label = "lora $\\frac{a}$ & <b>"  # not valid mathtext; XML-escaped in the SVG
    summary = aggregate(hand_store(tmp_path / "s", [(label, "t", s, "done", 50.0 + s) for s in (0, 1)]).records())
    strategy = StrategyRow("lora", label, "ensemble", "t", Spread(2, 50.5, 0.7, 50.0, 51.0, None), (50.0, 51.0),
                           None, None, None, None, None)
    study = TPVSummary(metric="accuracy", single={}, combinations=[], origins=[0, 1],
                       cross={label: [[50.0, None], [None, 51.0]]},
                       few_shot={"t": {label: {0: Stat(50.0, None, 1), 5: Stat(60.0, 1.0, 2)}}})
    out = tmp_path / "plots"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text> elements, to read it back
        pngs = [paths[0] for paths in write_plots(summary, out).values()]
        pngs += [write_plot([strategy], out), *tpv_plots(study, out).values()]
    assert [p.stem for p in pngs] == ["quality_vs_costs", "heatmap", "seed_spread", "cost_bars",
                                      "stability_strategies", "tpv_cross_origin", "tpv_few_shot_t"]
    for png in pngs:
        svg = png.with_suffix(".svg").read_text()
        assert png.stat().st_size > 1000 and html.escape(label, quote=False) in svg, png.name
