"""Credits: people pay for GPU time, with a free allowance each UTC day and spend caps (``[credits]``, off by default).

The ledger is one append-only table of claybot's SQLite database (``credits``, bot/store.py): daily grants,
purchases, reservations, commits, releases, refunds and claw-backs. A balance is never stored: it is the sum of the
entries. Unique indexes make every money event idempotent: one purchase (and one refund) per payment id, one
reserve / commit / release per journal ticket, one grant per person per day. Every write checks the balance in the
same transaction, so a balance never goes negative.

Free credits live a day: the free balance is the day's grant plus that day's reservations and their releases (a
release keeps the day of its reservation, so free credits reserved yesterday and released today are gone). Paid
credits never expire.

A request's credits are reserved at admission (``CreditsRule``, inside the journal's admission transaction, before
any download), committed when its answer is posted and released on any other outcome (``Journal.answered``): a job
replayed after a restart keeps its ticket and so its reservation.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bot.config import CreditSettings, PackSettings
from bot.options import UserError
from bot.store import ClaybotDatabase
from pipeline.core.kinds import JobKind

if TYPE_CHECKING:
    from bot.ask import Ask
    from bot.observability import Metrics

T = TypeVar("T")


class OutOfCredits(UserError):
    """The person cannot pay for this request; ``packs`` are what they could buy (the buy buttons)."""

    def __init__(self, message: str, packs: Sequence[PackSettings] = ()) -> None:
        super().__init__(message)
        self.packs: list[PackSettings] = list(packs)


@dataclass(frozen=True)
class Balance:
    free: int  # today's free credits left
    paid: int  # bought credits left (reservations taken off)

    @property
    def total(self) -> int:
        return self.free + self.paid


@dataclass(frozen=True)
class Purchase:
    new: bool  # False: this payment id was credited before (nothing added now)
    balance: Balance


@dataclass(frozen=True)
class Refund:
    account: str | None  # None: no purchase has this payment id
    clawed: int  # credits taken back
    spent: int  # credits of the pack the person had already spent (not taken back: a balance is never negative)
    repeated: bool = False  # this payment was refunded before: nothing done now


def account_of(platform: str, user_id: str) -> str:
    return f"{platform}:{user_id}"


def day_of(now: float) -> str:
    """The UTC day of a time, 'YYYY-MM-DD'."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


# -- the ledger, in the database thread ----------------------------------------------------------------------------

