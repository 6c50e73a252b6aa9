"""Training one run: every method learns, divergence is caught, the best checkpoint is restored,
and the same seed gives the same weights."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from conftest import llama

from peftbench.config import TrainingConfig
from peftbench.methods import METHODS, resolve_method
from peftbench.tasks import get_task, load_rows
from peftbench.tasks.prompts import encode_example
from peftbench.training import TrainResult, _Watch, train

LRS = {"lora": 1e-2, "ia3": 5e-2, "prompt_tuning": 1e-1, "prefix_tuning": 1e-2, "p_tuning": 1e-2,
       "ln_tuning": 5e-2, "bitfit": 5e-2, "full": 1e-3}


def examples(tokenizer, n):
    task = get_task("qs_sentiment")
    return [encode_example(task, r, tokenizer, 128) for r in load_rows(task, "train")[:n]]


def run(tokenizer, name, tmp_path, *, steps=30, seed=0, model=None):
    model = model if model is not None else resolve_method(name, _small(name)).apply(llama(tokenizer))
    cfg = TrainingConfig(max_steps=steps, batch_size=4, eval_steps=10, warmup_ratio=0.0)
    data = examples(tokenizer, 16)
    return model, train(model, tokenizer, data, data[:4], cfg, learning_rate=LRS.get(name, 3e-2), seed=seed,
                        device=torch.device("cpu"), workdir=tmp_path)


def _small(name):
    return {"num_virtual_tokens": 8} if name in ("prompt_tuning", "p_tuning") else {}


@pytest.mark.parametrize("name", [m for m in METHODS.names() if resolve_method(m).trains])
def test_every_method_learns(builtin_model_dir, tmp_path, name):
    """On the pretrained built-in model, 30 steps cut the target loss of every method."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir)
    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir)
    model = resolve_method(name, _small(name)).apply(base)
    _, result = run(tokenizer, name, tmp_path, model=model)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.steps == 30 and not result.diverged
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert result.best_val_loss is not None and math.isfinite(result.best_val_loss)


def test_non_finite_loss_marks_the_run_diverged(tokenizer, tmp_path):
    model = resolve_method("lora").apply(llama(tokenizer))
    with torch.no_grad():
        model.base_model.model.model.norm.weight.fill_(float("nan"))
    _, result = run(tokenizer, "lora", tmp_path, model=model)
    assert result.diverged and result.diverged_step == 1 and result.steps <= 1


def test_same_seed_same_weights(tokenizer, tmp_path):
    a, _ = run(tokenizer, "lora", tmp_path / "a", steps=12, seed=3)
    b, _ = run(tokenizer, "lora", tmp_path / "b", steps=12, seed=3)
    c, _ = run(tokenizer, "lora", tmp_path / "c", steps=12, seed=4)
    pa, pb, pc = ([p for p in m.parameters() if p.requires_grad] for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc, strict=True))


def test_best_checkpoint_is_restored():
    model = torch.nn.Linear(2, 2)
    watch = _Watch(model, TrainResult(), select_best=True, progress=None)

    class State:
        global_step = 0

    for step, val_loss in ((10, 1.0), (20, 0.5), (30, 0.9)):
        State.global_step = step
        with torch.no_grad():
            model.weight.fill_(step)
        watch.on_evaluate(None, State, None, metrics={"eval_loss": val_loss})
    watch.restore_best()
    assert torch.all(model.weight == 20) and watch.result.best_step == 20 and watch.result.best_val_loss == 0.5


def test_our_collation_is_what_datacollatorforseq2seq_gives(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    from peftbench.tasks import TASKS
    from peftbench.tasks.prompts import IGNORE_INDEX, encode_example
    from peftbench.training import collate

    task = TASKS.get("qs_sentiment")
    rows = task.source.generate("train", 7, 0)
    features = [encode_example(task, r, tokenizer, 256) for r in rows]
    assert len({len(f["input_ids"]) for f in features}) > 1  # rows of different lengths: padding happens
    tokenizer.padding_side = "right"
    reference = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)(features)
    ours = collate(features, pad_id=tokenizer.pad_token_id)
    assert set(ours) == set(reference)
    for key in ours:
        assert torch.equal(ours[key], reference[key]) and ours[key].dtype == reference[key].dtype, key


