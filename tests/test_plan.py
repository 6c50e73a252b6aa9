"""Run ids: what they cover (local data by content, the decoder version) and what they leave out
(where and with how many threads a run executes)."""

from __future__ import annotations

import shutil

from conftest import SHARED_DATA

from peftbench.config import validate_config
from peftbench.plan import IDENTITY_VERSION, plan_runs


def ids(**overrides) -> list[str]:
    cfg = validate_config({"methods": ["lora", "prompt_tuning"], "tasks": ["sst2"], "seeds": [0], **overrides})
    return [r.run_id for r in plan_runs(cfg)]


def test_local_data_is_identified_by_content_not_path(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "sst2", data / "sst2")
    train = data / "sst2" / "train.jsonl"
    original = ids(data_dir=str(data))
    rows = train.read_text().splitlines(keepends=True)
    train.write_text("".join(rows[:10]))  # 64 → 10 training rows: another experiment
    cut = ids(data_dir=str(data))
    assert set(cut).isdisjoint(original)
    train.write_text("".join(rows))  # the same bytes again: the same runs, whatever the file's mtime
    assert ids(data_dir=str(data)) == original
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert ids(data_dir=str(moved)) == original  # same content at another path (say, on a cluster)
    (data / "sst2" / "validation.jsonl").write_text("".join(rows[:5]))  # the eval split counts too
    assert set(ids(data_dir=str(data))).isdisjoint(original)


def test_the_execution_environment_is_not_part_of_the_id():
    base = ids()
    assert ids(runtime={"threads": 4, "workers": 2}) == base
    assert ids(evaluation={"decode_check": 0}) == base
    assert ids(training={"checkpoint_steps": 10}) == base
    assert set(ids(evaluation={"batch_size": 3})).isdisjoint(base)  # the protocol is


def test_the_id_records_the_decoder_version():
    from peftbench.decoding import DECODER

    (run,) = plan_runs(validate_config({"methods": ["lora"], "tasks": ["qs_arith"], "seeds": [0]}))
    assert run.identity["version"] == IDENTITY_VERSION >= 3 and run.identity["decoder"] == DECODER
