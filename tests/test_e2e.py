"""End to end through the CLI: the quickstart's acceptance, resume after Ctrl-C, other models."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import interruptible, stored_results

import peftbench
from peftbench.store import Store
from peftbench.tasks import get_task

pytestmark = pytest.mark.slow
TRAINED = ("lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "ln_tuning", "bitfit", "full")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "peftbench.cli", *args], capture_output=True, text=True,
                            timeout=1200)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def state(out: Path) -> dict[str, tuple]:
    return {r.run_id: (r.status, r.metrics, r.attempts) for r in Store.open(out).records()}


def test_quickstart(quickstart_dir):
    out = quickstart_dir
    report = json.loads(cli("report", "--out", str(out), "--format", "json").stdout)
    methods = {m["method"] for m in report["methods"]}
    assert methods == {*TRAINED, "base"}
    assert all(m["pscp"] is not None for m in report["methods"])
    for task in ("qs_sentiment", "qs_topic", "qs_arith"):
        cells = {c["method"]: c for c in report["cells"] if c["task"] == task}
        assert all(c["n_seeds"] == 2 for c in cells.values())
        above = [m for m in TRAINED if cells[m]["score_mean"] > cells["base"]["score_mean"]]
        assert len(above) >= 3, (task, cells)
        # the soft-prompt methods learn, and their decoding states labels (issue #12: it did not)
        assert {"prompt_tuning", "prefix_tuning", "p_tuning"} <= set(above), (task, cells)
        if task != "qs_arith":
            assert all(cells[m]["invalid_rate"] <= 0.10 for m in TRAINED), (task, cells)
    assert {m["method"]: m["invalid_rate"] for m in report["methods"]}["base"] == 1.0
    assert "| rank | method | P_avg | invalid % |" in (out / "leaderboard.md").read_text()
    artefacts = ["leaderboard.md", "leaderboard.html", "results.csv", "summary.json", "tables.tex"]
    artefacts += [f"plots/{name}.{ext}" for name in ("quality_vs_costs", "heatmap", "seed_spread", "cost_bars")
                  for ext in ("png", "svg")]
    for name in artefacts:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 54  # one row per run, every seed
    first = state(out)
    assert len(first) == 54 and {s for s, _, _ in first.values()} == {"done"}
    for r in Store.open(out).records():
        # the stored metrics are those of the stored predictions, counted here by plain loops
        rows = [json.loads(line) for line in Store(out).predictions_path(r.run_id).read_text().splitlines()]
        numeric = r.task == "qs_arith"
        hits = [row["parsed"] is not None and (abs(row["parsed"] - float(row["gold"])) < 1e-6 if numeric
                                               else row["parsed"] == row["gold"]) for row in rows]
        assert [row["correct"] for row in rows] == hits and r.metrics["n_eval"] == len(rows), r.run_id
        assert r.metrics["numeric_accuracy" if numeric else "accuracy"] == pytest.approx(100 * sum(hits) / len(rows))
        assert r.metrics["invalid_rate"] == pytest.approx(sum(row["parsed"] is None for row in rows) / len(rows))
        assert r.metrics["score"] == r.metrics[r.metrics["primary_metric"]], r.run_id
        # the phases' wall times are disjoint intervals of the run's (a relation, no seconds asserted)
        phases = [r.timings[k] for k in ("train_s", "eval_s", "costs_s") if k in r.timings]
        assert all(t > 0 for t in phases) and sum(phases) <= r.timings["total_s"], r.timings
        assert ("train_s" in r.timings) == (r.method != "base") and "eval_s" in r.timings, r.timings
        parts = r.costs["est_train_mem_parts_gb"]  # the estimate is the sum of its parts (zero for base)
        assert r.costs["est_train_mem_gb"] == pytest.approx(sum(parts.values()), rel=1e-12, abs=0), r.run_id
        if r.method == "base":
            continue
        # throughput: the tokens of 3 epochs over the training time
        assert r.timings["train_tokens_per_s"] == pytest.approx(
            r.training["train_tokens"] * 3 / r.timings["train_s"], rel=1e-12), r.run_id
        # a run's own peak holds at least its weights, gradients and AdamW state (it once reported less:
        # heap pages freed by the worker's earlier work hid the training's allocations from the resident set)
        assert r.costs["train_run_peak_mem_gb"] >= parts["weights"] + parts["gradients"] + parts["optimizer"], r.run_id

    # the costs each run measured on the model equal those counted from its configuration alone, for the
    # grid's methods with their arguments (two code paths: a built model against a meta-device skeleton)
    from peftbench.tiny import tiny_model_dir

    counted = json.loads(cli("cost", "--model-config", str(tiny_model_dir()), "--config",
                             str(Path(peftbench.__file__).parent / "configs" / "quickstart.yaml"),
                             "--format", "json").stdout)
    measured = {r.method: r.costs for r in Store.open(out).records() if r.task == "qs_sentiment" and r.seed == 0}
    assert {row["method"] for row in counted} == set(measured)
    for row in counted:
        c = measured[row["method"]]
        assert (row["trainable_params"], row["total_params"], row["extra_tflops"], row["extra_tflops_unmerged"]) == (
            c["trainable_params"], c["total_params"], c["extra_tflops"], c["extra_tflops_unmerged"]), row
        assert row["base_tflops"] * 1e12 == pytest.approx(c["base_flops"], rel=1e-12), row

    cli("quickstart", "--out", str(out))  # everything is done: nothing re-runs, scores unchanged
    assert state(out) == first


def done_count(out: Path) -> int:
    db = out / "peftbench.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start_and_wait(config: Path, out: Path, n_done: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", "run", str(config), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 600
    while done_count(out) < n_done:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return proc


def test_ctrl_c_releases_the_run_in_flight(small_grid, tmp_path):
    config, expected = small_grid
    out = tmp_path / "interrupted"
    proc = start_and_wait(config, out, n_done=1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    statuses = [s for s, _, _ in state(out).values()]
    assert "running" not in statuses
    cli("run", str(config), "--out", str(out))
    assert stored_results(out) == expected


def test_a_local_hugging_face_model_directory(tmp_path, tokenizer):
    """A model given as a local HF directory (GPT-2 architecture, tokenizer with a chat template)."""
    import copy

    from conftest import gpt2

    model_dir = tmp_path / "gpt2-tiny"
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = "{% for m in messages %}<s>{{ m['content'] }}{% endfor %}\n###"
    gpt2(chat).save_pretrained(model_dir)
    chat.save_pretrained(model_dir)
    config = tmp_path / "local.yaml"
    config.write_text(f"""
