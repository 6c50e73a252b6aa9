"""Golden cases for every metric, computed by hand; invalid outputs are wrong, never a class."""

from __future__ import annotations

import math

import pytest

from peftbench.metrics import INVALID, accuracy, f1_binary, f1_macro, mcc, numeric_accuracy, parse_number


def test_accuracy_counts_invalid_as_wrong():
    assert accuracy([0, 1, 1, 0], [0, 1, INVALID, 1]) == 50.0


def test_binary_f1_uses_class_1_as_positive():
    # gold 1,1,1,0,0 · pred 1,INVALID,0,1,0 → TP=1, FP=1, FN=2 → P=1/2, R=1/3, F1=0.4
    assert f1_binary([1, 1, 1, 0, 0], [1, INVALID, 0, 1, 0]) == pytest.approx(40.0)


def test_an_invalid_output_is_the_wrong_label_for_binary_f1_on_either_gold():
    """Garbage instead of the negative label is a false positive, never a free "not positive"."""
    gold = [1, 1, 1, 0, 0, 0]
    # pred 1, INVALID(→0: FN), 0 (FN), INVALID(→1: FP), 0, 1 (FP) → TP 1, FP 2, FN 2 → P 1/3, R 1/3, F1 1/3
    assert f1_binary(gold, [1, INVALID, 0, INVALID, 0, 1]) == pytest.approx(100 / 3)
    # answering garbage on a gold-negative row costs exactly what the wrong label costs
    assert f1_binary(gold, [1, 1, 1, INVALID, 0, 0]) == f1_binary(gold, [1, 1, 1, 1, 0, 0]) == pytest.approx(
        100 * 2 * 3 / (2 * 3 + 1))  # TP 3, FP 1, FN 0 → F1 6/7
    assert f1_binary(gold, [1, 1, 1, 0, 0, 0]) == 100.0


def test_an_invalid_output_is_the_wrong_label_for_two_label_mcc_and_macro_f1():
    gold = [1, 1, 0, 0]
    # INVALID on the gold-0 row → 1: the same confusion matrix as test_mcc_golden
    assert mcc(gold, [1, 1, INVALID, 0], 2) == mcc(gold, [1, 1, 1, 0], 2) == pytest.approx(100 * 2 / math.sqrt(12))
    # class 1: TP2 FP1 → F1 4/5; class 0: TP1 FN1 → F1 2/3
    assert f1_macro(gold, [1, 1, INVALID, 0], 2) == pytest.approx(100 * (4 / 5 + 2 / 3) / 2)
    # more labels: an invalid output is no class, only a missed gold class (as below)
    assert f1_macro([0, 1, 2], [0, 1, INVALID], 3) == pytest.approx(100 * (1 + 1 + 0) / 3)


def test_macro_f1_over_the_task_classes_only():
    # classes 0,1,2 · gold 0,0,1,2 · pred 0,INVALID,1,1
    # class0: TP1 FP0 FN1 → F1 2/3 ; class1: TP1 FP1 FN0 → 2/3 ; class2: TP0 FN1 → 0
    assert f1_macro([0, 0, 1, 2], [0, INVALID, 1, 1], 3) == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


def test_mcc_golden():
    # TP=2 TN=1 FP=1 FN=0 → (2·1 − 1·0)/sqrt(3·2·2·1) = 2/sqrt(12)
    assert mcc([1, 1, 0, 0], [1, 1, 1, 0]) == pytest.approx(100 * 2 / math.sqrt(12))
    assert mcc([1, 1], [1, 1]) == 0.0  # undefined with one class: 0, not NaN


