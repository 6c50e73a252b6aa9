"""Task registry: every task is a task file (`files/*.yaml`) read into a `TaskSpec`.

`TASKS` holds the package's own tasks; `catalog(dirs)` adds a user's task directories.
"""

from __future__ import annotations

from peftbench.registry import Registry
from peftbench.tasks.catalog import catalog, read_task_file
from peftbench.tasks.data import load_rows
from peftbench.tasks.spec import GeneratedSource, HubSource, LocalSource, Row, TaskSpec

__all__ = ["TASKS", "TaskSpec", "HubSource", "LocalSource", "GeneratedSource", "Row", "load_rows", "get_task",
           "catalog", "read_task_file"]

TASKS: Registry[TaskSpec] = catalog()


def get_task(name: str) -> TaskSpec:
    return TASKS.get(name)
