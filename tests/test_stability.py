"""Instability mitigation in real runs: DENI's copies train beside the main model, the delayed ensemble
votes with every member's own weights, and the costs count what the strategy adds."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import run_cli

from peftbench.config import MitigationConfig, validate_config
from peftbench.deni.members import member_weights, training_cost
from peftbench.deni.schedule import Schedule, step_equivalents
from peftbench.errors import PeftbenchError
from peftbench.plan import plan_runs
from peftbench.store import Store

MITIGATION = {"strategy": "deni", "members": 3, "ni_single_steps": 2, "ni_multi_steps": 3}
CONFIG = f"""
model: {{name: builtin:tiny-llama}}
methods:
  - {{name: lora, learning_rate: 5.0e-3}}
  - {{name: prompt_tuning, learning_rate: 3.0e-2, args: {{num_virtual_tokens: 8}}}}
tasks: [qs_sentiment]
seeds: [0]
training: {{max_steps: 30, batch_size: 4, cutoff_len: 128, max_train_samples: 80, eval_steps: 30,
           mitigation: {json.dumps(MITIGATION)}}}
evaluation: {{batch_size: 32, max_samples: 24}}
costs: {{latency: false, memory_steps: 1}}
runtime: {{threads: 1, workers: 1}}
"""


def test_a_strategy_is_part_of_the_run_id_and_default_runs_keep_theirs():
    base = {"methods": ["lora"], "tasks": ["qs_sentiment"]}
    plain = plan_runs(validate_config(base))[0]
    explicit = plan_runs(validate_config({**base, "training": {"mitigation": {"strategy": "default"}}}))[0]
    deni = plan_runs(validate_config({**base, "training": {"mitigation": {"strategy": "deni"}}}))[0]
    de = plan_runs(validate_config({**base, "training": {"mitigation": {"strategy": "de"}}}))[0]
    assert plain.run_id == explicit.run_id and "mitigation" not in plain.identity["training"]
    assert len({plain.run_id, deni.run_id, de.run_id}) == 3
    assert deni.identity["training"]["mitigation"]["sigma2"] == 0.15


def test_training_cost_is_the_schedules_step_equivalents():
    cfg = MitigationConfig(strategy="deni")
    assert training_cost(cfg, 10_000) == step_equivalents(10_000, Schedule()) == pytest.approx(3.25)
    assert training_cost(MitigationConfig(strategy="de"), 10_000) == pytest.approx(1.9)
    assert training_cost(MitigationConfig(strategy="weight_noise"), 10_000) == 1.0
    assert training_cost(MitigationConfig(), 10_000) == 1.0


def test_member_weights_load_a_members_tensors_and_restore_the_main_model():
    from transformers import AutoModelForCausalLM

    from peftbench.methods import resolve_method
    from peftbench.tiny import tiny_model_dir

    model = resolve_method("lora").apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir())).eval()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trainable.values():
            p.add_(torch.randn_like(p) * 0.3)
    main = {n: p.detach().clone() for n, p in trainable.items()}
    member = {n: torch.randn_like(p) * 0.3 for n, p in main.items()}
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    before = model(input_ids=ids).logits
    with member_weights(model, member):
        inside = model(input_ids=ids).logits
        assert all(torch.equal(trainable[n].detach(), member[n]) for n in member)
    assert not torch.allclose(inside, before)
    assert all(torch.equal(trainable[n].detach(), main[n]) for n in main)  # the main model back, exactly
    assert torch.equal(model(input_ids=ids).logits, before)


@pytest.fixture(scope="module")
def deni_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("deni")
    config = root / "deni.yaml"
    config.write_text(CONFIG)
    run_cli("run", str(config), "--out", str(root / "out"))
    return config, root / "out"


@pytest.mark.slow
def test_deni_runs_count_their_model_steps_vote_and_cost_k_models(deni_grid):
    _, out = deni_grid
    records = Store.open(out).records()
    assert {r.status for r in records} == {"done"} and len(records) == 2
    schedule = Schedule(members=3, ni_single_steps=2, ni_multi_steps=3)
    for r in records:
        t, m, c = r.training, r.metrics, r.costs
        assert t["strategy"] == "deni" and t["steps"] == 30
        # counted optimiser steps of all models = the schedule's step-equivalents, computed independently
        assert t["model_steps"] == round(step_equivalents(30, schedule) * 30)
        assert t["step_equivalents"] == pytest.approx(step_equivalents(30, schedule))
        assert t["members"] == 3 and len(m["member_scores"]) == 3
        assert c["vote_members"] == 3 and c["trainable_params"] == 3 * c["trainable_params_per_member"]
        assert c["extra_tflops"] == pytest.approx((3 * c["merged_flops"] - c["base_flops"]) / 1e12)
        assert c["extra_tflops_unmerged"] == pytest.approx((3 * c["adapted_flops"] - c["base_flops"]) / 1e12)
        assert c["peak_train_mem_gb"] > c["peak_train_mem_one_model_gb"]
        assert r.provenance["decoding"]["vote"]["members"] == 3
        # the vote recounted from the predictions file (each row's member outputs, main model first),
        # and every member's adapter kept beside the main one
        from peftbench.deni.vote import vote_rows

        rows = [json.loads(line) for line in Store(out).predictions_path(r.run_id).read_text().splitlines()]
        assert all(len(row["members"]) == 3 for row in rows)
        assert [row["prediction"] for row in rows] == vote_rows([[row["members"][k] for row in rows] for k in range(3)])
        adapters = Store(out).adapter_path(r.run_id)
        kept = [adapters / f"member-{k}" for k in (1, 2)]
        assert all((p / "adapter_config.json").is_file() for p in kept)
        weights = [(p / "adapter_model.safetensors").read_bytes() for p in (adapters, *kept)]
        assert len(set(weights)) == 3  # three members, three sets of weights


@pytest.mark.slow
def test_each_member_is_scored_with_its_own_weights(deni_grid, tmp_path):
    """Members made to differ on purpose (one is the untrained adapter): their scores must be those of
    their own weights; a vote that evaluated the main model K times gives the main score K times."""
    from peftbench.config import load_config
    from peftbench.modeling import resolve_model
    from peftbench.runner.run import RunContext, evaluate, evaluate_members

    config, out = deni_grid
    cfg = load_config(config, ["methods=[{name: lora}]"])
    ctx = RunContext(cfg, resolve_model(cfg.model), tmp_path)
    spec = plan_runs(cfg)[0]
    trained = next(r for r in Store.open(out).records() if r.method == "lora")
    model = spec.method.load(ctx.fresh_model(), Store(out).adapter_path(trained.run_id))  # the DENI main model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    untrained = {n: (torch.zeros_like(p) if "lora_B" in n else p.detach().clone()) for n, p in lora.items()}
    rows = ctx.task_data(spec.task_spec).eval
    scores, decoding = evaluate_members(model, spec.task_spec, rows, ctx, lambda *a: None, [untrained, untrained])
    base_model = spec.method.apply(ctx.fresh_model()).eval()  # LoRA B = 0: the base model's outputs
    alone, _ = evaluate(base_model, spec.task_spec, rows, ctx, lambda *a: None)
    main, _ = evaluate(model, spec.task_spec, rows, ctx, lambda *a: None)
    assert scores.metrics["member_scores"] == [main.primary, alone.primary, alone.primary]
    assert scores.metrics["member_invalid_rates"] == [main.invalid_rate, alone.invalid_rate, alone.invalid_rate]
    assert main.invalid_rate != alone.invalid_rate  # so the check above tells the members apart
    # two of three members agree on every row, so the vote is theirs
    assert [r["prediction"] for r in scores.records] == [r["prediction"] for r in alone.records]


def test_swa_and_ema_average_the_iterates_by_hand():
    from types import SimpleNamespace

    from peftbench.deni.averaging import WeightAveraging

    for strategy, expected in (("swa", (3.0 + 4.0 + 5.0 + 6.0) / 4), ("ema", None)):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        callback = WeightAveraging(model, MitigationConfig(strategy=strategy, swa_start=0.25, ema_decay=0.5))
        callback.on_train_begin(None, SimpleNamespace(max_steps=8), None)
        for step in range(1, 7):  # six steps; the weight after step s is s
            with torch.no_grad():
                model.weight.fill_(float(step))
            callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=8), None)
        callback.on_train_end(None, SimpleNamespace(global_step=6, max_steps=8), None)
        if strategy == "swa":  # from round(0.25 × 8) = 2 completed steps on: the iterates after steps 3…6
            assert model.weight.item() == expected
        else:  # EMA with decay 0.5 from the first step: e = 1, then e = 0.5·e + 0.5·w
            e = 1.0
            for w in (2.0, 3.0, 4.0, 5.0, 6.0):
                e = 0.5 * e + 0.5 * w
            assert model.weight.item() == pytest.approx(e)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "method", "model_steps", "votes"), [
    ("ensemble", "lora", 3 * 12, 3), ("swa", "lora", 12, 1), ("weight_noise", "lora", 12, 1),
    ("de", "lora", 12 + 2 * 1, 3), ("de", "peft:LORA", 12 + 2 * 1, 3), ("ni", "full", 12 + 2 * 3, 1),
    ("de", "full", 12 + 2 * 1, 3)])
def test_every_strategy_runs_end_to_end_with_its_counted_cost(strategy, method, model_steps, votes, tmp_path):
    """12 steps: DE's copies train from round(0.9 × 12) = 11 to the end (one step each); NI's one cycle
    starts at round(0.3 × 12) = 4: 2 single steps, then 2 copies train 3 steps. A `peft:` tuner and full
    fine-tuning (noise on the LM head) run under a strategy like the registered methods."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace('"deni"', f'"{strategy}"').replace("max_steps: 30", "max_steps: 12")
                      .replace("eval_steps: 30", "eval_steps: 12"))
    run_cli("run", str(config), "--out", str(tmp_path / "out"), "--set", f"methods=[{{name: '{method}'}}]")
    (record,) = Store.open(tmp_path / "out").records()
    assert record.status == "done" and record.training["strategy"] == strategy
    assert record.training["model_steps"] == model_steps and record.training["members"] == votes
    assert len(record.metrics.get("member_scores", [None])) == votes
    assert record.costs.get("vote_members") == votes
    # the other voting members' adapters are kept beside the main one, but not K whole models
    members = sorted(p.name for p in Store(tmp_path / "out").adapter_path(record.run_id).glob("member-*"))
    assert members == ([f"member-{k}" for k in range(1, votes)] if method != "full" else [])


