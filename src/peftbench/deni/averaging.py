"""SWA and EMA baselines of the stability study: an average of the trainable tensors' iterates,
loaded into the model when training ends.

torch's `AveragedModel` does the averaging over a `ParameterList` of the trainable parameters (the
same Parameter objects, so the frozen base is never copied): a uniform mean of the iterates from
`swa_start`·T on for SWA (the learning-rate schedule stays the run's), an exponential moving
average with `ema_decay` over every step for EMA.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import TrainerCallback

from peftbench.config import MitigationConfig


class WeightAveraging(TrainerCallback):
    def __init__(self, model: nn.Module, cfg: MitigationConfig) -> None:
        self.cfg = cfg
        self.params = nn.ParameterList([p for p in model.parameters() if p.requires_grad])
        self.averaged: AveragedModel | None = None
        self.start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = round(self.cfg.swa_start * state.max_steps) if self.cfg.strategy == "swa" else 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step <= self.start:
            return
        if self.averaged is None:
            ema = get_ema_multi_avg_fn(self.cfg.ema_decay) if self.cfg.strategy == "ema" else None
            self.averaged = AveragedModel(self.params, multi_avg_fn=ema, use_buffers=False)
        self.averaged.update_parameters(self.params)

    def on_train_end(self, args, state, control, **kwargs):
        if self.averaged is None:
            return
        with torch.no_grad():
            for param, mean in zip(self.params, self.averaged.module.parameters(), strict=True):
                param.copy_(mean)
