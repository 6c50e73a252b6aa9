"""`peft:<TYPE>`: any other peft tuner, configured entirely by the user's arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftbench.config import PEFT_TUNER_LR
from peftbench.errors import PeftbenchError
from peftbench.methods.base import PeftMethod

PREFIX = "peft:"


class PeftTuner(PeftMethod):
    """A peft tuner by type (`peft:LOHA`). A plain class with per-instance name and config class, so
    a resolved run that uses one pickles to worker processes like any registered method."""

    description = "a peft tuner with user-given arguments"
    default_lr = PEFT_TUNER_LR

    def __init__(self, name: str, args: Mapping[str, Any]) -> None:
        from peft import PeftType
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        peft_type = name[len(PREFIX) :].upper()
        if peft_type not in PeftType.__members__ or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
            known = ", ".join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))
            raise PeftbenchError(f"unknown peft type {peft_type!r} in method {name!r}; peft knows: {known}")
        self.name = name  # type: ignore[misc]  # a per-instance name: one class serves every type
        self.config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]  # type: ignore[misc]
        self.target_keys = tuple(k for k in ("target_modules", "feedforward_modules") if k in args)  # type: ignore[misc]
        super().__init__(args)