def test_snips_loads_its_offline_slice():
    from conftest import SHARED_DATA

    from peftbench.scoring import score
    from peftbench.tasks import TASKS, load_rows

    folder = SHARED_DATA.parent / "data-more"
    if not (folder / "snips").is_dir():
        pytest.skip("no ../shared/data-more/snips slice")
    task = TASKS.get("snips")
    train, test = load_rows(task, "train", folder), load_rows(task, "test", folder)
    assert len(train) == 256 and len(test) == 128
    assert train[0]["text"].startswith("listen to westbam") and task.render_target(train[0]) == "PlayMusic"
    assert {task.gold_of(r) for r in train} == set(range(7))  # every intent, by its own name
    assert score(task, test, [task.render_target(r) for r in test]).primary == 100.0


def test_a_method_can_carry_its_own_mitigation():
    cfg = validate_config({"methods": ["lora", {"name": "lora", "label": "lora-deni", "mitigation": {
        "strategy": "deni"}}], "tasks": ["qs_sentiment"]})
    plain, deni = plan_runs(cfg)
    assert plain.training is None and "mitigation" not in plain.identity["training"]
    assert deni.training.mitigation.strategy == "deni" and deni.identity["training"]["mitigation"]["members"] == 10
    assert plain.run_id == plan_runs(validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"]}))[0].run_id


def test_the_identity_holds_only_the_keys_a_strategy_uses():
    def run_id(**mitigation):
        return plan_runs(validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"],
                                          "training": {"mitigation": mitigation}}))[0].run_id

    assert run_id(strategy="ensemble") == run_id(strategy="ensemble", ni_single_steps=10, sigma2=0.5)
    assert run_id(strategy="ensemble") != run_id(strategy="ensemble", members=5)
    assert run_id(strategy="swa") == run_id(strategy="swa", ema_decay=0.9) != run_id(strategy="swa", swa_start=0.5)
    assert run_id(strategy="de") == run_id(strategy="de", ni_multi_steps=7) != run_id(strategy="de", sigma2=0.5)
    assert run_id(strategy="deni") != run_id(strategy="deni", ni_multi_steps=7)
    assert run_id(strategy="deni") != run_id(strategy="deni", noise_on="lora_A")
    assert run_id(strategy="ensemble") == run_id(strategy="ensemble", noise_on="lora_A")


