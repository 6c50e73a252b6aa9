"""Pure metric functions, all on a 0–100 scale (the paper's tables and PSCP's P use that scale).

Classification predictions are class indices with `INVALID` (-1) for an output outside the label
set: it is wrong for accuracy, a missed positive for binary F1, and a missed gold class for
macro-F1 — never silently mapped to some class. Numeric predictions use `None` for "no number".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import f1_score, matthews_corrcoef

INVALID = -1

MetricFn = Callable[[Sequence, Sequence, int], float]


def accuracy(gold: Sequence[int], pred: Sequence[int], n_labels: int = 0) -> float:
    if not gold:
        return math.nan
    return 100.0 * sum(int(g == p) for g, p in zip(gold, pred, strict=True)) / len(gold)


def f1_binary(gold: Sequence[int], pred: Sequence[int], n_labels: int = 2) -> float:
    """F1 of class 1 (the positive class by PEFT-Bench's convention)."""
    return 100.0 * float(f1_score(gold, pred, labels=[1], average="micro", zero_division=0.0))


def f1_macro(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> float:
    """Unweighted mean of per-class F1 over the task's classes (invalid outputs form no class)."""
    return 100.0 * float(f1_score(gold, pred, labels=list(range(n_labels)), average="macro", zero_division=0.0))


def mcc(gold: Sequence[int], pred: Sequence[int], n_labels: int = 2) -> float:
    """Matthews correlation ×100 (GLUE's CoLA metric); invalid outputs stay a separate value."""
    if len(set(gold) | set(pred)) < 2:
        return 0.0
    return 100.0 * float(matthews_corrcoef(gold, pred))


def numeric_accuracy(gold: Sequence[float], pred: Sequence[float | None], n_labels: int = 0) -> float:
    """Share of predictions whose value equals the gold value within 1e-6."""
    if not gold:
        return math.nan
    pairs = zip(gold, pred, strict=True)
    hits = sum(int(p is not None and math.isclose(p, g, rel_tol=0.0, abs_tol=1e-6)) for g, p in pairs)
    return 100.0 * hits / len(gold)


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "macro_f1": f1_macro,
    "mcc": mcc,
    "numeric_accuracy": numeric_accuracy,
}

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def parse_number(text: str, *, last: bool = False) -> float | None:
    """The first (or last) number in `text`, with thousands separators, `$` and `%` ignored."""
    found = _NUMBER.findall(text.replace("$", "").replace("%", ""))
    if not found:
        return None
    value = float((found[-1] if last else found[0]).replace(",", ""))
    return value if np.isfinite(value) else None