def test_the_final_validation_loss_is_the_final_weights_loss_by_hand(tokenizer, tmp_path):
    """The last scheduled evaluation falls on the last step, so it is reused rather than repeated: it
    must be the loss of the final weights on the validation rows (one batch here: the model's own loss)."""
    from peftbench.training import collate

    model = resolve_method("lora", {}).apply(llama(tokenizer))
    cfg = TrainingConfig(max_steps=20, batch_size=4, eval_steps=10, warmup_ratio=0.0, select_best=False)
    data = examples(tokenizer, 16)
    result = train(model, tokenizer, data, data[:4], cfg, learning_rate=1e-2, seed=0, device=torch.device("cpu"),
                   workdir=tmp_path)
    assert [h["step"] for h in result.history if "val_loss" in h] == [10, 20]
    with torch.no_grad():
        by_hand = model.eval()(**collate(data[:4], pad_id=tokenizer.pad_token_id)).loss.item()
    assert result.final_val_loss == pytest.approx(by_hand, rel=1e-6)


def test_lean_steps_train_exactly_as_the_trainers_own_walks(tokenizer, tmp_path, monkeypatch):
    """`_lean_steps`, the cached FLOP count and the clipping of trainable tensors only skip the
    Trainer's per-step walks of the model; the Trainer's own calls are the reference: the same
    weights bit for bit, the same losses, gradient norms and counted FLOPs at every step."""
    from contextlib import nullcontext

    import accelerate.optimizer
    from transformers import Trainer

    import peftbench.training as training

    def recorded(fn, into):
        def wrapper(self, arg):
            into.append(fn(self, arg))
            return into[-1]
        return wrapper

    probe = accelerate.optimizer.is_lomo_available
    lean_flops: list[int] = []
    lean_norms: list[torch.Tensor] = []
    monkeypatch.setattr(training._Trainer, "floating_point_ops", recorded(training._Trainer.floating_point_ops,
                                                                          lean_flops))
    monkeypatch.setattr(training._Trainer, "_clip_grad_norm", recorded(training._Trainer._clip_grad_norm, lean_norms))
    lean, lean_result = run(tokenizer, "lora", tmp_path / "lean", steps=12, seed=5)
    assert accelerate.optimizer.is_lomo_available is probe
    plain_flops: list[int] = []
    plain_norms: list[torch.Tensor] = []
    monkeypatch.setattr(training._Trainer, "floating_point_ops", recorded(Trainer.floating_point_ops, plain_flops))
    monkeypatch.setattr(training._Trainer, "_clip_grad_norm", recorded(Trainer._clip_grad_norm, plain_norms))
    monkeypatch.setattr(training, "_lean_steps", lambda model: nullcontext())
    plain, plain_result = run(tokenizer, "lora", tmp_path / "plain", steps=12, seed=5)
    assert len(lean_flops) == 12 and lean_flops == plain_flops
    assert len(lean_norms) == 12 and all(torch.equal(a, b) for a, b in zip(lean_norms, plain_norms, strict=True))
    assert lean_result.history == plain_result.history and lean_result.train_loss == plain_result.train_loss
    for (name, a), (_, b) in zip(lean.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert "train" not in vars(lean) and "zero_grad" not in vars(lean)
    assert not any(m.training for m in lean.modules())


def test_lean_steps_leave_the_states_the_full_walks_leave(tokenizer):
    from peftbench.training import _lean_steps

    model = resolve_method("lora").apply(llama(tokenizer))
    trainable = [p for p in model.parameters() if p.requires_grad]
    with _lean_steps(model):
        model.eval()
        assert not any(m.training for m in model.modules())
        next(model.children()).train()  # one branch out of step with the rest
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()
        assert all(m.training for m in model.modules())
        model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
        assert all(p.grad is not None for p in trainable)
        model.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in trainable)
        model.zero_grad()
        assert all(p.grad is None for p in model.parameters())


