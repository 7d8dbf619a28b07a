"""Credits (bot/credits.py): a person's free photos a day, then a clear refusal with packs to buy and nothing queued;
a purchase credited once per payment; a job that ends without a picture gives its credits back; a chat process
killed between reserving and answering neither loses nor doubles credits; chat and daily caps; owners free."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bot.ask import Ask
from bot.config import CreditSettings, PackSettings
from bot.credits import Balance, Credits, CreditsRule
from bot.flow import LOST_DOWNLOADING
from bot.journal import Journal
from bot.observability import Metrics
from bot.service import make_flow
from bot.store import ClaybotDatabase
from pipeline.core.jobs import Done, ErrorKind, Failed, Job, JobHandle
from pipeline.core.kinds import kind_of
from tests.conftest import photo_bytes

PHOTO = photo_bytes()
SMALL = PackSettings(id="small", credits=10, stars=50)
OUT_LINE = ("You have no credits left today (a picture costs 1; you get 1 free each day). Buy more below, or ask "
            "again tomorrow.")


def credits_on(**fields: Any) -> CreditSettings:
    return CreditSettings(**{"enabled": True, "free_per_day": 1, "packs": [SMALL], **fields})


class Kept:
    """A Reply that keeps what the person is shown, buy offers too."""

    private = False

    def __init__(self) -> None:
        self.results: list[Done] = []
        self.errors: list[str] = []
        self.offers: list[list[PackSettings]] = []

    async def status(self, text: str) -> None:
        pass

    async def result(self, done: Done, caption: str) -> None:
        self.results.append(done)

    async def error(self, text: str, *, offer=()) -> None:
        self.errors.append(text)
        self.offers.append(list(offer))

    def placeholder(self) -> dict:
        return {}


class Counting:
    """The real queue, counting what enters it."""

    def __init__(self, queue) -> None:
        self.queue, self.gpu, self.submitted = queue, queue.gpu, 0

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        await self.queue.check_room(coming, kinds)

    async def submit(self, job: Job) -> JobHandle:
        self.submitted += 1
        return await self.queue.submit(job)


def ask(user: str, chat: str = "c", platform: str = "telegram") -> Ask:
    async def photo() -> bytes:
        return PHOTO
    return Ask(platform, user, chat, photo, size=len(PHOTO))


async def entries(store: ClaybotDatabase) -> list[tuple]:
    return await store.run(lambda db: db.execute(
        "SELECT type, account, free, paid, ticket, payment FROM credits ORDER BY entry").fetchall())


@pytest.mark.asyncio(loop_scope="module")
async def test_free_photo_then_refusal_with_packs_then_a_purchase_pays_for_the_next(queue, tiny_config, tmp_path):
    config = tiny_config.model_copy(update={"credits": credits_on()})
    counting = Counting(queue)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = make_flow(counting, config, store)  # type: ignore[arg-type]
        credits = flow.credits
        assert credits is not None
        first, second, third = Kept(), Kept(), Kept()
        await flow.handle(ask("1"), first)
        assert len(first.results) == 1 and counting.submitted == 1
        await flow.handle(ask("1"), second)
        assert second.errors == [OUT_LINE] and second.offers == [[SMALL]] and not second.results
        assert counting.submitted == 1  # nothing entered the queue
        assert await store.run(lambda db: db.execute("SELECT count(*) FROM jobs").fetchone()[0]) == 1

        bought = await credits.purchase("charge-1", "telegram:1", "small", platform_data={"stars": 50})
        again = await credits.purchase("charge-1", "telegram:1", "small")  # the same payment delivered twice
        assert bought.new and bought.balance == Balance(free=0, paid=10)
        assert not again.new and again.balance == Balance(free=0, paid=10)
        assert await credits.known("charge-1") and not await credits.known("charge-2")

        await flow.handle(ask("1"), third)
        assert len(third.results) == 1 and not third.errors
        assert await credits.balance("telegram:1") == Balance(free=0, paid=9)
        assert (await credits.today())["payments"] == 1 and (await credits.today())["spent"] == 2


class Fails:
    """The real queue's intake, then the worker ends the job with ``kind`` (as a timeout, the SFW gate, a
    cancellation or a crash do)."""

    def __init__(self, queue, kind: ErrorKind) -> None:
        self.queue, self.gpu, self.kind = queue, queue.gpu, kind

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        await self.queue.check_room(coming, kinds)

    async def submit(self, job: Job) -> JobHandle:
        handle = JobHandle(f"fails-{self.kind}", job)
        handle.push(Failed(f"It ended: {self.kind}.", self.kind))
        return handle


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("kind", [ErrorKind.INTERNAL, ErrorKind.NOT_ALLOWED, ErrorKind.TIMEOUT, ErrorKind.CANCELLED])
async def test_a_job_without_a_picture_gives_its_credits_back(queue, tiny_config, tmp_path, kind):
    config = tiny_config.model_copy(update={"credits": credits_on()})
    metrics = Metrics()
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = make_flow(Fails(queue, kind), config, store, metrics)  # type: ignore[arg-type]
        assert flow.credits is not None
        kept = Kept()
        await flow.handle(ask("5"), kept)
        # by the time the person has the answer, the credit is back: they may ask again at once
        assert kept.errors == [f"It ended: {kind}."]
        assert await flow.credits.balance("telegram:5") == Balance(free=1, paid=0)
        kinds = [row[0] for row in await entries(store)]
    assert kinds == ["grant", "reserve", "release"]
    released = metrics.registry.get_sample_value("claybot_credits_total", {"event": "released"})
    reserved = metrics.registry.get_sample_value("claybot_credits_total", {"event": "reserved"})
    assert released == reserved == 1.0


@pytest.mark.asyncio(loop_scope="module")
async def test_a_photo_intake_cannot_use_gives_its_credit_back(queue, tiny_config, tmp_path):
    config = tiny_config.model_copy(update={"credits": credits_on()})

    async def not_a_photo() -> bytes:
        return b"not an image"

    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = make_flow(queue, config, store)
        assert flow.credits is not None
        kept = Kept()
        await flow.handle(Ask("telegram", "6", "c", not_a_photo, size=12), kept)
        assert len(kept.errors) == 1 and kept.offers == [[]]
        assert await flow.credits.balance("telegram:6") == Balance(free=1, paid=0)


# -- caps and owners -----------------------------------------------------------------------------------------------

async def _admit(journal: Journal, who: Ask, ticket_outcome: str | None = "image") -> int:
    ticket = await journal.admit(who.platform, who.user_id, who.chat_id, who.group_id or who.chat_id, {}, ask=who)
    if ticket_outcome is not None:
        await journal.answered(ticket, ticket_outcome)
    return ticket


async def test_chat_per_day_and_daily_cap_hold_with_clear_lines(tmp_path, tiny_config):
    settings = credits_on(free_per_day=5, chat_per_day=2, daily_cap=3)
    limits = tiny_config.limits.model_copy(update={"user_per_minute": 0, "chat_per_minute": 0})
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, limits, rules=[CreditsRule(settings)])
        await _admit(journal, ask("1", chat="a"))
        await _admit(journal, ask("2", chat="a"))
        with pytest.raises(Exception) as chat_full:
            await _admit(journal, ask("3", chat="a"))
        await _admit(journal, ask("3", chat="b"))
        with pytest.raises(Exception) as all_full:
            await _admit(journal, ask("4", chat="c"))
        today = await Credits(store, settings).today()
    assert str(chat_full.value) == "This chat has used its 2 credits for today; please ask again tomorrow."
    assert str(all_full.value) == ("claybot has made all it can for today (its operator's daily limit); please ask "
                                   "again tomorrow.")
    assert today == {"spent": 3, "daily_cap": 3, "payments": 0, "payments_total": 0}


async def test_a_released_request_does_not_count_against_the_caps(tmp_path, tiny_config):
    settings = credits_on(free_per_day=5, daily_cap=1)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, tiny_config.limits, rules=[CreditsRule(settings)])
        await _admit(journal, ask("1"), "failed")
        await _admit(journal, ask("2"))  # the first one's credit came back to the day's cap too
        assert (await Credits(store, settings).today())["spent"] == 1


async def test_owners_are_never_charged(tmp_path, tiny_config):
    settings = credits_on(free_per_day=0, owners=["telegram:99"])
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, tiny_config.limits, rules=[CreditsRule(settings)])
        for _ in range(3):
            await _admit(journal, ask("99"))
        with pytest.raises(Exception, match="You have no credits left today"):
            await _admit(journal, ask("98"))
        assert await entries(store) == []


async def test_a_clip_costs_its_configured_price_and_the_refusal_says_so(tmp_path, tiny_config):
    settings = credits_on(free_per_day=3, clip=8)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, tiny_config.limits, rules=[CreditsRule(settings)])
        with pytest.raises(Exception) as refused:
            await journal.admit("telegram", "1", "c", "c", {}, kind="clip",
                                ask=Ask("telegram", "1", "c", lambda: PHOTO, kind="clip"))  # type: ignore[arg-type]
    assert str(refused.value) == ("You have only 3 credits left (a clip costs 8; you get 3 free each day). Buy more "
                                  "below, or ask again tomorrow.")
    assert settings.cost(kind_of("clip")) == 8 and settings.cost(kind_of("picture")) == 1


async def test_a_refund_claws_back_what_is_unspent_once(tmp_path, tiny_config):
    settings = credits_on(free_per_day=0)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        credits = Credits(store, settings)
        journal = Journal(store, tiny_config.limits, rules=[CreditsRule(settings)])
        await credits.purchase("p1", "telegram:1", "small")
        for _ in range(3):
            await _admit(journal, ask("1"))
        refund = await credits.refund("p1")
        again = await credits.refund("p1")
        unknown = await credits.refund("nope")
        assert await credits.balance("telegram:1") == Balance(0, 0)
    assert (refund.account, refund.clawed, refund.spent, refund.repeated) == ("telegram:1", 7, 3, False)
    assert (again.clawed, again.spent, again.repeated) == (7, 3, True)
    assert unknown.account is None and unknown.clawed == 0


# -- kill -9 between reserve and commit ----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, sys
    from bot.ask import Ask
    from bot.config import CreditSettings, load_config
    from bot.service import make_flow
    from bot.store import ClaybotDatabase
    from pipeline.core.jobs import JobHandle

    config_path, database, settings, stage = sys.argv[1:5]
    PHOTO = open(sys.argv[5], "rb").read()

    class Limbo:
        # a queue that takes the job and never answers: the process is killed while it waits
        def __init__(self, gpu):
            self.gpu = gpu
        async def check_room(self, coming=0, kinds=()):
            pass
        async def submit(self, job):
            return JobHandle("lost-1", job)

    class Quiet:
        private = False
        async def status(self, text): pass
        async def result(self, done, caption): raise AssertionError("answered")
        async def error(self, text, *, offer=()): raise AssertionError(text)
        def placeholder(self): return {}

    async def main():
        config = load_config(config_path)
        config = config.model_copy(update={"credits": CreditSettings.model_validate_json(settings)})
        async with ClaybotDatabase(database) as store:
            flow = make_flow(Limbo(config.gpu()), config, store)
            async def photo():
                if stage == "downloading":
                    await asyncio.Event().wait()
                return PHOTO
            await flow.handle(Ask("telegram", "7", "70", photo, size=len(PHOTO), answer_to={"m": 1}), Quiet())

    asyncio.run(main())
""")


