"""What a method costs is measured once per grid: every run of a method carries the same costs, the
cache says what they were measured on, and they equal a fresh measurement on a fresh model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from peftbench.store import Store

CONFIG = """
model: {name: builtin:tiny-llama}
methods: [{name: lora, learning_rate: 5.0e-3}, {name: prompt_tuning, args: {num_virtual_tokens: 4}}]
tasks: [qs_sentiment, qs_topic]
seeds: [0, 1]
training: {max_steps: 4, batch_size: 4, cutoff_len: 128, max_train_samples: 24}
evaluation: {batch_size: 32, max_samples: 8}
costs: {latency: false, memory_steps: 1}
runtime: {threads: 1, workers: 1}
"""
PER_RUN = {"adapter_bytes", "train_run_peak_mem_gb", "train_run_peak_mem_source", "energy_j", "model_revision"}
DETERMINISTIC = ("trainable_params", "total_params", "base_flops", "adapted_flops", "merged_flops", "flops_per_token",
                 "train_step_flops", "est_train_mem_gb", "peak_train_mem_gb")  # CPU memory: live tensors, exact


def test_a_methods_costs_are_measured_once_and_equal_a_fresh_measurement(tmp_path):
    from transformers import AutoModelForCausalLM

    from peftbench.config import load_config
    from peftbench.costs.run import measure_base, measure_method_costs
    from peftbench.methods import resolve_method
    from peftbench.tiny import tiny_model_dir

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    run_cli("run", str(config), "--out", str(out))
    records = Store.open(out).records()
    assert len(records) == 8 and {r.status for r in records} == {"done"}
    cached = sorted(json.loads(p.read_text())["what"]["method"]["name"] for p in (out / "costs").glob("*.json"))
    assert cached == ["lora", "prompt_tuning"]
    cfg = load_config(config)
    for name, args in (("lora", {}), ("prompt_tuning", {"num_virtual_tokens": 4})):
        mine = [r for r in records if r.method == name]
        shared = [{k: v for k, v in r.costs.items() if k not in PER_RUN} for r in mine]
        assert all(c == shared[0] for c in shared)  # every task and seed: the one measurement
        fresh_model = resolve_method(name, args).apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir()))
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
        figures = measure_base(base, cfg.costs, base.get_input_embeddings().num_embeddings)
        fresh = measure_method_costs(fresh_model, resolve_method(name, args), base=lambda f=figures: f, cfg=cfg.costs,
                                     memory_batch_size=4, device=base.device)
        assert {k: shared[0][k] for k in DETERMINISTIC} == {k: fresh[k] for k in DETERMINISTIC}
        assert all(r.costs["adapter_bytes"] > 0 for r in mine)  # per run: its own saved adapter


def test_no_report_writes_none_a_finished_grid_keeps_its_files_and_one_run_starts_no_worker_pool(tmp_path):
    from peftbench.config import validate_config
    from peftbench.modeling import resolve_model
    from peftbench.runner.backends.local import InlineBackend
    from peftbench.runner.grid import _backend
    from peftbench.runner.run import RunContext

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("tasks: [qs_sentiment, qs_topic]", "tasks: [qs_sentiment]")
                      .replace("seeds: [0, 1]", "seeds: [0]").replace("workers: 1", "workers: 2"))
    out = tmp_path / "out"
    run_cli("run", str(config), "--out", str(out), "--no-report")
    assert not (out / "leaderboard.html").exists() and len(Store.open(out).records("done")) == 2
    run_cli("run", str(config), "--out", str(out))  # nothing left to run, no report yet: written
    written = (out / "leaderboard.html").stat().st_mtime_ns
    run_cli("run", str(config), "--out", str(out))  # nothing ran, nothing changed: the files stand as they are
    assert (out / "leaderboard.html").stat().st_mtime_ns == written
    run_cli("run", str(config), "--out", str(out), "--set", "pscp.beta_p=1")  # nothing ran, the config changed
    assert (out / "leaderboard.html").stat().st_mtime_ns != written
    assert "β_p = 1, β_f = 2, β_m = 2" in (out / "leaderboard.md").read_text()
    cfg = validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"], "runtime": {"workers": 2}})
    ctx = RunContext(cfg, resolve_model(cfg.model), tmp_path)
    assert isinstance(_backend(ctx, None, n_runs=1, console=None), InlineBackend)


def test_flop_counts_are_reused_across_grids_and_only_they(tmp_path):
    """A second grid in another output directory takes the FLOP counts from the user cache (shown by
    planting marked values there) and measures latency and memory anew; the first grid's counts are
    the ones the cache was written with."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("tasks: [qs_sentiment, qs_topic]", "tasks: [qs_sentiment]")
                      .replace("seeds: [0, 1]", "seeds: [0]")
                      .replace("{name: prompt_tuning, args: {num_virtual_tokens: 4}}", "{name: bitfit}"))
    from peftbench.tiny import tiny_model_dir

    built = tiny_model_dir()  # a cache of our own, with the built-in model of the usual one (not built again)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / built.name).symlink_to(built)
    env = {"PEFTBENCH_CACHE": str(tmp_path / "cache")}
    run_cli("run", str(config), "--out", str(tmp_path / "a"), env=env)
    files = sorted((tmp_path / "cache" / "counts").glob("*.json"))
    assert len(files) == 3  # the base model, lora, bitfit
    first = {r.method: r.costs for r in Store.open(tmp_path / "a").records()}
    marked = {}
    for path in files:
        counts = json.loads(path.read_text())
        if "adapted_flops" in counts:
            method = next(m for m, c in first.items() if c["adapted_flops"] == counts["adapted_flops"]
                          and c["train_step_flops"] == counts["train_step_flops"])
            assert {k: first[method][k] for k in counts} == counts
            marked[method] = {k: v + 1 for k, v in counts.items()}
            path.write_text(json.dumps(marked[method]))
    assert set(marked) == {"lora", "bitfit"}
    run_cli("run", str(config), "--out", str(tmp_path / "b"), env=env)
    second = {r.method: r.costs for r in Store.open(tmp_path / "b").records()}
    for method, counts in marked.items():
        assert {k: second[method][k] for k in counts} == counts
        assert second[method]["extra_tflops"] == (counts["merged_flops"] - first[method]["base_flops"]) / 1e12
        assert second[method]["peak_train_mem_gb"] > 0  # measured again, not cached


