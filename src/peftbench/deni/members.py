"""DENI inside the transformers Trainer: the noisy copies are extra sets of the *trainable* tensors.

A copy is not a second model: it is one tensor per trainable parameter plus its own AdamW, and it
trains on the main model's batches through `torch.func.functional_call` (the frozen base weights are
shared). So K members cost K × the trainable parameters and optimiser states — for PEFT methods a
few MB — and full fine-tuning K × the model, as it must. The main model keeps the Trainer's optimiser
and schedule; copies take the learning rate the main model's step used (read as the step begins: the
Trainer steps its schedule before `on_step_end`), the same gradient clipping, and the same weight
decay per tensor (the Trainer's AdamW leaves biases and norms undecayed, and so do the copies).

`MemberTraining` is a Trainer callback driven by `schedule.events`: it spawns copies (NI: noise
decaying with the global step; DE: constant noise), trains them after each main step on the batches
the main step saw (recorded by `record`), averages them into the main model at the end of an NI phase,
and keeps the DE copies' final tensors for voting. `weight_noise` (a baseline) adds NI's noise to the
main model at the same points, without copies.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from peftbench.config import MitigationConfig
from peftbench.deni.noise import average, noise_generator, noisy_copy
from peftbench.deni.schedule import AVERAGE, SPAWN_DE, SPAWN_NI, Schedule, events, step_equivalents
from peftbench.errors import PeftbenchError

NI_STRATEGIES = frozenset({"ni", "deni", "weight_noise"})
DE_STRATEGIES = frozenset({"de", "deni"})
COPY_STRATEGIES = NI_STRATEGIES | DE_STRATEGIES  # the strategies this callback runs


def schedule_of(cfg: MitigationConfig) -> Schedule:
    return Schedule(members=cfg.members, ni_start=cfg.ni_start, ni_end=cfg.ni_end, de_start=cfg.de_start,
                    ni_single_steps=cfg.ni_single_steps, ni_multi_steps=cfg.ni_multi_steps)


def training_cost(cfg: MitigationConfig, total_steps: int) -> float:
    """Model-steps per step of a plain run: what the strategy's training costs in single trainings."""
    if cfg.strategy == "ensemble":
        return float(cfg.members)
    if cfg.strategy not in COPY_STRATEGIES or cfg.strategy == "weight_noise":
        return 1.0
    return step_equivalents(total_steps, schedule_of(cfg), ni=cfg.strategy in NI_STRATEGIES,
                            de=cfg.strategy in DE_STRATEGIES)


