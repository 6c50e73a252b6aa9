"""Task Prompt Vectors: the arithmetic as exact algebra, origins as data, prompt tuning from an
origin or a prompt file, and a whole study (every kind) through the CLI, its store, report and
resume after kill -9."""

from __future__ import annotations

import itertools
import json
import signal
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_traced, stored_results, wait_for_mark

from peftbench.config import validate_config
from peftbench.errors import PeftbenchError
from peftbench.store import Store
from peftbench.tpv import vectors as V

MODEL = "0123456789abcdef"


def vec(values: torch.Tensor, kind: str = "tpv", origin: int = 0, model: str = MODEL, dtype: str = "float32"):
    return V.PromptVector(values.to(torch.float64), kind, model, origin, dtype)


def float32_values(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(torch.float32)


# --- the algebra ------------------------------------------------------------------------------------------


def test_origin_plus_tpv_reproduces_the_trained_prompt_bit_for_bit():
    """Float32 prompts over a wide range of magnitudes (the difference is held in float64)."""
    for seed in range(20):
        theta0 = vec(float32_values(16, 8, seed=seed, scale=10.0 ** (seed % 7 - 3)), "prompt")
        trained = vec(float32_values(16, 8, seed=seed + 100, scale=10.0 ** (seed % 5 - 2)), "prompt")
        tau = V.task_vector(trained, theta0)
        assert tau.kind == "tpv"
        assert torch.equal(V.add(theta0, tau).as_prompt_tensor(), trained.values.to(torch.float32))
    bf16 = vec(float32_values(4, 8).to(torch.bfloat16).to(torch.float32), "prompt", dtype="bfloat16")
    start = vec(float32_values(4, 8, seed=3).to(torch.bfloat16).to(torch.float32), "prompt", dtype="bfloat16")
    rebuilt = V.add(start, V.task_vector(bf16, start)).as_prompt_tensor()
    assert rebuilt.dtype == torch.bfloat16 and torch.equal(rebuilt, bf16.values.to(torch.bfloat16))


def test_add_subtract_negate_scale_and_the_lambda_sum():
    a, b, c = (vec(float32_values(5, 4, seed=s)) for s in (1, 2, 3))
    theta0 = vec(float32_values(5, 4, seed=4), "prompt")
    assert torch.equal(V.subtract(V.add(a, b), b).values, a.values)  # a + b − b = a (exact for float32 inputs)
    assert torch.equal(V.add(a, b).values, V.add(b, a).values)
    assert torch.equal(V.negate(V.negate(a)).values, a.values)
    assert torch.equal(V.add(a, V.negate(a)).values, torch.zeros(5, 4, dtype=torch.float64))
    assert torch.equal(V.scale(V.scale(a, 4.0), 0.25).values, a.values)
    assert torch.equal(V.scale(a, 0.3).values, a.values * 0.3)
    combined = V.combine(theta0, [a, b, c], 0.35)
    assert combined.kind == "prompt"
    assert torch.equal(combined.values, theta0.values + 0.35 * (a.values + b.values + c.values))
    assert torch.equal(V.combine(theta0, [a]).values, V.add(theta0, a).values)  # single task: λ = 1
    assert torch.equal(V.combine(theta0, [a, b], 0.0).values, theta0.values)
    # the kinds: θ − θ₀ is a TPV, θ + τ a prompt; two prompts do not add, prompts are not scaled
    for bad in (lambda: V.add(theta0, theta0), lambda: V.scale(theta0, 2.0), lambda: V.subtract(a, theta0),
                lambda: V.combine(theta0, [])):
        with pytest.raises(PeftbenchError):
            bad()


@pytest.mark.parametrize(("field", "other"), [
    ("origin", vec(float32_values(5, 4), origin=3)),
    ("model", vec(float32_values(5, 4), model="fedcba9876543210")),
    ("n_tokens", vec(float32_values(6, 4))),
    ("dtype", vec(float32_values(5, 4), dtype="bfloat16")),
])
def test_mixing_origins_models_token_counts_or_dtypes_is_one_line(field, other):
    a = vec(float32_values(5, 4))
    for op in (V.add, V.subtract, lambda x, y: V.combine(vec(float32_values(5, 4), "prompt"), [x, y])):
        with pytest.raises(PeftbenchError) as error:
            op(a, other)
        message = str(error.value)
        assert f"{field} " in message and "\n" not in message and "within one origin" in message


def test_rebase_moves_a_tpv_to_another_origin_and_cosine_averages_tokens():
    tau = vec(float32_values(5, 4, seed=1), origin=2)
    theta0 = vec(float32_values(5, 4, seed=2), "prompt", origin=7)
    moved = V.rebase(tau, theta0)
    assert moved.origin == 7 and moved.kind == "prompt" and torch.equal(moved.values, theta0.values + tau.values)
    x, y = vec(float32_values(5, 4, seed=3)), vec(float32_values(5, 4, seed=4), origin=1)
    mx, my = x.values.mean(0), y.values.mean(0)
    assert V.cosine(x, y) == pytest.approx(float(mx @ my / (mx.norm() * my.norm())), abs=1e-12)
    assert V.cosine(x, x) == pytest.approx(1.0)
    with pytest.raises(PeftbenchError):
        V.cosine(x, vec(float32_values(5, 4), model="fedcba9876543210"))


def test_origins_are_deterministic_rows_of_the_embedding_matrix():
    embeddings = float32_values(700, 8, seed=9)
    first, again, other = V.origin(embeddings, 0, 20), V.origin(embeddings, 0, 20), V.origin(embeddings, 1, 20)
    assert torch.equal(first.values, again.values) and first.model == again.model
    assert not torch.equal(first.values, other.values)
    ids = V.origin_token_ids(0, 20, 700)
    assert len(set(ids)) == 20 and all(0 <= i < 700 for i in ids)
    assert torch.equal(first.values, embeddings[ids].to(torch.float64))
    assert ids == torch.randperm(700, generator=torch.Generator().manual_seed(0)).tolist()[:20]
    big = V.origin_token_ids(4, 50, 100_000)
    assert max(big) < 5000  # ids 0…4999 only, whatever the vocabulary
    assert sorted(V.origin_token_ids(2, 1000, 300)[:300]) == list(range(300))  # capped: a full permutation first
    assert V.model_fingerprint(embeddings) != V.model_fingerprint(embeddings * 2)


def test_files_round_trip_bit_exactly_and_foreign_files_are_one_line(tmp_path):
    tau = vec(float32_values(6, 4, seed=5), origin=4)
    V.save(tau, tmp_path / "t.safetensors", task="x")
    back, meta = V.load(tmp_path / "t.safetensors")
    assert torch.equal(back.values, tau.values) and (back.origin, back.kind, back.model) == (4, "tpv", MODEL)
    assert meta["task"] == "x" and json.loads((tmp_path / "t.json").read_text())["origin"] == 4
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    for path in (tmp_path / "junk.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(PeftbenchError) as error:
            V.load(path)
        assert "\n" not in str(error.value)


# --- prompt tuning from an origin or a prompt file -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from peftbench.tiny import tiny_model_dir

    return lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir())


def test_prompt_tuning_starts_from_an_origin_or_a_prompt_file(tiny, tmp_path):
    from peftbench.methods import resolve_method
    from peftbench.methods.prompt_tuning import trained_prompt

    method = resolve_method("prompt_tuning", {"num_virtual_tokens": 6, "origin": 3})
    model = method.apply(tiny())
    theta0 = V.origin(model.get_input_embeddings().weight, 3, 6)
    assert torch.equal(trained_prompt(model).detach(), theta0.as_prompt_tensor())
    assert method.identity_args()["origin"] == 3

    prompt = V.add(theta0, vec(float32_values(6, 64, seed=1), origin=3, model=theta0.model))
    V.save(prompt, tmp_path / "start.safetensors")
    started = resolve_method("prompt_tuning", {"num_virtual_tokens": 6,
                                               "init_prompt": str(tmp_path / "start.safetensors")})
    model = started.apply(tiny())
    assert torch.equal(trained_prompt(model).detach(), prompt.as_prompt_tensor())
    assert started.start(model)[0].values.equal(theta0.values)  # its origin is the file's
    assert started.identity_args()["init_prompt"] == f"sha256:{V.file_digest(tmp_path / 'start.safetensors')}"
    plain = resolve_method("prompt_tuning", {"num_virtual_tokens": 6})
    assert "origin" not in plain.args and "init_prompt" not in plain.args  # unchanged run ids for plain runs

    V.save(V.add(V.origin(float32_values(512, 64), 0, 6), vec(float32_values(6, 64), model=V.model_fingerprint(
        float32_values(512, 64)))), tmp_path / "foreign.safetensors")
    other_model = resolve_method("prompt_tuning", {"num_virtual_tokens": 6,
                                                   "init_prompt": str(tmp_path / "foreign.safetensors")})
    with pytest.raises(PeftbenchError, match="another model"):
        other_model.apply(tiny())


@pytest.mark.parametrize(("args", "message"), [
    ({"origin": -1}, "origin index ≥ 0"),
    ({"origin": "a"}, "origin index ≥ 0"),
    ({"origin": 1, "init_prompt": "x.safetensors"}, "not both"),
    ({"init_prompt": "/nonexistent/x.safetensors"}, "no such prompt file"),
])
def test_bad_start_arguments_are_one_line(args, message):
    from peftbench.methods import resolve_method

    with pytest.raises(PeftbenchError, match=message):
        resolve_method("prompt_tuning", {"num_virtual_tokens": 6, **args})


def test_the_tpv_section_is_checked_when_the_config_loads():
    base = {"methods": [], "tasks": ["qs_sentiment", "qs_feedback"]}
    assert validate_config({**base, "tpv": {"tasks": ["qs_sentiment"]}}).tpv.lambdas[:3] == [0.0, 0.05, 0.1]
    for tpv, message in [
        ({"tasks": ["qs_topic"]}, "tpv.tasks: 'qs_topic' is not one of the config's tasks"),
        ({"tasks": ["qs_sentiment"], "combinations": [["qs_sentiment", "qs_feedback"]]}, "not in tpv.tasks"),
        ({"tasks": ["qs_sentiment", "qs_feedback"], "combinations": [["qs_sentiment"]]}, "two or more"),
        ({"tasks": ["qs_sentiment", "qs_feedback"], "origins": 2, "few_shot": {
            "groups": [{"sources": ["qs_sentiment", "qs_feedback"], "targets": ["qs_feedback"]}]}}, "exceeds origins"),
    ]:
        with pytest.raises(PeftbenchError, match=message):
            validate_config({**base, "tpv": tpv})
    with pytest.raises(PeftbenchError, match="methods.: required key is missing .at least one method, unless"):
        validate_config(base)


def test_choose_lambda_takes_the_best_and_the_smallest_on_ties():
    from peftbench.tpv.study import choose_lambda

    assert choose_lambda([0.0, 0.5, 1.0], [10.0, 30.0, 20.0]) == 0.5
    assert choose_lambda([0.0, 0.5, 1.0], [10.0, 30.0, 30.0]) == 0.5
    assert choose_lambda([0.0, 0.5, 1.0], [float("nan"), 1.0, 0.0]) == 0.5


# --- a whole study ----------------------------------------------------------------------------------------


def study_records(out: Path):
    store = Store.open(out)
    return [r for r in store.records() if "tpv" in r.config]


@pytest.mark.slow
def test_a_study_runs_every_kind_as_runs_of_the_store(tpv_study):
    config, out = tpv_study
    records = study_records(out)
    assert {r.status for r in records} == {"done"}
    kinds = Counter(r.config["tpv"]["study"] for r in records)
    # 2 origins × 3 tasks; 2 multi-task prompts; few-shot: 4 starts × 2 origins × 2 shots; 1 sum × 2 origins;
    # cross-origin: 3 tasks × 2 × 2 origin pairs
    assert kinds == {"source": 6, "multitask": 2, "few_shot": 16, "combination": 2, "cross_origin": 12}
    from peftbench.config import load_config
    from peftbench.tpv.study import second_stage_size

    second = [r for r in records if r.config["tpv"]["study"] in ("combination", "cross_origin")
              or r.config["tpv"].get("start") in ("single", "sum", "multitask")]
    assert sum(second_stage_size(load_config(config).tpv, 1).values()) == len(second) == 26  # what --dry-run says
    assert set(Store.open(out).plan("tpv_plan")) == {r.run_id for r in records}
    sources = {(r.task, r.config["tpv"]["origin"]): r for r in records if r.config["tpv"]["study"] == "source"}

    # the cross-origin diagonal is the source prompt itself: the same score and predictions as its own run
    for r in records:
        t = r.config["tpv"]
        if t["study"] == "cross_origin" and t["origin"] == t["source_origin"]:
            source = sources[(r.task, t["origin"])]
            assert r.metrics["score"] == source.metrics["score"]
            predictions = [json.loads(line)["prediction"] for line in Store(out).predictions_path(r.run_id).open()]
            expected = [json.loads(line)["prediction"] for line in Store(out).predictions_path(source.run_id).open()]
            assert predictions == expected
        if t["study"] == "combination":
            from peftbench.tpv.study import choose_lambda

            m = r.metrics
            assert m["lambdas"] == [0.0, 0.5, 1.0] and len(m["val_curve"]) == 3
            for i, value in enumerate(m["val_curve"]):
                assert value == pytest.approx(statistics.fmean(v[i] for v in m["val_scores"].values()))
            assert m["lambda"] == choose_lambda(m["lambdas"], m["val_curve"])
            assert m["score"] == pytest.approx(statistics.fmean(m["scores"].values()))
        if t["study"] == "few_shot" and t["shots"] == 0:
            assert r.training is None  # 0 shots: the start, evaluated untrained
        if t["study"] == "few_shot" and t["shots"] == 4:
            assert r.training["steps"] == 6 and r.costs is None
    # a few-shot "single" start is source A's trained prompt; "random" at 0 shots is θ₀ (no task training)
    single = [r for r in records if r.config["tpv"].get("start") == "single"]
    assert all(r.config["method"]["args"]["init_prompt"].startswith("sha256:") for r in single)


@pytest.mark.slow
def test_kept_vectors_rebuild_the_saved_adapters_exactly(tpv_study):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftbench.methods.prompt_tuning import trained_prompt
    from peftbench.tiny import tiny_model_dir
    from peftbench.tpv.runs import load_task_vector, origin_path, prompt_path

    _, out = tpv_study
    sources = [r for r in study_records(out) if r.config["tpv"]["study"] == "source"][:3]
    for r in sources:
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
        model = PeftModel.from_pretrained(base, str(Store(out).adapter_path(r.run_id)))
        trained = trained_prompt(model).detach()
        theta0 = V.origin(model.get_input_embeddings().weight, r.config["tpv"]["origin"], 8)
        tau = load_task_vector(out, r.run_id)
        assert torch.equal(V.add(theta0, tau).as_prompt_tensor(), trained)  # θ₀ + τ = θ_t, bit for bit
        assert torch.equal(V.load(prompt_path(out, r.run_id))[0].as_prompt_tensor(), trained)
        assert tau.norm() > 0
        kept_origin, meta = V.load(origin_path(out, theta0))  # origins are kept as data too
        assert torch.equal(kept_origin.values, theta0.values) and meta["n_tokens"] == 8
    assert len(list((out / "tpv" / "origins").glob("*.safetensors"))) == 2


@pytest.mark.slow
def test_tpv_list_and_combine_on_the_cli(tpv_study, tmp_path):
    _, out = tpv_study
    listed = json.loads(run_cli("tpv", "list", "--out", str(out), "--format", "json").stdout)
    assert len(listed) == 6 + 2 + 16  # every origin-started run keeps its TPV
    assert {r["origin"] for r in listed} == {0, 1}
    sources = [r for r in listed if r["method"].startswith("tpv@")]
    assert all(r["norm"] > 0 for r in sources)
    # scored as the report's TPV section scores them: in the study's metric, named (it once showed
    # each run's primary metric, F1 for these tasks, unnamed, beside the report's accuracy)
    stored = {r.run_id: r for r in Store.open(out).records()}
    assert {r["metric"] for r in listed} == {"accuracy"}
    assert all(r["score"] == stored[r["run"]].metrics["accuracy"] for r in listed)
    assert {r["study"] for r in sources} == {"source"} and all(r["shots"] is None for r in sources)
    assert {r["shots"] for r in listed if r["study"] == "few_shot"} >= {0}
    assert {stored[r["run"]].config["shot_rows"] for r in listed if r["study"] == "few_shot"} == {"seeded"}
    untrained = [r for r in listed if r["method"].startswith("tpv-fewshot-random") and r["norm"] == 0]
    assert len(untrained) == 2  # 0 shots from θ₀: τ = 0 exactly
    same = [r["run"] for r in sources if r["origin"] == 0][:2]
    mixed = [sources[0]["run"], next(r["run"] for r in sources if r["origin"] != sources[0]["origin"])]

    target = tmp_path / "mix.safetensors"
    result = run_cli("tpv", "combine", *mixed, "--out", str(out), "--save", str(target), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "origin" in result.stderr and "Traceback" not in result.stderr
    assert not target.exists() and not target.with_suffix(".json").exists()  # nothing written

    good = tmp_path / "sum.safetensors"
    run_cli("tpv", "combine", *same, "--out", str(out), "--save", str(good), "--lambda", "0.5")
    prompt, meta = V.load(good)
    assert prompt.kind == "prompt" and prompt.origin == 0 and meta["scale"] == 0.5


@pytest.mark.slow
def test_the_report_has_a_tpv_section_everywhere(tpv_study):
    _, out = tpv_study
    run_cli("report", "--out", str(out))
    md = (out / "leaderboard.md").read_text()
    for heading in ("## Task Prompt Vectors", "### Combinations", "### Cross-origin", "### Cosine similarity of TPVs",
                    "### Few-shot on qs_feedback"):
        assert heading in md
    summary = json.loads((out / "summary.json").read_text())["tpv"]
    assert summary["origins"] == [0, 1] and set(summary["single"]) == {"qs_sentiment", "qs_feedback", "qs_topic"}
    assert set(summary["few_shot"]["qs_feedback"]) == {"random", "single", "sum", "multitask"}
    assert len(summary["cross"]["qs_topic"]) == 2 and summary["cosine_tpv"]["tasks"]
    assert "Task Prompt Vectors" in (out / "tables.tex").read_text()
    for name in ("lambda_curves", "cross_origin", "cosine", "few_shot_qs_feedback"):
        assert (out / "plots" / f"tpv_{name}.png").stat().st_size > 1000
    html = (out / "leaderboard.html").read_text()
    assert 'id="tpv"' in html and html.count('alt="tpv ') == 4


@pytest.mark.slow
def test_similarity_matches_a_plain_loop(tpv_study):
    from peftbench.report.tpv import similarity
    from peftbench.tpv.runs import load_task_vector

    _, out = tpv_study
    sources = [r for r in study_records(out) if r.config["tpv"]["study"] == "source"]
    sim = similarity(sources, out, prompts=False)
    i, j = sim["tasks"].index("qs_sentiment"), sim["tasks"].index("qs_topic")
    by = {(r.task, r.config["tpv"]["origin"]): load_task_vector(out, r.run_id).values.mean(0) for r in sources}
    cos = [float(torch.dot(by[("qs_sentiment", a)], by[("qs_topic", b)]) / by[("qs_sentiment", a)].norm()
                 / by[("qs_topic", b)].norm()) for a, b in ((0, 1), (1, 0))]
    assert sim["matrix"][i][j].mean == pytest.approx(statistics.fmean(cos), abs=1e-12)

    def cosine(a, b):
        return float(torch.dot(by[a], by[b]) / by[a].norm() / by[b].norm())

    # every unordered pair of vectors of different origins once: the same task's two origins are one
    # pair (it was counted twice, as (0, 1) and (1, 0), which gave "± 0.000" and n = 2)
    unordered = [(a, b, cosine(a, b)) for a, b in itertools.combinations(sorted(by), 2) if a[1] != b[1]]
    assert sim["matrix"][i][i].n == 1 and sim["matrix"][i][i].sd is None
    assert sim["matrix"][i][i].mean == pytest.approx(cosine(("qs_sentiment", 0), ("qs_sentiment", 1)), abs=1e-12)
    for key, same in (("same_task", True), ("different_tasks", False)):
        values = [c for a, b, c in unordered if (a[0] == b[0]) == same]
        assert sim[key].n == len(values) and sim[key].mean == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert sim[key].sd == pytest.approx(statistics.stdev(values), abs=1e-12)


@pytest.mark.slow
def test_kill_9_mid_study_then_rerun_gives_the_same_results(tpv_study, tmp_path):
    """Killed while stage 2 evaluates (a λ sweep or a transplant), the study resumes: stored runs are
    not redone and every result equals the uninterrupted run's."""
    config, reference = tpv_study
    out, trace = tmp_path / "out", tmp_path / "trace"
    proc = start_traced(config, out, trace, stop_at="tpv-cross*:eval:0")
    mark = wait_for_mark(proc, trace, lambda m: m["method"].startswith("tpv-cross") and m["phase"] == "eval", 600)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r.run_id: r.attempts for r in Store.open(out).records() if r.status == "done"}
    assert Store.open(out).get(mark["run_id"]).status == "running"
    run_cli("run", str(config), "--out", str(out))
    after = {r.run_id: r for r in Store.open(out).records()}
    assert all(after[run_id].attempts == n for run_id, n in before.items())  # nothing stored was redone
    assert after[mark["run_id"]].attempts == 2
    expected = stored_results(reference)
    assert stored_results(out) == expected


def test_a_config_gives_any_task_the_paper_split_rule():
    from peftbench.config import TaskConfig
    from peftbench.plan import resolve_task, task_fingerprint
    from peftbench.tasks import TASKS

    plain = resolve_task(TaskConfig(name="sst2"), TASKS)
    ruled = resolve_task(TaskConfig(name="sst2", split_rule="tpv"), TASKS)
    assert (plain.split_rule, ruled.split_rule) == ("fraction", "tpv")
    assert task_fingerprint(plain) != task_fingerprint(ruled)  # other rows: other runs


def test_the_tpv_summary_by_hand(tmp_path):
    """Hand-built study rows: means and sds over origins in the study's metric (not the run's F1
    `score`), the share kept by a combination, the chosen λ, the cross-origin cells, few-shot stats."""
    from peftbench.report.tpv import tpv_summary

    store = Store.create(tmp_path)
    rows = [  # (task, study, accuracy, extra metrics)
        ("a", {"study": "source", "origin": 0}, 60.0, {}), ("a", {"study": "source", "origin": 1}, 80.0, {}),
        ("b", {"study": "source", "origin": 0}, 50.0, {}), ("b", {"study": "source", "origin": 1}, 70.0, {}),
        ("a+b", {"study": "combination", "origin": 0, "tasks": ["a", "b"]}, 0.0,
         {"lambda": 0.5, "lambdas": [0.0, 0.5], "val_curve": [10.0, 50.0], "scores": {"a": 54.0, "b": 45.0}}),
        ("a+b", {"study": "combination", "origin": 1, "tasks": ["a", "b"]}, 0.0,
         {"lambda": 0.3, "lambdas": [0.0, 0.5], "val_curve": [20.0, 40.0], "scores": {"a": 72.0, "b": 63.0}}),
        ("a", {"study": "cross_origin", "origin": 0, "source_origin": 1}, 77.0, {}),
        ("c", {"study": "few_shot", "start": "random", "origin": 0, "shots": 5, "target": "c"}, 30.0, {}),
        ("c", {"study": "few_shot", "start": "random", "origin": 1, "shots": 5, "target": "c"}, 40.0, {}),
    ]
    for i, (task, study, accuracy, extra) in enumerate(rows):
        run_id = f"r{i}"
        store.register([(run_id, "tpv", task, 0, {"tpv": study})])
        store.claim(run_id)
        store.finish(run_id, "done", metrics={"score": accuracy - 1.0, "accuracy": accuracy, **extra})
    s = tpv_summary(store.records(), tmp_path, "accuracy")
    assert s.origins == [0, 1]
    assert (s.single["a"].mean, s.single["b"].mean) == (70.0, 60.0)
    assert s.single["a"].sd == pytest.approx(200 ** 0.5)  # sd of 60 and 80: √((10² + 10²) / 1)
    (combo,) = s.combinations
    assert combo.scores["a"].mean == 63.0 and combo.scores["b"].mean == 54.0
    assert combo.retained == {"a": pytest.approx(90.0), "b": pytest.approx(90.0)}  # 63/70, 54/60
    assert combo.chosen.mean == pytest.approx(0.4) and [p.mean for p in combo.val_curve] == [15.0, 45.0]
    assert s.cross["a"] == [[None, 77.0], [None, None]]
    few = s.few_shot["c"]["random"][5]
    assert few.mean == 35.0 and few.sd == pytest.approx(50 ** 0.5) and few.n == 2


def test_with_several_seeds_every_tpv_figure_is_over_origins(tmp_path):
    """Two seeds per origin: the single-task score, the combination's scores, λ and curve, and the
    few-shot cells are each the mean ± sd over origins of the origin's seed mean (the combined
    column once took its sd over every run, beside the single column's sd over origins)."""
    from peftbench.report.tpv import tpv_summary

    store = Store.create(tmp_path)
    accuracy = {(0, 0): 70.0, (0, 1): 80.0, (1, 0): 90.0, (1, 1): 60.0}  # (origin, seed): origin means 75, 75
    i = 0
    for (origin, seed), value in accuracy.items():
        rows = [("a", {"study": "source", "origin": origin}, {}),
                ("a+b", {"study": "combination", "origin": origin, "tasks": ["a"]},
                 {"lambda": value / 100, "lambdas": [0.5], "val_curve": [value], "scores": {"a": value}}),
                ("c", {"study": "few_shot", "start": "random", "origin": origin, "shots": 5, "target": "c"}, {})]
        for task, study, extra in rows:
            store.register([(f"r{i}", "tpv", task, seed, {"tpv": study})])
            store.claim(f"r{i}")
            store.finish(f"r{i}", "done", metrics={"score": value, "accuracy": value, **extra})
            i += 1
    s = tpv_summary(store.records(), tmp_path, "accuracy")
    (combo,) = s.combinations
    for stat in (s.single["a"], combo.scores["a"], combo.val_curve[0], s.few_shot["c"]["random"][5]):
        assert (stat.mean, stat.sd, stat.n) == (75.0, 0.0, 2)
    assert (combo.chosen.mean, combo.chosen.sd, combo.chosen.n) == (0.75, 0.0, 2)
    assert combo.retained["a"] == pytest.approx(100.0)


def test_heatmap_cells_round_as_the_tables():
    """61.25 and 70.05 are shown 61.3 and 70.1 as in the markdown (an f-string printed 61.2 and 70.0)."""
    from matplotlib.figure import Figure

    from peftbench.report.tpv import _heat

    ax = Figure().subplots()
    _heat(ax, [[61.25, 70.05], [float("nan"), 0.125]], [0, 1], [0, 1], "t", "x", "y")
    assert [t.get_text() for t in ax.texts] == ["61.3", "70.1", "0.1"]


def test_few_shot_rows_are_a_seeded_draw_nested_over_k():
    """Few-shot rows are drawn with the fixed data seed, not taken from the top of the split (the
    `tpv` split keeps a small task's file order, which may be sorted by class); k shots are the
    first k of every larger draw, and the split itself is left alone."""
    import random

    from peftbench.runner.run import DATA_SPLIT_SEED, shot_rows

    rows = [{"id": i, "label": i // 25} for i in range(100)]  # sorted by class, 4 classes
    expected = list(rows)
    random.Random(DATA_SPLIT_SEED).shuffle(expected)
    assert shot_rows(rows, 20) == expected[:20] and shot_rows(rows, 10) == expected[:10]
    assert len({r["label"] for r in shot_rows(rows, 20)}) > 1  # the first 20 as split: one class
    assert rows == sorted(rows, key=lambda r: r["id"]) and shot_rows(rows, 0) == []
