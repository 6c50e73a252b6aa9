"""Method registry. Each method is one module of this package that registers itself (`@register`);
every module here is imported, so a new method is one new file and nothing else."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from peftbench.methods.base import METHODS, Method, Shape
from peftbench.methods.generic import PREFIX, PeftTuner

__all__ = ["METHODS", "Method", "Shape", "resolve_method", "paper_methods"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def paper_methods() -> list[str]:
    """PEFT-Bench's seven methods, in the paper's order."""
    return sorted((n for n in METHODS if METHODS.get(n).paper), key=lambda n: METHODS.get(n).paper)


def resolve_method(name: str, args: Mapping[str, Any] | None = None) -> Method:
    """A configured method from a registry name or `peft:<TYPE>`."""
    if name.startswith(PREFIX):
        return PeftTuner(name, args or {})
    return METHODS.get(name)(args)