def test_f1_and_mcc_are_scikit_learns_to_the_last_bit():
    """The counted F1 and MCC against scikit-learn (the reference they replace, for its import
    cost), on random predictions with invalid outputs, missing and absent classes, one-class and
    empty-class cases: equal with `==`, not approximately."""
    import random

    from sklearn.metrics import f1_score, matthews_corrcoef

    from peftbench.metrics import invalid_as_wrong

    rng = random.Random(0)
    cases = [([1], [1], 2), ([0], [1], 2), ([0, 0], [0, 0], 2), ([2, 2], [INVALID, INVALID], 3),
             ([0, 1], [INVALID, INVALID], 2), ([0, 1, 2], [INVALID, INVALID, INVALID], 3)]
    for _ in range(500):
        n_labels, n = rng.randint(2, 5), rng.choice([1, 2, 3, 7, 40, 333])
        gold = [rng.randrange(rng.randint(1, n_labels)) for _ in range(n)]
        pred = [rng.choice([INVALID, *range(n_labels)]) if rng.random() < 0.8 else g for g in gold]
        cases.append((gold, pred, n_labels))
    for gold, pred, n_labels in cases:
        binary = [(0 if g == 1 else 1) if p == INVALID else p for g, p in zip(gold, pred, strict=True)]
        if n_labels == 2:
            assert f1_binary(gold, pred) == 100.0 * float(
                f1_score(gold, binary, labels=[1], average="micro", zero_division=0.0)), (gold, pred)
        two = invalid_as_wrong(gold, pred) if n_labels == 2 else pred
        labels = sorted((set(gold) | set(two)) - {INVALID})
        assert f1_macro(gold, pred, n_labels) == (100.0 * float(
            f1_score(gold, two, labels=labels, average="macro", zero_division=0.0)) if labels else 0.0), (gold, pred)
        expected = 100.0 * float(matthews_corrcoef(gold, two)) if len(set(gold) | set(two)) > 1 else 0.0
        assert mcc(gold, pred, n_labels) == expected, (gold, pred)


def test_numeric_accuracy_and_parsing():
    assert numeric_accuracy([7.0, 12.0, 3.0], [7.0, None, 3.0000000001]) == pytest.approx(200 / 3)
    assert parse_number(" 1,234.5 apples") == 1234.5
    assert parse_number("$5 or 6%", last=True) == 6.0
    assert parse_number("-3 degrees") == -3.0
    assert parse_number("no digits") is None


# --- the reference implementation's scoring bugs, each pinned by a golden case -------------------------

from peftbench.metrics import (  # noqa: E402
    multirc_em,
    parse_gsm8k,
    parse_svamp,
    pass_at_k,
    pearson,
    record_scores,
    safe_eval,
    spearman,
    squad_normalize,
)
from peftbench.scoring import score  # noqa: E402
from peftbench.tasks import get_task  # noqa: E402


def test_svamp_scores_the_value_not_the_equations_self_consistency():
    """The reference accepted any equation equal to its own right side: `(1 + 1) = 2` scored 100 %."""
    task = get_task("svamp")
    rows = [{"Body": "b", "Question": "q", "Equation": "( 6.0 - 2.0 )", "Answer": 4.0}] * 3
    result = score(task, rows, ["(1 + 1) = 2", "( 6.0 - 2.0 ) = 4.0", "( 6.0 - 2.0 ) = 5"])
    assert result.metrics["numeric_accuracy"] == pytest.approx(100 / 3)
    assert result.metrics["equation_consistency"] == pytest.approx(200 / 3)
    assert parse_svamp("(1 + 1) = 2") == (2.0, True)
    assert parse_svamp("3 * 4") == (12.0, None)


def test_safe_eval_never_evaluates_code():
    assert safe_eval("( 8.0 + 7.0 ) / 3") == 5.0
    assert safe_eval("-2 ** 2") == -4.0
    for hostile in ("__import__('os').system('true')", "open('x')", "(lambda: 1)()", "9 ** 9 ** 9", "1 / 0"):
        assert safe_eval(hostile) is None


def test_gsm8k_answer_extraction():
    assert parse_gsm8k("4 + 5 = 9 apples\n#### 1,200") == 1200.0
    assert parse_gsm8k("#### $18.50") == 18.5
    assert parse_gsm8k("no marker, so the last number: 3 then 42%") == 42.0
    assert parse_gsm8k("#### nothing") is None


def test_record_one_score_per_query_however_many_answers():
    """The reference wrote one row per gold answer, so a query with k answers weighed k times."""
    golds = [["Barack Obama", "Obama", "President Obama"], ["Paris"]]
    scores = record_scores(golds, ["obama", "London"])
    assert scores == {"em": 50.0, "f1": 50.0}  # query 1: EM 1 (matches "Obama"); query 2: 0
    assert squad_normalize("The  U.S.  Army!") == "us army"
    # "paris" vs "city of paris": precision 1, recall 1/3 → F1 = 2·(1·1/3)/(1 + 1/3) = 0.5
    assert record_scores([["the city of Paris"]], ["Paris"])["f1"] == pytest.approx(50.0)