HAND_WRITTEN = {
    "methods": [{"name": "lora", "learning_rate": 0.01},
                {"name": "lora", "label": "lora-deni", "learning_rate": 0.01,
                 "mitigation": {"strategy": "deni", "ni_single_steps": 10}},
                {"name": "lora", "label": "lora-ensemble", "learning_rate": 0.01,
                 "mitigation": {"strategy": "ensemble", "ni_single_steps": 10}},
                {"name": "prompt_tuning", "label": "pt", "args": {"num_virtual_tokens": 4}},
                {"name": "prompt_tuning", "label": "pt-deni", "args": {"num_virtual_tokens": 4},
                 "mitigation": {"strategy": "deni", "ni_single_steps": 10}},
                {"name": "prompt_tuning", "label": "pt-ensemble", "args": {"num_virtual_tokens": 4},
                 "mitigation": {"strategy": "ensemble", "ni_single_steps": 10}}],
    "tasks": ["qs_sentiment"], "seeds": [3, 4],
    "training": {"max_steps": 20, "fixed_seeds": {"init": 3, "model": 3}},
}
STUDY = {
    "methods": ["lora", {"name": "prompt_tuning", "label": "pt", "args": {"num_virtual_tokens": 4}}],
    "stability": {"strategies": ["default", "deni", "ensemble"], "vary": "data_order"},
    "tasks": ["qs_sentiment"], "seeds": [3, 4],
    "training": {"max_steps": 20, "mitigation": {"ni_single_steps": 10}},
}


