"""A task is data: where rows come from, how a row becomes a prompt and a target, how outputs score.

Every task — the quickstart's (generated in code), PEFT-Bench's (hub datasets) and a user's (local
files) — is written as a task file (`tasks/files/*.yaml`, `catalog.py` reads them) and resolved
into this one `TaskSpec`, so training and evaluation never special-case a dataset. Python appears
only where the data needs real processing: the named hooks of `hooks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from peftbench.errors import PeftbenchError
from peftbench.metrics import METRICS

Row = dict[str, Any]
Kind = Literal["classification", "numeric", "regression", "span", "code"]
KINDS: tuple[str, ...] = ("classification", "numeric", "regression", "span", "code")
# How a non-classification task's `answer_field` becomes its gold answer.
ANSWER_TYPES: dict[str, Callable[[Any], Any]] = {"numeric": float, "regression": float, "span": list, "code": str}


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset, pinned to a revision; also readable from `<data_dir>/<task>/<split>.jsonl`."""

    path: str
    name: str | None = None
    revision: str = "main"


@dataclass(frozen=True)
class LocalSource:
    """A user's own files, one per split (`.jsonl`, `.csv` or `.parquet`), in the row schema the
    task's template reads. Identified in run ids by their content."""

    files: Mapping[str, str]
    """split → absolute path"""


@dataclass(frozen=True)
class GeneratedSource:
    """Rows generated in code from a fixed seed: `generate(split, n, seed)`."""

    generate: Callable[[str, int, int], list[Row]]
    sizes: Mapping[str, int]
    seed: int = 0


def answer_form(text: str) -> str:
    """What an output and a label are compared as: the first line, without surrounding quotes,
    backticks or asterisks, trailing punctuation and case. Labels are checked in this form when a task
    is defined, so that every label can be read back from an output that states it."""
    line = text.split("\n", 1)[0].strip().strip("\"'`*").rstrip(".!;:,").strip()
    return line.casefold()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    category: str
    description: str
    source: HubSource | LocalSource | GeneratedSource
    instruction: str
    template: str
    """`str.format` template over the (prepared) row's fields; it names every input field."""
    kind: Kind
    metrics: tuple[str, ...]
    primary_metric: str
    max_new_tokens: int
    labels: tuple[str, ...] = ()
    """Classification verbaliser: class index → the exact text the model must produce."""
    label_field: str = "label"
    """Classification: the field holding the class, as an index or as one of the labels' texts."""
    answer_field: str | None = None
    """Non-classification: the field holding the gold answer (numeric/regression: a number; span:
    the answer strings; code: the reference program), unless a `gold` hook computes it."""
    target_template: str | None = None
    """Training target of a prepared row as a `str.format` template (`{answers[0]}`)."""
    target: Callable[[Row], str] | None = None
    """Training target hook; default: the template, the verbalised label, else `str(gold(row))`."""
    gold: Callable[[Row], Any] | None = None
    """Gold answer hook of a prepared row for scoring, where `answer_field` is not enough."""
    parse: Callable[[str], Any] | None = None
    """Cleaned model output → comparable answer (None when it holds none: counted invalid)."""
    group: Callable[[Row], Hashable] | None = None
    """Rows scored together (MultiRC: the options of one question)."""
    value_range: tuple[float, float] | None = None
    """Regression: predictions are clipped to this range."""
    usable: Callable[[Row], bool] | None = None
    """Training rows must pass this (e.g. APPS problems that have a reference solution)."""
    keep: Callable[[Row], bool] | None = None
    """Rows that are examples at all; the others are dropped from every split when loaded (SNLI's
    pairs without a gold label)."""
    train_split: str = "train"
    eval_split: str = "validation"
    prepare: Callable[[Row], Row] | None = None
    """Row hook for data that needs real processing (marking WSC's spans, mapping letter answers)."""
    tags: tuple[str, ...] = ()
    """Which collections the task belongs to (`peft-bench`: PEFT-Bench's 27)."""
    split_rule: Literal["fraction", "tpv", "deni"] = "fraction"
    """How train/validation/test are cut (`data.split_rows`): `fraction` holds out a share of the
    train rows and tests on eval_split; `tpv` is the Task Prompt Vectors paper's rule."""
    carve: tuple[str, ...] = ()
    """Roles ("train", "eval") that may be carved from the other split when their own split is
    missing (`train_split: auto` in a config; `data.load_splits`)."""

    def __post_init__(self) -> None:
        """A task that cannot be scored fails when it is defined, not after its runs trained."""
        if self.kind not in KINDS:
            raise PeftbenchError(f"task {self.name!r}: unknown kind {self.kind!r} (expected: {', '.join(KINDS)})")
        for name in self.metrics:
            try:
                metric = METRICS.get(name)
            except PeftbenchError as exc:
                raise PeftbenchError(f"task {self.name!r}: metrics: {exc}") from None
            if self.kind not in metric.kinds:
                raise PeftbenchError(f"task {self.name!r}: metric {name!r} scores {'/'.join(sorted(metric.kinds))} "
                                     f"tasks, not {self.kind}")
            if metric.granularity == "grouped" and self.group is None:
                raise PeftbenchError(f"task {self.name!r}: metric {name!r} needs rows grouped (a group hook)")
        if self.primary_metric not in self.metrics:
            raise PeftbenchError(f"task {self.name!r}: primary_metric {self.primary_metric!r} is not one of its "
                                 f"metrics ({', '.join(self.metrics)})")
        if (self.kind == "classification") != bool(self.labels):
            raise PeftbenchError(f"task {self.name!r}: labels are required for, and only for, classification")
        forms = [answer_form(label) for label in self.labels]
        if "" in forms or len(set(forms)) < len(forms):  # every label must be readable back from an output
            raise PeftbenchError(f"task {self.name!r}: labels must be distinct, non-empty texts as outputs are read "
                                 f"(first line; case, surrounding quotes and trailing punctuation aside), got "
                                 f"{list(self.labels)}")
        if self.kind != "classification" and self.gold is None and self.answer_field is None:
            raise PeftbenchError(f"task {self.name!r}: a {self.kind} task needs answer_field or a gold hook")

    def prepared(self, row: Row) -> Row:
        return self.prepare(row) if self.prepare else row

    def group_of(self, row: Row) -> Hashable:
        """The group a row is scored in (`group`); only for tasks that have one."""
        assert self.group is not None, f"task {self.name!r} scores no groups"
        return self.group(self.prepared(row))

    def render_input(self, row: Row) -> str:
        return self.template.format(**self.prepared(row))

    def gold_of(self, row: Row) -> Any:
        row = self.prepared(row)
        if self.gold is not None:
            return self.gold(row)
        if self.kind == "classification":
            value = row[self.label_field]
            return self.labels.index(value) if isinstance(value, str) and value in self.labels else int(value)
        return ANSWER_TYPES[self.kind](row[self.answer_field or ""])

    def render_target(self, row: Row) -> str:
        prepared = self.prepared(row)
        if self.target is not None:
            return self.target(prepared)
        if self.target_template is not None:
            return self.target_template.format(**prepared)
        if self.kind == "classification":
            return self.labels[self.gold_of(row)]
        return str(self.gold_of(row))

    @property
    def splits(self) -> tuple[str, str]:
        return (self.train_split, self.eval_split)
