"""Prefix tuning (Li & Liang, 2021): 32 virtual key/value tokens per layer through a 512-wide MLP."""

from peft import PrefixTuningConfig

from peftbench.methods.base import PeftMethod, register


@register
class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    description = "32 trainable key/value prefixes per layer, reparameterised by an MLP (hidden 512)"
    default_lr = 1e-5
    config_cls = PrefixTuningConfig
    defaults = {"num_virtual_tokens": 32, "prefix_projection": True, "encoder_hidden_size": 512}
