"""Full fine-tuning: every parameter trains. The reference point for quality and cost."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from peftbench.methods.base import Method, Shape, register


@register
class FullFineTuning(Method):
    name = "full"
    description = "Full fine-tuning of every parameter"
    default_lr = 1e-5

    def closed_form_params(self, shape: Shape) -> int:
        return shape.total()

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(str(path), safe_serialization=True)

    def load(self, base: nn.Module, path: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(path), dtype=base.dtype, use_safetensors=True).eval()
