"""Tasks as data: the package's task files, a user's own task (YAML + local files, no package edit)
beside a hub task, and one-line errors for broken task files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from peftbench.config import validate_config
from peftbench.errors import PeftbenchError
from peftbench.plan import plan_runs
from peftbench.scoring import score
from peftbench.tasks import TASKS, catalog, load_rows, read_task_file
from peftbench.tasks.catalog import tasks_table

REVIEWS = """\
include: peftbench:_classification.yaml
name: my_reviews
description: my own product reviews
source:
  local: {train: data/train.csv, validation: data/validation.jsonl}
subject: product review
template: "Review: {review}"
labels: [bad, good]
label_field: stars
metrics: [f1, accuracy]
"""


def user_task_dir(root: Path, n_train: int = 24) -> Path:
    """A user's task directory: one task file, a CSV train split with text labels, a JSONL eval split."""
    folder = root / "my_tasks"
    (folder / "data").mkdir(parents=True)
    (folder / "reviews.yaml").write_text(REVIEWS)
    rows = [json.loads(line) for line in (SHARED_DATA / "sst2" / "train.jsonl").read_text().splitlines()]
    with (folder / "data" / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "stars"])
        writer.writerows([r["sentence"], "good" if r["label"] else "bad"] for r in rows[:n_train])
    (folder / "data" / "validation.jsonl").write_text(
        "".join(json.dumps({"review": r["sentence"], "stars": r["label"]}) + "\n" for r in rows[40:48]))
    return folder


def test_the_docs_table_is_generated_from_the_registry():
    text = (REPO / "docs" / "tasks.md").read_text()
    start = text.index("<!-- generated: peftbench list tasks --format md -->\n") + len(
        "<!-- generated: peftbench list tasks --format md -->\n")
    assert text[start: text.index("<!-- end of generated table -->")] == tasks_table(TASKS), \
        "docs/tasks.md is stale: paste `peftbench list tasks --format md` between its markers"


def test_a_user_task_is_a_yaml_file_and_its_data(tmp_path):
    folder = user_task_dir(tmp_path)
    tasks = catalog([folder])
    task = tasks.get("my_reviews")
    assert task.instruction == ("Classify the following product review into 2 classes: bad, good. "
                                "Respond only with the corresponding class.")
    train, evaluation = load_rows(task, "train"), load_rows(task, "validation")
    assert len(train) == 24 and len(evaluation) == 8
    assert train[0]["stars"] in ("bad", "good") and isinstance(evaluation[0]["stars"], int)  # text or index labels
    for rows in (train, evaluation):
        result = score(task, rows, [task.render_target(r) for r in rows])
        assert result.primary == pytest.approx(100.0) and result.invalid_rate == 0.0
    assert "sst2" in tasks and "my_reviews" not in TASKS  # the package registry is untouched


def test_a_user_task_sits_in_one_grid_with_a_hub_task_and_its_id_follows_its_data(tmp_path):
    folder = user_task_dir(tmp_path)
    config = {"methods": ["base"], "tasks": ["my_reviews", "sst2"], "tasks_dir": [str(folder)],
              "data_dir": str(SHARED_DATA)}
    first = {r.task: r.run_id for r in plan_runs(validate_config(config))}
    assert set(first) == {"my_reviews", "sst2"}
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert {r.task: r.run_id for r in plan_runs(validate_config({**config, "tasks_dir": [str(moved)]}))} == first
    shutil.rmtree(folder)
    user_task_dir(tmp_path, n_train=12)  # the same task with fewer training rows: other runs
    again = {r.task: r.run_id for r in plan_runs(validate_config(config))}
    assert again["sst2"] == first["sst2"] and again["my_reviews"] != first["my_reviews"]


def test_parquet_files_load_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = user_task_dir(tmp_path)
    rows = load_rows(catalog([folder]).get("my_reviews"), "validation")
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "validation.parquet")
    text = (folder / "reviews.yaml").read_text().replace("validation.jsonl", "validation.parquet")
    (folder / "reviews.yaml").write_text(text)
    assert load_rows(catalog([folder]).get("my_reviews"), "validation") == rows


