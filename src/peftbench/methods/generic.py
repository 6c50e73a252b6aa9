"""`peft:<TYPE>`: any other peft tuner, configured entirely by the user's arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftbench.errors import PeftbenchError
from peftbench.methods.base import PeftMethod

PREFIX = "peft:"
DEFAULT_LR = 1e-4


def generic_peft_method(name: str, args: Mapping[str, Any]) -> PeftMethod:
    """Build a method for peft type `name` (`peft:LOHA`); its learning rate defaults to 1e-4."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = name[len(PREFIX) :].upper()
    if peft_type not in PeftType.__members__ or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))
        raise PeftbenchError(f"unknown peft type {peft_type!r} in method {name!r}; peft knows: {known}")
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    cls = type(
        f"Peft{peft_type.title()}",
        (PeftMethod,),
        {
            "name": name,
            "description": f"peft {peft_type} with user-given arguments",
            "default_lr": DEFAULT_LR,
            "config_cls": config_cls,
            "target_keys": tuple(k for k in ("target_modules", "feedforward_modules") if k in args),
        },
    )
    return cls(args)