def _insert(db: sqlite3.Connection, kind: str, account: str, day: str, now: float, *, free: int = 0, paid: int = 0,
            ticket: int | None = None, payment: str | None = None, chat: str | None = None,
            pack: str | None = None, data: dict[str, Any] | None = None) -> bool:
    """One entry; False when a unique index says it is there already (nothing written)."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO credits (type, account, day, free, paid, ticket, payment, chat, pack, data, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, account, day, free, paid, ticket, payment, chat, pack,
         json.dumps(data) if data is not None else None, now))
    return cursor.rowcount == 1


def _balance(db: sqlite3.Connection, account: str, free_per_day: int, day: str) -> Balance:
    granted, free = db.execute(
        "SELECT count(*) FILTER (WHERE type = 'grant'), coalesce(sum(free), 0) FROM credits "
        "WHERE account = ? AND day = ?", (account, day)).fetchone()
    (paid,) = db.execute("SELECT coalesce(sum(paid), 0) FROM credits WHERE account = ?", (account,)).fetchone()
    return Balance(int(free) + (0 if granted else free_per_day), int(paid))


def _spent(db: sqlite3.Connection, day: str, chat: str | None = None) -> int:
    """Credits reserved on ``day`` and not released (everyone's, or one chat's)."""
    (spent,) = db.execute(
        "SELECT -coalesce(sum(free + paid), 0) FROM credits WHERE type IN ('reserve', 'release') AND day = ? "
        "AND (? IS NULL OR chat = ?)", (day, chat, chat)).fetchone()
    return int(spent)


def reserve(db: sqlite3.Connection, settings: CreditSettings, account: str, chat: str, ticket: int, cost: int,
            now: float, noun: str = "picture") -> None:
    """Reserve ``cost`` credits for ``ticket`` (free ones first), or refuse (UserError / OutOfCredits). Inside a
    transaction the caller holds."""
    day = day_of(now)
    if settings.daily_cap and _spent(db, day) + cost > settings.daily_cap:
        raise UserError("claybot has made all it can for today (its operator's daily limit); please ask again "
                        "tomorrow.")
    if settings.chat_per_day and _spent(db, day, chat) + cost > settings.chat_per_day:
        raise UserError(f"This chat has used its {settings.chat_per_day} credits for today; please ask again "
                        "tomorrow.")
    _insert(db, "grant", account, day, now, free=settings.free_per_day)  # the day's first: then entries say
    have = _balance(db, account, settings.free_per_day, day)
    if have.total < cost:
        raise out_of_credits(settings, noun, cost, have)
    free = min(cost, have.free)
    _insert(db, "reserve", account, day, now, free=-free, paid=-(cost - free), ticket=ticket, chat=chat)


def out_of_credits(settings: CreditSettings, noun: str, cost: int, have: Balance) -> OutOfCredits:
    price = f"a {noun} costs {cost}"
    free = f"you get {settings.free_per_day} free each day" if settings.free_per_day else "none are free"
    left = "no credits left today" if have.total == 0 else f"only {have.total} credit{'s' * (have.total != 1)} left"
    buy = "Buy more below, or ask again tomorrow." if settings.packs else "Please ask again tomorrow."
    return OutOfCredits(f"You have {left} ({price}; {free}). {buy}", settings.packs)


def settle(db: sqlite3.Connection, ticket: int, outcome: str, now: float) -> str | None:
    """Commit (outcome "image") or release (anything else) the reservation of ``ticket``, once: "commit",
    "release", or None when there was nothing to settle."""
    held = db.execute("SELECT account, day, free, paid, chat FROM credits WHERE type = 'reserve' AND ticket = ?",
                      (ticket,)).fetchone()
    if held is None:
        return None
    if db.execute("SELECT 1 FROM credits WHERE type IN ('commit', 'release') AND ticket = ?",
                  (ticket,)).fetchone():
        return None
    account, day, free, paid, chat = held
    if outcome == "image":
        _insert(db, "commit", account, day, now, ticket=ticket, chat=chat)
        return "commit"
    _insert(db, "release", account, day, now, free=-free, paid=-paid, ticket=ticket, chat=chat)
    return "release"


class CreditsRule:
    """The journal's admission rule for credits (bot/journal.py ``AdmissionRule``): owners are never charged;
    everyone else pays the kind's cost, free credits first."""

    def __init__(self, settings: CreditSettings, metrics: Metrics | None = None) -> None:
        self.settings, self.metrics = settings, metrics
        self.owners = frozenset(settings.owners)

    def admit(self, db: sqlite3.Connection, ask: Ask, kind: JobKind, ticket: int, now: float) -> None:
        account = account_of(ask.platform, ask.user_id)
        cost = self.settings.cost(kind)
        if account in self.owners or cost <= 0:
            return
        chat = f"{ask.platform}:{ask.group_id or ask.chat_id}"
        reserve(db, self.settings, account, chat, ticket, cost, now, kind.noun)
        if self.metrics is not None:
            self.metrics.credits("reserved", cost)

    def answered(self, db: sqlite3.Connection, ticket: int, outcome: str, now: float) -> None:
        done = settle(db, ticket, outcome, now)
        if done is not None and self.metrics is not None:
            (cost,) = db.execute("SELECT -(free + paid) FROM credits WHERE type = 'reserve' AND ticket = ?",
                                 (ticket,)).fetchone()
            self.metrics.credits("committed" if done == "commit" else "released", int(cost))


