"""The journal of accepted jobs, in claybot's SQLite database: the rate limits, and nothing lost to a restart.

Every request let past the limits gets a row (a *ticket*) before its photo is downloaded: who asked, in which chat,
where to answer. Once queued, the row keeps the settled job (its codec header, and the photo beside it), so a
restarted process runs the same job again (same seed, same working size); once answered, the photo is dropped and the
row stays a day, so the limits' windows and the usage counts survive restarts too. A chat process that starts again
finds every row still unanswered and answers it (``RequestFlow.recover``): none is silently dropped.

The limits count the rows of the last minute / hour, per person and per chat (a Telegram chat, a Discord server),
inside the same transaction that adds the new row, so requests arriving together cannot all slip through.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bot.config import LimitSettings
from bot.store import ClaybotDatabase
from pipeline.core import codec
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import Job
from pipeline.core.kinds import DEFAULT_KIND, JobKind, KindLimits, by_rank, kind_of

if TYPE_CHECKING:
    from bot.ask import Ask

logger = logging.getLogger(__name__)

KEEP_ANSWERED = 86400.0  # seconds a row stays after its answer: the longest window, and a day of usage counts
PRUNE_EVERY = 600.0
STALE_WAITING = 6 * 3600.0  # seconds after which an unanswered row no longer counts as waiting (no job takes so long)
NOT_COUNTED = "busy"  # refused because claybot was busy or restarting: not the person's doing


class RateLimited(ClaybotError):
    """Over a limit; the message says which and when to ask again (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Duplicate(ClaybotError):
    """The platform delivered this event again (after a restart): it already has its ticket."""


@dataclass(frozen=True)
class Entry:
    """One unanswered row, as a restarted chat process finds it."""

    ticket: int
    platform: str
    user_id: str
    chat_id: str
    answer_to: dict[str, Any]
    state: str  # "reserved": the photo was still being downloaded; "queued": the job and its photo are here
    job_id: str | None
    job: Job | None
    attempts: int
    then: Then | None = None  # what the request asked for after this job (a clip of the picture it makes)


@dataclass(frozen=True)
class Then:
    """The next job of a chained request: made from the picture the first job answers (a clip of a person's photo
    is that photo made clay first). Journaled with the first job, so a restart between the two still makes it."""

    kind: str
    options: dict[str, Any]

    def dump(self) -> str:
        return json.dumps({"kind": self.kind, "options": self.options})

    @classmethod
    def load(cls, text: str | None) -> Then | None:
        if not text:
            return None
        try:
            fields = json.loads(text)
            return cls(str(fields["kind"]), dict(fields["options"]))
        except (ValueError, KeyError, TypeError):
            return None


class AdmissionRule(Protocol):
    """A check before every request, run inside the journal's transactions (claybot's SQLite database)."""

    def admit(self, db: sqlite3.Connection, ask: Ask, kind: JobKind, ticket: int, now: float) -> None:
        """After the limits let the request in and its ticket was written, in the same transaction: refuse by
        raising a ``ClaybotError`` whose message is for the user (nothing of the request is written then), or
        write what the request holds (a reservation) under ``ticket``."""

    def answered(self, db: sqlite3.Connection, ticket: int, outcome: str, now: float) -> None:
        """In the transaction that marks ``ticket`` answered with ``outcome`` ("image": the answer was posted):
        settle what it holds (commit, or release on any other outcome). Called once per ticket."""


def wait_text(seconds: float) -> str:
    """'in 38 seconds', 'in 12 minutes', 'in 2 hours'."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 90:
        return f"in {seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    if minutes < 90:
        return f"in {minutes} minutes"
    return f"in {math.ceil(minutes / 60)} hours"


def _window_name(seconds: float) -> str:
    return "minute" if seconds == 60 else "hour" if seconds == 3600 else f"{seconds:g} seconds"


class Journal:
    """The jobs table of claybot's (open) database."""

    def __init__(self, store: ClaybotDatabase, limits: LimitSettings, *,
                 clock: Callable[[], float] = time.time, rules: Sequence[AdmissionRule] = ()) -> None:
        self.store, self.limits, self.clock, self.rules = store, limits, clock, list(rules)
        self._pruned = 0.0
        # The platforms this process answers (None: every one). A kind's cap on jobs waiting at once counts only
        # the jobs that can still be answered: those of a front end that is not running wait for it, uncounted.
        self.platforms: frozenset[str] | None = None

    async def admit(self, platform: str, user_id: str, chat_id: str, group_id: str, answer_to: dict[str, Any],
                    origin: str | None = None, kind: str = DEFAULT_KIND, ask: Ask | None = None) -> int:
        """A ticket for a new request, or RateLimited (nothing written) when it is over a limit (its kind's own
        limits too, ``pipeline.core.kinds``); Duplicate when ``origin`` (the platform's id of the event) already has
        one: Telegram sends again the updates a process fetched but did not confirm before it died. With ``ask``,
        the admission rules (credits) run in the same transaction, after the limits."""
        now = self.clock()
        prune = now - self._pruned > PRUNE_EVERY
        if prune:
            self._pruned = now

        def work(db: sqlite3.Connection) -> int | ClaybotError:
            # In the same trip to the database thread as the admission: requests are admitted in arrival order.
            if prune:
                db.execute("DELETE FROM jobs WHERE state = 'answered' AND answered_at < ?", (now - KEEP_ANSWERED,))
            db.execute("BEGIN IMMEDIATE")
            try:
                seen = origin is not None and db.execute("SELECT 1 FROM jobs WHERE platform = ? AND origin = ?",
                                                         (platform, origin)).fetchone()
                refusal = Duplicate(origin) if seen else self._refusal(db, platform, user_id, group_id, now, kind)
                if refusal is not None:
                    db.execute("ROLLBACK")
                    return refusal
                cursor = db.execute(
                    "INSERT INTO jobs (platform, user_id, chat_id, group_id, origin, answer_to, accepted_at, state, "
                    "kind) VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                    (platform, user_id, chat_id, group_id, origin, json.dumps(answer_to), now, kind))
                ticket = cursor.lastrowid
                assert ticket is not None  # sqlite3 sets it after every INSERT that added a row
                if ask is not None:
                    for rule in self.rules:
                        rule.admit(db, ask, kind_of(kind), ticket, now)  # a refusal rolls the ticket back too
                db.execute("COMMIT")
                return ticket
            except BaseException:
                db.execute("ROLLBACK")
                raise

        result = await self.store.run(work)
        if isinstance(result, ClaybotError):
            raise result
        return result

    def _refusal(self, db: sqlite3.Connection, platform: str, user_id: str, group_id: str, now: float,
                 kind: str) -> RateLimited | None:
        """The first limit this request is over (the one with the longest wait), or None: the limits every request
        counts against, then its kind's own."""
        refusal = self._over(db, platform, user_id, group_id, now)
        if refusal is not None:
            return refusal
        own = kind_of(kind).limits(self.limits)
        if own.waiting:
            # Only what can still be answered: a front end that is not running, or a row older than any job may
            # take, must not block everyone's next request for ever.
            platforms = sorted(self.platforms) if self.platforms is not None else None
            (waiting,) = db.execute(
                "SELECT count(*) FROM jobs WHERE kind = ? AND state != 'answered' AND accepted_at > ? "
                "AND (? IS NULL OR platform IN (SELECT value FROM json_each(?)))",
                (kind, now - STALE_WAITING, None if platforms is None else 1, json.dumps(platforms))).fetchone()
            if waiting >= own.waiting:
                many = kind_of(kind).plural(waiting)
                return RateLimited(f"{many} are already waiting or being made (the most at once is {own.waiting}); "
                                   "please ask again in a few minutes.", 0.0)
        return self._over(db, platform, user_id, group_id, now, kind, own)

    def _over(self, db: sqlite3.Connection, platform: str, user_id: str, group_id: str, now: float,
              kind: str | None = None, own: KindLimits | None = None) -> RateLimited | None:
        """The limit of requests (of any kind; with ``kind``, its ``own`` limits over its rows alone) this request
        is over, or None."""
        cap = self.limits.user_queued
        if cap and kind is None:
            (waiting,) = db.execute("SELECT count(*) FROM jobs WHERE platform = ? AND user_id = ? "
                                    "AND state != 'answered'", (platform, user_id)).fetchone()
            if waiting >= cap:
                photos = "photo" if cap == 1 else "photos"
                return RateLimited(f"You already have {waiting} {photos} waiting or being made; send the next one "
                                   f"when {'it is' if waiting == 1 else 'one of them is'} done.", 0.0)
        # the words of the limits every request counts against are the first kind's ("pictures")
        noun = kind_of(kind if kind is not None else by_rank()[0].name)
        worst: RateLimited | None = None
        for column, value, scope, who in (("user_id", user_id, "user", "You have"),
                                          ("group_id", group_id, "chat", "People here have")):
            windows = self.limits.windows(scope) if own is None else (own.user if scope == "user" else own.chat)
            for count, seconds in windows:
                rows = db.execute(
                    f"SELECT accepted_at FROM jobs WHERE platform = ? AND {column} = ? AND accepted_at > ? "
                    f"AND coalesce(outcome, '') != ? AND (? IS NULL OR kind = ?) "
                    f"ORDER BY accepted_at DESC LIMIT ?",
                    (platform, value, now - seconds, NOT_COUNTED, kind, kind, count)).fetchall()
                if len(rows) < count:
                    continue
                wait = rows[-1][0] + seconds - now  # when the oldest of them leaves the window
                if worst is None or wait > worst.retry_after:
                    worst = RateLimited(f"{who} asked for {noun.plural(count)} in the last "
                                        f"{_window_name(seconds)}; please ask again {wait_text(wait)}.", wait)
        return worst

    async def queued(self, ticket: int, job_id: str, job: Job, then: Then | None = None) -> None:
        """The job is in the queue: keep it (and what the request asks for after it), to run it again after a
        restart."""
        header, (image,) = codec.dump(job)
        chain = then.dump() if then is not None else None
        await self.store.run(lambda db: db.execute(
            "UPDATE jobs SET state = 'queued', job_id = ?, request = ?, image = ?, chain = ? WHERE ticket = ?",
            (job_id, header.decode(), image, chain, ticket)))

    async def answer_to(self, ticket: int, answer_to: dict[str, Any]) -> None:
        """Where to answer, updated (the status message shown meanwhile)."""
        await self.store.run(lambda db: db.execute("UPDATE jobs SET answer_to = ? WHERE ticket = ?",
                                                   (json.dumps(answer_to), ticket)))

    async def requeued(self, ticket: int, job_id: str) -> None:
        """Submitted again after a restart: one more attempt."""
        await self.store.run(lambda db: db.execute(
            "UPDATE jobs SET job_id = ?, attempts = attempts + 1 WHERE ticket = ?", (job_id, ticket)))

    async def answered(self, ticket: int, outcome: str) -> None:
        """The person has their answer (``outcome``: image, failed, refused, busy, …); the photo is dropped."""
        now = self.clock()

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                changed = db.execute("UPDATE jobs SET state = 'answered', outcome = ?, answered_at = ?, image = NULL "
                                     "WHERE ticket = ? AND state != 'answered'", (outcome, now, ticket)).rowcount
                if changed:  # once per ticket, with what the rules hold for it
                    for rule in self.rules:
                        rule.answered(db, ticket, outcome, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.store.shrink(db)  # the file gives the photos' room back to the disk

        await self.store.run(work)

    async def unanswered(self) -> list[Entry]:
        """Every row not yet answered, oldest first."""
        rows = await self.store.run(lambda db: db.execute(
            "SELECT ticket, platform, user_id, chat_id, answer_to, state, job_id, request, image, attempts, chain "
            "FROM jobs WHERE state != 'answered' ORDER BY ticket").fetchall())
        entries = []
        for ticket, platform, user_id, chat_id, answer_to, state, job_id, request, image, attempts, chain in rows:
            job = None
            if request and image is not None:
                try:
                    job = codec.load(request, [bytes(image)], expect=(Job,), what="job")
                except codec.CodecError as err:  # answered as a photo lost in the restart, not run as something else
                    logger.error("journal: ticket %d holds no job claybot can run (%s)", ticket, err)
            assert job is None or isinstance(job, Job)
            entries.append(Entry(ticket, platform, user_id, chat_id, json.loads(answer_to), state, job_id, job,
                                 attempts, Then.load(chain)))
        return entries

    async def usage(self, since: float) -> dict[str, int]:
        """How many requests ended how (and how many are open) since a time: for `claybot status`."""
        rows = await self.store.run(lambda db: db.execute(
            "SELECT coalesce(outcome, 'open'), count(*) FROM jobs WHERE accepted_at >= ? GROUP BY 1",
            (since,)).fetchall())
        return dict(rows)
