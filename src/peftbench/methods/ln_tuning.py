"""LayerNorm tuning (Zhao et al., 2023): train the normalisation layers, peft's defaults."""

from peft import LNTuningConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class LNTuning(PeftMethod):
    name = "ln_tuning"
    description = "Train the (RMS/Layer)Norm weights, peft's default targets"
    default_lr = 5e-5
    config_cls = LNTuningConfig
    target_keys = ("target_modules",)
    paper = 6
    defaults = {}

    def closed_form_params(self, shape: Shape) -> int:
        """Llama's RMSNorm weights: two per layer and the final one (no biases)."""
        return (2 * shape.layers + 1) * shape.hidden