def test_a_stability_section_is_the_hand_written_grid():
    """methods × strategies as labels, the shared parameters from training.mitigation, the seeds varying
    only the data order (the rest pinned to the first seed): the same runs, ids and all."""
    study = copy.deepcopy(STUDY)
    study["methods"][0] = {"name": "lora", "learning_rate": 0.01}
    cfg = validate_config(study)
    plan, hand = plan_runs(cfg), plan_runs(validate_config(HAND_WRITTEN))
    assert [(r.method_id, r.seed, r.run_id) for r in plan] == [(r.method_id, r.seed, r.run_id) for r in hand]
    assert len(plan) == 12 and cfg.stability is None  # written out once: a dumped config validates unchanged
    assert [r.run_id for r in plan_runs(validate_config(cfg.model_dump(mode="json")))] == [r.run_id for r in plan]


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": [{"name": "lora", "mitigation": {"strategy": "de"}}]}, r"'methods\[0\]\.mitigation'"),
    ({"training": {"mitigation": {"strategy": "deni"}}}, "'training.mitigation.strategy'"),
    ({"training": {"fixed_seeds": {"init": 1}}}, "'stability.vary'"),
    ({"stability": {"strategies": ["deni", "deni"]}}, "'stability.strategies': strategies must be unique"),
    ({"stability": {"strategies": ["dnei"]}}, r"'stability.strategies\[0\]'"),
    # a method's own error names it as written (index 1), not as written out (index 3 of lora × 3, pt × 3)
    ({"methods": ["lora", {"name": "bitfit", "learning_rate": -1}]},
     r"'methods\[1\]\.learning_rate': Input should be greater than 0 \(got -1\)$"),
])
def test_a_stability_section_rejects_what_it_cannot_write_out(change, message):
    with pytest.raises(PeftbenchError, match=message):
        validate_config({**STUDY, **change})


