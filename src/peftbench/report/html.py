"""A self-contained HTML leaderboard: one file, no network, inline CSS/JS and plots.

Every string from configs, tasks or model outputs passes through `html.escape` on the way into
the page; the script only reorders and hides existing rows (no `innerHTML`), so a label such as
`<script>…</script>` is shown as text and never runs.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from peftbench.jsonsafe import dumps_json
from peftbench.report.aggregate import Summary, fmt, pscp_sensitivity
from peftbench.report.tables import (
    cell_text,
    explanation,
    flops_text,
    params_text,
    percent,
    sensitivity_headers,
)
from peftbench.store import RunRecord

PREDICTION_SAMPLE = 5

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}h1{margin-bottom:.2em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
td.label{text-align:left}tr.reference{color:#777;font-style:italic}tr[hidden]{display:none}
pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-word;text-align:left}
img{max-width:100%;border:1px solid #eee}details{margin:.3em 0}.muted{color:#777}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}
"""

SCRIPT = """
function sortTable(th){
  const table=th.closest('table'), body=table.tBodies[0], index=[...th.parentNode.children].indexOf(th);
  const ascending=th.dataset.order!=='asc'; th.dataset.order=ascending?'asc':'desc';
  const key=row=>{const cell=row.children[index]; const v=cell.dataset.sort;
    return v!==undefined&&v!==''?parseFloat(v):cell.textContent.trim().toLowerCase();};
  const rows=[...body.rows].sort((a,b)=>{const x=key(a),y=key(b);
    if(typeof x==='number'&&typeof y==='number')return ascending?x-y:y-x;
    if(typeof x==='number')return -1; if(typeof y==='number')return 1;
    return ascending?String(x).localeCompare(String(y)):String(y).localeCompare(String(x));});
  rows.forEach(row=>body.appendChild(row));
}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
const filter=document.getElementById('category-filter');
filter.addEventListener('change',()=>{document.querySelectorAll('#scores tbody tr').forEach(row=>{
  row.hidden=filter.value!=='all'&&row.dataset.category!==filter.value;});});
"""


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _td(text: str, sort: float | None = None, label: bool = False) -> str:
    cls = ' class="label"' if label else ""
    return f'<td{cls} data-sort="{_num(sort)}">{escape(text)}</td>'


def _table(table_id: str, headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _leaderboard(summary: Summary) -> str:
    """The ranked table; a P column per category only when there are several (one would repeat P_avg)."""
    categories = list(dict.fromkeys(summary.categories.values()))
    categories = categories if len(categories) > 1 else []
    headers = ["rank", "method", "P_avg", *(f"P {c}" for c in categories), "invalid %", "mean rank",
               "trainable params", "extra FLOPs", "peak mem GB", "PSCP"]
    rows = []
    for s in summary.summaries:
        cells = [_td(str(s.rank or "—"), s.rank), _td(s.method, label=True), _td(fmt(s.p_avg), s.p_avg),
                 *(_td(fmt(s.p_by_category.get(c)), s.p_by_category.get(c)) for c in categories),
                 _td(fmt(percent(s.invalid_rate)), percent(s.invalid_rate)), _td(fmt(s.mean_rank, 2), s.mean_rank),
                 _td(params_text(s.trainable_params), s.trainable_params),
                 _td(flops_text(s.extra_tflops), s.extra_tflops), _td(fmt(s.peak_mem_gb, 3), s.peak_mem_gb),
                 _td(fmt(s.pscp, 2), s.pscp)]
        cls = ' class="reference"' if s.reference else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return _table("leaderboard", headers, rows)


def _scores(summary: Summary) -> str:
    rows = []
    for task in summary.tasks:
        cells = [_td(task, label=True), _td(summary.categories[task], label=True),
                 _td(summary.primary_metrics.get(task) or "—", label=True)]
        cells += [_td(cell_text(c), c.score_mean) for c in (summary.cell(m, task) for m in summary.methods)]
        rows.append(f'<tr data-category="{escape(summary.categories[task])}">{"".join(cells)}</tr>')
    return _table("scores", ["task", "category", "metric", *summary.methods], rows)


def _sensitivity(summary: Summary) -> str:
    sens = pscp_sensitivity(summary)
    rows = [f"<tr>{_td(s.method, label=True)}{''.join(_td(fmt(r.pscp[s.method], 2), r.pscp[s.method]) for r in sens)}"
            "</tr>" for s in summary.summaries if s.pscp is not None]
    return _table("sensitivity", ["method", *sensitivity_headers(summary)], rows)


def _runs(records: Sequence[RunRecord], predictions: dict[str, list[dict[str, Any]]]) -> str:
    rows, details = [], []
    for r in records:
        score = (r.metrics or {}).get("score")
        invalid = percent((r.metrics or {}).get("invalid_rate"))
        link = f'<td class="label" data-sort=""><a href="#run-{escape(r.run_id)}">{escape(r.run_id)}</a></td>'
        rows.append(f"<tr>{link}{_td(r.method, label=True)}{_td(r.task, label=True)}{_td(str(r.seed), r.seed)}"
                    f"{_td(r.status, label=True)}{_td(fmt(score), score)}{_td(fmt(invalid), invalid)}</tr>")
        parts = {"config": r.config, "metrics": r.metrics, "costs": r.costs, "timings": r.timings,
                 "error": r.error, f"first {PREDICTION_SAMPLE} predictions": predictions.get(r.run_id, [])}
        body = "".join(f"<h4>{escape(k)}</h4><pre>{escape(dumps_json(v, indent=1, ensure_ascii=False))}</pre>"
                       for k, v in parts.items())
        details.append(f'<details id="run-{escape(r.run_id)}"><summary>{escape(r.method)} · {escape(r.task)} · '
                       f"seed {r.seed} · {escape(r.status)}</summary>{body}</details>")
    table = _table("runs", ["run", "method", "task", "seed", "status", "score", "invalid %"], rows)
    return table + "".join(details)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def render_html(summary: Summary, records: Sequence[RunRecord], plots: dict[str, list[Path]],
                predictions: dict[str, list[dict[str, Any]]], *, title: str, notes: Sequence[str] = (),
                extra: str = "") -> str:
    """The leaderboard page; `extra` is a further section's HTML (a TPV study), placed before the runs."""
    options = "".join(f'<option value="{escape(c)}">{escape(c)}</option>'
                      for c in dict.fromkeys(summary.categories.values()))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{len(records)} runs · {len(summary.methods)} methods · {len(summary.tasks)} tasks · '
        f"generated {stamp} · click a column header to sort</p>",
        *(f'<p class="note"><strong>Note:</strong> {escape(n)}</p>' for n in notes),
        "<h2>Leaderboard</h2>", _leaderboard(summary),
        '<div id="pscp-formula">' + "".join(f"<p>{escape(line)}</p>" for line in explanation(summary)) + "</div>",
        "<h2>Scores</h2><p class='muted'>mean ± sd over seeds of each task's primary metric, 0–100 "
        "(correlations −100–100)</p>"
        '<label>category <select id="category-filter"><option value="all">all</option>'
        f"{options}</select></label>", _scores(summary),
        "<h2>PSCP sensitivity</h2><p class='muted'>* = the ranking of methods changes</p>", _sensitivity(summary),
        "<h2>Plots</h2>", *(_image(paths[0], name) for name, paths in plots.items()),
        extra,
        "<h2>Runs</h2>", _runs(records, predictions),
    ]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")