def test_a_count_cached_by_other_code_is_not_reused(tmp_path, monkeypatch):
    """Both FLOP count caches are keyed by the code a count depends on: the counter, the decoder,
    and every method module (a method's `apply` or `merged` changes what is counted). A change to
    the bytes of any of these files must lead to another cache file."""
    import peftbench
    from peftbench.config import BenchConfig
    from peftbench.costs.from_config import config_counts, load_model_config
    from peftbench.costs.run import counting_code
    from peftbench.modeling import resolve_model
    from peftbench.runner.run import RunContext
    from peftbench.utils import code_digest

    package = Path(peftbench.__file__).resolve().parent
    code = counting_code()
    assert {"costs/flops.py", "costs/run.py", "decoding.py"} <= set(code)
    assert {f"methods/{p.name}" for p in (package / "methods").glob("*.py")} <= set(code)

    cfg = BenchConfig.model_validate(yaml.safe_load(CONFIG))
    ctx = RunContext(cfg, resolve_model(cfg.model), tmp_path / "out")
    config = load_model_config("llama3-8b")

    def paths() -> tuple[Path, Path]:
        return ctx.counts({"method": None}).path, config_counts(config).path

    def edit(patch: pytest.MonkeyPatch, name: str) -> None:
        """The package's file `name` reads as other bytes (a changed checkout), without writing it."""
        changed, read = package / name, Path.read_bytes
        patch.setattr(Path, "read_bytes", lambda p: read(p) + (b"#" if p == changed else b""))

    before = paths()
    assert before == paths()
    # eager and SDPA count a training step's backward differently: their counts are kept apart (the
    # model's configuration JSON does not name its attention implementation)
    eager = BenchConfig.model_validate({**yaml.safe_load(CONFIG), "model": {**cfg.model.model_dump(),
                                                                          "attn_implementation": "eager"}})
    assert RunContext(eager, ctx.source, tmp_path / "eager").counts({"method": None}).path != before[0]
    for name in ("methods/lora.py", "decoding.py"):
        with monkeypatch.context() as patch:
            edit(patch, name)
            assert paths() == before  # read once per process: the code loaded is the code that counts
            code_digest.cache_clear()  # as a new process would
            after = paths()
        code_digest.cache_clear()
        assert after[0] != before[0] and after[1] != before[1], name
        assert paths() == before  # the real code's digests again

    # the grid's own cache of a method's measured costs: measured again after the memory code changed
    from peftbench.plan import plan_runs
    from peftbench.runner import run as runner

    measured: list[int] = []
    monkeypatch.setattr(runner, "measure_method_costs", lambda *a, **k: {"n": measured.append(1) or len(measured)})
    spec = plan_runs(cfg)[0]
    assert ctx.method_costs(spec, None, 4) == {"n": 1}
    assert RunContext(cfg, ctx.source, ctx.out_dir).method_costs(spec, None, 4) == {"n": 1}  # a resumed grid
    edit(monkeypatch, "costs/memory.py")
    code_digest.cache_clear()
    assert RunContext(cfg, ctx.source, ctx.out_dir).method_costs(spec, None, 4) == {"n": 2}
    code_digest.cache_clear()

    # tokenised examples: encoded again once the code that renders or encodes them changed
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    task = spec.task_spec
    rows = ctx.task_data(task).train[:2]
    encode = runner.encode_example
    calls: list[int] = []
    monkeypatch.setattr(runner, "encode_example", lambda *a, **k: calls.append(1) or encode(*a, **k))
    first = RunContext(cfg, ctx.source, ctx.out_dir).encoded(task, rows)
    assert RunContext(cfg, ctx.source, ctx.out_dir).encoded(task, rows) == first and len(calls) == len(rows)
    for name in ("tasks/prompts.py", "tasks/spec.py"):
        with monkeypatch.context() as patch:
            edit(patch, name)
            code_digest.cache_clear()
            RunContext(cfg, ctx.source, ctx.out_dir).encoded(task, rows)
        code_digest.cache_clear()
    assert len(calls) == 3 * len(rows)  # once more after each file's change
