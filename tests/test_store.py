"""The SQLite store: registration is idempotent, claims are exclusive, dead claims are reclaimed."""

from __future__ import annotations

import subprocess
import sys
import time

from peftbench.store import Store


def make(tmp_path) -> Store:
    store = Store.create(tmp_path)
    store.register([("a", "lora", "t", 0, {"x": 1}), ("b", "ia3", "t", 0, {"x": 2})])
    return store


def test_register_is_idempotent(tmp_path):
    store = make(tmp_path)
    store.register([("a", "lora", "t", 0, {"x": 1}), ("c", "bitfit", "t", 1, {})])
    assert sorted(r.run_id for r in store.records()) == ["a", "b", "c"]
    assert {r.status for r in store.records()} == {"pending"}


def test_finish_round_trips_json(tmp_path):
    store = make(tmp_path)
    assert store.claim("a")
    store.finish("a", "done", metrics={"score": 81.5}, costs={"trainable_params": 12}, timings={"train_s": 1.0})
    rec = store.get("a")
    assert rec.status == "done" and rec.metrics == {"score": 81.5} and rec.costs["trainable_params"] == 12
    assert rec.config == {"x": 1} and rec.attempts == 1


def test_no_nan_reaches_the_stored_json(tmp_path):
    """A diverged run's losses or an undefined metric are stored as null, in standard JSON that any
    reader (jq, JavaScript, pandas) parses."""
    import json
    import sqlite3

    store = make(tmp_path)
    store.claim("a")
    store.finish("a", "diverged", metrics={"score": float("nan"), "n": [1.0, float("inf")]},
                 training={"last_finite_loss": float("-inf")})
    raw = sqlite3.connect(store.path).execute("SELECT metrics, training FROM runs WHERE run_id = 'a'").fetchone()
    assert "NaN" not in "".join(raw) and "Infinity" not in "".join(raw)
    assert json.loads(raw[0], parse_constant=lambda c: 1 / 0) == {"n": [1.0, None], "score": None}
    assert store.get("a").training == {"last_finite_loss": None}


def test_done_runs_are_never_claimed_again(tmp_path):
    store = make(tmp_path)
    store.claim("a")
    store.finish("a", "done", metrics={"score": 1.0})
    assert not store.claim("a")
    assert not store.claim("missing")


def test_live_claims_are_exclusive_and_dead_ones_reclaimed(tmp_path):
    store = make(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        owner = f"{socket.gethostname()}:{sleeper.pid}"
        assert store.claim("a", owner)
        assert not store.claim("a"), "a live process owns it"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert store.claim("a"), "the owner died: the run is reclaimed"
    assert store.get("a").attempts == 2


def test_a_claim_on_another_host_is_taken_over_when_its_lease_lapses(tmp_path):
    store = make(tmp_path)
    assert store.claim("a", "elsewhere:1", lease_s=60)
    assert not store.claim("a", lease_s=60), "another host's owner is assumed alive while it renews"
    store.heartbeat("elsewhere:1")
    assert not store.claim("a", lease_s=60)
    time.sleep(0.05)
    assert store.claim("a", lease_s=0.01), "not renewed within the lease: taken over"
    assert store.get("a").attempts == 2


def test_heartbeat_renews_only_the_owners_claims(tmp_path):
    store = make(tmp_path)
    store.claim("a", "elsewhere:1")
    store.claim("b", "elsewhere:2")
    before = {r.run_id: r for r in store.records()}
    time.sleep(0.05)
    store.heartbeat("elsewhere:1")
    assert not store.claim("a", lease_s=0.04) and store.claim("b", lease_s=0.04)
    assert before["a"].status == "running"


def test_release_and_failed_runs_are_retried(tmp_path):
    store = make(tmp_path)
    store.register([("c", "bitfit", "t", 1, {})])
    store.claim("a")
    store.claim("c", "elsewhere:1")
    store.release()
    assert store.get("a").status == "pending"
    assert store.get("c").status == "running", "release gives back only this process's claims"
    store.claim("b")
    store.finish("b", "failed", error="boom")
    assert store.get("b").error == "boom"
    assert store.claim("b"), "a failed run is retried by the next invocation"


def test_the_database_appears_only_with_its_tables_and_a_racing_creator_uses_the_first(tmp_path, monkeypatch):
    """A reader watching an output directory (a report, a test polling a running grid) found the file
    before its tables and failed with "no such table: runs". The database is now linked into place
    complete; a second creator racing the first keeps the first one's database and rows."""
    import os
    import sqlite3
    from contextlib import closing

    from peftbench.store import DB_NAME

    real_link = os.link
    seen = []

    def link(src, dst):
        seen.append(dst)
        with closing(sqlite3.connect(src)) as db:
            tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"meta", "runs"} and not os.path.exists(dst), "linked before it was complete"
        if len(seen) == 1:  # another process creates the store between our check and our link
            make(tmp_path)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    store = Store.create(tmp_path)
    assert len(seen) == 2 and sorted(r.run_id for r in store.records()) == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(f"{DB_NAME}-")] == [DB_NAME]
    assert Store.create(tmp_path).records() == store.records(), "an existing store is opened, not replaced"