def test_checkpoints_do_not_look_the_base_model_up_on_the_hub(tokenizer, tmp_path, no_hub_lookup):
    """A loaded model carries the name the config gives it (a hub id, not a local folder), so peft's
    embedding check at each save would ask the hub about it; checkpoints, like adapters, skip it
    and hold the adapter alone."""
    base = llama(tokenizer)
    base.name_or_path = base.config.name_or_path = "org/model"
    model = resolve_method("lora", {}).apply(base)
    cfg = TrainingConfig(max_steps=4, batch_size=4, eval_steps=10, warmup_ratio=0.0, checkpoint_steps=2)
    data = examples(tokenizer, 16)
    train(model, tokenizer, data, data[:4], cfg, learning_rate=1e-2, seed=0, device=torch.device("cpu"),
          workdir=tmp_path)
    saved = sorted(tmp_path.glob("checkpoint-*/adapter_model.safetensors"))
    assert saved and "save_pretrained" not in model.__dict__  # the model's own method again


def test_each_training_ends_its_wandb_run(monkeypatch, tmp_path):
    """transformers' W&B callback starts a run only where none is active: without `finish` a
    worker's next run would log into this one (W&B's exit hook does not run in forked workers)."""
    from types import SimpleNamespace

    from peftbench.training import _logger_dirs

    finished = []
    wandb = SimpleNamespace(run=None, finish=lambda: finished.append(wandb.run))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with _logger_dirs(["wandb"], tmp_path):
        assert os.environ["WANDB_MODE"] == "offline"
        wandb.run = "run-1"  # what the callback's wandb.init leaves
    assert finished == ["run-1"] and "WANDB_MODE" not in os.environ
    with _logger_dirs(["tensorboard"], tmp_path):  # a run that does not log to W&B leaves W&B alone
        wandb.run = "someone else's"
    assert finished == ["run-1"]


@pytest.mark.parametrize("name,decay", [("lora", 0.1), ("ln_tuning", 0.0)])
def test_noisy_copies_step_with_the_main_models_learning_rate_and_weight_decay(tokenizer, tmp_path, monkeypatch,
                                                                                 name, decay):
    """A DE copy's step t uses the rate the main model's step t used (cosine with 2 warm-up steps of
    20, by hand), not the next step's (read after the Trainer stepped its schedule, the copies' last
    update had rate 0), and no decay on norms, as the Trainer's AdamW (LayerNorm tuning trains only norms)."""
    from peftbench.config import MitigationConfig
    from peftbench.deni import members as module

    seen = []
    real = module.MemberTraining._train

    def spy(self, member, lr):
        seen.append((lr, {g["weight_decay"] for g in member.optimizer.param_groups}))
        real(self, member, lr)

    monkeypatch.setattr(module.MemberTraining, "_train", spy)
    peak, total, warmup = LRS[name], 20, 2
    cfg = TrainingConfig(max_steps=total, batch_size=4, eval_steps=total, warmup_ratio=0.1, weight_decay=0.1,
                         mitigation=MitigationConfig(strategy="de", members=2, ni_end=0.5, de_start=0.5))
    data = examples(tokenizer, 16)
    train(resolve_method(name).apply(llama(tokenizer)), tokenizer, data, data[:4], cfg, learning_rate=peak, seed=0,
          device=torch.device("cpu"), workdir=tmp_path)
    rates = [peak * (t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))))
             for t in range(total)]
    assert len(seen) == total // 2 and [lr for lr, _ in seen] == pytest.approx(rates[total // 2:], rel=1e-12)
    assert {d for _, decays in seen for d in decays} == {decay}