def test_a_method_the_registry_or_the_model_rejects_is_named_as_written():
    """The registry and the model check a method after the section is written out (lora, lora-deni,
    lora-ensemble, then the second method's copies): their errors name methods[1], not methods[3]."""
    from peftbench.modeling import resolve_model
    from peftbench.runner.grid import check_methods

    with pytest.raises(PeftbenchError, match=r"^methods\[1\]: unknown method 'lorra' \(did you mean 'lora'\?\)"):
        plan_runs(validate_config({**STUDY, "methods": ["lora", "lorra"]}))
    cfg = validate_config({**STUDY, "methods": ["lora", {"name": "lora", "label": "x", "args": {
        "target_modules": ["nope"]}}]})
    with pytest.raises(PeftbenchError, match=r"^methods\[1\] \(x\): method 'lora': target_modules 'nope' matches"):
        check_methods(cfg, resolve_model(cfg.model), plan_runs(cfg))
    assert [validate_config({**STUDY, "stability": None}).method_key(i) for i in (0, 1)] == ["methods[0]", "methods[1]"]


def test_noise_lands_on_the_trainable_tensors_or_on_the_head_under_full_fine_tuning():
    from transformers import AutoModelForCausalLM

    from peftbench.deni.members import MemberTraining, noise_targets
    from peftbench.deni.schedule import SPAWN_DE
    from peftbench.methods import resolve_method
    from peftbench.tiny import tiny_model_dir

    lora = resolve_method("lora").apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir()))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert noise_targets(lora, None) == trainable and len(trainable) > 2
    assert noise_targets(lora, r"lora_A") == {n for n in trainable if "lora_A" in n}
    with pytest.raises(PeftbenchError, match="training.mitigation.noise_on: 'nothing' matches no trainable"):
        noise_targets(lora, "nothing")
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
    head = next(n for n, p in full.named_parameters() if p is full.get_output_embeddings().weight)
    assert noise_targets(full, None) == {head}
    members = MemberTraining(full, MitigationConfig(strategy="de", members=3), seed=0, weight_decay=0.0,
                             max_grad_norm=1.0, autocast=None)
    members._apply(SPAWN_DE, 5)
    params = dict(full.named_parameters())
    for member in members.members:  # every tensor copied, only the head noised
        changed = {n for n, t in member.params.items() if not torch.equal(t, params[n].detach())}
        assert changed == {head} and set(member.params) == set(params)


def strategy_store(path):
    """Three labels of one method (plain, DENI, ensemble), three seeds each, with hand-picked scores."""
    store = Store.create(path)
    runs = {("lora", "default"): ([10.0, 20.0, 30.0], 1.0, 1.0), ("lora-deni", "deni"): ([18.0, 20.0, 22.0], 3.25, 1.5),
            ("lora-ensemble", "ensemble"): ([19.0, 20.0, 21.0], 10.0, 1.0)}
    ids = []
    for (label, strategy), (scores, cost, memory) in runs.items():
        training = {} if strategy == "default" else {"mitigation": {"strategy": strategy}}
        for seed, score in enumerate(scores):
            run_id = f"{label}-{seed}"
            ids.append(run_id)
            store.register([(run_id, label, "qs_sentiment", seed, {
                "method": {"id": label, "name": "lora"}, "task": {"name": "qs_sentiment", "category": "quickstart"},
                "training": training})])
            store.claim(run_id)
            store.finish(run_id, "done", metrics={"score": score, "invalid_rate": 0.0, "n_eval": 10},
                         costs={"trainable_params": 100, "extra_tflops": 0.0, "peak_train_mem_gb": memory,
                                "train_run_peak_mem_gb": memory + seed},
                         training={"step_equivalents": cost})
    store.set_plan(ids)
    return store


