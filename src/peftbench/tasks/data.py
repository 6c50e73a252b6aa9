"""Loading a task's rows: generated in code, from the hub at a pinned revision, or from local files.

A hub task can also be read from a local mirror, `<data_dir>/<task>/<split>.jsonl` in the hub's own
row schema (offline machines, tests). A user's task (`LocalSource`) always reads its own files,
`.jsonl`, `.csv` or `.parquet`, wherever `data_dir` points, so both kinds sit in one grid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Callable, Hashable
from pathlib import Path
from string import Formatter

from peftbench.errors import PeftbenchError
from peftbench.hub import cache_only, hub_reachable
from peftbench.tasks.spec import GeneratedSource, HubSource, LocalSource, Row, TaskSpec


def local_path(task: TaskSpec, split: str, data_dir: Path | None) -> Path | None:
    """The local file a split is read from, or None when it comes from the hub or a generator."""
    if isinstance(task.source, LocalSource):
        return Path(task.source.files[split]) if split in task.source.files else None
    if data_dir is None or isinstance(task.source, GeneratedSource):
        return None
    return Path(data_dir) / task.name / f"{split}.jsonl"


def local_data_fingerprint(task: TaskSpec, data_dir: Path | None) -> dict[str, str | None] | None:
    """SHA-256 of the content of each local file a run of `task` reads (train and eval split), or
    None for data that is not local (generated in code, or at a pinned hub revision). Part of the
    run id: editing a file makes new runs, instead of resuming results computed on other rows."""
    if isinstance(task.source, GeneratedSource) or (data_dir is None and isinstance(task.source, HubSource)):
        return None
    digests: dict[str, str | None] = {}
    for split in dict.fromkeys((task.train_split, task.eval_split)):
        path = local_path(task, split, data_dir)
        if path is None or not path.is_file():
            digests[split] = None  # loading reports the missing file
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digests[split] = digest.hexdigest()[:16]
    return digests


def split_names(task: TaskSpec, data_dir: Path | None) -> list[str] | None:
    """The splits a task's data has where a run will read it, or None where that cannot be known
    without downloading (a hub dataset that is neither mirrored in `data_dir` nor cached offline)."""
    source = task.source
    if isinstance(source, GeneratedSource):
        return list(source.sizes)
    if isinstance(source, LocalSource):
        return [split for split, path in source.files.items() if Path(path).is_file()]
    if data_dir is not None:
        return sorted(p.stem for p in (Path(data_dir) / task.name).glob("*.jsonl"))
    import datasets

    try:
        with contextlib.nullcontext() if hub_reachable() else cache_only():
            return list(datasets.get_dataset_split_names(source.path, source.name, revision=source.revision))
    except Exception:  # not cached offline, or the hub refused: loading says which, with the fix
        return None


def _where(task: TaskSpec, data_dir: Path | None) -> str:
    if isinstance(task.source, HubSource) and data_dir is not None:
        return str(Path(data_dir) / task.name)
    return {GeneratedSource: "its generator", LocalSource: "its files"}.get(type(task.source), "the hub dataset")


def check_splits(tasks: list[tuple[str, TaskSpec]], data_dir: Path | None
                 ) -> tuple[list[str], list[str], list[str]]:
    """(problems, notes, unchecked task names) for the splits of every (config key, task): a missing
    split is a problem naming the key that fixes it and the splits that exist; a split carved by
    `auto` is a note; a hub dataset neither mirrored nor cached while the hub is unreachable cannot
    be checked. All at once, before any run starts."""
    problems: list[str] = []
    notes: list[str] = []
    unchecked: list[str] = []
    for key, task in tasks:
        names = split_names(task, data_dir)
        if names is None:
            unchecked.append(task.name)
            continue
        roles = {"train": task.train_split, "eval": task.eval_split}
        has = ", ".join(names) or "none"
        where = _where(task, data_dir)
        missing = [role for role, split in roles.items() if split not in names]
        if task.train_split == task.eval_split:
            problems.append(f"{task.name} trains and tests on the same split {task.train_split!r} — set "
                            f"{key}.train_split: auto to carve train rows from it")
        elif len(missing) == 2:
            problems.append(f"{task.name} has neither {task.train_split!r} nor {task.eval_split!r} in {where} (has: "
                            f"{has}) — set {key}.eval_split: one of {has} and {key}.train_split: auto to carve "
                            f"train rows from it, or name two different splits")
        for role in missing if len(missing) == 1 else []:
            other = roles["eval" if role == "train" else "train"]
            if role in task.carve:
                notes.append(f"{task.name}: no {roles[role]!r} split in {where}; {role} rows carved from {other!r} "
                             f"(half each, shuffled with the data seed)")
                continue
            others = [n for n in names if n != other]
            fix = f"{key}.{role}_split: auto to carve {role} rows from {other!r}"
            fix += f", or one of {', '.join(others)}" if others else ""
            problems.append(f"{task.name} has no {roles[role]!r} split in {where} (has: {has}) — set {fix}")
    return problems, notes, unchecked


def carve(rows: list[Row], seed: int) -> tuple[list[Row], list[Row]]:
    """One labelled split cut in two disjoint halves, shuffled with `seed`: (the larger half, the
    other). Used where a task's train or eval split is missing and the config allows it (`auto`)."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[half:], shuffled[:half]


