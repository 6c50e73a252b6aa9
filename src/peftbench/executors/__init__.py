"""Executors run the pending runs of a grid and write their outcomes to the store."""

from peftbench.executors.local import run_local

__all__ = ["run_local"]
