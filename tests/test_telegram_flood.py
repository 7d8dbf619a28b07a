"""Telegram's flood limits (bot/telegram/flood.py): the real python-telegram-bot Application against the fake Bot API
server answering 429 with ``retry_after`` past a group's budget, with claybot's journal. A picture Telegram refused is
sent again after the wait; spam commands cannot spend a group's messages; a picture is never recorded as answered
unless Telegram took it; a refused button press is an alert, not a line in the group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import Config
from bot.flow import RequestFlow
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from bot.telegram.flood import CHATTER, STATUS, FloodLimiter, ReplyGaps, Skipped
from tests.conftest import load_script, photo_bytes
from tests.fake_telegram import TOO_MANY, Call, FakeTelegram, group_chat, user
from tests.test_telegram import TOKEN, Running, with_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHOTO = photo_bytes((128, 96))
GROUP = group_chat(-1007000, "Busy group")
SPAMMER = user(4000, "Spammer")
PEOPLE = [user(4001 + i, f"Person {i}") for i in range(3)]
BUDGET, WINDOW = 8, 4.0  # a group's messages per window, here and in the fake: Telegram's 20 a minute, shrunk
PICTURES = ("sendPhoto", "sendDocument")


@dataclass
class Journaled(Running):
    """A started front end with claybot's journal."""

    flow: RequestFlow

    async def settled(self) -> None:
        """Every request task has finished (its outcome recorded in the journal too)."""
        tasks = [task for task in self.front_end.requests.running.tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    def replies_to(self, message: dict) -> list[Call]:
        """What Telegram took from the bot in reply to ``message``."""
        return [c for c in self.fake.calls if c.result is not None and c.reply_to == message["message_id"]
                and c.params.get("chat_id") == message["chat"]["id"]]


@contextlib.asynccontextmanager
async def started(config: Config, queue, tmp_path, *, flood: bool = True, limits: dict | None = None,
                  **telegram) -> AsyncIterator[Journaled]:
    """A front end on a fresh fake server (refusing a group's messages past BUDGET per WINDOW, as Telegram does,
    with ``flood``) and a fresh journal; the bot's group budget the same, a person's help replies 30 s apart."""
    fake = FakeTelegram(TOKEN, flood_limit=BUDGET if flood else 0, flood_window=WINDOW)
    await fake.start()
    config = with_telegram(config, fake, **{"group_messages": BUDGET, "group_window": WINDOW, "reply_gap": 30.0,
                                            **telegram})
    if limits:
        config = config.model_copy(update={"limits": config.limits.model_copy(update=limits)})
    store = ClaybotDatabase(tmp_path / "claybot.sqlite3")
    await store.open()
    flow = RequestFlow(queue, config, store=store)
    front_end = TelegramFrontEnd(config, flow, TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        yield Journaled(fake, front_end, flow)
    finally:
        await asyncio.wait_for(front_end.close(), 30)
        await fake.close()
        await store.close()


@pytest_asyncio.fixture(loop_scope="module")
async def busy(tiny_config, queue, tmp_path, caplog):
    """The front end against a fake Telegram with a group flood limit; the token never in the logs."""
    caplog.set_level(logging.DEBUG)
    async with started(tiny_config, queue, tmp_path) as running:
        yield running
    assert TOKEN not in caplog.text


# -- Telegram's 429 -------------------------------------------------------------------------------------------------


async def test_a_picture_refused_with_retry_after_is_sent_again_after_the_wait(busy):
    busy.fake.fail_next("sendPhoto", 429, TOO_MANY.format(1), retry_after=1)
    photo = await busy.fake.send_photo(GROUP, PEOPLE[0], PHOTO, caption="/clay")

    picture = await busy.picture_for(photo)
    await busy.settled()

    refused = next(c for c in busy.fake.calls_to("sendPhoto") if c.error is not None)
    assert refused.error.startswith("Too Many Requests")
    assert picture.at - refused.at >= 0.9  # Telegram said wait 1 s: it was sent again only then
    assert await busy.flow.journal.unanswered() == []  # answered once sent
    assert [c.method for c in busy.replies_to(photo) if c.method in PICTURES] == ["sendPhoto"]  # once


async def test_a_picture_telegram_would_not_take_stays_unanswered_in_the_journal(busy):
    busy.fake.fail_next("sendPhoto", 403, "Forbidden: bot was kicked from the supergroup chat")
    photo = await busy.fake.send_photo(GROUP, PEOPLE[1], PHOTO, caption="/clay")

    refused = await busy.fake.wait_for(lambda c: c.method == "sendPhoto" and c.error is not None, timeout=60)
    await busy.settled()

    assert refused.reply_to == photo["message_id"]
    assert not [c for c in busy.replies_to(photo) if c.method in PICTURES]  # nothing reached the chat...
    waiting = await busy.flow.journal.unanswered()  # ...so a restarted claybot still owes this picture
    assert [(e.chat_id, e.answer_to["message_id"]) for e in waiting] == [(str(GROUP["id"]), photo["message_id"])]


# -- a busy group -----------------------------------------------------------------------------------------------------


async def test_spam_commands_from_one_person_do_not_stop_other_peoples_pictures(busy):
    for i in range(12):  # more commands than the group's whole budget, none of which asks for a picture
        await busy.fake.send_text(GROUP, SPAMMER, ("/help", "/clay abc", "/animate", "/clay")[i % 4])
    photos = [await busy.fake.send_photo(GROUP, who, PHOTO, caption="/clay") for who in PEOPLE]

    pictures = [await busy.picture_for(photo) for photo in photos]
    await busy.settled()

    assert all(p.result is not None for p in pictures)  # every person has their picture
    answered = [c for c in busy.fake.calls if c.result is not None and c.method == "sendMessage"
                and c.params.get("reply_parameters", {}).get("message_id") in
                {m["message_id"] for m in busy.fake.messages.values() if m.get("from") == SPAMMER}]
    assert len(answered) == 1  # the spammer: one answer, not twelve
    assert busy.fake.flooded() == []  # the bot kept within the group's budget: Telegram refused nothing
    assert await busy.flow.journal.unanswered() == []


async def test_many_people_asking_for_help_get_a_quarter_of_the_groups_budget_at_most(busy):
    helped = [await busy.fake.send_text(GROUP, user(4100 + i, f"Asker {i}"), "/help") for i in range(6)]
    photo = await busy.fake.send_photo(GROUP, PEOPLE[2], PHOTO, caption="/clay")  # handled after every /help

    await busy.picture_for(photo)
    await busy.settled()

    answers = [c for asked in helped for c in busy.replies_to(asked)]
    assert len(answers) == BUDGET // 4
    assert busy.fake.flooded() == []


async def test_status_lines_are_skipped_before_a_picture_waits():
    limiter = FloodLimiter(group_messages=3, group_window=60.0)
    sent: list[str] = []

    async def send(what: str) -> bool:
        sent.append(what)
        return True

    async def call(what: str, kind: str | None) -> None:
        await limiter.process_request(send, (what,), {}, "sendMessage", {"chat_id": GROUP["id"]}, kind)

    limiter.expect(GROUP["id"])  # two requests under way in the group: room is kept for both answers
    limiter.expect(GROUP["id"])
    await call("Got it (first request)", STATUS)
    with pytest.raises(Skipped):
        await call("Got it (second request)", STATUS)
    with pytest.raises(Skipped):
        await call("Usage: /clay", CHATTER)
    await call("first picture", None)
    await call("second picture", None)
    assert sent == ["Got it (first request)", "first picture", "second picture"]
    # elsewhere, people's private chats are not the group's business
    await limiter.process_request(send, ("hello",), {}, "sendMessage", {"chat_id": PEOPLE[0]["id"]}, STATUS)
    assert sent[-1] == "hello"


async def test_a_person_gets_one_help_reply_per_gap_in_a_group_and_any_number_in_private():
    now = [0.0]
    gaps = ReplyGaps(30.0, clock=lambda: now[0])
    assert [gaps.allow(GROUP["id"], 1) for _ in range(3)] == [True, False, False]
    assert gaps.allow(GROUP["id"], 2)  # someone else
    assert all(gaps.allow(1, 1) for _ in range(3))  # their private chat
    now[0] = 31.0
    assert gaps.allow(GROUP["id"], 1)


# -- buttons ----------------------------------------------------------------------------------------------------------


async def test_a_refused_button_press_is_an_alert_only_the_presser_sees(tiny_config, queue, tmp_path):
    async with started(tiny_config, queue, tmp_path, limits={"user_per_minute": 1, "user_queued": 0}) as busy:
        photo = await busy.fake.send_photo(GROUP, PEOPLE[0], PHOTO, caption="/clay")
        picture = await busy.picture_for(photo)
        await busy.settled()
        again = picture.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        mark = len(busy.fake.calls)

        query_id = await busy.fake.press(PEOPLE[0], picture.result, again)  # a second picture within the minute
        alert = await busy.fake.wait_for(lambda c: c.method == "answerCallbackQuery", after=mark, answered=True)
        await busy.settled()

        assert alert.params["callback_query_id"] == query_id and alert.params["show_alert"] == "true"
        assert "in the last minute" in alert.params["text"]
        assert not [c for c in busy.fake.calls[mark:] if c.method == "sendMessage"]  # nothing in the group


# -- the benchmark, so it cannot rot ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_group():
    """benchmarks/busy_group.py as a module."""
    module = load_script(Path(__file__).resolve().parent.parent / "benchmarks" / "busy_group.py")
    yield module
    sys.modules.pop(module.__name__, None)


async def test_the_busy_group_benchmark_answers_every_photo_against_the_real_claybot_run(busy_group,
                                                                                          tiny_config_path, tmp_path):
    # The real `claybot run` with the repository's budget; Telegram's minute shrunk to 6 s and stricter than that
    # budget (12 messages), so claybot both paces the group and meets Telegram's 429s.
    figures = await busy_group.run_busy_group(tiny_config_path, tmp_path, photos=6, spam=8, scale=0.1, limit=12,
                                              timeout=240)
    assert (figures["answered"], figures["lost"], figures["marked_answered_unsent"]) == (6, 0, 0)
    assert figures["spam_replies"] <= 2  # one per 3 s gap: not one per command (on a slow machine, maybe two)