def load_splits(task: TaskSpec, data_dir: Path | None, seed: int) -> tuple[list[Row], list[Row], str | None]:
    """(train rows, eval rows, the policy that made them): the task's two splits, or — where one is
    missing and `task.carve` allows it — both halves of the one that exists (`carve`), never
    sharing a row; the policy is stated in every run's provenance."""
    names = split_names(task, data_dir) if task.carve else None
    for role, missing, other in (("train", task.train_split, task.eval_split),
                                 ("eval", task.eval_split, task.train_split)):
        if names is not None and role in task.carve and missing not in names and other in names:
            rows = load_rows(task, other, data_dir)
            if len(rows) < 2:
                raise PeftbenchError(f"task {task.name!r}: {other!r} has {len(rows)} row(s); carving train and test "
                                     f"from it needs at least 2")
            train, test = carve(rows, seed)
            policy = (f"no {missing!r} split: {other!r} ({len(train) + len(test)} rows) carved into {len(train)} "
                      f"train and {len(test)} test rows, shuffled with seed {seed}")
            return train, test, policy
    return load_rows(task, task.train_split, data_dir), load_rows(task, task.eval_split, data_dir), None


def load_rows(task: TaskSpec, split: str, data_dir: Path | None = None) -> list[Row]:
    """The rows of one split, each checked to render (prompt, target, gold) before anything trains."""
    source = task.source
    if isinstance(source, GeneratedSource):
        if split not in source.sizes:
            raise PeftbenchError(f"task {task.name!r}: no split {split!r} (has: {', '.join(source.sizes)})")
        return source.generate(split, source.sizes[split], source.seed)
    path = local_path(task, split, data_dir)
    if isinstance(source, LocalSource) and path is None:
        raise PeftbenchError(f"task {task.name!r}: no file for split {split!r} (has: {', '.join(source.files)})")
    if path is not None:
        rows, where = read_rows(path, task=task.name), str(path)
    else:
        rows, where = _load_from_hub(task, source, split), f"{source.path} split {split}"
    if task.keep is not None:
        rows = [r for r in rows if task.keep(r)]
    if not rows:
        raise PeftbenchError(f"task {task.name!r}: {where}: the split is empty")
    for i, row in enumerate(rows):
        check_row(task, row, where=f"{where}, row {i + 1}")
    return rows


TPV_LARGE = 10_000
"""The paper's threshold: a task with more training rows than this takes its validation from train."""
TPV_VALIDATION = 1_000
"""Training rows the paper moves to validation for such a task."""


