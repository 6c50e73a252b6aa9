"""Property-based: any YAML document, any key set to any value, any `--set`: the config is valid, or
loading it fails with one line that names the key; through the CLI, exit 2, no traceback, nothing written."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from peftbench.cli import main
from peftbench.config import BenchConfig, _inner_model, load_config, validate_config
from peftbench.errors import PeftbenchError

VALID = {"methods": ["lora"], "tasks": ["qs_arith"]}


def config_keys(model: type[BaseModel] = BenchConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config schema, nested sections included."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        inner = _inner_model(field.annotation)
        if inner is not None:
            keys += config_keys(inner, f"{prefix}{name}.")
    return keys


KEYS = config_keys()
scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: f"{k}.x") | st.text(min_size=1, max_size=10)
SCALE = int(os.environ.get("PEFTBENCH_HYPOTHESIS_SCALE", "1"))  # more examples for a longer hunt


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def with_value(key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {**VALID}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = node[part] if isinstance(node.get(part), dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return data


def assert_one_line(exc: PeftbenchError, *names: str) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    shown = [str(PeftbenchError(name)) for name in names]  # as quoted in a message: control characters escaped
    assert any(name in message for name in shown), (shown, message)


@given(key=keys, value=values)
@examples(300)
def test_any_value_at_any_key_validates_or_fails_in_one_line_naming_the_key(key, value):
    try:
        validate_config(with_value(key, value))
    except PeftbenchError as exc:
        assert_one_line(exc, key.split(".")[0])


@given(text=st.text(max_size=200) | values.map(lambda v: yaml.safe_dump(v)))
@examples(200)
def test_any_yaml_document_validates_or_fails_in_one_line(text, tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except PeftbenchError as exc:
        assert_one_line(exc, str(path))


@given(assignment=st.text(max_size=40) | st.tuples(keys, values).map(lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1])}"))
@examples(300)
def test_any_set_override_validates_or_fails_in_one_line(assignment, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(VALID))
    key = assignment.partition("=")[0].strip()
    try:
        load_config(path, [assignment])
    except PeftbenchError as exc:
        assert_one_line(exc, "--set", key.split(".")[0] or "--set")


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    argv, sys.argv = sys.argv, ["peftbench", *args]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    return exited.value.code or 0, err.getvalue()


@given(key=keys, value=values)
@examples(40)
def test_through_the_cli_an_invalid_config_exits_2_with_one_line_and_writes_nothing(key, value, tmp_path):
    data = with_value(key, value)
    try:
        validate_config(data)
    except PeftbenchError:
        pass
    else:
        assume(False)  # a valid config would start a real run
    out = tmp_path / "out"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    before = set(os.listdir())
    code, err = run_cli("run", str(path), "--out", str(out))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists() and set(os.listdir()) == before
