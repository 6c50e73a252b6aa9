"""Strict JSON for everything peftbench writes or prints (kept free of heavy imports: the CLI and
the store use it)."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers, and Python's
    `NaN` token breaks every other JSON reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(value: Any, **kwargs: Any) -> str:
    """Standard JSON (no NaN/Infinity tokens) for everything peftbench writes or prints."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
