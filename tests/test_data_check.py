"""Data checked before anything runs: every missing split of every task in one error naming the key
that fixes it, and `auto` splits carved from the split that exists — stated, never overlapping."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import SHARED_DATA, run_cli
from test_e2e import shared_tasks, split_fixes

from peftbench.config import validate_config
from peftbench.errors import PeftbenchError
from peftbench.tasks import TASKS
from peftbench.tasks.data import carve, check_splits, load_splits


def grid(path, tasks: list[str], fixes: bool = False) -> None:
    entries = [{"name": t, **(split_fixes(t) if fixes else {})} for t in tasks]
    lines = "\n".join(f"  - {{{', '.join(f'{k}: {v}' for k, v in e.items())}}}" for e in entries)
    path.write_text(f"model: {{name: builtin:tiny-llama}}\nmethods: [lora]\ndata_dir: {SHARED_DATA}\n"
                    f"output_dir: {path.parent / 'out'}\ntasks:\n{lines}\n")


def test_a_grid_over_every_shared_task_fails_once_naming_every_missing_split_and_its_key(tmp_path):
    tasks = shared_tasks()
    config = tmp_path / "all.yaml"
    grid(config, tasks)
    expected = []  # worked out from the folders, not from the checker
    for i, name in enumerate(tasks):
        task = TASKS.get(name)
        names = {p.stem for p in (SHARED_DATA / name).glob("*.jsonl")}
        for role, split in (("train", task.train_split), ("eval", task.eval_split)):
            if split not in names:
                expected.append((name, split, f"tasks[{i}].{role}_split"))
    assert expected, "the shared slices were expected to lack some splits"
    for command in (["validate", str(config)], ["run", str(config), "--dry-run"], ["run", str(config)]):
        result = run_cli(*command, check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("error: data: ") and len(result.stderr.strip().splitlines()) == 1
        for name, split, key in expected:
            assert f"{name} has " in message and repr(split) in message and key in message, (name, split, key)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_with_the_named_fixes_the_grid_validates_and_states_each_carve(tmp_path):
    tasks = shared_tasks()
    config = tmp_path / "fixed.yaml"
    grid(config, tasks, fixes=True)
    result = run_cli("validate", str(config))
    carved = [t for t in tasks if "auto" in split_fixes(t).values()]
    assert carved and all(f"note: {t}: no " in result.stderr and "carved from" in result.stderr for t in carved)
    assert f"valid — 1 method × {len(tasks)} tasks × 1 seed = {len(tasks)} runs" in result.stdout


def test_carve_cuts_one_split_into_disjoint_halves_the_same_way_every_time():
    rows = [{"i": i} for i in range(11)]
    train, test = carve(rows, 0)
    assert (len(train), len(test)) == (6, 5)
    assert sorted(r["i"] for r in train + test) == list(range(11))  # every row once, none in both
    assert carve(rows, 0) == (train, test) and carve(rows, 1) != (train, test)
    assert rows == [{"i": i} for i in range(11)]  # the input is left as it was


def test_load_splits_carves_train_from_the_eval_split_only_when_allowed():
    qnli = dataclasses.replace(TASKS.get("qnli"), carve=("train",))
    train, test, policy = load_splits(qnli, SHARED_DATA, 0)
    validation = [r for r in (SHARED_DATA / "qnli" / "validation.jsonl").read_text().splitlines() if r.strip()]
    assert len(train) + len(test) == len(validation) and len(test) == len(validation) // 2
    assert not {repr(r) for r in train} & {repr(r) for r in test}
    assert policy == (f"no 'train' split: 'validation' ({len(validation)} rows) carved into {len(train)} train and "
                      f"{len(test)} test rows, shuffled with seed 0")
    with pytest.raises(PeftbenchError, match="data file .* does not exist"):
        load_splits(TASKS.get("qnli"), SHARED_DATA, 0)  # without `auto`, a missing split stays an error


def test_same_split_for_train_and_eval_is_a_problem_and_both_auto_is_refused():
    sst2 = dataclasses.replace(TASKS.get("sst2"), train_split="validation")
    problems, _, _ = check_splits([("tasks[0]", sst2)], SHARED_DATA)
    assert problems == ["sst2 trains and tests on the same split 'validation' — set tasks[0].train_split: auto to "
                        "carve train rows from it"]
    with pytest.raises(PeftbenchError, match="cannot both be auto"):
        validate_config({"methods": ["lora"], "tasks": [{"name": "sst2", "train_split": "auto",
                                                         "eval_split": "auto"}]})


def test_validate_resolves_target_modules_on_the_model_as_run_does():
    from peftbench.cli import quickstart_config_path

    result = run_cli("validate", str(quickstart_config_path()), "--set",
                     "methods=[{name: lora, args: {target_modules: [nope]}}]", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: methods[0] (lora): method 'lora': target_modules 'nope' matches no module of this llama (its linear "
        "modules: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj)")