def test_multirc_f1a_and_exact_match():
    task = get_task("multirc")
    rows = [{"paragraph": "p", "question": "q", "answer": a, "idx": {"paragraph": 0, "question": q, "answer": i},
             "label": y} for i, (q, a, y) in enumerate([(0, "a", 1), (0, "b", 0), (1, "c", 1), (1, "d", 1)])]
    result = score(task, rows, ["true", "false", "true", "false"])
    # F1a over all options: TP 2, FN 1, FP 0 → 0.8; EM: question 0 right, question 1 wrong → 50
    assert result.metrics["f1"] == pytest.approx(80.0)
    assert result.metrics["multirc_em"] == 50.0
    assert multirc_em([1, 1], [1, 1], ["x", "x"]) == 100.0


def test_stsb_parses_clips_and_scores_invalid_as_the_worst_prediction():
    task = get_task("stsb")
    rows = [{"sentence1": "a", "sentence2": "b", "label": v} for v in (0.5, 2.0, 4.5, 4.0)]
    result = score(task, rows, ["0.4", "7", "4.6", "very similar"])
    assert result.invalid_rate == 0.25
    # 7 is clipped to 5; the unparsable row (gold 4.0) is scored as 0, the far end of the range
    assert result.primary == pytest.approx(pearson([0.5, 2.0, 4.5, 4.0], [0.4, 5.0, 4.6, 0.0]))
    assert spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(100.0)


def test_classification_outputs_outside_the_label_set_are_wrong_and_counted():
    task = get_task("rte")
    rows = [{"sentence1": "s", "sentence2": "t", "label": y} for y in (0, 1, 0, 1)]
    result = score(task, rows, ["entailment", "not_entailment", "entail", "Not_Entailment."])
    assert result.invalid_rate == 0.25 and result.metrics["accuracy"] == 75.0


def test_pass_at_k():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6))


def test_codebleu_weights_and_identity():
    from peftbench.metrics import codebleu

    code = "def add(a, b):\n    result = a + b\n    return result\n"
    same = codebleu([code], [code])
    assert same["codebleu"] == pytest.approx(100.0)
    other = codebleu([code], ["print('hello world')\n"])
    parts = ("ngram_match_score", "weighted_ngram_match_score", "syntax_match_score", "dataflow_match_score")
    assert other["codebleu"] == pytest.approx(sum(other[p] for p in parts) / 4)
    # no overlap of any kind scores 0, not the 25 that codebleu 0.7.0's `dataflow or 1` gives
    assert other["dataflow_match_score"] == 0.0 and other["codebleu"] == 0.0


def test_codebleu_does_not_depend_on_the_interpreters_hash_seed():
    """The package names a data-flow node's parent variables in set order, so in-process scores follow
    the string hash seed (this pair: data-flow match 0.214 or 0.25). peftbench's figure is the one of
    PYTHONHASHSEED=0, whatever seed the scoring process runs with."""
    import json
    import os
    import subprocess
    import sys

    reference = ("def walk(grid, k):\n    for a in range(k - 1):\n        for b in range(0, k - a - 1):\n"
                 "            if grid[b] < grid[b + 1]:\n                grid[b], grid[b + 1] = grid[b + 1], grid[b]\n"
                 "    return grid\n")
    candidate = reference[:reference.index("grid[b +") + len("grid[b +")]
    code = ("import json, sys; from codebleu import calc_codebleu; from peftbench.metrics import codebleu\n"
            "refs, preds = json.loads(sys.argv[1]); key = 'dataflow_match_score'\n"
            "print(calc_codebleu(refs, preds, lang='python')[key], codebleu(refs, preds)[key])")

    def scores(seed: int) -> tuple[float, float]:
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        out = subprocess.run([sys.executable, "-c", code, json.dumps([[reference], [candidate]])], check=True,
                             capture_output=True, text=True, timeout=300, env=env)
        raw, ours = out.stdout.split()
        return float(raw), float(ours)

    results = [scores(seed) for seed in range(8)]
    if sys.version_info >= (3, 11):  # the string hash these seeds were checked with (3.11 changed it)
        assert len({raw for raw, _ in results}) > 1, "codebleu no longer depends on the hash seed: drop the child"
    assert {ours for _, ours in results} == {100 * results[0][0]}  # seed 0's, in every process


