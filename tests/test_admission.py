"""Admission rules (the seam credits use) run inside the journal's transactions: a rule's refusal writes nothing, a
rule's hold is written with the ticket, and it is settled exactly once with the request's outcome, whatever answers
it (the live request, a refusal after admission)."""

from __future__ import annotations

import sqlite3

import pytest

from bot.ask import Ask
from bot.flow import RequestFlow
from bot.options import UserError
from bot.store import ClaybotDatabase
from pipeline.core.jobs import Done, QueueBusy
from pipeline.core.kinds import JobKind
from tests.conftest import photo_bytes

PHOTO = photo_bytes()


class Tally:
    """A toy rule: each person may ask ``most`` times; every admitted request holds a row until its outcome."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.settled: list[tuple[int, str]] = []

    def admit(self, db: sqlite3.Connection, ask: Ask, kind: JobKind, ticket: int, now: float) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS tally (ticket INTEGER PRIMARY KEY, user TEXT, outcome TEXT)")
        (used,) = db.execute("SELECT count(*) FROM tally WHERE user = ?", (ask.user_id,)).fetchone()
        if used >= self.most:
            raise UserError(f"You have used your {self.most} {kind.noun}s.")
        db.execute("INSERT INTO tally (ticket, user) VALUES (?, ?)", (ticket, ask.user_id))

    def answered(self, db: sqlite3.Connection, ticket: int, outcome: str, now: float) -> None:
        db.execute("UPDATE tally SET outcome = ? WHERE ticket = ?", (outcome, ticket))
        self.settled.append((ticket, outcome))


class Kept:
    private = False

    def __init__(self) -> None:
        self.results: list[Done] = []
        self.errors: list[str] = []

    async def status(self, text: str) -> None:
        pass

    async def result(self, done: Done, caption: str) -> None:
        self.results.append(done)

    async def error(self, text: str) -> None:
        self.errors.append(text)

    def placeholder(self) -> dict:
        return {}


def _ask(user: str) -> Ask:
    async def photo() -> bytes:
        return PHOTO
    return Ask("telegram", user, "c", photo, size=len(PHOTO))


@pytest.mark.asyncio(loop_scope="module")
async def test_a_rule_holds_with_the_ticket_and_settles_once_with_the_outcome(queue, tiny_config, tmp_path):
    rule = Tally(most=1)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = RequestFlow(queue, tiny_config, store=store, rules=[rule])
        first, second = Kept(), Kept()
        await flow.handle(_ask("1"), first)
        await flow.handle(_ask("1"), second)  # refused by the rule, in its words; nothing written for it
        rows = await store.run(lambda db: db.execute("SELECT ticket, user, outcome FROM tally").fetchall())
        tickets = await store.run(lambda db: db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    assert len(first.results) == 1 and second.errors == ["You have used your 1 pictures."]
    (ticket, user, outcome), = rows
    assert (user, outcome) == ("1", "image") and rule.settled == [(ticket, "image")]
    assert tickets == 1  # the refused request left no ticket: the rule's refusal rolled it back


class Full:
    """A queue with no room: admission refuses after the ticket and the hold were written."""

    def __init__(self, queue) -> None:
        self.gpu = queue.gpu

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        raise QueueBusy("I'm busy.")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_refused_after_admission_releases_what_the_rules_hold(queue, tiny_config, tmp_path):
    rule = Tally(most=5)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = RequestFlow(Full(queue), tiny_config, store=store, rules=[rule])  # type: ignore[arg-type]
        kept = Kept()
        await flow.handle(_ask("2"), kept)
        (outcome,), = await store.run(lambda db: db.execute("SELECT outcome FROM tally").fetchall())
    assert kept.errors == ["I'm busy."] and outcome == "busy" and len(rule.settled) == 1
