"""Fine-tuning one run with the transformers Trainer.

Best-checkpoint selection keeps an in-memory copy of the *trainable* tensors at the lowest
validation loss and restores it at the end. Trainer's own `load_best_model_at_end` would write a
full checkpoint at every evaluation and reload it through `from_pretrained`, which BitFit's added
biases and full fine-tuning of an 8B model make costly or fragile; snapshots of the tensors that
actually change are exact and cheap for PEFT methods.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import accelerate.optimizer
import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from peftbench.config import TrainingConfig
from peftbench.deni.averaging import WeightAveraging
from peftbench.deni.members import COPY_STRATEGIES, MemberTraining
from peftbench.tasks.prompts import IGNORE_INDEX
from peftbench.utils import atomic_torch_save

ProgressFn = Callable[[int, int, float | None], None]  # (step, total steps, that step's loss)
MAX_HISTORY = 200
WATCH_STATE = "peftbench_watch.pt"


@dataclass
class TrainResult:
    steps: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    final_val_loss: float | None = None
    diverged: bool = False
    diverged_step: int | None = None
    last_finite_loss: float | None = None
    train_tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    strategy: str = "default"
    """Instability mitigation (docs/stability.md); with one, the final weights are kept (no best snapshot)."""
    model_steps: int = 0
    """Optimiser steps taken by all models of the run (the main one and any noisy copies)."""
    step_equivalents: float = 1.0
    """model_steps / steps: what training cost in single trainings (DENI ≈ 3.3, an ensemble of K: K)."""
    members: int = 1
    """Models whose predictions are voted (the DE copies and the main model), 1 without a vote."""


def collate(features: list[dict[str, list[int]]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of encoded examples: ids with the pad token, attention 0 and labels
    IGNORE_INDEX on the padding. What `DataCollatorForSeq2Seq` gives for these features (a test
    compares them), without its per-batch round trip through the tokenizer."""
    width = max(len(f["input_ids"]) for f in features)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        gap = width - len(f["input_ids"])
        out["input_ids"].append(f["input_ids"] + [pad_id] * gap)
        out["attention_mask"].append(f["attention_mask"] + [0] * gap)
        out["labels"].append(f["labels"] + [IGNORE_INDEX] * gap)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


