"""Metrics: pure functions, all on a 0–100 scale (the paper's tables and PSCP's P use that scale),
and the registry of `Metric` specs that says what each one reads and how it aggregates.

Classification predictions are class indices with `INVALID` (-1) for an output outside the label
set, and an invalid output is wrong for every metric. In a two-label task it counts as the other
label (PEFT-Bench's own scorer does the same): for F1 of the positive class a false positive on a
gold-negative row and a false negative on a gold-positive one, never a free "not positive". With
more labels it is no class at all: wrong for accuracy, a missed gold class for macro-F1, its own
value for MCC. Numeric predictions use `None` for "no number" (−1 is a number like any other).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import operator
import os
import re
import statistics
import string
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from peftbench.errors import PeftbenchError
from peftbench.registry import Registry

INVALID = -1


def accuracy(gold: Sequence[int], pred: Sequence[int], n_labels: int = 0) -> float:
    if not gold:
        return math.nan
    return 100.0 * sum(int(g == p) for g, p in zip(gold, pred, strict=True)) / len(gold)


def invalid_as_wrong(gold: Sequence[int], pred: Sequence[int]) -> list[int]:
    """Two-label predictions with each invalid output replaced by the label that is wrong for its row."""
    return [1 - g if p == INVALID else p for g, p in zip(gold, pred, strict=True)]


def _f1(gold: Sequence[int], pred: Sequence[int], label: int) -> float:
    """F1 of one class, 2·TP / (true + predicted), 0 when the class is on neither side. The float
    operations are scikit-learn's (`precision_recall_fscore_support`, beta 1, zero_division 0), so
    the result is the same to the last bit (tests compare); counted here because importing
    scikit-learn, which imports scipy.stats, costs a scoring process about 1 s."""
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == p == label)
    denominator = float(sum(1 for g in gold if g == label)) + float(sum(1 for p in pred if p == label))
    return 2.0 * tp / denominator if denominator else 0.0


def f1_binary(gold: Sequence[int], pred: Sequence[int], n_labels: int = 2) -> float:
    """F1 of class 1 (the positive class by PEFT-Bench's convention); an invalid output is a false
    positive on a gold-negative row, a false negative on a gold-positive one."""
    pred = [(0 if g == 1 else 1) if p == INVALID else p for g, p in zip(gold, pred, strict=True)]
    return 100.0 * _f1(gold, pred, 1)


def f1_macro(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in gold or predictions (as
    sklearn's default does). Two labels: an invalid output is the wrong label; more: it forms no
    class but still costs its gold class recall."""
    if n_labels == 2:
        pred = invalid_as_wrong(gold, pred)
    labels = sorted((set(gold) | set(pred)) - {INVALID})
    if not labels:
        return 0.0
    return 100.0 * float(np.mean([_f1(gold, pred, label) for label in labels]))


def mcc(gold: Sequence[int], pred: Sequence[int], n_labels: int = 2) -> float:
    """Matthews correlation ×100 (GLUE's CoLA metric), multi-class as Gorodkin's R_K. Two labels:
    an invalid output is the wrong label; more: it stays a separate value. The counts are exact
    integers and the float operations are scikit-learn's `matthews_corrcoef`, bit for bit (tests
    compare)."""
    if n_labels == 2:
        pred = invalid_as_wrong(gold, pred)
    if len(set(gold) | set(pred)) < 2:
        return 0.0
    n = len(gold)
    true, predicted = Counter(gold), Counter(pred)
    correct = sum(1 for g, p in zip(gold, pred, strict=True) if g == p)
    covariance = correct * n - sum(true[c] * predicted[c] for c in true)
    spread = float(n * n - sum(v * v for v in predicted.values())) * float(n * n - sum(v * v for v in true.values()))
    return 100.0 * (float(covariance) / math.sqrt(spread)) if spread else 0.0


def same_number(a: float, b: float) -> bool:
    """Equal within 1e-6, absolutely: the one test of a numeric answer, for the metric and for each
    row's `correct` flag alike (the flag once used `math.isclose`'s relative 1e-9 as well, so an
    answer 0.1 off a gold of 123456789 was marked correct but not counted)."""
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-6)


def numeric_accuracy(gold: Sequence[float], pred: Sequence[float | None], n_labels: int = 0) -> float:
    """Share of predictions whose value equals the gold value within 1e-6."""
    if not gold:
        return math.nan
    hits = sum(int(p is not None and same_number(p, g)) for g, p in zip(gold, pred, strict=True))
    return 100.0 * hits / len(gold)


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def parse_number(text: str, *, last: bool = False) -> float | None:
    """The first (or last) number in `text`, with thousands separators, `$` and `%` ignored."""
    found = _NUMBER.findall(text.replace("$", "").replace("%", ""))
    if not found:
        return None
    value = float((found[-1] if last else found[0]).replace(",", ""))
    return value if np.isfinite(value) else None


