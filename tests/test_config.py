"""Config validation: every shipped config validates; every bad input is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench.config import apply_override, load_config, validate_config
from peftbench.errors import PeftbenchError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
MINIMAL = {"methods": ["lora"], "tasks": ["qs_sentiment"]}


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "peftbench-llama3-8b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert (cfg.methods or cfg.tpv) and cfg.tasks and cfg.seeds


DOCS = [Path(__file__).resolve().parents[1] / name for name in ("README.md", "docs/cluster.md")]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_config_snippets_in_the_docs_validate(doc):
    """Every YAML block of the README and the cluster guide is a valid config (sections completed with
    a method and a task where the snippet shows only its part)."""
    import re

    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        validate_config({**MINIMAL, **yaml.safe_load(block)})


def test_paper_protocol_defaults():
    cfg = validate_config(MINIMAL)
    t = cfg.training
    assert (t.epochs, t.batch_size, t.cutoff_len, t.warmup_ratio, t.weight_decay, t.scheduler) == (
        10, 4, 2048, 0.1, 1e-5, "cosine")
    assert t.val_fraction == 0.1 and t.select_best
    p = cfg.pscp
    assert (p.c_p, p.c_f, p.c_m, p.beta_p, p.beta_f, p.beta_m) == (5e8, 10, 94, 2, 2, 2)
    assert (cfg.costs.flops_batch_size, cfg.costs.flops_seq_len) == (1, 512)
    assert cfg.model.trust_remote_code is False


def error_of(data) -> str:
    with pytest.raises(PeftbenchError) as info:
        validate_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_the_key_and_the_expected_ones():
    msg = error_of({**MINIMAL, "training": {"epochz": 3}})
    assert "training.epochz" in msg and "unknown key" in msg and "epochs" in msg


def test_negative_learning_rate():
    msg = error_of({**MINIMAL, "methods": [{"name": "lora", "learning_rate": -1e-4}]})
    assert "methods[0].learning_rate" in msg and "greater than 0" in msg


def test_unknown_method_and_task_suggest_names():
    """Names are resolved once, by the plan (every command plans before it does anything)."""
    from peftbench.plan import plan_runs

    def plan_error(data: dict) -> str:
        with pytest.raises(PeftbenchError) as info:
            plan_runs(validate_config(data))
        return str(info.value)

    assert plan_error({**MINIMAL, "methods": ["lora", "ia4"]}).startswith("methods[1]: unknown method 'ia4' (did "
                                                                           "you mean 'ia3'")
    assert plan_error({**MINIMAL, "tasks": ["qs_topik"]}).startswith("tasks[0].name: unknown task 'qs_topik' (did "
                                                                     "you mean 'qs_topic'")


def test_duplicate_method_ids_need_labels():
    assert "unique" in error_of({**MINIMAL, "methods": ["lora", "lora"]})
    cfg = validate_config({**MINIMAL, "methods": ["lora", {"name": "lora", "label": "lora-r8", "args": {"r": 8}}]})
    assert [m.id for m in cfg.methods] == ["lora", "lora-r8"]


def test_wrong_types_and_missing_keys():
    assert "training.batch_size" in error_of({**MINIMAL, "training": {"batch_size": "four"}})
    assert "required key is missing" in error_of({"tasks": ["qs_sentiment"]})
    assert "seeds" in error_of({**MINIMAL, "seeds": [1, 1]})


def test_yaml_reads_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [{name: lora, learning_rate: 1e-4, args: {lora_dropout: 5e-2}}]\ntasks: [qs_arith]\n")
    cfg = load_config(path)
    assert cfg.methods[0].learning_rate == 1e-4 and cfg.methods[0].args["lora_dropout"] == 0.05


def test_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [lora, ia3]\ntasks: [qs_arith]\n")
    cfg = load_config(path, ["training.max_steps=20", "methods.1.learning_rate=3e-3", "seeds=[0, 1, 2]"])
    assert cfg.training.max_steps == 20
    assert cfg.methods[1].name == "ia3" and cfg.methods[1].learning_rate == 3e-3
    assert cfg.seeds == [0, 1, 2]


@pytest.mark.parametrize(
    "assignment,match",
    [("training.max_steps", "expected key=value"), ("methods.7.learning_rate=1", "index below 2"),
     ("=3", "expected key=value")],
)
def test_bad_set(assignment, match):
    with pytest.raises(PeftbenchError, match=match):
        apply_override({"methods": ["lora", "ia3"]}, assignment)


def test_bad_files(tmp_path):
    with pytest.raises(PeftbenchError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [lora\n")
    with pytest.raises(PeftbenchError, match="invalid YAML at line"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(PeftbenchError, match="top level must be a mapping"):
        load_config(bad)
