"""Task registry: every task is a declarative `TaskSpec`, registered here by name."""

from __future__ import annotations

from peftbench.registry import Registry
from peftbench.tasks import code, glue, math, other, superglue
from peftbench.tasks.data import load_rows
from peftbench.tasks.quickstart import QUICKSTART_TASKS
from peftbench.tasks.spec import GeneratedSource, HubSource, Row, TaskSpec

__all__ = ["TASKS", "TaskSpec", "HubSource", "GeneratedSource", "Row", "load_rows", "get_task"]

TASKS: Registry[TaskSpec] = Registry("task")
for _task in (*QUICKSTART_TASKS, *glue.TASKS, *superglue.TASKS, *other.TASKS, *math.TASKS, *code.TASKS):
    TASKS.register(_task.name, _task)


def get_task(name: str) -> TaskSpec:
    return TASKS.get(name)
