"""The credits ledger against a simple model (Hypothesis): random sequences of new days, purchases (paid again with
the same payment id), reservations, their outcomes, refunds (repeated) and restarts (the database reopened) never
see a negative balance, never credit a payment twice, and every balance equals the model's."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import CreditSettings, PackSettings
from bot.credits import Balance, balance, buy, refund, reserve, settle
from bot.options import UserError
from bot.store import ClaybotDatabase

FREE = 2
PACKS = {"small": 3, "big": 7}
SETTINGS = CreditSettings(enabled=True, free_per_day=FREE,
                          packs=[PackSettings(id=name, credits=n) for name, n in PACKS.items()])
ACCOUNTS = ["telegram:1", "telegram:2", "discord:3"]
DAY = 86400.0

ops = st.one_of(
    st.tuples(st.just("day")),
    st.tuples(st.just("buy"), st.integers(0, 3), st.sampled_from(ACCOUNTS), st.sampled_from(sorted(PACKS))),
    st.tuples(st.just("reserve"), st.sampled_from(ACCOUNTS), st.integers(1, 5)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from(["image", "failed", "refused", "busy"])),
    st.tuples(st.just("refund"), st.integers(0, 3)),
    st.tuples(st.just("restart")),
)


@dataclass
class Model:
    day: int = 0
    used: dict[tuple[str, int], int] = field(default_factory=dict)  # free credits reserved (account, day)
    paid: dict[str, int] = field(default_factory=dict)
    payments: dict[str, tuple[str, int]] = field(default_factory=dict)  # payment id → (account, credits)
    refunds: dict[str, tuple[int, int]] = field(default_factory=dict)  # payment id → (clawed, spent)
    held: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)  # ticket → (account, day, free, paid)
    settled: set[int] = field(default_factory=set)

    def balance(self, account: str) -> Balance:
        return Balance(FREE - self.used.get((account, self.day), 0), self.paid.get(account, 0))


def _open(path: Path) -> sqlite3.Connection:
    return ClaybotDatabase(path)._connect()  # the real schema and pragmas, without the database thread


def _atomic(db: sqlite3.Connection, work, *args):  # as the journal and Credits run them: one transaction each
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db, *args)
        db.execute("COMMIT")
        return result
    except BaseException:
        db.execute("ROLLBACK")
        raise


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ops, max_size=40))
def test_the_ledger_matches_a_simple_model(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("ledger") / "claybot.sqlite3"
    db = _open(path)
    model = Model()
    next_ticket = 1
    try:
        for step in steps:
            now = 1_000_000.0 + model.day * DAY
            if step[0] == "day":
                model.day += 1
            elif step[0] == "restart":
                db.close()
                db = _open(path)
            elif step[0] == "buy":
                _, n, account, pack = step
                payment = f"pay-{n}"
                chosen = next(each for each in SETTINGS.packs if each.id == pack)
                bought = _atomic(db, buy, SETTINGS, payment, account, chosen, now)
                assert bought.new == (payment not in model.payments)
                if bought.new:
                    model.payments[payment] = (account, PACKS[pack])
                    model.paid[account] = model.paid.get(account, 0) + PACKS[pack]
                assert bought.balance == model.balance(account)
            elif step[0] == "reserve":
                _, account, cost = step
                ticket, next_ticket = next_ticket, next_ticket + 1
                have = model.balance(account)
                try:
                    _atomic(db, reserve, SETTINGS, account, "chat", ticket, cost, now)
                except UserError:
                    assert have.total < cost
                else:
                    assert have.total >= cost
                    free = min(cost, have.free)
                    model.used[(account, model.day)] = model.used.get((account, model.day), 0) + free
                    model.paid[account] = model.paid.get(account, 0) - (cost - free)
                    model.held[ticket] = (account, model.day, free, cost - free)
            elif step[0] == "settle":
                _, ticket, outcome = step
                _atomic(db, settle, ticket, outcome, now)
                if ticket in model.held and ticket not in model.settled:
                    model.settled.add(ticket)
                    account, day, free, paid = model.held[ticket]
                    if outcome != "image":
                        model.used[(account, day)] -= free
                        model.paid[account] += paid
            elif step[0] == "refund":
                payment = f"pay-{step[1]}"
                done = _atomic(db, refund, payment, now)
                if payment not in model.payments:
                    assert done.account is None
                elif payment in model.refunds:
                    assert done.repeated and (done.clawed, done.spent) == model.refunds[payment]
                else:
                    account, credits = model.payments[payment]
                    clawed = min(credits, model.paid.get(account, 0))
                    model.paid[account] -= clawed
                    model.refunds[payment] = (clawed, credits - clawed)
                    assert not done.repeated and (done.account, done.clawed, done.spent) == (
                        account, clawed, credits - clawed)
            now = 1_000_000.0 + model.day * DAY
            for account in ACCOUNTS:
                seen = balance(db, SETTINGS, account, now)
                assert seen == model.balance(account)
                assert seen.free >= 0 and seen.paid >= 0
            (twice,) = db.execute("SELECT count(*) FROM (SELECT payment FROM credits WHERE type = 'purchase' "
                                  "GROUP BY payment HAVING count(*) > 1)").fetchone()
            assert twice == 0
    finally:
        db.close()
