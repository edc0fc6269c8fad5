"""Engine, migrations and the request-scoped session that owns the transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_POOL_SIZE = 40
SQLITE_POOL_OVERFLOW = 60
SQLITE_PAGE_CACHE_KIB = 128


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_pre_ping=True,
            # A connection per request in flight: the 40 threads of the sync endpoints and
            # the async ones besides. SQLAlchemy's default (5 + 10 overflow) ran out under
            # 100 concurrent clients and answered 500s after its 30 s wait.
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_OVERFLOW,
        )

        _serialize_sqlite_writers(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the one writer; foreign keys are off by default.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            # A small page cache per connection: the pool holds up to 100 of them, and
            # SQLite's default (2 MiB each) filled as the database grew, so the process
            # grew by up to 200 MiB under load. Pages not cached here come from the OS's
            # page cache, shared by all of them.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_PAGE_CACHE_KIB}")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _serialize_sqlite_writers(engine: Engine) -> None:
    """One writing transaction at a time per process, queued on a lock.

    SQLite allows one writer; the others poll with sleeps of up to 100 ms, which under
    concurrent submits turns into a long latency tail. A writer here waits on a lock that
    wakes it the moment the previous writer's connection goes back to the pool. Reads are
    not affected (WAL), and another process still meets SQLite's own busy handling.
    """
    engine.tp_writer_lock = threading.Lock()  # type: ignore[attr-defined]

    @event.listens_for(engine, "before_cursor_execute")
    def _take(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # Once per transaction: a writer whose wait timed out went on without the lock and
        # may now hold SQLite's own write lock, so it must not queue on this one again (it
        # did, per statement: waiting for the lock's holder, which waited for SQLite's lock
        # this writer held, stalled every writer for a busy timeout under load).
        if "tp_writer" in conn.info:
            return
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            # Bounded: a thread that writes on two connections at once must not hang.
            lock = engine.tp_writer_lock  # type: ignore[attr-defined]
            conn.info["tp_writer"] = lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S)

    @event.listens_for(engine, "checkin")
    def _release(dbapi_conn: Any, record: Any) -> None:
        if record.info.pop("tp_writer", False):
            engine.tp_writer_lock.release()  # type: ignore[attr-defined]


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def new_session(engine: Engine) -> Session:
    # Objects stay readable after commit: responses are built after the transaction ends.
    return Session(engine, expire_on_commit=False)


def on_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run `fn` once this session's transaction has committed (never if it rolls back)."""

    def _after(_: Session) -> None:
        fn()

    event.listen(session, "after_commit", _after, once=True)


def get_session(request: Request) -> Iterator[Session]:
    session = new_session(request.app.state.engine)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": commit before the response is sent, so a client that got a 200 can
# read what it wrote on its very next request.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
