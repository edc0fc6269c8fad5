"""SQLite in service/db.py: the writer queue and the pooled connections' settings."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from service import db


class CountingLock:
    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.attempts = 0

    def acquire(self, timeout: float = -1) -> bool:
        self.attempts += 1
        return self.inner.acquire(timeout=timeout)

    def release(self) -> None:
        self.inner.release()


def test_a_writer_whose_wait_timed_out_does_not_queue_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.1)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    lock = CountingLock()
    engine.tp_writer_lock = lock  # type: ignore[attr-defined]
    lock.inner.acquire()  # another writer holds the queue (between its statements)
    try:
        with engine.begin() as conn:
            for i in range(3):
                conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
        # One wait, which timed out; the other statements went straight on.
        assert lock.attempts == 1
    finally:
        lock.inner.release()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (9)"))
        conn.execute(text("INSERT INTO t VALUES (10)"))
    assert lock.attempts == 2  # acquired once for the whole transaction
    assert not lock.inner.locked(), "released when the connection went back to the pool"
    engine.dispose()


def test_every_pooled_sqlite_connection_has_a_small_page_cache(tmp_path: Path) -> None:
    # The pool holds up to ~100 connections; at SQLite's default 2 MiB each the process
    # grew by up to 200 MiB under load as the database grew.
    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    conns = [engine.connect() for _ in range(3)]  # fresh connections, not one reused
    try:
        for conn in conns:
            assert conn.execute(text("PRAGMA cache_size")).scalar() == -db.SQLITE_PAGE_CACHE_KIB
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        for conn in conns:
            conn.close()
        engine.dispose()
    assert db.SQLITE_PAGE_CACHE_KIB * (db.SQLITE_POOL_SIZE + db.SQLITE_POOL_OVERFLOW) <= 32 * 1024
