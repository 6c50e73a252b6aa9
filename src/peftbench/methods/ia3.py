"""IA3 (Liu et al., 2022) with PEFT-Bench's settings.

`feedforward_modules` is always a list: peft reads a bare string as a regex over full module
names, which matches nothing here and silently turns `down_proj` into an output-scaling module.
"""

from peft import IA3Config

from peftbench.methods.base import PeftMethod, Shape, register


@register
class IA3(PeftMethod):
    name = "ia3"
    description = "Learned rescaling of k_proj, v_proj outputs and down_proj inputs"
    default_lr = 5e-5
    mergeable = True
    config_cls = IA3Config
    target_keys = ("target_modules", "feedforward_modules")
    paper = 2
    defaults = {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}

    def closed_form_params(self, shape: Shape) -> int:
        """One scale per input feature of a feed-forward module, per output feature of any other."""
        linears, ff = shape.linears(), self.args["feedforward_modules"]
        return shape.layers * sum(linears[t][0] if t in ff else linears[t][1] for t in self.args["target_modules"])