class Credits:
    """What the front ends ask of the ledger (each call one trip to the database thread)."""

    def __init__(self, store: ClaybotDatabase, settings: CreditSettings, clock: Callable[[], float] = time.time,
                 *, metrics: Metrics | None = None) -> None:
        self.store, self.settings, self.clock, self.metrics = store, settings, clock, metrics

    def pack(self, pack_id: str) -> PackSettings | None:
        return next((pack for pack in self.settings.packs if pack.id == pack_id), None)

    async def balance(self, account: str) -> Balance:
        day = day_of(self.clock())
        return await self.store.run(lambda db: _balance(db, account, self.settings.free_per_day, day))

    async def known(self, payment_id: str) -> bool:
        return bool(await self.store.run(lambda db: db.execute(
            "SELECT 1 FROM credits WHERE type = 'purchase' AND payment = ?", (payment_id,)).fetchone()))

    async def purchase(self, payment_id: str, account: str, pack_id: str, *,
                       platform_data: dict | None = None) -> Purchase:
        """Credit the pack ``pack_id`` to ``account`` for the payment ``payment_id``, once (a payment delivered
        again adds nothing: ``new`` is False). ValueError for a pack the config does not have."""
        pack = self.pack(pack_id)
        if pack is None:
            raise ValueError(f"no credit pack {pack_id!r} in [credits]")
        now = self.clock()
        bought = await self.store.run(lambda db: _in_transaction(
            db, lambda: buy(db, self.settings, payment_id, account, pack, now, platform_data)))
        if bought.new and self.metrics is not None:
            self.metrics.payment(account.partition(":")[0])
        return bought

    async def refund(self, payment_id: str) -> Refund:
        """Take back the credits of a refunded payment, as far as they are unspent (a balance is never negative);
        a second refund of the same payment does nothing (``repeated``)."""
        now = self.clock()
        return await self.store.run(lambda db: _in_transaction(db, lambda: refund(db, payment_id, now)))

    async def today(self) -> dict[str, int]:
        """Credits spent today (reserved and not released), the daily cap (0: none), and payments today / ever."""
        day = day_of(self.clock())

        def work(db: sqlite3.Connection) -> dict[str, int]:
            today, ever = db.execute("SELECT count(*) FILTER (WHERE day = ?), count(*) FROM credits "
                                     "WHERE type = 'purchase'", (day,)).fetchone()
            return {"spent": _spent(db, day), "daily_cap": self.settings.daily_cap, "payments": int(today),
                    "payments_total": int(ever)}

        return await self.store.run(work)


def _in_transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


def buy(db: sqlite3.Connection, settings: CreditSettings, payment_id: str, account: str, pack: PackSettings,
        now: float, data: dict | None = None) -> Purchase:
    """Credit ``pack`` to ``account`` for the payment ``payment_id``, once."""
    day = day_of(now)
    new = _insert(db, "purchase", account, day, now, paid=pack.credits, payment=payment_id, pack=pack.id, data=data)
    return Purchase(new, _balance(db, account, settings.free_per_day, day))


def balance(db: sqlite3.Connection, settings: CreditSettings, account: str, now: float) -> Balance:
    return _balance(db, account, settings.free_per_day, day_of(now))


def refund(db: sqlite3.Connection, payment_id: str, now: float) -> Refund:
    """Take back what is unspent of a payment's credits, once."""
    day = day_of(now)
    bought = db.execute("SELECT account, paid FROM credits WHERE type = 'purchase' AND payment = ?",
                        (payment_id,)).fetchone()
    if bought is None:
        return Refund(None, 0, 0)
    account, credits = bought
    before = db.execute("SELECT data FROM credits WHERE type = 'refund' AND payment = ?", (payment_id,)).fetchone()
    if before is not None:
        told = json.loads(before[0])
        return Refund(account, int(told["clawed"]), int(told["spent"]), repeated=True)
    (paid,) = db.execute("SELECT coalesce(sum(paid), 0) FROM credits WHERE account = ?", (account,)).fetchone()
    clawed = max(0, min(int(credits), int(paid)))
    spent = int(credits) - clawed
    _insert(db, "refund", account, day, now, payment=payment_id, data={"clawed": clawed, "spent": spent})
    if clawed:
        _insert(db, "clawback", account, day, now, paid=-clawed, payment=payment_id)
    return Refund(account, clawed, spent)
