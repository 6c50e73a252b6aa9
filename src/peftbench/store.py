"""The run store: one SQLite database per output directory, the single source of truth.

Each run is one row keyed by a hash of its resolved configuration and seed, so re-running a
config finds its finished runs and skips them. Rows move pending → running → done / failed /
diverged; a claim records its owner (host:pid) and is renewed by the owner's heartbeat. A
`running` row whose owner process is gone (killed, crashed) or whose claim was not renewed within
the lease (an owner on another host that stopped) is reclaimed by the next run. WAL mode lets
readers (reports) work while a grid is writing. Predictions live beside the database as JSONL, written before the row is
marked done, so a done row always has its predictions.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.config import ExecutorConfig
from peftbench.jsonsafe import dumps_json
from peftbench.utils import create_once

SCHEMA_VERSION = 1
DB_NAME = "peftbench.db"
STATUSES = ("pending", "running", "done", "failed", "diverged")
FINAL = ("done", "diverged")
# Version of the run-id scheme, recorded in every run's identity (`plan.run_identity`). 3: evaluation
# through peftbench's own decoder (runs of version 2 decoded prompt-learning methods with the broken
# cached `generate`), local data identified by content.
IDENTITY_VERSION = 3
TPV_PLAN = "tpv_plan"  # meta key: the runs of the config's TPV study (both stages)

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    method      TEXT NOT NULL,
    task        TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    config      TEXT NOT NULL,
    metrics     TEXT,
    costs       TEXT,
    timings     TEXT,
    training    TEXT,
    provenance  TEXT,
    error       TEXT,
    claimed_by  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX runs_status ON runs (status);
"""

_JSON_COLUMNS = ("config", "metrics", "costs", "timings", "training", "provenance")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    method: str
    task: str
    seed: int
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    costs: dict[str, Any] | None
    timings: dict[str, Any] | None
    training: dict[str, Any] | None
    provenance: dict[str, Any] | None
    error: str | None
    attempts: int


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    """Whether the claiming process still runs; owners on other hosts are assumed alive."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / DB_NAME
        self.predictions_dir = self.out_dir / "predictions"
        self.adapters_dir = self.out_dir / "adapters"

    @classmethod
    def create(cls, out_dir: Path) -> Store:
        """Open the store, creating its database if there is none.

        The database is built complete in a private file and linked into place (`create_once`), so a
        reader (a report, a test watching a starting grid) never finds a database without its
        tables; of two processes creating the same store, the first one's database is kept."""
        store = cls(out_dir)
        if not store.path.is_file():
            create_once(store.path, _new_database)
        return store

    @classmethod
    def open(cls, out_dir: Path) -> Store:
        store = cls(out_dir)
        if not store.path.is_file():
            from peftbench.errors import PeftbenchError

            raise PeftbenchError(f"no peftbench results in {out_dir} (expected {store.path})")
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def register(self, runs: list[tuple[str, str, str, int, dict[str, Any]]]) -> None:
        """Add (run_id, method, task, seed, config) rows that are not there yet, as pending."""
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR IGNORE INTO runs (run_id, method, task, seed, status, config, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                [(rid, m, t, s, dumps_json(c, sort_keys=True), now, now) for rid, m, t, s, c in runs],
            )

    def set_plan(self, run_ids: list[str], key: str = "plan") -> None:
        """Remember the runs of the config last run into this directory: reports show those, not
        the runs of earlier configs kept beside them (averaging those in would add fake seeds).
        `key`: which part of the config (the grid's `plan`, a TPV study's `TPV_PLAN`)."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, dumps_json(run_ids)))

    def plan(self, key: str = "plan") -> list[str] | None:
        """The run ids `set_plan` recorded under `key`, or None when no grid recorded one."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def claim(self, run_id: str, owner: str | None = None, lease_s: float | None = None) -> bool:
        """Atomically mark a run as running for `owner`; False if it is final or held by a live owner
        whose claim was renewed within `lease_s` seconds."""
        lease_s = ExecutorConfig().claim_timeout_s if lease_s is None else lease_s
        owner = owner or owner_id()
        with self._connect() as db:
            row = db.execute("SELECT status, claimed_by, updated_at FROM runs WHERE run_id = ?",
                             (run_id,)).fetchone()
            if row is None or row[0] in FINAL:
                return False
            held = row[0] == "running" and row[1] != owner
            if held and _owner_alive(row[1]) and time.time() - row[2] < lease_s:
                return False
            db.execute(
                "UPDATE runs SET status = 'running', claimed_by = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE run_id = ?",
                (owner, time.time(), run_id),
            )
        return True

    def finish(
        self,
        run_id: str,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        costs: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status = ?, metrics = ?, costs = ?, timings = ?, training = ?, provenance = ?, "
                "error = ?, claimed_by = NULL, updated_at = ? WHERE run_id = ?",
                (
                    status,
                    *(None if v is None else dumps_json(v, sort_keys=True)
                      for v in (metrics, costs, timings, training, provenance)),
                    error,
                    time.time(),
                    run_id,
                ),
            )

    def heartbeat(self, owner: str | None = None) -> None:
        """Renew every claim held by `owner`, so that other processes leave its runs alone."""
        with self._connect() as db:
            db.execute("UPDATE runs SET updated_at = ? WHERE status = 'running' AND claimed_by = ?",
                       (time.time(), owner or owner_id()))

    def release(self, owner: str | None = None) -> None:
        """Give back every run `owner` holds (on Ctrl-C, or when the grid must stop) so that the next
        invocation runs them; by owner rather than by run id, so a claim made just before the
        interrupt is released too."""
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status = 'pending', claimed_by = NULL, updated_at = ? "
                "WHERE claimed_by = ? AND status = 'running'",
                (time.time(), owner or owner_id()),
            )

    def records(self, status: str | None = None) -> list[RunRecord]:
        where, args = (" WHERE status = ?", (status,)) if status else ("", ())
        return self._select(where, args)

    def get(self, run_id: str) -> RunRecord | None:
        found = self._select(" WHERE run_id = ?", (run_id,))
        return found[0] if found else None

    def _select(self, where: str, args: tuple[Any, ...]) -> list[RunRecord]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute(f"SELECT * FROM runs{where} ORDER BY method, task, seed", args).fetchall()
        finally:
            db.close()
        return [_record(r) for r in rows]

    def predictions_path(self, run_id: str) -> Path:
        return self.predictions_dir / f"{run_id}.jsonl"

    def adapter_path(self, run_id: str) -> Path:
        return self.adapters_dir / run_id


def _new_database(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection uses it
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.commit()
    finally:
        db.close()  # the last connection checkpoints and removes the file's WAL before it is linked


def _record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    for key in _JSON_COLUMNS:
        data[key] = json.loads(data[key]) if data[key] is not None else None
    return RunRecord(**{k: data[k] for k in RunRecord.__dataclass_fields__})
