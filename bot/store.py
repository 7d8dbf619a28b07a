"""claybot's one SQLite database (``bot.data_dir/claybot.sqlite3``): per-server / per-chat settings, here, and the
journal of accepted jobs (``bot.journal``), which shares its connection.

A *scope* names whose settings they are (``"discord:guild:123"``, ``"telegram:chat:-100…"``, ``"discord:app:42"``);
values are stored as JSON. SQLite runs in a thread of its own (never queued behind other work) so the event loop
never waits on the disk. Every setting is read into memory when the database opens (a few small rows per chat), so
reading one never waits for that thread, and a setting changed here applies to the next event at once. Work asked
of the thread while it is busy goes there together in its next trip: a burst of requests makes a few trips, not
one each (each trip wakes a thread and the event loop again, which a burst of 200 photos felt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bot.config import BotSettings
from pipeline.core.errors import ClaybotError

logger = logging.getLogger(__name__)

STORE_FILE = "claybot.sqlite3"
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
SHRINK_AT = 8 * 2**20  # bytes of free pages (dropped photos) worth giving back to the disk
WAL_LIMIT = 4 * 2**20  # bytes the write-ahead log is cut back to after a checkpoint
T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS settings (
        scope      TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
    # The journal (bot.journal): one row per request let past the limits, kept a day after its answer for the
    # limits' windows and the usage counts; the photo itself only until the job is answered.
    """CREATE TABLE IF NOT EXISTS jobs (
        ticket      INTEGER PRIMARY KEY AUTOINCREMENT,
        platform    TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        chat_id     TEXT NOT NULL,
        group_id    TEXT NOT NULL,
        origin      TEXT,
        answer_to   TEXT NOT NULL,
        accepted_at REAL NOT NULL,
        state       TEXT NOT NULL,
        job_id      TEXT,
        request     TEXT,
        image       BLOB,
        attempts    INTEGER NOT NULL DEFAULT 0,
        outcome     TEXT,
        answered_at REAL,
        kind        TEXT NOT NULL DEFAULT 'picture',
        chain       TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (platform, user_id, accepted_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs (platform, group_id, accepted_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state)",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_origin ON jobs (platform, origin) WHERE origin IS NOT NULL",
    # The credits ledger (bot.credits): append-only; balances are sums of its entries. type: grant (a day's free
    # credits), purchase, reserve, commit, release, refund, clawback; free / paid: the change to each balance; day:
    # the UTC day it counts for (a release keeps its reservation's). The unique indexes make each money event
    # happen once: one purchase and one refund per payment id, one reserve/commit/release per ticket, one grant
    # per person per day.
    """CREATE TABLE IF NOT EXISTS credits (
        entry   INTEGER PRIMARY KEY AUTOINCREMENT,
        type    TEXT NOT NULL,
        account TEXT NOT NULL,
        day     TEXT NOT NULL,
        free    INTEGER NOT NULL DEFAULT 0,
        paid    INTEGER NOT NULL DEFAULT 0,
        ticket  INTEGER,
        payment TEXT,
        chat    TEXT,
        pack    TEXT,
        data    TEXT,
        at      REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS credits_by_account ON credits (account, day)",
    "CREATE INDEX IF NOT EXISTS credits_by_day ON credits (day, type)",
    "CREATE UNIQUE INDEX IF NOT EXISTS credits_per_ticket ON credits (type, ticket) WHERE ticket IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS credits_per_payment ON credits (type, payment) WHERE payment IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS credits_grant ON credits (account, day) WHERE type = 'grant'",
)


class StoreError(ClaybotError):
    """The settings database cannot be opened or written."""


def store_path(settings: BotSettings) -> Path:
    """Where the database lives: ``bot.data_dir/claybot.sqlite3``."""
    return Path(settings.data_dir).expanduser() / STORE_FILE


class ClaybotDatabase:
    """claybot's SQLite database: typed key-value settings per scope here, and the connection the journal shares;
    use ``async with`` or open()/close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, one thread: the lock only guards against misuse
        self._thread: ThreadPoolExecutor | None = None
        self._cache: dict[str, dict[str, Any]] = {}
        self._complete = False  # every stored setting is in the cache: a scope missing there has none
        self._writing = asyncio.Lock()  # a scope read into the cache never races a write to it
        self._next_trip: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []
        self._trips: asyncio.Task | None = None

    async def __aenter__(self) -> ClaybotDatabase:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the database file (and its folder) if needed."""
        if self._db is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claybot-db")
            self._db = await self._in_thread(self._connect)
            rows = await self._in_thread(self._query, "SELECT scope, key, value FROM settings", ())
            for scope, key, value in rows:
                self._cache.setdefault(scope, {})[key] = json.loads(value)
            self._complete = True

    def _connect(self) -> sqlite3.Connection:
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            # Photos pass through the journal (megabytes each, dropped once answered): pages they freed can be
            # given back to the disk (``shrink``), and the write-ahead log is cut back after each checkpoint.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file; older ones: VACUUM below
            db.execute("PRAGMA journal_mode = WAL")  # a crash mid-write never corrupts it; readers never wait
            db.execute("PRAGMA synchronous = NORMAL")  # WAL's advice: no fsync per commit, still never corrupt
            db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "kind" not in columns:  # a database from before clips: every row in it is a picture
                db.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'picture'")
            if "chain" not in columns:  # a database from before chained requests were journaled
                db.execute("ALTER TABLE jobs ADD COLUMN chain TEXT")
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
                logger.info("database %s: converting it once so it can shrink (VACUUM)", self.path)
                db.execute("VACUUM")
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the settings database {self.path}: {err}") from None
        return db

    async def close(self) -> None:
        """Close the database; the store can be opened again."""
        db, self._db = self._db, None
        self._cache.clear()
        self._complete = False
        if db is not None:
            await self._in_thread(self._locked, db.close)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    # -- reading ---------------------------------------------------------------------------------------------------

    async def scope(self, scope: str) -> dict[str, Any]:
        """Every setting of a scope (a copy)."""
        return dict(await self._scope(scope))

    async def get(self, scope: str, key: str, default: Any = None) -> Any:
        """A setting as stored (any JSON value), or ``default``."""
        return (await self._scope(scope)).get(key, default)

    async def get_bool(self, scope: str, key: str, default: bool) -> bool:
        """A true/false setting."""
        return await self._typed(scope, key, default, bool)

    async def get_int(self, scope: str, key: str, default: int) -> int:
        """A whole-number setting."""
        value = await self.get(scope, key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) else self._wrong(scope, key, default)

    async def get_float(self, scope: str, key: str, default: float | None) -> float | None:
        """A number setting (whole numbers are taken as floats)."""
        value = await self.get(scope, key, default)
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return None if value is None else float(value)
        return self._wrong(scope, key, default)

    async def get_str(self, scope: str, key: str, default: str | None) -> str | None:
        """A text setting."""
        value = await self.get(scope, key, default)
        return value if value is None or isinstance(value, str) else self._wrong(scope, key, default)

    async def get_list(self, scope: str, key: str, default: list | None = None) -> list:
        """A list setting (a fresh list: changing it changes nothing stored)."""
        value = await self.get(scope, key, default if default is not None else [])
        return list(value) if isinstance(value, list) else self._wrong(scope, key, list(default or []))

    async def _typed(self, scope: str, key: str, default: T, kind: type[T]) -> T:
        value = await self.get(scope, key, default)
        return value if isinstance(value, kind) else self._wrong(scope, key, default)

    @staticmethod
    def _wrong(scope: str, key: str, default: T) -> T:
        logger.warning("setting %s/%s has an unexpected type; using the default", scope, key)
        return default

    async def _scope(self, scope: str) -> dict[str, Any]:
        cached = self._cache.get(scope)
        if cached is None and self._complete:
            return {}
        if cached is None:
            async with self._writing:
                cached = self._cache.get(scope)  # read by the task that held the lock before: one read per scope
                if cached is not None:
                    return cached
                rows = await self._in_thread(self._query, "SELECT key, value FROM settings WHERE scope = ?",
                                               (scope,))
                cached = self._cache.setdefault(scope, {key: json.loads(value) for key, value in rows})
        return cached

    # -- writing ---------------------------------------------------------------------------------------------------

    async def set(self, scope: str, key: str, value: Any) -> None:
        """Store a JSON-serialisable value; ``None`` removes the setting (back to the default)."""
        if value is None:
            await self.delete(scope, key)
            return
        text = json.dumps(value, ensure_ascii=False)  # readable with the sqlite3 shell
        async with self._writing:
            await self._in_thread(self._query, "INSERT INTO settings (scope, key, value, updated_at) "
                                    "VALUES (?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET "
                                    "value = excluded.value, updated_at = excluded.updated_at",
                                    (scope, key, text, time.time()))
            if scope in self._cache or self._complete:
                self._cache.setdefault(scope, {})[key] = json.loads(text)  # the stored form: tuples become lists

    async def delete(self, scope: str, key: str) -> None:
        """Remove one setting."""
        async with self._writing:
            await self._in_thread(self._query, "DELETE FROM settings WHERE scope = ? AND key = ?", (scope, key))
            self._cache.get(scope, {}).pop(key, None)

    async def clear(self, scope: str) -> None:
        """Remove every setting of a scope."""
        async with self._writing:
            await self._in_thread(self._query, "DELETE FROM settings WHERE scope = ?", (scope,))
            self._cache.pop(scope, None)

    # -- the database thread ---------------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        db = self._db
        if db is None:
            raise StoreError("the settings store is not open")
        try:
            return self._locked(lambda: db.execute(sql, params).fetchall())
        except sqlite3.Error as err:
            raise StoreError(f"settings database {self.path}: {err}") from None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` in the database thread, alone (for a transaction of several statements), after
        every work asked for before it; those asked for together share one trip to the thread."""
        if self._thread is None:
            raise StoreError("the database is not open")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._next_trip.append((work, done))
        if self._trips is None or self._trips.done() or self._trips.get_loop() is not loop:
            self._trips = loop.create_task(self._take_trips(), name="claybot-db-trips")
        return await done

    async def _take_trips(self) -> None:
        """Carry the works asked for to the database thread, all those waiting at once, until none is left."""
        while self._next_trip:
            trip, self._next_trip = self._next_trip, []
            try:
                outcomes = await self._in_thread(self._run_trip, [work for work, _ in trip])
            except asyncio.CancelledError:  # the event loop is ending: so are the works' callers
                for _, done in trip + self._next_trip:
                    done.cancel()
                raise
            except Exception as err:  # the thread is gone (the database closed): every work of the trip hears it
                outcomes = [(False, err)] * len(trip)
            for (_, done), (ok, value) in zip(trip, outcomes, strict=True):
                if done.done():  # its caller was cancelled meanwhile
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    def _run_trip(self, works: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """In the database thread: each work in turn, each with its own outcome (a result, or its error)."""
        outcomes: list[tuple[bool, Any]] = []
        for work in works:
            try:
                if self._db is None:
                    raise StoreError("the database is not open")
                db = self._db
                outcomes.append((True, self._locked(lambda: work(db))))  # noqa: B023 (called at once)
            except sqlite3.Error as err:
                outcomes.append((False, StoreError(f"database {self.path}: {err}")))
            except Exception as err:
                outcomes.append((False, err))
        return outcomes

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreError("the database is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    @staticmethod
    def shrink(db: sqlite3.Connection, *, at_least: int = SHRINK_AT) -> bool:
        """In the database thread: once ``at_least`` bytes of pages are free (photos dropped), give them back to
        the disk and cut the write-ahead log short, so the file does not stay at a raid's high-water mark."""
        (free_pages,) = db.execute("PRAGMA freelist_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        if free_pages * page_size < at_least:
            return False
        db.executescript("PRAGMA incremental_vacuum;")  # a plain execute() frees one page per step
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def _locked(self, call: Callable[[], T]) -> T:
        with self._lock:
            return call()


