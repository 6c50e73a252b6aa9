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


def test_macro_f1_over_the_task_classes_only():
    # classes 0,1,2 · gold 0,0,1,2 · pred 0,INVALID,1,1
    # class0: TP1 FP0 FN1 → F1 2/3 ; class1: TP1 FP1 FN0 → 2/3 ; class2: TP0 FN1 → 0
    assert f1_macro([0, 0, 1, 2], [0, INVALID, 1, 1], 3) == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


def test_mcc_golden():
    # TP=2 TN=1 FP=1 FN=0 → (2·1 − 1·0)/sqrt(3·2·2·1) = 2/sqrt(12)
    assert mcc([1, 1, 0, 0], [1, 1, 1, 0]) == pytest.approx(100 * 2 / math.sqrt(12))
    assert mcc([1, 1], [1, 1]) == 0.0  # undefined with one class: 0, not NaN


def test_numeric_accuracy_and_parsing():
    assert numeric_accuracy([7.0, 12.0, 3.0], [7.0, None, 3.0000000001]) == pytest.approx(200 / 3)
    assert parse_number(" 1,234.5 apples") == 1234.5
    assert parse_number("$5 or 6%", last=True) == 6.0
    assert parse_number("-3 degrees") == -3.0
    assert parse_number("no digits") is None