def test_strategy_rows_compare_spread_and_cost_by_hand(tmp_path):
    from peftbench.report import build_report, report_markdown
    from peftbench.report.stability import strategy_rows

    store = strategy_store(tmp_path)
    rows = {r.strategy: r for r in strategy_rows(store.records())}
    assert rows["default"].spread.sd == 10.0 and rows["default"].spread.iqr == 10.0
    assert rows["deni"].spread.sd == 2.0 and rows["deni"].sd_vs_default == pytest.approx(0.2)
    assert rows["ensemble"].sd_vs_default == pytest.approx(0.1)
    assert rows["deni"].cost_vs_ensemble == pytest.approx(0.325) and rows["ensemble"].cost_vs_ensemble == 1.0
    assert (rows["deni"].spread.minimum, rows["deni"].spread.maximum) == (18.0, 22.0)
    assert rows["deni"].peak_train_mem_gb == 1.5 and rows["deni"].run_peak_mem_gb == 2.5  # 1.5 + mean(0, 1, 2)
    md = report_markdown(build_report(tmp_path))
    assert "## Stability by strategy" in md and "| qs_sentiment | lora-deni | deni | 3 | 20.0 | 2.00 |" in md
    assert "| 3.25 | 0.33 | 1.5 | 2.5 |" in md
    # the per-method section: sd 10, t-based 95 % CI 4.303 × 10 / √3 = 24.84, min, max, IQR 25 − 15
    assert "| lora | qs_sentiment | 3 | 20.0 | 10.00 | ± 24.84 | 10.0 | 30.0 | 10.00 |" in md


def test_each_label_is_compared_with_its_own_default_not_another_label_of_the_method(tmp_path):
    """Two learning rates of LoRA, each plain and with DENI (a stability section writes out lora-a,
    lora-a-deni, lora-b, lora-b-deni): each DENI row's sd / default is against its own plain runs."""
    from peftbench.report.stability import strategy_rows

    store = Store.create(tmp_path)
    runs = {("lora-a", "default", 1e-3): [10.0, 20.0, 30.0], ("lora-a-deni", "deni", 1e-3): [18.0, 20.0, 22.0],
            ("lora-b", "default", 5e-3): [19.0, 20.0, 21.0], ("lora-b-deni", "deni", 5e-3): [18.0, 20.0, 22.0]}
    ids = []
    for (label, strategy, lr), scores in runs.items():
        training = {"epochs": 3} if strategy == "default" else {"epochs": 3, "mitigation": {"strategy": strategy}}
        for seed, score in enumerate(scores):
            ids.append(f"{label}-{seed}")
            store.register([(ids[-1], label, "qs_sentiment", seed, {
                "method": {"id": label, "name": "lora", "learning_rate": lr}, "seed": seed,
                "task": {"name": "qs_sentiment"}, "training": training})])
            store.claim(ids[-1])
            store.finish(ids[-1], "done", metrics={"score": score, "invalid_rate": 0.0, "n_eval": 10}, costs={},
                         training={})
    ids.append("lora-b-deni-3")  # a seed that diverged is counted, not silently left out of the spread
    store.register([(ids[-1], "lora-b-deni", "qs_sentiment", 3, {
        "method": {"id": "lora-b-deni", "name": "lora", "learning_rate": 5e-3}, "seed": 3,
        "task": {"name": "qs_sentiment"}, "training": {"epochs": 3, "mitigation": {"strategy": "deni"}}})])
    store.claim(ids[-1])
    store.finish(ids[-1], "diverged", error="non-finite loss at step 7")
    store.set_plan(ids)
    rows = {r.label: r for r in strategy_rows(store.records())}
    # sd: a 10, a-deni 2, b 1, b-deni 2 → a-deni 2/10, b-deni 2/1; each plain label against itself
    assert rows["lora-a-deni"].sd_vs_default == pytest.approx(0.2)
    assert rows["lora-b-deni"].sd_vs_default == pytest.approx(2.0)
    assert rows["lora-a"].sd_vs_default == rows["lora-b"].sd_vs_default == 1.0
    assert rows["lora-b-deni"].not_done == 1 and rows["lora-b-deni"].spread.n == 3 and rows["lora-a"].not_done == 0
    from peftbench.report.stability import html, markdown

    assert "| qs_sentiment | lora-b-deni | deni | 3 (1 not done) |" in markdown(list(rows.values()))
    assert "<td>3 (1 not done)</td>" in html(list(rows.values()), None)