def test_a_rows_correct_flag_and_the_numeric_metric_agree_on_large_answers():
    """Both within 1e-6 absolutely: 0.1 off 123456789 is wrong in the metric and in the row's flag
    (the flag used math.isclose's default relative tolerance too, and said correct)."""
    task = get_task("gsm8k")
    rows = [{"question": "q", "answer": "x\n#### 123456789"}, {"question": "q", "answer": "x\n#### 123456789"}]
    result = score(task, rows, ["#### 123456789.1", "#### 123,456,789"])
    assert result.primary == 50.0 and [r["correct"] for r in result.records] == [False, True]


def test_a_numeric_answer_of_minus_one_is_valid():
    task = get_task("gsm8k")
    rows = [{"question": "q", "answer": "x\n#### -1"}, {"question": "q", "answer": "x\n#### 4"}]
    result = score(task, rows, ["so the answer is #### -1", "no idea"])
    assert result.primary == 50.0 and result.invalid_rate == 0.5
    assert [r["parsed"] for r in result.records] == [-1.0, None]


def test_nothing_to_score_is_a_clear_error_not_nan():
    from peftbench.errors import PeftbenchError

    for name in ("sst2", "gsm8k"):
        with pytest.raises(PeftbenchError, match="nothing to score"):
            score(get_task(name), [], [])


# --- the metric registry -----------------------------------------------------------------------------

from peftbench.errors import PeftbenchError  # noqa: E402
from peftbench.metrics import METRICS, Outputs  # noqa: E402
from peftbench.tasks.spec import TaskSpec  # noqa: E402

PERFECT = {  # per task kind: outputs that are right on every row
    "classification": Outputs([0, 1, 1, 0], [0, 1, 1, 0], n_labels=2, groups=["a", "a", "b", "b"]),
    "numeric": Outputs([3.0, -1.0], [3.0, -1.0], consistent=[True, True]),
    "regression": Outputs([0.5, 2.0, 4.5], [0.5, 2.0, 4.5]),
    "span": Outputs([["Paris", "the city of Paris"], ["Obama"]], ["Paris", "obama"]),
    "code": Outputs([{"code": "x = 1", "tests": {}}], ["x = 1"], passed=[True]),
}


def test_every_registered_metric_reads_its_kinds_and_scores_right_answers_100():
    assert len(METRICS) >= 13
    for name in METRICS:
        metric = METRICS.get(name)
        assert metric.granularity in ("example", "grouped", "corpus") and metric.higher_is_better, name
        for kind in metric.kinds:
            if name == "codebleu":  # CodeBLEU has no perfect score without data flow: golden case above
                continue
            assert metric.compute(PERFECT[kind]) == pytest.approx(100.0), (name, kind)


def _task(**overrides) -> TaskSpec:
    fields = dict(name="mine", category="user", description="d", source=None, instruction="i", template="{text}",
                  kind="classification", labels=("no", "yes"), metrics=("f1", "accuracy"), primary_metric="f1",
                  max_new_tokens=8)
    return TaskSpec(**{**fields, **overrides})


def test_a_task_with_a_metric_that_cannot_score_it_fails_when_defined():
    assert _task().metrics == ("f1", "accuracy")
    with pytest.raises(PeftbenchError, match=r"task 'mine': metrics: unknown metric 'acuracy' \(did you mean "
                                             r"'accuracy'"):
        _task(metrics=("f1", "acuracy"))
    with pytest.raises(PeftbenchError, match="metric 'pearson' scores regression tasks, not classification"):
        _task(metrics=("f1", "pearson"))
    with pytest.raises(PeftbenchError, match="'multirc_em' needs rows grouped"):
        _task(metrics=("f1", "multirc_em"))
    with pytest.raises(PeftbenchError, match="primary_metric 'mcc' is not one of its metrics"):
        _task(primary_metric="mcc")