def split_rows(rule: str, train: list[Row], eval_rows: list[Row], *, val_fraction: float, seed: int,
               max_train: int | None = None, max_eval: int | None = None,
               label_of: Callable[[Row], int] | None = None,
               group_of: Callable[[Row], Hashable] | None = None) -> tuple[list[Row], list[Row], list[Row]]:
    """(train, validation, test) rows of a task under its `split_rule`; pure, and the same for every
    run seed (`seed` is the data seed), so every method is trained and scored on the same rows.

    `fraction` (the default, PEFT-Bench's protocol): the shuffled train rows, capped at `max_train`,
    give `val_fraction` of themselves (at least one) to validation; the test rows are `eval_rows`.

    `tpv` (Task Prompt Vectors, Belanec et al. 2025): hub datasets often lack a labelled test split,
    so the paper carves its own. Over 10,000 training rows: 1,000 shuffled train rows become
    validation and the eval split (the original validation, or test where there is none) is the test
    split. 10,000 or fewer: train stays as it is and the shuffled eval split is halved, validation the
    first half (floor), test the rest. `max_train` caps only the training part, so capping never
    shrinks the paper's validation; a cap of the small case's unshuffled train draws its rows with the
    seed. `max_eval` caps the test rows (after any halving).

    `deni` (DENI, Pecher et al. 2024; classification, `label_of` gives a row's class): the labelled
    splits are pooled and split 80/20 into train and test, stratified by class; from the 80 %,
    `DENI_TRAIN` rows (or `max_train`) are drawn class-balanced — n // k per class, the remainder to
    the classes in sorted order, a class short of rows giving its share to the others — and
    validation is `val_fraction` of that many further rows of the 80 %, outside the sample.

    `max_eval` keeps whole groups of rows where `group_of` names them (`_capped`).

    Every row lands in at most one of the three parts; the inputs are never modified. Train rows are
    expected already filtered by the task's `usable` hook.
    """
    if rule == "deni":
        return _deni_split(train, eval_rows, val_fraction=val_fraction, seed=seed, n_train=max_train or DENI_TRAIN,
                           max_eval=max_eval, label_of=label_of, group_of=group_of)
    if rule == "fraction":
        rows = list(train)
        random.Random(seed).shuffle(rows)
        rows = _capped(rows, max_train)
        n_val = max(1, round(len(rows) * val_fraction)) if len(rows) > 1 else 0
        return rows[n_val:], rows[:n_val], _capped(list(eval_rows), max_eval, group_of)
    if rule == "tpv":
        if len(train) > TPV_LARGE:
            rows = list(train)
            random.Random(seed).shuffle(rows)
            return (_capped(rows[TPV_VALIDATION:], max_train), rows[:TPV_VALIDATION],
                    _capped(list(eval_rows), max_eval, group_of))
        held = list(eval_rows)
        random.Random(seed).shuffle(held)
        half = len(held) // 2
        kept = list(train)
        if max_train and max_train < len(kept):
            random.Random(seed).shuffle(kept)
        return _capped(kept, max_train), held[:half], _capped(held[half:], max_eval, group_of)
    raise PeftbenchError(f"unknown split rule {rule!r} (expected: fraction, tpv, deni)")


DENI_TRAIN = 1_000
"""Class-balanced training rows of DENI's data protocol."""


def _deni_split(train: list[Row], eval_rows: list[Row], *, val_fraction: float, seed: int, n_train: int,
                max_eval: int | None, label_of: Callable[[Row], int] | None,
                group_of: Callable[[Row], Hashable] | None) -> tuple[list[Row], list[Row], list[Row]]:
    if label_of is None:
        raise PeftbenchError("split_rule 'deni' needs a classification task (rows are stratified by class)")
    rng = random.Random(seed)
    by_class: dict[int, list[Row]] = {}
    for row in [*train, *eval_rows]:
        by_class.setdefault(label_of(row), []).append(row)
    pool: dict[int, list[Row]] = {}
    test: list[Row] = []
    for label in sorted(by_class):
        rows = list(by_class[label])
        rng.shuffle(rows)
        n_test = round(len(rows) * 0.2)
        test += rows[:n_test]
        pool[label] = rows[n_test:]
    sample = _balanced(pool, n_train)
    taken = {id(r) for r in sample}
    rest = [r for label in sorted(pool) for r in pool[label] if id(r) not in taken]
    rng.shuffle(rest)
    val = rest[: max(1, round(len(sample) * val_fraction))] if rest else []
    rng.shuffle(sample)
    rng.shuffle(test)
    return sample, val, _capped(test, max_eval, group_of)


def _balanced(pool: dict[int, list[Row]], n: int) -> list[Row]:
    """n rows, as even over the classes as their sizes allow (the first rows of each class's shuffled list)."""
    quota = {label: 0 for label in pool}
    left = min(n, sum(len(rows) for rows in pool.values()))
    while left:
        open_classes = [label for label in sorted(pool) if quota[label] < len(pool[label])]
        share, extra = divmod(left, len(open_classes))
        for i, label in enumerate(open_classes):
            add = min(share + (i < extra), len(pool[label]) - quota[label])
            quota[label] += add
            left -= add
    return [row for label in sorted(pool) for row in pool[label][: quota[label]]]


