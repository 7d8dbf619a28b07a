"""Outages stay quiet and clear (issue 23, items 9 and 12): when the Bot API goes away the log gets one line when
it is lost and one when it is back, not a traceback per poll; a photo Telegram will not hand over is answered with
"please send it again"; a private message that asks for nothing gets a one-line hint. The real python-telegram-bot
Application against the fake Bot API server; no pipeline worker is needed (nothing reaches the queue)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest_asyncio

from bot.flow import FETCH_FAILED
from bot.outage import DISCORD_GATEWAY, RECONNECT_LINE, DiscordReconnects, Outage, quiet_discord_reconnects
from bot.telegram.hints import PLAIN_MESSAGE_HINT
from pipeline.core.local import LocalQueue
from tests.conftest import photo_bytes
from tests.fake_telegram import group_chat, private_chat, user
from tests.test_telegram import Running, running_telegram

ALICE = user(3001, "Alice")
ALICE_CHAT = private_chat(ALICE)
GROUP = group_chat(-1003000, "Quiet group")
PHOTO = photo_bytes((128, 96))


@pytest_asyncio.fixture
async def telegram(tiny_config, caplog):
    """TelegramFrontEnd on a queue that is never started: these requests end before the queue."""
    caplog.set_level(logging.DEBUG)
    async with running_telegram(tiny_config, LocalQueue(tiny_config.gpu(), tiny_config.queue)) as running:
        yield running


async def until(predicate, timeout: float = 60.0) -> None:
    """Wait for a condition on counters the code under test keeps (no fixed sleep)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


async def last_words(running: Running, message: dict) -> str:
    """What the person finally reads under their photo: the status line's last edit, or a text reply."""
    fake = running.fake
    status = await running.text_for(message)
    if status.params["text"] == FETCH_FAILED:
        return FETCH_FAILED
    edit = await fake.wait_for(lambda c: c.method == "editMessageText"
                               and c.params["message_id"] == status.result["message_id"]
                               and not c.params["text"].startswith("Got it"), answered=True, timeout=30)
    return edit.params["text"]


# -- item 9: the Bot API going away ---------------------------------------------------------------------------------


async def test_an_outage_of_the_bot_api_logs_one_line_when_lost_and_one_when_back(telegram, caplog):
    outage: Outage = telegram.front_end.application.bot_data["outage"]
    await telegram.fake.wait_for(lambda c: c.method == "getUpdates", timeout=15)
    await telegram.fake.go_away()
    await until(lambda: outage.failures >= 2)  # two polls refused (PTB retries after 1, then 1.5 s): a count to tell
    await telegram.fake.come_back()
    await until(lambda: not outage.down)

    polling_errors = [r for r in caplog.records if r.name.startswith("telegram") and r.levelno >= logging.WARNING]
    assert polling_errors == []  # before: "Exception happened while polling for updates." and a traceback, each
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.outage"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("the Telegram Bot API is unreachable (NetworkError: ")
    assert re.fullmatch(r"the Telegram Bot API is reachable again after \d+ s \(\d+ failed attempts\)", lines[1])
    # and it serves again
    after = len(telegram.fake.calls)
    await telegram.fake.send_text(ALICE_CHAT, ALICE, "/help")
    await telegram.fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == ALICE["id"],
                                 after=after, answered=True)