@pytest.mark.parametrize("change,message", [
    (("[f1, accuracy]", "[f1, acurracy]"),
     "task 'my_reviews': metrics: unknown metric 'acurracy' (did you mean 'accuracy'"),
    (("label_field: stars", "label_feld: stars"), "label_feld: Extra inputs are not permitted"),
    (("subject: product review", "subject: product review\nhooks: {prepare: mark_spans}"),
     "hooks.prepare: unknown task hook 'mark_spans' (did you mean 'mark_wsc_spans'"),
    (("include: peftbench:_classification.yaml", "include: reviews.yaml"), "include cycle"),
    (("data/train.csv", "data/train.xlsx"), "source.local.train: 'data/train.xlsx' is not one of .jsonl, .csv"),
    (("labels: [bad, good]", "labels: [bad, good]\nprimary_metric: pearson"), "primary_metric 'pearson' is not one"),
    (("labels: [bad, good]", "labels: [bad, Bad]"), "labels must be distinct, non-empty texts as outputs are read"),
    (("labels: [bad, good]", "labels: [bad, 'bad.']"), "labels must be distinct, non-empty texts as outputs are read"),
    (("labels: [bad, good]", "labels: [bad, ' ']"), "labels must be distinct, non-empty texts"),
])
def test_a_broken_task_file_is_a_one_line_error_naming_the_file_and_key(tmp_path, change, message):
    folder = user_task_dir(tmp_path)
    path = folder / "reviews.yaml"
    path.write_text(path.read_text().replace(*change))
    with pytest.raises(PeftbenchError) as info:
        read_task_file(path)
    assert str(info.value).startswith(f"task file {path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_task_name_defined_twice_is_an_error(tmp_path):
    folder = user_task_dir(tmp_path)
    (folder / "again.yaml").write_text(REVIEWS.replace("my_reviews", "sst2"))
    with pytest.raises(PeftbenchError, match="task 'sst2' is already defined in .*sst2.yaml"):
        catalog([folder])


@pytest.mark.slow
def test_a_user_task_and_a_hub_task_run_in_one_grid_through_the_cli(tmp_path):
    """No package edit: a YAML file and its data in the user's directory, named in the config."""
    from conftest import run_cli

    from peftbench.store import Store

    folder = user_task_dir(tmp_path)
    config = tmp_path / "grid.yaml"
    config.write_text(f"""
name: mine
methods: [base, {{name: lora, learning_rate: 5.0e-3}}]
tasks: [my_reviews, sst2]
tasks_dir: [{folder}]
data_dir: {SHARED_DATA}
training: {{max_steps: 4, batch_size: 4, cutoff_len: 128}}
evaluation: {{max_samples: 8}}
costs: {{latency: false, memory_steps: 0}}
""")
    assert "= 4 runs" in run_cli("validate", str(config)).stdout
    run_cli("run", str(config), "--out", str(tmp_path / "out"))
    records = Store.open(tmp_path / "out").records()
    assert {(r.method, r.task, r.status) for r in records} == {
        (m, t, "done") for m in ("base", "lora") for t in ("my_reviews", "sst2")}
    assert {r.config["task"]["category"] for r in records} == {"user", "glue"}
    report = json.loads(run_cli("report", "--out", str(tmp_path / "out"), "--format", "json").stdout)
    assert report["categories"] == {"my_reviews": "user", "sst2": "glue"}


def test_a_misspelt_metric_in_a_task_file_is_one_line_at_validate_exit_2(tmp_path):
    from conftest import run_cli

    folder = user_task_dir(tmp_path)
    path = folder / "reviews.yaml"
    path.write_text(path.read_text().replace("[f1, accuracy]", "[f1, acurracy]"))
    config = tmp_path / "grid.yaml"
    config.write_text(f"methods: [base]\ntasks: [my_reviews]\ntasks_dir: [{folder}]\n")
    result = run_cli("validate", str(config), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: tasks_dir: task file {path}: task 'my_reviews': metrics: unknown "
                                    "metric 'acurracy' (did you mean 'accuracy'")