@pytest.mark.slow
def test_kill_9_mid_deni_then_rerun_gives_the_uninterrupted_results(deni_grid, tmp_path):
    """Killed while a DENI run trains with its copies (after the first NI phase began), the run is
    re-run from step 0 (copies are not checkpointed) and ends exactly as the uninterrupted one."""
    import signal

    from conftest import start_traced, stored_results, wait_for_mark

    config, reference = deni_grid
    out, trace = tmp_path / "out", tmp_path / "trace"
    proc = start_traced(config, out, trace, "--set", "training.checkpoint_steps=5", stop_at="lora:train:12")
    mark = wait_for_mark(proc, trace, lambda m: m["method"] == "lora" and m["phase"] == "train" and m["step"] >= 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / mark["run_id"]).exists()  # a run with a strategy writes none
    run_cli("run", str(config), "--out", str(out))
    assert Store.open(out).get(mark["run_id"]).attempts == 2
    assert stored_results(out) == stored_results(reference)


def test_the_deni_split_pools_stratifies_and_balances():
    from collections import Counter

    from peftbench.errors import PeftbenchError
    from peftbench.tasks.data import split_rows

    train = [{"id": i, "label": 0 if i < 300 else (1 if i < 450 else 2)} for i in range(460)]  # 300 / 150 / 10
    held = [{"id": 1000 + i, "label": i % 3} for i in range(90)]  # 30 per class
    label = lambda r: r["label"]  # noqa: E731
    tr, val, test = split_rows("deni", train, held, val_fraction=0.1, seed=0, max_train=120, label_of=label)
    pooled = Counter(label(r) for r in train + held)  # 330 / 180 / 40
    assert Counter(label(r) for r in test) == {c: round(n * 0.2) for c, n in pooled.items()}  # 66 / 36 / 8
    assert Counter(label(r) for r in tr) == {0: 44, 1: 44, 2: 32}  # class 2 has 32 rows left: its share goes on
    assert len(val) == 12
    ids = [r["id"] for part in (tr, val, test) for r in part]
    assert len(ids) == len(set(ids))  # no row in two parts
    again = split_rows("deni", train, held, val_fraction=0.1, seed=0, max_train=120, label_of=label)
    assert [r["id"] for r in again[0]] == [r["id"] for r in tr]
    other = split_rows("deni", train, held, val_fraction=0.1, seed=1, max_train=120, label_of=label)
    assert [r["id"] for r in other[0]] != [r["id"] for r in tr]
    default = split_rows("deni", train, held, val_fraction=0.1, seed=0, label_of=label)[0]
    assert len(default) == 550 - 110  # fewer than 1,000 rows: all of the 80 %
    with pytest.raises(PeftbenchError, match="classification"):
        split_rows("deni", train, held, val_fraction=0.1, seed=0)