def noise_targets(model: nn.Module, pattern: str | None) -> frozenset[str]:
    """The trainable tensors that get noise: those whose name matches `pattern` (re.search); by default
    every trainable tensor, or — when every parameter trains (full fine-tuning) — the LM head alone,
    the decoder's counterpart of the classifier head the paper noises (found by identity, so a head
    tied to the input embeddings is found under the embeddings' name)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if pattern is not None:
        found = frozenset(n for n in trainable if re.search(pattern, n))
        if not found:
            raise PeftbenchError(f"training.mitigation.noise_on: {pattern!r} matches no trainable parameter "
                                 f"(they are named like {', '.join(trainable[:3])})")
        return found
    if len(trainable) < sum(1 for _ in model.parameters()):
        return frozenset(trainable)
    head = model.get_output_embeddings()
    name = next((n for n, p in model.named_parameters() if head is not None and p is head.weight), None)
    if name is None:
        raise PeftbenchError("training.mitigation.noise_on: this model has no output embedding to noise by "
                             "default under full fine-tuning; name the tensors with a regular expression")
    return frozenset({name})


@dataclass
class _Member:
    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer


def decay_by_name(trainable: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                  default: float) -> dict[str, float]:
    """Each trainable tensor's weight decay in the main model's optimiser (`default` without one)."""
    name_of = {id(p): n for n, p in trainable.items()}
    decay = dict.fromkeys(trainable, default)
    found = 0
    for group in optimizer.param_groups if optimizer is not None else ():
        for param in group["params"]:
            if id(param) in name_of:
                decay[name_of[id(param)]] = group.get("weight_decay", default)
                found += 1
    if optimizer is not None and not found:  # flattened or wrapped parameters (FSDP, DeepSpeed)
        warnings.warn(f"noisy copies: no trainable tensor found in the optimiser's groups; every copy "
                      f"tensor is decayed by {default}", stacklevel=2)
    return decay


class MemberTraining(TrainerCallback):
    """The copies of one run (see the module docstring)."""

    def __init__(self, model: nn.Module, cfg: MitigationConfig, *, seed: int, weight_decay: float,
                 max_grad_norm: float, autocast: torch.dtype | None) -> None:
        self.model = model
        self.cfg = cfg
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.noised = noise_targets(model, cfg.noise_on)
        self.weight_decay, self.max_grad_norm, self.autocast = weight_decay, max_grad_norm, autocast
        self.generators = [noise_generator(seed, k) for k in range(1, cfg.members)]
        self.members: list[_Member] = []
        self.batches: list[Mapping[str, Any]] = []
        self.events: dict[int, str] = {}
        self.final: list[dict[str, torch.Tensor]] = []  # the DE copies' tensors at the end (CPU)
        self.model_steps = 0
        self.total_steps = 0
        self.lr = 0.0  # the main model's learning rate of the step under way
        self.decay = dict.fromkeys(self.trainable, weight_decay)

    def record(self, inputs: Mapping[str, Any]) -> None:
        """A micro-batch the main model trains on now: the live copies train on it after the step."""
        if self.members:
            self.batches.append(inputs)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.total_steps = state.max_steps
        self.decay = decay_by_name(self.trainable, optimizer, self.weight_decay)
        self.events = events(state.max_steps, schedule_of(self.cfg), ni=self.cfg.strategy in NI_STRATEGIES,
                             de=self.cfg.strategy in DE_STRATEGIES)

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.lr = lr_scheduler.get_last_lr()[0] if lr_scheduler is not None else args.learning_rate
        self._apply(self.events.get(state.global_step, ""), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.model_steps += 1
        if self.members:
            for member in self.members:
                self._train(member, self.lr)
                self.model_steps += 1
        self.batches = []

    def on_train_end(self, args, state, control, **kwargs):
        self._apply(self.events.get(self.total_steps, ""), self.total_steps)
        self.final = [{n: t.detach().to("cpu", copy=True) for n, t in m.params.items()} for m in self.members]
        self.members = []

    def _main(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainable.items()}

    def _apply(self, joined: str, step: int) -> None:
        for event in filter(None, joined.split("+")):
            if event == AVERAGE:
                mean = average([self._main(), *({n: t.detach() for n, t in m.params.items()} for m in self.members)])
                with torch.no_grad():
                    for name, param in self.trainable.items():
                        param.copy_(mean[name])
                self.members = []
            elif event == SPAWN_NI and self.cfg.strategy == "weight_noise":  # NI's schedule, noise on the one model
                noisy = noisy_copy(self._main(), sigma2=self.cfg.sigma2, generator=self.generators[0],
                                   step=max(step, 1), targets=self.noised)
                with torch.no_grad():
                    for name, param in self.trainable.items():
                        param.copy_(noisy[name])
            elif event in (SPAWN_NI, SPAWN_DE):
                decay = max(step, 1) if event == SPAWN_NI else None
                self.members = [self._spawn(g, decay) for g in self.generators]
            else:
                raise ValueError(f"unknown schedule event {event!r}")

    def _spawn(self, generator: torch.Generator, step: int | None) -> _Member:
        noisy = noisy_copy(self._main(), sigma2=self.cfg.sigma2, generator=generator, step=step,
                           targets=self.noised)
        params = {n: t.detach().clone().requires_grad_(True) for n, t in noisy.items()}
        # a fresh optimiser per copy (the main model keeps its own and its schedule), as the paper
        groups: dict[float, list[torch.Tensor]] = {}
        for name, param in params.items():
            groups.setdefault(self.decay[name], []).append(param)
        optimizer = torch.optim.AdamW([{"params": p, "weight_decay": d} for d, p in groups.items()], lr=0.0)
        return _Member(params, optimizer)

    def _train(self, member: _Member, lr: float) -> None:
        """One optimiser step of a copy on the micro-batches the main step used."""
        device = next(iter(member.params.values())).device
        for inputs in self.batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                loss = torch.func.functional_call(self.model, member.params, args=(), kwargs=batch).loss
            (loss / len(self.batches)).backward()
        torch.nn.utils.clip_grad_norm_(member.params.values(), self.max_grad_norm)
        for group in member.optimizer.param_groups:
            group["lr"] = lr
        member.optimizer.step()
        member.optimizer.zero_grad(set_to_none=True)
        for param in self.trainable.values():  # the copies' backward passes also reached shared leaves
            param.grad = None


@contextmanager
def member_weights(model: nn.Module, member: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """The model with one member's trainable tensors loaded (None: the main model as it is), and the
    main model's tensors back afterwards: every member is evaluated with its own weights."""
    if member is None:
        yield
        return
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in member}
    try:
        with torch.no_grad():
            for name, value in member.items():
                params[name].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
