"""Code generation tasks: CoNaLa and CodeAlpaca-Python (CodeBLEU), APPS (execution pass@1).

APPS programs run only inside `peftbench.sandbox`; its input/output tests are kept as given, one
row per problem, with the starter code in the prompt.
"""

from __future__ import annotations

import json

from peftbench.tasks.spec import HubSource, Row, TaskSpec

PARQUET = "refs/convert/parquet"


def conala_row(row: Row) -> Row:
    """CoNaLa's rewritten intent names the variables; fall back to the raw intent where it is missing."""
    return {**row, "intent_text": row.get("rewritten_intent") or row.get("intent") or ""}


def apps_row(row: Row) -> Row:
    solutions = json.loads(row["solutions"]) if row.get("solutions") else []
    tests = json.loads(row["input_output"]) if row.get("input_output") else {}
    return {**row, "starter": row.get("starter_code") or "(none)", "solution_list": solutions, "tests": tests}


def apps_target(row: Row) -> str:
    return row["solution_list"][0] if row["solution_list"] else ""


TASKS = (
    TaskSpec(
        name="conala",
        category="code",
        description="CoNaLa (curated): Python snippets from natural-language intents, CodeBLEU",
        source=HubSource("neulab/conala", "curated", "main"),
        instruction="Write the Python code for the following intent. Respond only with the code.",
        template="Intent: {intent_text}",
        kind="code",
        prepare=conala_row,
        gold=lambda row: row["snippet"],
        target=lambda row: row["snippet"],
        metrics=("codebleu",),
        primary_metric="codebleu",
        max_new_tokens=128,
        eval_split="test",
    ),
    TaskSpec(
        name="codealpacapy",
        category="code",
        description="The Python subset of CodeAlpaca, CodeBLEU",
        source=HubSource("Abzu/CodeAlpacaPython", None, "main"),
        instruction="Write Python code for the following instruction and input. Respond only with the code.",
        template="Instruction: {instruction}\nInput: {input}",
        kind="code",
        gold=lambda row: row["output"],
        target=lambda row: row["output"],
        metrics=("codebleu",),
        primary_metric="codebleu",
        max_new_tokens=320,
        eval_split="test",
    ),
    TaskSpec(
        name="apps",
        category="code",
        description="APPS programming problems, executed against their tests in a sandbox: pass@1 (CodeBLEU too)",
        source=HubSource("codeparrot/apps", "all", PARQUET),
        instruction="Solve the following programming problem in Python. Read from standard input and write to "
        "standard output unless starter code is given. Respond only with the code.",
        template="Problem:\n{question}\n\nStarter code:\n{starter}",
        kind="code",
        prepare=apps_row,
        gold=lambda row: {"code": apps_target(row), "tests": row["tests"]},
        target=apps_target,
        usable=lambda row: bool(row["solution_list"]),
        metrics=("pass_at_1", "codebleu"),
        primary_metric="pass_at_1",
        max_new_tokens=768,
        eval_split="test",
    ),
)