@pytest.mark.slow
def test_fixed_seeds_take_each_source_of_randomness_off_the_run_seed(tmp_path):
    """All three pinned: seeds 0 and 1 give identical runs (nothing else draws on the run seed); only
    the data order pinned: they differ (initialisation and dropout still follow the seed)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace(f"mitigation: {json.dumps(MITIGATION)}", "mitigation: {strategy: default}")
                      .replace("max_steps: 30", "max_steps: 10").replace("eval_steps: 30", "eval_steps: 10")
                      .replace("seeds: [0]", "seeds: [0, 1]"))
    results = {}
    for name, fixed in (("all", "{init: 7, data_order: 7, model: 7}"), ("data", "{data_order: 7}")):
        out = tmp_path / name
        run_cli("run", str(config), "--out", str(out), "--set", "methods=[{name: lora, learning_rate: 0.05}]",
                "--set", f"training.fixed_seeds={fixed}")
        by_seed = {r.seed: r for r in Store.open(out).records()}
        assert {r.status for r in by_seed.values()} == {"done"}
        results[name] = [Store(out).predictions_path(by_seed[s].run_id).read_text() for s in (0, 1)] + [
            by_seed[s].training["train_loss"] for s in (0, 1)]
    assert results["all"][0] == results["all"][1] and results["all"][2] == results["all"][3]
    assert results["data"][2] != results["data"][3]


def test_ensemble_members_keep_the_pinned_sources_fixed_across_run_seeds(tmp_path, monkeypatch):
    """With fixed_seeds pinned, member k's initialisation, data order and dropout seeds are the pinned
    ones plus k × the stride, whatever the run seed (they once followed the run seed, so a study that
    varies one source varied all three in the ensemble's members); the members still differ."""
    from peftbench.runner import run as module
    from peftbench.runner.grid import run_grid

    real_train, real_seed, calls = module.train, module.seed_everything, []
    monkeypatch.setattr(module, "seed_everything", lambda seed: (calls.append(("init", seed)), real_seed(seed)))
    monkeypatch.setattr(module, "train", lambda *a, **kw: (calls.append(("train", kw["seed"], kw["data_seed"])),
                                                          real_train(*a, **kw))[1])
    cfg = yaml.safe_load(CONFIG.replace("max_steps: 30", "max_steps: 2").replace("seeds: [0]", "seeds: [0, 1]"))
    cfg["methods"] = cfg["methods"][:1]
    cfg["training"]["mitigation"] = {"strategy": "ensemble", "members": 3}
    cfg["training"]["fixed_seeds"] = {"init": 7, "data_order": 8, "model": 9}
    cfg["runtime"] = {**cfg.get("runtime", {}), "workers": 1}
    run_grid(validate_config(cfg), tmp_path / "out", verbosity=0)
    assert {r.status for r in Store.open(tmp_path / "out").records()} == {"done"}
    stride = module.ENSEMBLE_SEED_STRIDE
    one_run = [("init", 7), ("train", 9, 8)] + [c for k in (1, 2) for c in
                                                 (("init", 7 + k * stride), ("train", 9 + k * stride, 8 + k * stride))]
    assert calls == one_run * 2


def test_each_ensemble_member_logs_beside_its_run(tmp_path, monkeypatch):
    """The members an ensemble trains after its main model had no log directory: with
    `report_to: [tensorboard]` their curves went to the Trainer's temporary directory, deleted with it."""
    from peftbench.runner import run as module
    from peftbench.runner.grid import run_grid

    real, log_dirs = module.train, []

    def train(*args, **kwargs):
        log_dirs.append(kwargs["log_dir"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "train", train)
    cfg = yaml.safe_load(CONFIG.replace("max_steps: 30", "max_steps: 4"))
    cfg["methods"] = cfg["methods"][:1]
    cfg["training"]["mitigation"] = {"strategy": "ensemble", "members": 3}
    run_grid(validate_config(cfg), tmp_path / "out", verbosity=0)
    (record,) = Store.open(tmp_path / "out").records()
    run_dir = tmp_path / "out" / "logs" / "tensorboard" / record.run_id
    assert record.training["members"] == 3 and log_dirs == [run_dir, run_dir / "member-1", run_dir / "member-2"]
