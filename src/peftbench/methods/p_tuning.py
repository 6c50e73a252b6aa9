"""P-tuning (Liu et al., 2021): 100 virtual tokens produced by an MLP prompt encoder."""

from peft import PromptEncoderConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class PTuning(PeftMethod):
    name = "p_tuning"
    description = "100 virtual tokens from an MLP prompt encoder (hidden 768, dropout 0.1)"
    default_lr = 1e-3
    config_cls = PromptEncoderConfig
    defaults = {
        "num_virtual_tokens": 100,
        "encoder_reparameterization_type": "MLP",
        "encoder_hidden_size": 768,
        "encoder_dropout": 0.1,
    }
    paper = 5

    def closed_form_params(self, shape: Shape) -> int | None:
        """n × hidden embeddings through the MLP encoder Linear(h, e) → Linear(e, e) → Linear(e, h)."""
        if self.args["encoder_reparameterization_type"] != "MLP":
            return None
        n, h, e = self.args["num_virtual_tokens"], shape.hidden, self.args["encoder_hidden_size"]
        return n * h + (h * e + e) + (e * e + e) + (e * h + h)