# --- regression ---------------------------------------------------------------------------------------


def pearson(gold: Sequence[float], pred: Sequence[float], n_labels: int = 0) -> float:
    """Pearson r ×100 (STS-B's GLUE metric); 0 when either side is constant."""
    from scipy.stats import pearsonr

    if len(set(gold)) < 2 or len(set(pred)) < 2:
        return 0.0
    return 100.0 * float(pearsonr(gold, pred).statistic)


def spearman(gold: Sequence[float], pred: Sequence[float], n_labels: int = 0) -> float:
    from scipy.stats import spearmanr

    if len(set(gold)) < 2 or len(set(pred)) < 2:
        return 0.0
    return 100.0 * float(spearmanr(gold, pred).statistic)


# --- extractive answers (ReCoRD) ----------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one query: the best over its gold answers."""
    em = max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds)
    return em, max(token_f1(prediction, g) for g in golds)


def record_scores(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> dict[str, float]:
    """ReCoRD EM and F1 ×100: one score per query (max over its answers), averaged over queries."""
    pairs = [max_over_golds(p, g) for g, p in zip(golds, preds, strict=True)]
    return {"em": 100.0 * statistics.fmean(e for e, _ in pairs), "f1": 100.0 * statistics.fmean(f for _, f in pairs)}


# --- MultiRC -----------------------------------------------------------------------------------------


def multirc_em(gold: Sequence[int], pred: Sequence[int], groups: Sequence[Hashable]) -> float:
    """Share of questions whose answer options are all classified correctly ×100."""
    right: dict[Hashable, bool] = {}
    for g, p, key in zip(gold, pred, groups, strict=True):
        right[key] = right.get(key, True) and g == p
    return 100.0 * sum(right.values()) / len(right) if right else math.nan


# --- arithmetic answers ------------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_eval(expression: str) -> float | None:
    """Value of an arithmetic expression (numbers, + − × ÷ // % **, parentheses), never `eval`.

    Anything else (names, calls, attribute access) and any arithmetic error gives None.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _eval_node(tree.body)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")


def parse_gsm8k(text: str) -> float | None:
    """GSM8K: the number after the last `####` (`,` `$` `%` stripped), else the last number in the text."""
    if "####" in text:
        after = parse_number(text.rsplit("####", 1)[1])
        if after is not None:
            return after
    return parse_number(text, last=True)


def parse_svamp(text: str) -> tuple[float | None, bool | None]:
    """SVAMP output `<equation> = <answer>` → (answer value, whether the equation evaluates to it).

    The answer is the right-hand side; without one, the value of the expression. The consistency
    flag is None when the output has no evaluable equation.
    """
    text = text.strip().splitlines()[0] if text.strip() else ""
    lhs, sep, rhs = text.rpartition("=")
    if not sep:
        value = safe_eval(text)
        return (value if value is not None else parse_number(text, last=True)), None
    answer = parse_number(rhs)
    left = safe_eval(lhs)
    consistent = None if left is None or answer is None else same_number(left, answer)
    return answer, consistent


# --- code --------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021) from n samples of which c pass."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


CODEBLEU_PARTS = ("ngram_match_score", "weighted_ngram_match_score", "syntax_match_score", "dataflow_match_score")


def codebleu(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus CodeBLEU for Python ×100: the four components weighted 0.25 each.

    The components come from the `codebleu` package; the total is recomputed as the plain weighted
    sum of CodeXGLUE's definition, because the package (0.7.0) adds `dataflow or 1`, which gives an
    output with no data-flow overlap at all the full data-flow credit (+25 points). The package names
    a data-flow node's parent variables in set order, which follows the interpreter's string hash
    seed, so the same outputs scored differently from one process to the next (by 0.05 points on 64
    CodeAlpaca rows): the components are computed in a child interpreter with PYTHONHASHSEED=0 (the
    same for a given Python version: 3.11 changed the string hash).
    """
    if importlib.util.find_spec("codebleu") is None:
        raise PeftbenchError("CodeBLEU needs the code extra: pip install 'peftbench[code]'")
    with tempfile.TemporaryDirectory(prefix="peftbench-codebleu-") as cwd:  # nothing there to shadow a module
        child = subprocess.run([sys.executable, "-c", _CODEBLEU_CHILD], cwd=cwd, capture_output=True, text=True,
                               input=json.dumps([list(references), list(predictions)]),
                               env={**os.environ, "PYTHONHASHSEED": "0"})
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        if "ModuleNotFoundError" in last:
            raise PeftbenchError(f"CodeBLEU: {last} (pip install 'peftbench[code]')")
        raise RuntimeError(f"CodeBLEU failed: {last}")
    parts = {k: 100.0 * v for k, v in json.loads(child.stdout).items()}
    return {"codebleu": sum(parts.values()) / 4, **parts}


# The package's call, in a child that imports only the package (its data-flow warnings silenced).
_CODEBLEU_CHILD = (
    "import json, logging, sys\n"
    "from codebleu import calc_codebleu\n"
    "logging.getLogger().disabled = True\n"
    "result = calc_codebleu(*json.load(sys.stdin), lang='python', weights=(0.25,) * 4)\n"
    f"json.dump({{k: float(result[k]) for k in {CODEBLEU_PARTS!r}}}, sys.stdout)\n"
)


# --- the registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """A task's parsed outputs, in row order: what every metric reads.

    `preds` holds class indices (`INVALID` for an invalid output), numbers or None, regression
    values (an invalid output already replaced by the worst value for its row), answer strings or
    programs (None: invalid); the optional fields exist for the metrics that need them."""

    golds: Sequence[Any]
    preds: Sequence[Any]
    n_labels: int = 0
    groups: Sequence[Hashable] | None = None  # rows scored together (MultiRC: one question's options)
    consistent: Sequence[bool | None] | None = None  # SVAMP: whether an output's equation gives its answer
    passed: Sequence[bool] | None = None  # code executed against its tests


Granularity = Literal["example", "grouped", "corpus"]


@dataclass(frozen=True)
class Metric:
    """What a metric is: its function and the facts the rest of peftbench needs about it."""

    name: str
    compute: Callable[[Outputs], float]
    kinds: frozenset[str]
    """Task kinds whose outputs it reads."""
    granularity: Granularity
    """example: a mean of per-row scores; grouped: per group of rows (`Outputs.groups`); corpus: one
    figure over all rows (F1, correlation, CodeBLEU) — seeds average, rows do not."""
    description: str
    higher_is_better: bool = True
    executes: bool = False
    """Needs every program run against its tests in the sandbox (`Outputs.passed`)."""


METRICS: Registry[Metric] = Registry("metric")


def register(metric: Metric) -> Metric:
    return METRICS.register(metric.name, metric)


def _share(flags: Sequence[Any]) -> float:
    return 100.0 * sum(bool(f) for f in flags) / len(flags) if flags else math.nan


def code_reference(gold: Any) -> str:
    """A code task's reference program: the gold itself, or its `code` where the gold also holds tests (APPS)."""
    return gold["code"] if isinstance(gold, dict) else gold


CLASSES = frozenset({"classification"})
for _metric in (
    Metric("accuracy", lambda o: accuracy(o.golds, o.preds), CLASSES, "example",
           "share of rows whose output is the gold label"),
    Metric("f1", lambda o: f1_binary(o.golds, o.preds, o.n_labels), CLASSES, "corpus",
           "F1 of class 1, the positive class"),
    Metric("macro_f1", lambda o: f1_macro(o.golds, o.preds, o.n_labels), CLASSES, "corpus",
           "unweighted mean of per-class F1"),
    Metric("mcc", lambda o: mcc(o.golds, o.preds, o.n_labels), CLASSES, "corpus", "Matthews correlation × 100"),
    Metric("multirc_em", lambda o: multirc_em(o.golds, o.preds, o.groups or []), CLASSES, "grouped",
           "share of questions with every answer option right"),
    Metric("numeric_accuracy", lambda o: numeric_accuracy(o.golds, o.preds), frozenset({"numeric"}), "example",
           "share of outputs whose number equals the gold value (1e-6)"),
    Metric("equation_consistency", lambda o: _share(o.consistent or []), frozenset({"numeric"}), "example",
           "share of outputs whose equation evaluates to their own answer"),
    Metric("pearson", lambda o: pearson(o.golds, o.preds), frozenset({"regression"}), "corpus", "Pearson r × 100"),
    Metric("spearman", lambda o: spearman(o.golds, o.preds), frozenset({"regression"}), "corpus",
           "Spearman ρ × 100"),
    Metric("record_em", lambda o: record_scores(o.golds, [p or "" for p in o.preds])["em"], frozenset({"span"}),
           "example", "SQuAD-normalised exact match, best over a query's answers"),
    Metric("record_f1", lambda o: record_scores(o.golds, [p or "" for p in o.preds])["f1"], frozenset({"span"}),
           "example", "SQuAD token F1, best over a query's answers"),
    Metric("codebleu", lambda o: codebleu([code_reference(g) for g in o.golds], [p or "" for p in o.preds])["codebleu"],
           frozenset({"code"}), "corpus", "CodeBLEU (Python), the four components weighted 0.25"),
    Metric("pass_at_1", lambda o: _share(o.passed or []), frozenset({"code"}), "example",
           "share of problems whose greedy program passes every test", executes=True),
):
    register(_metric)
