"""LoRA (Hu et al., 2021) with PEFT-Bench's Llama-3-8B settings."""

from peft import LoraConfig

from peftbench.methods.base import PeftMethod, register


@register
class LoRA(PeftMethod):
    name = "lora"
    description = "Low-rank updates on k_proj, v_proj, down_proj (r=16, alpha=16, dropout 0.05)"
    default_lr = 5e-5
    mergeable = True
    config_cls = LoraConfig
    target_keys = ("target_modules",)
    defaults = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["k_proj", "v_proj", "down_proj"]}
