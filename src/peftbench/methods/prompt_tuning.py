"""Prompt tuning (Lester et al., 2021): 100 soft tokens initialised from vocabulary embeddings."""

from peft import PromptTuningConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class PromptTuning(PeftMethod):
    name = "prompt_tuning"
    description = "100 trainable virtual tokens, initialised from sampled vocabulary embeddings"
    default_lr = 3e-2
    config_cls = PromptTuningConfig
    paper = 3
    defaults = {"num_virtual_tokens": 100, "prompt_tuning_init": "SAMPLE_VOCAB"}

    def closed_form_params(self, shape: Shape) -> int:
        return self.args["num_virtual_tokens"] * shape.hidden
