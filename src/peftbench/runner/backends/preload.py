"""What the server that local workers fork from imports before it forks any
(`processes.worker_context`): the run path, so that no worker imports it again.

The server runs as `python -c`, which puts the current directory first on the import path, and
Python before 3.12.8 does not give it the driver's path instead (CPython gh-117378): a `datasets.py`
in the directory the command was started from would be imported in place of the library, and every
worker would inherit it. The driver has no such entry, and a worker gets the driver's path as it
starts; so the entry is removed here, before anything else is imported.
"""

from __future__ import annotations

import sys


def _preload() -> None:
    if sys.path[:1] == [""]:
        del sys.path[0]
    from peftbench.runner.backends.processes import import_run_path

    import_run_path()


_preload()
