"""Row hooks: the few steps of task data that need real code, registered by name so that task
files (YAML) can name them. Each hook is a plain module-level function (picklable, so a resolved
task travels to worker processes as it is).

Roles, as a task file names them under `hooks:` or `source.generated`:
`generate(split, n, seed) → rows`, `prepare(row) → row`, `gold(row) → answer`, `target(row) → text`,
`parse(text) → answer`, `group(row) → key`, `usable(row) → bool`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any

from peftbench.metrics import parse_gsm8k, parse_svamp
from peftbench.registry import Registry
from peftbench.tasks.quickstart import arith_rows, feedback_rows, sentiment_rows, topic_rows
from peftbench.tasks.spec import Row

HOOKS: Registry[Callable[..., Any]] = Registry("task hook")
LETTERS = ("A", "B", "C", "D")


# --- SuperGLUE -------------------------------------------------------------------------------------------


def mark_wsc_spans(row: Row) -> Row:
    """Mark the candidate noun with *…* and the pronoun with #…# at their word indices."""
    words = row["text"].split(" ")
    spans = [(_wsc_span_start(words, row["span1_index"], row["span1_text"]), row["span1_text"], "*"),
             (_wsc_span_start(words, row["span2_index"], row["span2_text"]), row["span2_text"], "#")]
    for index, text, mark in sorted(spans, reverse=True):
        n = len(text.split(" "))
        words[index : index + n] = [mark + " ".join(words[index : index + n]) + mark]
    return {**row, "marked_text": " ".join(words)}


def _wsc_span_start(words: list[str], index: int, text: str) -> int:
    """The word index where a span's text stands: the dataset's own where the span's words are there,
    else the nearest place they are (the given index when nowhere). SuperGLUE's indices are sometimes
    one off: in validation row 42 a comma glued to "home," shifts the pronoun "it" onto "use"."""
    wanted = [w.strip(string.punctuation).casefold() for w in text.split(" ")]

    def stands_at(i: int) -> bool:
        return [w.strip(string.punctuation).casefold() for w in words[i : i + len(wanted)]] == wanted

    if stands_at(index):
        return index
    found = [i for i in range(len(words)) if stands_at(i)]
    return min(found, key=lambda i: (abs(i - index), i)) if found else index


def record_passage(row: Row) -> Row:
    """ReCoRD passages separate their highlights with `@highlight` lines; show them as a list."""
    return {**row, "passage_text": row["passage"].replace("@highlight\n", "- ")}


def multirc_question(row: Row) -> tuple[int, int]:
    """MultiRC scores the answer options of one question together."""
    return (row["idx"]["paragraph"], row["idx"]["question"])


# --- multiple choice: the dataset's own answer encoding → a class index ------------------------------------


def mmlu_row(row: Row) -> Row:
    """MMLU targets are letters: choices become A–D and the int answer a letter class."""
    return {**row, **dict(zip(LETTERS, row["choices"], strict=True)), "label": int(row["answer"])}


def siqa_row(row: Row) -> Row:
    return {**row, "label": int(row["label"]) - 1}  # "1"/"2"/"3" → 0/1/2


def hellaswag_row(row: Row) -> Row:
    """The context is ctx_a and ctx_b joined by a space (the reference ran them together)."""
    context = f"{row['ctx_a']} {row['ctx_b'].capitalize()}".strip() if row.get("ctx_b") else row["ctx_a"]
    endings = {f"ending{i + 1}": e for i, e in enumerate(row["endings"])}
    return {**row, **endings, "context": context, "label": int(row["label"])}


def winogrande_row(row: Row) -> Row:
    return {**row, "label": int(row["answer"]) - 1}  # "1"/"2" → option1/option2


def openbookqa_row(row: Row) -> Row:
    choices = dict(zip(row["choices"]["label"], row["choices"]["text"], strict=True))
    return {**row, **{k: choices[k] for k in LETTERS}, "label": LETTERS.index(row["answerKey"])}


def math_qa_row(row: Row) -> Row:
    return {**row, "label": "abcde".index(row["correct"].strip().lower())}


# --- Task Prompt Vectors' datasets -------------------------------------------------------------------------


def yahoo_row(row: Row) -> Row:
    """Yahoo Answers' title, content and best answer, a missing one as empty text: the hub has empty
    strings, the offline slices null (their source kept no answers)."""
    return {**row, **{k: row.get(k) or "" for k in ("question_title", "question_content", "best_answer")}}


def has_gold_label(row: Row) -> bool:
    """SNLI marks pairs without an annotator majority with label -1; the paper drops them."""
    return int(row["label"]) >= 0


# --- answers and targets -----------------------------------------------------------------------------------


def stsb_target(row: Row) -> str:
    """STS-B target: the gold score with at most two decimals (3.8, 4.25, 5)."""
    return f"{round(float(row['label']), 2):g}"


def gsm8k_gold(row: Row) -> float | None:
    return parse_gsm8k(row["answer"])


def svamp_target(row: Row) -> str:
    """`<equation> = <answer>`, e.g. `( 6.0 - 2.0 ) = 4.0`."""
    return f"{row['Equation'].strip()} = {float(row['Answer'])}"


# --- code --------------------------------------------------------------------------------------------------


def conala_row(row: Row) -> Row:
    """CoNaLa's rewritten intent names the variables; fall back to the raw intent where it is missing."""
    return {**row, "intent_text": row.get("rewritten_intent") or row.get("intent") or ""}


def apps_row(row: Row) -> Row:
    solutions = json.loads(row["solutions"]) if row.get("solutions") else []
    tests = json.loads(row["input_output"]) if row.get("input_output") else {}
    return {**row, "starter": row.get("starter_code") or "(none)", "solution_list": solutions, "tests": tests}


def apps_target(row: Row) -> str:
    return row["solution_list"][0] if row["solution_list"] else ""


def apps_gold(row: Row) -> dict[str, Any]:
    return {"code": apps_target(row), "tests": row["tests"]}


def apps_has_solution(row: Row) -> bool:
    """APPS training rows without a reference solution are skipped, never trained on an empty target."""
    return bool(row["solution_list"])


REVISIONS: dict[str, int] = {"mark_wsc_spans": 2}
"""Hooks (and row generators) whose behaviour changed what their tasks' runs compute, by registered
name, with their revision: a task's fingerprint names its hooks, not their code, so a changed hook
says so here and its tasks' runs get new ids (stored runs of the old behaviour stay beside them,
never resumed as if current). mark_wsc_spans 2: spans whose index is one off are marked where their
words stand."""


def hook_identity(hook: Callable[..., Any]) -> str:
    """A hook as a task's fingerprint names it: its name, and its revision once it has one."""
    name = hook.__qualname__
    return f"{name}@{REVISIONS[name]}" if name in REVISIONS else name


for _hook in (sentiment_rows, feedback_rows, topic_rows, arith_rows, mark_wsc_spans, record_passage, multirc_question,
              mmlu_row, siqa_row, hellaswag_row, winogrande_row, openbookqa_row, math_qa_row, stsb_target, gsm8k_gold,
              parse_gsm8k, svamp_target, parse_svamp, conala_row, apps_row, apps_target, apps_gold,
              apps_has_solution, yahoo_row, has_gold_label):
    HOOKS.register(_hook.__name__, _hook)
