"""Loading a task's rows: generated in code, from the hub at a pinned revision, or from local files.

Local files are `<data_dir>/<task>/<split>.jsonl` in the hub's own row schema, so both paths feed
the same row → prompt code.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reachable
from peftbench.tasks.spec import GeneratedSource, HubSource, Row, TaskSpec


def load_rows(task: TaskSpec, split: str, data_dir: Path | None = None) -> list[Row]:
    source = task.source
    if isinstance(source, GeneratedSource):
        if split not in source.sizes:
            raise PeftbenchError(f"task {task.name!r}: no split {split!r} (has: {', '.join(source.sizes)})")
        return source.generate(split, source.sizes[split], source.seed)
    if data_dir is not None:
        return read_jsonl(Path(data_dir) / task.name / f"{split}.jsonl", task=task.name)
    return _load_from_hub(task, source, split)


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
    if not rows:
        raise PeftbenchError(f"{path}: the split is empty")
    return rows


def _load_from_hub(task: TaskSpec, source: HubSource, split: str) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.name, revision=source.revision, split=split)
    except Exception as exc:
        if not hub_reachable():
            raise PeftbenchError(
                f"task {task.name!r}: dataset {source.path} ({source.name or 'default'}, revision "
                f"{source.revision}) is not cached and the Hugging Face hub is unreachable; pass --data-dir "
                f"with <task>/<split>.jsonl files or run once with network access"
            ) from None
        raise PeftbenchError(f"task {task.name!r}: cannot load {source.path} split {split!r}: {exc}") from None
    return [dict(r) for r in ds]