async def test_a_proxy_answering_502_with_an_html_page_is_an_outage_without_a_traceback_per_poll(telegram, caplog):
    # issue 31, item 5: PTB logged "Can not load invalid JSON data" with a traceback and the whole page, each poll
    outage: Outage = telegram.front_end.application.bot_data["outage"]
    await telegram.fake.wait_for(lambda c: c.method == "getUpdates", timeout=15)
    await telegram.fake.set_bad_gateway(True)
    await until(lambda: outage.failures >= 2)
    await telegram.fake.set_bad_gateway(False)
    await until(lambda: not outage.down)

    assert [r for r in caplog.records if r.exc_info] == []
    assert [r for r in caplog.records if r.name.startswith("telegram") and r.levelno >= logging.WARNING] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.outage"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("the Telegram Bot API is unreachable (NetworkError: Bad Gateway (502)")
    assert "\n" not in lines[0]
    assert re.fullmatch(r"the Telegram Bot API is reachable again after \d+ s \(\d+ failed attempts\)", lines[1])


async def test_a_photo_telegram_refuses_to_hand_over_is_answered_send_it_again(telegram, caplog):
    telegram.fake.fail_next("getFile", 400, "Bad Request: wrong file_id or the file is temporarily unavailable")
    sent = await telegram.fake.send_photo(ALICE_CHAT, ALICE, PHOTO, caption="/clay")
    assert await last_words(telegram, sent) == FETCH_FAILED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "went wrong on my side" traceback


async def test_an_expired_photo_is_answered_send_it_again(telegram):
    telegram.fake.files_gone = True  # getFile answers, the download is refused (404)
    sent = await telegram.fake.send_photo(ALICE_CHAT, ALICE, PHOTO, caption="/clay")
    assert await last_words(telegram, sent) == FETCH_FAILED


# -- item 12: a private message that asks for nothing ---------------------------------------------------------------


async def test_a_private_message_that_is_no_command_and_no_photo_gets_a_one_line_hint(telegram):
    sent = await telegram.fake.send_text(ALICE_CHAT, ALICE, "hello, can you make my cat out of clay?")
    hint = await telegram.text_for(sent)
    assert hint.params["text"] == PLAIN_MESSAGE_HINT and "\n" not in PLAIN_MESSAGE_HINT


async def test_chatter_in_a_group_gets_no_hint(telegram):
    chatter = await telegram.fake.send_text(GROUP, ALICE, "nice weather")
    await telegram.fake.send_text(GROUP, ALICE, "/help")
    await telegram.fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == GROUP["id"],
                                 answered=True)  # updates are handled in order: the chatter's turn is over
    assert not [c for c in telegram.fake.calls_to("sendMessage") if c.reply_to == chatter["message_id"]]


# -- item 9: Discord's gateway reconnecting -------------------------------------------------------------------------


class Client:
    """Where discord.py's events are registered (``commands.Bot.add_listener``)."""

    def __init__(self) -> None:
        self.listeners: dict[str, list] = {}

    def add_listener(self, func, name: str) -> None:
        self.listeners.setdefault(name, []).append(func)


async def test_discord_reconnect_attempts_are_counted_not_logged_each_with_a_traceback(caplog):
    caplog.set_level(logging.DEBUG)
    client = Client()
    outage = quiet_discord_reconnects(client)
    quiet_discord_reconnects(client)  # a second bot in the process adds no second filter
    library = logging.getLogger("discord.client")
    assert sum(isinstance(f, DiscordReconnects) for f in library.filters) == 1
    for _ in range(5):  # what discord.py's Client.connect does on each failed attempt
        try:
            raise OSError("Connect call failed ('162.159.135.232', 443)")
        except OSError:
            library.exception(RECONNECT_LINE, 1.5)
    for back in client.listeners["on_connect"]:
        await back()

    assert outage is DISCORD_GATEWAY and not outage.down
    assert [r for r in caplog.records if r.name == "discord.client"] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.outage"]
    assert lines[0] == "the Discord gateway is unreachable (OSError: Connect call failed ('162.159.135.232', 443)); " \
                       "retrying quietly until it is back"
    assert re.fullmatch(r"the Discord gateway is reachable again after \d+ s \(5 failed attempts\)", lines[1])
    assert len(lines) == 2


def test_a_long_outage_is_recalled_every_ten_minutes_not_every_attempt():
    now = [0.0]
    records: list[str] = []

    class Log:
        def warning(self, message, *args):
            records.append(message % args)

    outage = Outage("the Telegram Bot API", log=Log(), clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(1200):  # an hour of polls every 3 s
        now[0] += 3.0
        outage.failed(ConnectionError("refused"))
    outage.ok()
    assert len(records) == 7  # lost, five reminders, back
    assert records[1].startswith("the Telegram Bot API still unreachable after 10 min 0 s (201 failed attempts")
    assert records[-1] == "the Telegram Bot API is reachable again after 59 min 57 s (1200 failed attempts)"