model: {{name: {model_dir}, attn_implementation: eager}}
methods: [lora, ia3, bitfit, prefix_tuning, {{name: prompt_tuning, args: {{num_virtual_tokens: 4}}}}, base]
tasks: [qs_topic]
seeds: [0]
training: {{max_steps: 6, batch_size: 4}}
evaluation: {{max_samples: 8}}
""")
    out = tmp_path / "out"
    cli("run", str(config), "--out", str(out))
    runs = Store.open(out).records()
    assert sorted(r.method for r in runs) == ["base", "bitfit", "ia3", "lora", "prefix_tuning", "prompt_tuning"]
    assert {r.status for r in runs} == {"done"}
    by = {r.method: r for r in runs}
    assert by["lora"].costs["trainable_params"] == 2 * (16 * (64 + 192) + 16 * (256 + 64))
    assert by["lora"].provenance["model_location"] == str(model_dir)
    measures = {"trainable_params", "total_params", "adapter_bytes", "extra_tflops", "extra_tflops_unmerged",
                "flops_protocol", "flops_per_token", "train_step_flops", "peak_train_mem_gb", "peak_train_mem_source",
                "est_train_mem_gb", "prefill_s", "per_token_s", "base_prefill_s", "base_per_token_s", "energy_j"}
    for run in runs:
        assert measures <= set(run.costs), measures - set(run.costs)
    assert by["lora"].costs["peak_train_mem_gb"] > 0 and by["base"].costs["peak_train_mem_source"] == "no training"
    assert by["prefix_tuning"].costs["extra_tflops"] > 0 == by["lora"].costs["extra_tflops"]


def shared_tasks() -> list[str]:
    """The registered tasks that have a folder in ../shared/data (a folder for a task not registered yet
    must not break a test)."""
    from conftest import SHARED_DATA

    from peftbench.tasks import TASKS

    folders = {p.parent.name for p in SHARED_DATA.glob("*/*.jsonl")}
    return sorted(t for t in folders if t in TASKS)


def split_fixes(name: str) -> dict[str, str]:
    """The shared slices lack some splits: a missing one is carved from the split that exists
    (`auto`), or, where neither of the task's splits is there, the first split that is becomes the
    eval split and train is carved from it — never training and testing on the same rows."""
    from conftest import SHARED_DATA

    task = get_task(name)
    names = sorted(p.stem for p in (SHARED_DATA / name).glob("*.jsonl"))
    missing = [role for role, split in (("train", task.train_split), ("eval", task.eval_split)) if split not in names]
    if len(missing) == 2:
        return {"eval_split": names[0], "train_split": "auto"}
    return {f"{role}_split": "auto" for role in missing}


def shared_config(path: Path, tasks: list[str], evaluation: str) -> Path:
    from conftest import SHARED_DATA

    entries = []
    for name in tasks:
        extra = "".join(f", {key}: {value}" for key, value in split_fixes(name).items())
        entries.append(f"  - {{name: {name}{extra}}}")
    path.write_text(f"""
methods: [{{name: lora, learning_rate: 5.0e-3}}]
seeds: [0]
tasks:
{chr(10).join(entries)}
data_dir: {SHARED_DATA}
training: {{max_steps: 4, batch_size: 4, cutoff_len: 384}}
evaluation: {evaluation}
runtime: {{workers: 2}}
""")
    return path


def test_lora_on_every_shared_task_and_loglik_mode(tmp_path):
    tasks = shared_tasks()
    config = shared_config(tmp_path / "shared.yaml", tasks, "{batch_size: 16, max_samples: 12, max_new_tokens: 24}")
    out = tmp_path / "shared"
    cli("run", str(config), "--out", str(out))
    report = json.loads(cli("report", "--out", str(out), "--format", "json").stdout)
    cells = {c["task"]: c for c in report["cells"]}
    assert sorted(cells) == tasks
    assert all(c["n_seeds"] == 1 and c["score_mean"] is not None for c in cells.values()), cells
    for run in Store.open(out).records():  # a carved split is stated in the run's provenance
        carved = "auto" in split_fixes(run.task).values()
        assert ("carved into" in run.provenance.get("data_policy", "")) == carved, (run.task, run.provenance)

    classification = [t for t in tasks if get_task(t).kind == "classification"]
    config = shared_config(tmp_path / "loglik.yaml", classification, "{mode: loglik, batch_size: 16, max_samples: 12}")
    out = tmp_path / "loglik"
    cli("run", str(config), "--out", str(out))
    runs = Store.open(out).records()
    assert sorted(r.task for r in runs) == classification
    for run in runs:
        assert run.status == "done" and run.metrics["eval_mode"] == "loglik" and run.metrics["invalid_rate"] == 0.0
