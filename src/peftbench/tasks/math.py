"""Math tasks: MathQA (options a–e), GSM8K and SVAMP (scored by the numeric answer)."""

from __future__ import annotations

from peftbench.metrics import parse_gsm8k, parse_svamp
from peftbench.tasks.spec import HubSource, Row, TaskSpec, classification

PARQUET = "refs/convert/parquet"


def math_qa_row(row: Row) -> Row:
    return {**row, "label": "abcde".index(row["correct"].strip().lower())}


def svamp_target(row: Row) -> str:
    """`<equation> = <answer>`, e.g. `( 6.0 - 2.0 ) = 4.0`."""
    return f"{row['Equation'].strip()} = {float(row['Answer'])}"


TASKS = (
    classification("math_qa", "math", HubSource("allenai/math_qa", None, PARQUET),
                   "math problem by its correct option", "Problem: {Problem}\nOptions: {options}",
                   ("a", "b", "c", "d", "e"), description="MathQA multiple choice", eval_split="test",
                   prepare=math_qa_row),
    TaskSpec(
        name="gsm8k",
        category="math",
        description="Grade-school math word problems; the number after the last ####",
        source=HubSource("openai/gsm8k", "main", "740312add88f781978c0658806c59bc2815b9866"),
        instruction="Solve the following math word problem. Reason step by step, then give the final answer "
        "after ####.",
        template="Question: {question}",
        kind="numeric",
        gold=lambda row: parse_gsm8k(row["answer"]),
        target=lambda row: row["answer"],
        parse=parse_gsm8k,
        metrics=("numeric_accuracy",),
        primary_metric="numeric_accuracy",
        max_new_tokens=320,
        eval_split="test",
    ),
    TaskSpec(
        name="svamp",
        category="math",
        description="SVAMP arithmetic word problems; target `<equation> = <answer>`, scored by the answer's value",
        source=HubSource("ChilleD/SVAMP", None, "5e0bf1e5e7c0e9c4bc39180d224f41f3f801b7ef"),
        instruction="Write an equation that solves the following math word problem and its result, in the form "
        "<equation> = <answer>.",
        template="Body: {Body}\nQuestion: {Question}",
        kind="numeric",
        gold=lambda row: float(row["Answer"]),
        target=svamp_target,
        parse=parse_svamp,
        metrics=("numeric_accuracy", "equation_consistency"),
        primary_metric="numeric_accuracy",
        max_new_tokens=48,
        eval_split="test",
    ),
)