@contextmanager
def _frozen_heap(device: torch.device) -> Iterator[None]:
    """On CPU, the process's long-lived objects (model, task data, tokenizer) out of the collector's
    sight while a run trains: accelerate's `free_memory` runs a full `gc.collect()` at the start of
    every training loop, which on a worker's heap costs more than a tiny model's whole training. They
    are handed back afterwards, so whatever became garbage is still collected. Not on a GPU: there
    that collection is what frees the previous run's model (accelerate's bf16 forward wrapper makes
    it a reference cycle) before this one allocates, and it is cheap next to a GPU run."""
    if device.type == "cuda":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _lean_steps(model: nn.Module) -> Iterator[None]:
    """The Trainer calls `model.train()` and `model.zero_grad()` at every step. Both walk the whole
    model, the frozen base included, and on a small model that costs about 7 % of training. While
    a run trains, `train` returns at once when every module is already in the mode asked for, and
    `zero_grad` clears only the tensors that can hold a gradient (a frozen tensor never gets one).
    The model's state after either call is what the original calls leave. accelerate's optimizer
    step asks the file system twice per step whether `lomo_optim` is installed (about 4 % of a
    tiny model's step); the answer cannot change while a run trains, so it is asked once."""
    modules = list(model.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    walk_train = model.train

    def train(mode: bool = True) -> nn.Module:
        if any(m.training != mode for m in modules):
            walk_train(mode)
        return model

    def zero_grad(set_to_none: bool = True) -> None:
        for p in trainable:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    model.train, model.zero_grad = train, zero_grad
    probe = getattr(accelerate.optimizer, "is_lomo_available", None)
    if probe is not None:
        answer = probe()
        accelerate.optimizer.is_lomo_available = lambda: answer
    try:
        yield
    finally:
        del model.train, model.zero_grad
        if probe is not None:
            accelerate.optimizer.is_lomo_available = probe


@contextmanager
def _logger_dirs(report_to: list[str], log_dir: Path | None) -> Iterator[None]:
    """TensorBoard's directory (transformers 5 reads it from the environment, else the Trainer's
    temporary output dir, which a run deletes) and W&B offline unless the user chose a mode. The
    W&B run ends with the training: transformers' callback starts one only where none is active,
    so a worker's next run would log into this one, and W&B's own exit hook never runs in a worker
    forked from the preloaded server (`runner.backends.processes`), which ends with `os._exit`."""
    saved = {k: os.environ.get(k) for k in ("TENSORBOARD_LOGGING_DIR", "WANDB_MODE")}
    if "tensorboard" in report_to and log_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")
        if "wandb" in report_to and wandb is not None and wandb.run is not None:
            wandb.finish()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Watch(TrainerCallback):
    """Best-by-validation-loss snapshots, divergence detection, loss history and progress."""

    def __init__(self, model: nn.Module, result: TrainResult, select_best: bool, progress: ProgressFn | None):
        self.model = model
        self.result = result
        self.select_best = select_best
        self.progress = progress
        self.best: dict[str, torch.Tensor] | None = None
        self._log_every = 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.result.total_steps = state.max_steps
        self._log_every = max(1, state.max_steps // MAX_HISTORY)

    def on_step_end(self, args, state, control, **kwargs):
        self.result.steps = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        if loss is not None:
            if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
                self.result.diverged = True
                self.result.diverged_step = state.global_step
                control.should_training_stop = True
                return
            self.result.last_finite_loss = float(loss)
            if state.global_step % self._log_every == 0:
                self.result.history.append({"step": state.global_step, "loss": float(loss)})
            if self.progress:  # logged every step (logging_steps=1), after the step: this step's loss
                self.progress(state.global_step, state.max_steps, float(loss))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        val = (metrics or {}).get("eval_loss")
        if val is None:
            return
        self.result.history.append({"step": state.global_step, "val_loss": float(val)})
        if not math.isfinite(val):
            return
        if self.result.best_val_loss is None or val < self.result.best_val_loss:
            self.result.best_val_loss = float(val)
            self.result.best_step = state.global_step
            if self.select_best:
                self.best = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters()
                             if p.requires_grad}

    def on_save(self, args, state, control, **kwargs):
        """Complete a resumable checkpoint: our state (best snapshot, the result so far) is written last
        and atomically, so its presence marks the checkpoint whole; then older checkpoints go."""
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_torch_save(folder / WATCH_STATE, {"best": self.best, "result": asdict(self.result)})
        for other in Path(args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)

    def resume(self, checkpoint: Path) -> None:
        saved = torch.load(checkpoint / WATCH_STATE)
        self.best = saved["best"]
        for key, value in saved["result"].items():
            setattr(self.result, key, value)

    def restore_best(self) -> None:
        if self.best is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best.items():
                params[name].copy_(value)


def last_complete_checkpoint(workdir: Path) -> Path | None:
    """The newest checkpoint that was written to the end; a partial one (killed while saving) is removed."""
    complete = None
    for folder in sorted(workdir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda f: int(f.name.rsplit("-", 1)[1])):
        if (folder / WATCH_STATE).is_file():
            complete = folder
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return complete


class _Trainer(Trainer):
    """The Trainer, telling the noisy copies (if any) which micro-batches the main model trained on."""

    def __init__(self, *args: Any, members: MemberTraining | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.members = members
        self._flops_per_token: int | None = None
        self._trainable: list[nn.Parameter] | None = None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer's count (6 × tokens × non-embedding parameters) with the parameters counted
        once per run: the Trainer counts them again at every step, walking the whole model."""
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs:
            return 0
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops({main: torch.empty(1)})
        return self._flops_per_token * inputs[main].numel()

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip the trainable tensors' gradients, as the Trainer does, without walking the frozen base:
        the Trainer hands all of `model.parameters()` over at every step, and only trainable tensors
        hold a gradient (the same tensors in the same order, so the same norm)."""
        if self.accelerator.distributed_type != DistributedType.NO:  # sharded and wrapped models: as they come
            return super()._clip_grad_norm(model)
        if self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._trainable, self.args.max_grad_norm)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.members is not None:
            self.members.record(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The Trainer's checkpoint, a peft model's saved as `PeftMethod.save` saves it: without the
        embedding check that looks the base model up by name (on the hub) at every save."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            super()._save(output_dir, state_dict)
            return
        self.model.save_pretrained = partial(self.model.save_pretrained, save_embedding_layers=False)
        try:
            super()._save(output_dir, state_dict)
        finally:
            del self.model.save_pretrained


def train(
    model: nn.Module,
    tokenizer: Any,
    train_examples: list[dict[str, list[int]]],
    val_examples: list[dict[str, list[int]]],
    cfg: TrainingConfig,
    *,
    learning_rate: float,
    seed: int,
    device: torch.device,
    workdir: Path,
    progress: ProgressFn | None = None,
    voters: list[dict[str, torch.Tensor]] | None = None,
    data_seed: int | None = None,
    log_dir: Path | None = None,
) -> TrainResult:
    """Train `model` in place. With `cfg.checkpoint_steps`, `workdir` receives a resumable checkpoint
    (weights, optimiser, scheduler, RNG and data position, best snapshot) every that many steps, and a
    call that finds one there continues from it instead of from step 0.

    With a mitigation strategy (`cfg.mitigation`), noisy copies train beside the main model; the
    delayed ensemble's copies are appended to `voters` (their trainable tensors) for the vote. Such a
    run writes no checkpoints: the copies' tensors and optimisers are not saved, so a killed run
    restarts from step 0 (the store re-runs it). `seed` drives dropout and the copies' noise,
    `data_seed` (default: `seed`) the order of the batches. `log_dir`: where the loggers of
    `cfg.report_to` write (TensorBoard)."""
    result = TrainResult(train_tokens=sum(len(e["input_ids"]) for e in train_examples),
                         strategy=cfg.mitigation.strategy)
    mitigated = cfg.mitigation.strategy != "default"
    use_bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    args = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        optim="adamw_torch",
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps" if cfg.eval_steps else "epoch",
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if cfg.checkpoint_steps and not mitigated else "no",
        save_steps=cfg.checkpoint_steps or 500,
        save_total_limit=None,  # rotation is ours (_Watch.on_save), once the new checkpoint is whole
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,
        report_to=list(cfg.report_to) or "none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed if data_seed is None else data_seed,
        use_cpu=device.type == "cpu",
        bf16=use_bf16,
        fp16=cfg.precision == "fp16",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    collator = partial(collate, pad_id=tokenizer.pad_token_id)
    watch = _Watch(model, result, cfg.select_best and not mitigated, progress)
    strategy = cfg.mitigation.strategy
    members = MemberTraining(model, cfg.mitigation, seed=seed, weight_decay=cfg.weight_decay,
                             max_grad_norm=cfg.max_grad_norm, autocast=torch.bfloat16 if use_bf16 else None) \
        if strategy in COPY_STRATEGIES else None
    averaging = WeightAveraging(model, cfg.mitigation) if strategy in ("swa", "ema") else None
    with _logger_dirs(cfg.report_to, log_dir):  # the loggers read these while the Trainer builds and trains
        trainer = _Trainer(
            model=model,
            args=args,
            train_dataset=train_examples,
            eval_dataset=val_examples,
            data_collator=collator,
            callbacks=[watch, *(c for c in (members, averaging) if c is not None)],
            members=members,
        )
        trainer.remove_callback(PrinterCallback)  # progress is ours; Trainer would print every log line
        checkpoint = last_complete_checkpoint(workdir) if cfg.checkpoint_steps and not mitigated else None
        if checkpoint:
            watch.resume(checkpoint)
        with _frozen_heap(device), _lean_steps(model):
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    result.train_loss = float(output.training_loss) if math.isfinite(output.training_loss) else None
    if members is not None:
        result.model_steps = members.model_steps
        result.step_equivalents = members.model_steps / max(result.steps, 1)
        result.members = 1 + len(members.final)
        if voters is not None:
            voters.extend(members.final)
    else:
        result.model_steps = result.steps
    if not result.diverged:
        last = next((h for h in reversed(result.history) if "val_loss" in h), None)
        if last is not None and last["step"] == result.steps and not mitigated:
            result.final_val_loss = last["val_loss"]  # evaluated at the last step, on these very weights
        else:  # the last interval ended between scheduled evaluations, or a strategy changed the weights
            result.final_val_loss = float(trainer.evaluate()["eval_loss"])
        watch.restore_best()
    model.eval()
    return result
