"""Method registry. Each method is one module, registered explicitly by importing it here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftbench.methods import bitfit, full, ia3, ln_tuning, lora, p_tuning, prefix_tuning, prompt_tuning, zero_shot
from peftbench.methods.base import METHODS, Method
from peftbench.methods.generic import PREFIX, generic_peft_method

__all__ = ["METHODS", "Method", "resolve_method", "PAPER_METHODS"]
_MODULES = (lora, ia3, prompt_tuning, prefix_tuning, p_tuning, ln_tuning, bitfit, full, zero_shot)

# The seven methods of PEFT-Bench, in the paper's order.
PAPER_METHODS = ("lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "ln_tuning", "bitfit")


def resolve_method(name: str, args: Mapping[str, Any] | None = None) -> Method:
    """A configured method from a registry name or `peft:<TYPE>`."""
    if name.startswith(PREFIX):
        return generic_peft_method(name, args or {})
    return METHODS.get(name)(args)