def _capped(rows: list[Row], limit: int | None, group_of: Callable[[Row], Hashable] | None = None) -> list[Row]:
    """The first `limit` rows; a limit of None or 0 is no limit (as the config's max_* settings mean).
    With `group_of`, whole groups: every row of the groups the first `limit` rows touch, so that a
    metric scored per group (MultiRC's exact match per question) never sees half a question."""
    if not limit:
        return rows
    if group_of is None:
        return rows[:limit]
    kept = {group_of(r) for r in rows[:limit]}
    return [r for r in rows if group_of(r) in kept]


def check_row(task: TaskSpec, row: Row, *, where: str) -> None:
    """Raise a one-line error naming the file, the row and the field a broken row lacks."""
    try:
        gold = task.gold_of(row)
        if task.kind == "classification" and not 0 <= gold < len(task.labels):
            raise PeftbenchError(
                f"task {task.name!r}: {where}: field {task.label_field!r} is {gold}, expected 0..{len(task.labels) - 1}"
            )
        if task.kind == "regression" and task.value_range and not task.value_range[0] <= gold <= task.value_range[1]:
            low, high = task.value_range  # GLUE's unlabelled test rows hold -1: never a score to compare with
            raise PeftbenchError(f"task {task.name!r}: {where}: field {task.answer_field or 'gold'!r} is {gold:g}, "
                                 f"expected a score in {low:g}..{high:g} (an unlabelled split?)")
        task.render_input(row)
        task.render_target(row)
        wrong = _wrong_field(task, task.prepared(row))
        if wrong:
            raise PeftbenchError(f"task {task.name!r}: {where}: {wrong}")
    except KeyError as exc:
        raise PeftbenchError(f"task {task.name!r}: {where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        what = _wrong_label(task, row) or f"malformed row ({type(exc).__name__}: {exc})"
        raise PeftbenchError(f"task {task.name!r}: {where}: {what}") from None


def _wrong_label(task: TaskSpec, row: Row) -> str | None:
    """Why a row's class label could not be read, when that is what failed."""
    if task.kind == "classification" and task.gold is None and task.prepare is None:
        value = row.get(task.label_field)
        try:
            int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return (f"field {task.label_field!r} is {value!r}, expected a class index 0..{len(task.labels) - 1} "
                    f"or one of the labels ({', '.join(task.labels)})")
    return None


def _wrong_field(task: TaskSpec, row: Row) -> str | None:
    """An input field that would render as something other than text (a list, a mapping, null)."""
    for _, name, _, _ in Formatter().parse(task.template):
        field = (name or "").split(".")[0].split("[")[0]
        if field in row and not isinstance(row[field], (str, int, float)):
            return f"field {field!r} is {type(row[field]).__name__}, expected text"
    return None


def read_rows(path: Path, *, task: str) -> list[Row]:
    """Rows of a `.jsonl`, `.csv` (every value a string, as written) or `.parquet` file."""
    if path.suffix == ".jsonl":
        return read_jsonl(path, task=task)
    if not path.is_file():
        raise PeftbenchError(f"task {task!r}: data file {path} does not exist")
    if path.suffix == ".csv":
        import csv

        try:
            with path.open(encoding="utf-8", newline="") as fh:
                return [dict(row) for row in csv.DictReader(fh)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise PeftbenchError(f"{path}: not a readable CSV file ({exc})") from None
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise PeftbenchError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def read_jsonl(path: Path, *, task: str) -> list[Row]:
    if not path.is_file():
        raise PeftbenchError(f"task {task!r}: data file {path} does not exist")
    rows: list[Row] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PeftbenchError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise PeftbenchError(f"{path}: line {lineno} is not a JSON object")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise PeftbenchError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return rows


def _load_from_hub(task: TaskSpec, source: HubSource, split: str) -> list[Row]:
    import datasets

    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else cache_only():
            ds = datasets.load_dataset(source.path, source.name, revision=source.revision, split=split)
    except Exception as exc:
        if not online:
            raise PeftbenchError(
                f"task {task.name!r}: dataset {source.path} ({source.name or 'default'}, revision "
                f"{source.revision}) is not cached and the Hugging Face hub is unreachable; pass --data-dir "
                f"with <task>/<split>.jsonl files or run once with network access"
            ) from None
        raise PeftbenchError(f"task {task.name!r}: cannot load {source.path} split {split!r}: {exc}") from None
    return [dict(r) for r in ds]
