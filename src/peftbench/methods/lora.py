"""LoRA (Hu et al., 2021) with PEFT-Bench's Llama-3-8B settings."""

from peft import LoraConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class LoRA(PeftMethod):
    name = "lora"
    description = "Low-rank updates on k_proj, v_proj, down_proj (r=16, alpha=16, dropout 0.05)"
    default_lr = 5e-5
    mergeable = True
    config_cls = LoraConfig
    target_keys = ("target_modules",)
    paper = 1
    defaults = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["k_proj", "v_proj", "down_proj"]}

    def closed_form_params(self, shape: Shape) -> int:
        """Per adapted linear (in → out): A (r × in) and B (out × r)."""
        linears = shape.linears()
        targets = linears if self.args["target_modules"] == "all-linear" else self.args["target_modules"]
        return shape.layers * sum(self.args["r"] * sum(linears[t]) for t in targets)
