"""Prefix tuning (Li & Liang, 2021): 32 virtual key/value tokens per layer through a 512-wide MLP."""

from peft import PrefixTuningConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    description = "32 trainable key/value prefixes per layer, reparameterised by an MLP (hidden 512)"
    default_lr = 1e-5
    config_cls = PrefixTuningConfig
    paper = 4
    defaults = {"num_virtual_tokens": 32, "prefix_projection": True, "encoder_hidden_size": 512}

    def closed_form_params(self, shape: Shape) -> int:
        """Key and value prefixes of n tokens for every layer, in the key/value width; with the
        projection, an n × width embedding through Linear(width, e) → Tanh → Linear(e, 2·L·width)."""
        n, kv, out = self.args["num_virtual_tokens"], shape.kv_width, 2 * shape.layers * shape.kv_width
        if not self.args["prefix_projection"]:
            return n * out
        e = self.args["encoder_hidden_size"]
        return n * kv + (kv * e + e) + (e * out + out)
