"""`base`: the untrained model, evaluated zero-shot. The floor every method must beat."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftbench.methods.base import Method, Shape, register


@register
class ZeroShot(Method):
    name = "base"
    description = "No training: the base model evaluated zero-shot"
    default_lr = 0.0
    trains = False

    def closed_form_params(self, shape: Shape) -> int:
        return 0

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "base_config.json").write_text(json.dumps({"method": self.name}))

    def load(self, base: nn.Module, path: Path) -> nn.Module:
        return self.apply(base).eval()