class Chat:
    """A front end after the restart: keeps what it delivers."""

    def __init__(self) -> None:
        self.posted: list[tuple[Done | None, str]] = []

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        self.posted.append((done, text))


def _wait_for(database: Path, sql: str, child: subprocess.Popen, deadline: float = 120.0) -> None:
    """Until the dying process has written what ``sql`` finds (it runs on its own; a poll, not a sleep)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        try:
            with sqlite3.connect(database, timeout=5) as db:
                if db.execute(sql).fetchone():
                    return
        except sqlite3.OperationalError:  # the table is not there yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"the child never got to: {sql}")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("stage", ["downloading", "queued"])
async def test_kill_9_between_reserve_and_commit_neither_loses_nor_doubles(queue, tiny_config, tiny_config_path,
                                                                          tmp_path, stage):
    settings = credits_on()
    database = tmp_path / "claybot.sqlite3"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(PHOTO)
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    child = subprocess.Popen([sys.executable, str(script), str(tiny_config_path), str(database),
                              settings.model_dump_json(), stage, str(photo)],
                             cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)
    try:
        state = "reserved" if stage == "downloading" else "queued"
        await asyncio.to_thread(_wait_for, database, f"SELECT 1 FROM jobs WHERE state = '{state}' AND EXISTS "
                                "(SELECT 1 FROM credits WHERE type = 'reserve')", child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    config = tiny_config.model_copy(update={"credits": settings})
    chat = Chat()
    for _ in range(2):  # restarted, then restarted again: the reservation is settled once
        async with ClaybotDatabase(database) as store:
            flow = make_flow(queue, config, store)
            assert flow.credits is not None
            await flow.recover({"telegram": chat}, await flow.unanswered())
            await asyncio.wait_for(asyncio.gather(*flow.recovering.tasks), 120)
            assert await flow.unanswered() == []
            balance = await flow.credits.balance("telegram:7")
            kinds = [row[0] for row in await entries(store)]
    if stage == "downloading":  # nothing could be made: the credit came back
        assert chat.posted == [(None, LOST_DOWNLOADING)]
        assert balance == Balance(free=1, paid=0) and kinds == ["grant", "reserve", "release"]
    else:  # the replay made the picture: the credit is spent, once
        ((done, _),) = chat.posted
        assert isinstance(done, Done)
        assert balance == Balance(free=0, paid=0) and kinds == ["grant", "reserve", "commit"]


async def test_credits_off_changes_nothing(tiny_config, tmp_path):
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = make_flow(None, tiny_config, store)  # type: ignore[arg-type]
        assert flow.credits is None and flow.journal is not None and flow.journal.rules == []
