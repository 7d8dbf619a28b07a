"""The Telegram front end end to end: the real python-telegram-bot Application against a fake Bot API server,
the real queue and pipeline worker on the tiny models, driven by real update JSON."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.config import Config, ConfigError, parse_config
from bot.flow import FETCHING, RequestFlow
from bot.options import USAGE, variant
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from bot.telegram.buttons import MAX_CALLBACK_DATA, button_data, parse_button, result_buttons
from bot.telegram.photos import DOWNLOAD_LIMIT, RecentPhotos, TelegramPhoto, download_limit
from pipeline.core.intake import take_in
from pipeline.core.jobs import SHUTDOWN_REASON, Done
from pipeline.core.local import LocalQueue
from tests.conftest import photo_bytes, with_pipeline
from tests.fake_telegram import Call, FakeTelegram, group_chat, private_chat, user

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "555001:fake-telegram-token-claybot"  # not shaped like a real token
EDIT_INTERVAL = 0.3  # the tests' status_edit_interval: short, so tiny jobs still show progress edits
# Edits are paced when they leave; the fake server sees them arrive later under load (a fresh-clone CI run once saw
# two of one group's edits 0.05 s closer than the interval). A missing shared pace shows gaps near 0, far below this.
ARRIVAL_SLACK = 0.1
PROGRESS_STEPS = 80  # jobs of about 0.7 s on the tiny models: progress edits between position and picture
LANDSCAPE, PORTRAIT = photo_bytes((128, 96)), photo_bytes((96, 128), fmt="PNG")
ALICE, BOB = user(1001, "Alice"), user(1002, "Bob")
ALICE_CHAT, GROUP = private_chat(ALICE), group_chat()


def with_telegram(config: Config, fake: FakeTelegram, **settings) -> Config:
    """The tiny config pointed at the fake server. The groups' flood budget and the gap between help replies are
    off: these tests use a group's /help as a barrier many times a minute (tests/test_telegram_flood.py pins them)."""
    telegram = {"api_base_url": fake.api_base_url, "file_base_url": fake.file_base_url,
                "status_edit_interval": EDIT_INTERVAL, "group_messages": 0, "reply_gap": 0.0, **settings}
    return config.model_copy(update={"telegram": config.telegram.model_copy(update=telegram)})


@dataclass
class Running:
    """A started TelegramFrontEnd and the fake server it talks to."""

    fake: FakeTelegram
    front_end: TelegramFrontEnd

    async def picture_for(self, photo: dict, *, after: int = 0, timeout: float = 60.0) -> Call:
        """The picture sent as a reply to ``photo`` in its chat."""
        return await self.fake.wait_for(
            lambda c: c.method in ("sendPhoto", "sendDocument") and c.params["chat_id"] == photo["chat"]["id"]
            and c.reply_to == photo["message_id"], after=after, answered=True, timeout=timeout)

    async def text_for(self, message: dict, *, after: int = 0, timeout: float = 30.0) -> Call:
        """A text message sent as a reply to ``message``."""
        return await self.fake.wait_for(
            lambda c: c.method == "sendMessage" and c.params["chat_id"] == message["chat"]["id"]
            and c.reply_to == message["message_id"], after=after, answered=True, timeout=timeout)

    async def refusal_for(self, message: dict, timeout: float = 30.0) -> str:
        """Why a request found out after it was let in (too big, damaged) got no picture: its status line edited
        into the reason."""
        status = await self.text_for(message, timeout=timeout)
        if status.params["text"] != FETCHING:
            return status.params["text"]
        edit = await self.fake.wait_for(
            lambda c: c.method == "editMessageText" and c.params["chat_id"] == message["chat"]["id"]
            and c.params["message_id"] == status.result["message_id"], answered=True, timeout=timeout)
        return edit.params["text"]

    async def status_removed(self, status: Call, timeout: float = 30.0) -> Call:
        return await self.fake.wait_for(
            lambda c: c.method == "deleteMessage" and c.params["message_id"] == status.result["message_id"],
            answered=True, timeout=timeout)

    async def handled(self) -> Call:
        """Wait until every update sent so far was handled and every request it started has ended (updates are
        handled in order: once a later /help is answered, the earlier ones were); the /help answer (in the group,
        where it quotes the command)."""
        asked = await self.fake.send_text(GROUP, BOB, "/help")
        answer = await self.text_for(asked)
        tasks = [task for task in self.front_end.requests.running.tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        return answer

    def edits_of(self, status: Call) -> list[Call]:
        return [c for c in self.fake.calls_to("editMessageText")
                if c.params["chat_id"] == status.params["chat_id"]
                and c.params["message_id"] == status.result["message_id"]]


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    """The module's worker runs jobs long enough for progress edits."""
    return with_pipeline(tiny_config.gpu(), steps=PROGRESS_STEPS)


@contextlib.asynccontextmanager
async def running_telegram(tiny_config, queue) -> AsyncIterator[Running]:
    """The real Application (through TelegramFrontEnd) polling a fake Bot API server, on ``queue``."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = with_telegram(tiny_config, fake)
    front_end = TelegramFrontEnd(config, RequestFlow(queue, config), TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        yield Running(fake, front_end)
    finally:
        await asyncio.wait_for(front_end.close(), 30)
        await fake.close()


@pytest_asyncio.fixture(loop_scope="module")
async def telegram(tiny_config, queue, caplog):
    """The real Application polling a fake Bot API server; logs captured at DEBUG."""
    caplog.set_level(logging.DEBUG)
    async with running_telegram(tiny_config, queue) as running:
        yield running
    assert TOKEN not in caplog.text


def check_picture(answer: Call, photo_size: tuple[int, int], *, strength: float, toggle: str = "⚡ Fast") -> int:
    """A PNG of the photo's aspect ratio, captioned with its strength and seed, with the three buttons and the speed
    toggle (the tiny config has a [speed.fast] preset: "⚡ Fast" on a default picture, "🎯 Best" on a fast one);
    its seed."""
    image = Image.open(io.BytesIO(answer.files.get("photo") or answer.files["document"]))
    assert image.format == "PNG"
    assert image.width / image.height == pytest.approx(photo_size[0] / photo_size[1], rel=0.03)
    caption = answer.params["caption"]
    assert caption.startswith(f"clay · strength {strength:g} · seed ")
    buttons = answer.params["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["🎲 Again", "💪 Stronger", "🪶 Weaker", toggle]
    assert all(len(b["callback_data"].encode()) <= MAX_CALLBACK_DATA for b in buttons)
    return int(re.search(r"seed (\d+)", caption).group(1))


def check_status(running: Running, status: Call, answer: Call, removed: Call) -> None:
    """Heard at once, then progress edits (the position, unless progress overtook it) no faster than the interval,
    gone once the picture is there."""
    assert status.params["text"] == FETCHING  # before the download: the person sees at once they were heard
    edits = running.edits_of(status)
    assert any(e.params["text"].startswith("Sculpting") for e in edits), [e.params["text"] for e in edits]
    times = [status.at] + [e.at for e in edits]
    assert all(later - earlier >= EDIT_INTERVAL - ARRIVAL_SLACK
               for earlier, later in zip(times, times[1:], strict=False))
    assert all(e.at <= answer.at for e in edits)
    assert removed.at >= answer.at


# -- starting -------------------------------------------------------------------------------------------------------


async def test_start_asks_for_messages_buttons_and_reactions_and_sets_the_command_menu(telegram):
    await telegram.fake.wait_for(lambda c: c.method == "getUpdates" and "allowed_updates" in c.params, timeout=10)
    assert set(telegram.fake.allowed_updates) >= {"message", "callback_query", "message_reaction"}
    commands = telegram.fake.calls_to("setMyCommands")[0].params["commands"]
    assert [c["command"] for c in commands] == ["clay", "claysettings", "help"]
    assert telegram.fake.calls[0].method == "getMe"  # the token is checked first


async def test_a_wrong_token_stops_start_with_a_message_that_does_not_show_it(tiny_config, queue, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "555001:not-the-right-token"
    fake = FakeTelegram(TOKEN)
    await fake.start()
    front_end = TelegramFrontEnd(with_telegram(tiny_config, fake), RequestFlow(queue, tiny_config), wrong)
    try:
        with pytest.raises(ConfigError, match="CLAYBOT_TELEGRAM_TOKEN") as err:
            await asyncio.wait_for(front_end.start(), 15)
    finally:
        await asyncio.wait_for(front_end.close(), 15)
        await fake.close()
    assert wrong not in str(err.value) and wrong not in caplog.text


# -- each way of asking ---------------------------------------------------------------------------------------------


async def test_photo_with_caption_comes_back_in_clay_as_a_reply_with_buttons(telegram, caplog):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.6")

    status = await telegram.text_for(photo)
    answer = await telegram.picture_for(photo)
    removed = await telegram.status_removed(status)

    check_picture(answer, (128, 96), strength=0.6)
    check_status(telegram, status, answer, removed)
    assert any(c.params == {"chat_id": ALICE["id"], "action": "upload_photo"}
               for c in telegram.fake.calls_to("sendChatAction"))
    assert telegram.fake.calls_to("download"), "the photo was fetched through getFile and the file URL"
    assert "telegram picture request (caption) from user 1001" in caplog.text
    assert TOKEN not in caplog.text


async def test_image_sent_as_a_file_with_a_caption_naming_this_bot_is_stylized(telegram):
    photo = await telegram.fake.send_document(GROUP, ALICE, PORTRAIT, file_name="portrait.png",
                                              mime_type="image/png", caption="/clay@claybot_test_bot 0.7")

    status = await telegram.text_for(photo)
    answer = await telegram.picture_for(photo)
    removed = await telegram.status_removed(status)

    check_picture(answer, (96, 128), strength=0.7)
    check_status(telegram, status, answer, removed)


async def test_a_caption_for_another_bot_is_left_alone(telegram):
    other = await telegram.fake.send_photo(GROUP, ALICE, LANDSCAPE, caption="/clay@some_other_bot 0.6")
    # A later photo for this bot is answered in full: by then the earlier update was handled (in order), and had it
    # started a request, that request would have fetched its photo long before this one's picture was sent.
    ours = await telegram.fake.send_photo(GROUP, ALICE, PORTRAIT, caption="/clay 0.6")
    check_picture(await telegram.picture_for(ours), (96, 128), strength=0.6)
    assert len(telegram.fake.calls_to("getFile")) == 1
    assert not [c for c in telegram.fake.calls_to("sendMessage", "sendPhoto", "sendDocument")
                if c.reply_to == other["message_id"]]


async def test_reply_clay_to_a_photo_in_a_group_answers_the_photo(telegram):
    photo = await telegram.fake.send_photo(GROUP, ALICE, LANDSCAPE)
    command = await telegram.fake.send_text(GROUP, BOB, "/clay 0.6", reply_to=photo)

    status = await telegram.text_for(photo)
    answer = await telegram.picture_for(photo)
    removed = await telegram.status_removed(status)

    check_picture(answer, (128, 96), strength=0.6)
    check_status(telegram, status, answer, removed)
    assert answer.params["chat_id"] == GROUP["id"] and command["chat"]["id"] == GROUP["id"]


async def test_reaction_with_the_configured_emoji_on_a_photo_the_bot_saw_is_stylized(telegram):
    photo = await telegram.fake.send_photo(GROUP, ALICE, PORTRAIT)
    await telegram.fake.react(GROUP, BOB, photo["message_id"], "👍")  # not the configured emoji: nothing
    await telegram.handled()
    assert not telegram.fake.calls_to("getFile")
    assert not [c for c in telegram.fake.calls_to("sendMessage") if c.reply_to == photo["message_id"]]

    await telegram.fake.react(GROUP, BOB, photo["message_id"], "🗿", old=("👍",))

    status = await telegram.text_for(photo)
    answer = await telegram.picture_for(photo)
    removed = await telegram.status_removed(status)
    check_picture(answer, (96, 128), strength=0.5)  # the style's default strength
    check_status(telegram, status, answer, removed)


async def test_each_button_reruns_the_original_photo(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.5")
    first = await telegram.picture_for(photo)
    seed = check_picture(first, (128, 96), strength=0.5)
    buttons = {b["text"]: b["callback_data"] for b in first.params["reply_markup"]["inline_keyboard"][0]}

    for text, strength, same_seed in (("💪 Stronger", 0.6, True), ("🪶 Weaker", 0.4, True),
                                      ("🎲 Again", 0.5, False)):
        mark = len(telegram.fake.calls)
        query_id = await telegram.fake.press(ALICE, first.result, buttons[text])
        answer = await telegram.picture_for(photo, after=mark)
        new_seed = check_picture(answer, (128, 96), strength=strength)
        assert (new_seed == seed) is same_seed, text
        since = telegram.fake.calls[mark:]
        methods = [c.method for c in since]
        answered = next(i for i, c in enumerate(since)
                        if c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query_id)
        assert answered < methods.index("getFile"), "the button press is acknowledged before any work"
        status = next(c for c in since if c.method == "sendMessage" and c.reply_to == photo["message_id"])
        await telegram.status_removed(status)


async def test_buttons_work_on_pictures_sent_before_a_restart(telegram):
    # The fresh front end never saw this photo or this picture: the button and the reply carry everything.
    photo = await telegram.fake.send_photo(GROUP, ALICE, PORTRAIT)
    old_picture = {"message_id": 9000, "date": 0, "chat": GROUP, "from": telegram.fake.bot_user,
                   "photo": photo["photo"], "caption": "clay · strength 0.5 · seed 42\nno tags",
                   "reply_to_message": photo}
    telegram.fake.messages[(GROUP["id"], 9000)] = old_picture

    await telegram.fake.press(BOB, old_picture, button_data("clay", 0.6, 42))

    answer = await telegram.picture_for(photo)
    assert check_picture(answer, (96, 128), strength=0.6) == 42


async def test_a_picture_sent_after_a_restart_has_the_caption_and_buttons_of_a_live_one(tiny_config, queue,
                                                                                      tmp_path):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = with_telegram(tiny_config, fake)
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = RequestFlow(queue, config, store=store)
        front_end = TelegramFrontEnd(config, flow, TOKEN)
        await asyncio.wait_for(front_end.start(), 15)
        running = Running(fake, front_end)
        try:
            asked = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.6")
            live = await running.picture_for(asked)
            seed = check_picture(live, (128, 96), strength=0.6)
            await running.handled()  # that request has ended: answered in the journal too
            # What a process that died while making the same picture of a photo in the group left in its journal:
            # the request, its photo, and the message to answer. The restarted process runs it again.
            photo = await fake.send_photo(GROUP, BOB, LANDSCAPE)
            chat = str(GROUP["id"])
            ticket = await flow.journal.admit("telegram", str(BOB["id"]), chat, chat,
                                              {"message_id": photo["message_id"], "thread_id": None})
            await flow.journal.queued(ticket, "job-of-the-dead-process", await take_in(
                config, LANDSCAPE, seed=seed, reply_to=("telegram", chat), options={"strength": 0.6}))
            assert await flow.recover({"telegram": front_end}, await flow.unanswered()) == 1

            after = await running.picture_for(photo)
            await asyncio.gather(*flow.recovering.tasks)
        finally:
            await asyncio.wait_for(front_end.close(), 30)
            await fake.close()
    check_picture(after, (128, 96), strength=0.6)
    assert after.params["caption"] == live.params["caption"]
    assert after.params["reply_markup"] == live.params["reply_markup"]  # the same buttons, carrying the same request


async def test_a_button_whose_photo_is_gone_says_so_at_once(telegram):
    orphan = {"message_id": 9001, "date": 0, "chat": GROUP, "from": telegram.fake.bot_user,
              "caption": "clay · strength 0.5 · seed 42\nno tags"}
    telegram.fake.chats[GROUP["id"]] = GROUP
    telegram.fake.messages[(GROUP["id"], 9001)] = orphan

    query_id = await telegram.fake.press(BOB, orphan, button_data("clay", 0.6, 42))

    answer = await telegram.fake.wait_for(lambda c: c.method == "answerCallbackQuery")
    assert answer.params["callback_query_id"] == query_id and answer.params["show_alert"] == "true"
    assert "original photo" in answer.params["text"]
    help_answer = await telegram.handled()
    assert not telegram.fake.calls_to("getFile")
    assert telegram.fake.calls_to("sendMessage") == [help_answer]


# -- bad input ------------------------------------------------------------------------------------------------------


async def test_a_file_over_the_download_limit_is_refused_before_any_download(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay", file_size=25_000_000)

    refusal = await telegram.text_for(photo)

    assert "23.8 MB" in refusal.params["text"] and "20 MB" in refusal.params["text"]
    await telegram.handled()  # the request has ended
    assert not telegram.fake.calls_to("getFile", "download", "sendPhoto")


async def test_a_file_too_big_for_getfile_gets_a_clear_message_when_its_size_was_not_told(telegram):
    photo = await telegram.fake.send_document(ALICE_CHAT, ALICE, LANDSCAPE, file_name="huge.jpg",
                                              mime_type="image/jpeg", caption="/clay", file_size=25_000_000,
                                              size_in_metadata=False)

    refusal = await telegram.refusal_for(photo)

    assert refusal == "That file is larger than the 20 MB Telegram lets bots download."
    assert [c.error for c in telegram.fake.calls_to("getFile")] == ["Bad Request: file is too big"]
    assert not telegram.fake.calls_to("download", "sendPhoto")


@pytest.mark.parametrize(("how", "strength"), [("reply", "7"), ("reply", "1.5.2"), ("reply", "-1"),
                                               ("caption", "0,6.1 as a knight"), ("caption", "0")])
async def test_a_bad_strength_gets_the_usage(telegram, how, strength):
    if how == "reply":
        photo = await telegram.fake.send_photo(GROUP, ALICE, LANDSCAPE)
        asked = await telegram.fake.send_text(GROUP, BOB, f"/clay {strength}", reply_to=photo)
    else:
        asked = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption=f"/clay {strength}")

    answer = await telegram.text_for(asked)

    assert USAGE in answer.params["text"]
    assert not telegram.fake.calls_to("getFile", "sendPhoto")


async def test_a_hostile_100_kb_strength_is_refused_at_once_with_the_usage(telegram):
    # The old pattern backtracked: ~0.5 s of everyone's event loop per 1,000 digits, growing with the square of
    # the length (hours for these). Each must be refused within the usual wait for an answer.
    hostile = "1" * 100_000 + "x"
    asked = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption=f"/clay {hostile}")
    answer = await telegram.text_for(asked, timeout=30)
    assert answer.params["text"] == f"I could not read {'1' * 20!r} as a strength. {USAGE}"

    photo = await telegram.fake.send_photo(GROUP, ALICE, LANDSCAPE)
    asked = await telegram.fake.send_text(GROUP, BOB, "/clay " + " " * 50_000 + "6" * 50_000 + " %x", reply_to=photo)
    assert USAGE in (await telegram.text_for(asked, timeout=30)).params["text"]
    assert not telegram.fake.calls_to("getFile", "sendPhoto")


async def test_clay_with_nothing_to_work_on_gets_the_usage(telegram):
    alone = await telegram.fake.send_text(ALICE_CHAT, ALICE, "/clay 0.6")
    text = await telegram.fake.send_text(GROUP, ALICE, "look at this")
    on_text = await telegram.fake.send_text(GROUP, BOB, "/clay", reply_to=text)

    assert (await telegram.text_for(alone)).params["text"] == USAGE
    assert (await telegram.text_for(on_text)).params["text"] == USAGE


async def test_a_file_that_is_not_an_image_gets_a_clear_message(telegram):
    pdf = await telegram.fake.send_document(ALICE_CHAT, ALICE, b"%PDF-1.4 not a picture", file_name="cv.pdf",
                                            mime_type="application/pdf", caption="/clay")
    answer = await telegram.text_for(pdf)
    assert answer.params["text"].startswith("That file is not an image I can use (application/pdf)")

    in_group = await telegram.fake.send_document(GROUP, ALICE, b"plain text", file_name="notes.txt",
                                                 mime_type="text/plain")
    command = await telegram.fake.send_text(GROUP, BOB, "/clay", reply_to=in_group)
    assert "not an image" in (await telegram.text_for(command)).params["text"]
    # A TIFF is an image, but not one the pipeline reads: refused before its download, as on Discord.
    for name, mime in (("scan.tif", "image/tiff"), ("scan.tiff", None)):
        tiff = await telegram.fake.send_document(ALICE_CHAT, ALICE, b"II*\x00 a tiff", file_name=name, mime_type=mime,
                                                 caption="/clay")
        assert "not an image I can use" in (await telegram.text_for(tiff)).params["text"]
    assert not telegram.fake.calls_to("getFile")


async def test_a_corrupt_jpeg_gets_a_clear_reason_and_the_next_user_is_served(telegram):
    broken = LANDSCAPE[: len(LANDSCAPE) // 3]
    photo = await telegram.fake.send_document(ALICE_CHAT, ALICE, broken, file_name="broken.jpg",
                                              mime_type="image/jpeg", caption="/clay")
    reason = await telegram.refusal_for(photo)
    assert "damaged" in reason or "not an image" in reason

    next_photo = await telegram.fake.send_photo(GROUP, BOB, LANDSCAPE, caption="/clay")
    check_picture(await telegram.picture_for(next_photo), (128, 96), strength=0.5)


async def test_a_reaction_on_a_message_the_bot_never_saw_is_ignored_quietly(telegram, caplog):
    await telegram.fake.react(GROUP, BOB, 123456, "🗿")
    help_answer = await telegram.handled()  # and the bot goes on answering
    assert not telegram.fake.calls_to("getFile")
    assert telegram.fake.calls_to("sendMessage") == [help_answer]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- talking ---------------------------------------------------------------------------------------------------------


async def test_help_explains_every_way_to_ask(telegram):
    asked = await telegram.fake.send_text(ALICE_CHAT, ALICE, "/help")
    await telegram.fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == ALICE["id"],
                                 answered=True)
    text = telegram.fake.calls_to("sendMessage")[0].params["text"]
    assert asked["text"] == "/help"
    for words in ("caption /clay", "reply /clay", "react to a photo with 🗿", "admin", "/clay@claybot_test_bot",
                  "🎲 Again", "20 MB"):
        assert words in text


async def test_start_is_three_short_lines_with_an_example_and_points_to_help(telegram):
    # issue 31, item 6: /start answered /help's whole text, a wall of ~1,000 characters, to someone who just arrived
    await telegram.fake.send_text(ALICE_CHAT, ALICE, "/start")
    await telegram.fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == ALICE["id"],
                                 answered=True)
    text = telegram.fake.calls_to("sendMessage")[0].params["text"]
    lines = text.split("\n")
    assert len(lines) == 3 and len(text) <= 300, text
    assert "caption /clay" in text and "Example: /clay 0.6" in text and "/help" in lines[-1]


async def test_an_unexpected_failure_is_logged_and_answered_with_a_calm_line(telegram, caplog):
    telegram.fake.fail_next("sendMessage", 400, "Bad Request: something unexpected")
    asked = await telegram.fake.send_text(GROUP, ALICE, "/help")

    calm = await telegram.text_for(asked)

    assert calm.params["text"] == "Something went wrong on my side; please try again."
    failures = [r for r in caplog.records if r.levelno == logging.ERROR
                and r.name.startswith("bot.telegram")]
    assert failures and "something unexpected" in str(failures[0].exc_info[1]).lower()


async def test_a_photo_without_the_command_in_a_private_chat_gets_a_hint(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE)
    hint = await telegram.text_for(photo)
    assert hint.params["text"].startswith("Reply /clay to this photo")
    assert not telegram.fake.calls_to("getFile")


async def test_three_users_asking_at_once_each_get_their_own_picture(telegram):
    carol = user(1003, "Carol")
    alice_photo, bob_photo, carol_photo = await asyncio.gather(
        telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.6"),
        telegram.fake.send_photo(GROUP, BOB, PORTRAIT, caption="/clay 0.7"),
        telegram.fake.send_photo(GROUP, carol, LANDSCAPE, caption="/clay 0.8"))

    answers = await asyncio.gather(*(telegram.picture_for(p) for p in (alice_photo, bob_photo, carol_photo)))

    for answer, photo, size, strength in zip(answers, (alice_photo, bob_photo, carol_photo),
                                             ((128, 96), (96, 128), (128, 96)), (0.6, 0.7, 0.8), strict=True):
        check_picture(answer, size, strength=strength)
        assert answer.params["chat_id"] == photo["chat"]["id"] and answer.reply_to == photo["message_id"]
    statuses = [await telegram.text_for(p) for p in (alice_photo, bob_photo, carol_photo)]
    for status in statuses:
        await telegram.status_removed(status)
    shown = [s.params["text"] for s in statuses] + [e.params["text"] for s in statuses
                                                    for e in telegram.edits_of(s)]
    assert any("#2" in text for text in shown) and any("#3" in text for text in shown), shown
    # Telegram's limits are per chat: the group's two status messages share one pace of edits.
    group_edits = sorted(e.at for s in statuses[1:] for e in telegram.edits_of(s))
    gaps = [round(later - earlier, 3) for earlier, later in zip(group_edits, group_edits[1:], strict=False)]
    assert all(gap >= EDIT_INTERVAL - ARRIVAL_SLACK for gap in gaps), gaps


async def test_stopping_still_answers_a_user_whose_photo_was_waiting(tiny_config, tmp_path, monkeypatch, caplog):
    # A queue whose worker never comes (nothing listens at the address): the job waits until the queue closes.
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(
        update={"worker_address": str(tmp_path / "nobody.sock")}))
    await queue.start()
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = with_telegram(tiny_config, fake)
    front_end = TelegramFrontEnd(config, RequestFlow(queue, config), TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        running = Running(fake, front_end)
        photo = await fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay")
        status = await running.text_for(photo)
        await fake.wait_for(lambda c: c.method == "editMessageText" and "next" in c.params["text"]
                            and c.params["message_id"] == status.result["message_id"], answered=True, timeout=15)

        await asyncio.wait_for(front_end.stop_taking(), 15)
        assert not front_end.application.updater.running
        await asyncio.wait_for(queue.close(grace=0), 15)

        failure = await fake.wait_for(lambda c: c.method == "editMessageText"
                                      and c.params["message_id"] == status.result["message_id"]
                                      and c.params["text"] == SHUTDOWN_REASON, answered=True, timeout=15)
        assert failure.result["text"] == SHUTDOWN_REASON
    finally:
        await asyncio.wait_for(front_end.close(), 30)
        await queue.close(grace=0)
        await fake.close()
    assert TOKEN not in caplog.text


# -- pieces (async only because the module's tests all run on its one event loop) -----------------------------------


async def test_recent_photos_are_bounded_and_expire():
    now = [0.0]
    photos = RecentPhotos(max_size=2, ttl=10.0, clock=lambda: now[0])
    first, second, third = (TelegramPhoto(-1, i, f"file-{i}", 100) for i in (1, 2, 3))
    photos.remember(first)
    photos.remember(second)
    photos.remember(third)
    assert photos.get(-1, 1) is None and photos.get(-1, 3) == third  # the oldest went first
    now[0] = 5.0
    photos.remember(second)  # seen again: kept longer
    now[0] = 12.0
    assert photos.get(-1, 3) is None and photos.get(-1, 2) == second and len(photos) == 1
    assert RecentPhotos(max_size=0, ttl=10.0).get(-1, 1) is None


async def test_stronger_and_weaker_keep_the_seed_unless_the_strength_cannot_move():
    assert variant("again", 0.5, 7) == (0.5, None)
    assert variant("stronger", 0.5, 7) == (0.6, 7)
    assert variant("weaker", 0.5, 7) == (0.4, 7)
    assert variant("stronger", 1.0, 7) == (1.0, None)  # the same strength and seed would be the same picture
    assert variant("weaker", 0.05, 7) == (0.05, None)
    assert variant("weaker", 0.1, 7) == (0.05, 7)


async def test_button_data_fits_telegrams_64_bytes_and_round_trips():
    data = button_data("clay", 0.6, 2**31 - 1)
    assert len(data.encode()) <= MAX_CALLBACK_DATA
    assert parse_button(data) == ("clay", 0.6, 2**31 - 1, None)
    assert parse_button(button_data("clay", 0.5, None)) == ("clay", 0.5, None, None)
    assert parse_button(button_data("clay", 0.5, 7, "fast")) == ("clay", 0.5, 7, "fast")
    longest_speed = "f" + "a" * 31  # the longest preset name config accepts
    long_style = button_data("a_style_name_far_too_long_for_a_button_" * 2, 0.55, 2**31 - 1, longest_speed)
    assert len(long_style.encode()) <= MAX_CALLBACK_DATA
    assert parse_button(long_style) == (None, 0.55, 2**31 - 1, longest_speed)
    for hostile in ("something|else", "c2|clay|0.6|42", "c1|clay|0.55|7", "c1|clay|0.6|42|fast",
                    "c2|clay|0.6|42|fast|x",
                    "c2|clay|0.6|42|FAST", "c2|clay|0.6|42|fa:st", "c2|clay|0.6|42|" + "f" * 60, "c2|clay|nan|1|",
                    "c2|clay|0.6|" + "9" * 40 + "|", "c2|clay|0.6|42|ф" * 3):
        with pytest.raises(ValueError):
            parse_button(hostile)


async def test_reaction_emoji_must_be_one_telegram_accepts(tmp_path):
    def telegram(**settings):
        return parse_config({"telegram": settings}, base_dir=tmp_path, check_models=False).telegram

    assert telegram().reaction_emoji == "🗿"
    assert telegram(reaction_emoji="❤️").reaction_emoji == "❤"  # typed with the variation selector
    assert telegram(reaction_emoji="").reaction_emoji == ""  # reactions off
    with pytest.raises(ConfigError, match=r"telegram\.reaction_emoji: must be one of Telegram's reaction emoji"):
        telegram(reaction_emoji="🧱")
    with pytest.raises(ConfigError, match=r"telegram\.api_base_url: must be an http"):
        telegram(api_base_url="api.telegram.org/bot")


async def test_local_mode_lifts_the_download_limit(tmp_path):
    settings = parse_config({}, base_dir=Path(tmp_path), check_models=False).telegram
    assert download_limit(settings) == DOWNLOAD_LIMIT == 20 * 2**20
    assert download_limit(settings.model_copy(update={"local_mode": True})) is None


async def test_a_caption_naming_a_speed_preset_gets_a_picture_made_with_it(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.6 fast")
    answer = await telegram.picture_for(photo)
    check_picture(answer, (128, 96), strength=0.6, toggle="🎯 Best")
    assert " · fast\n" in answer.params["caption"]

    # a word that names no preset is the person's own (added to the prompt, shown under the picture)
    asked = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay turbo")
    answer = await telegram.picture_for(asked)
    assert answer.params["caption"].split("\n")[1] == "“turbo”" and " · fast" not in answer.params["caption"]


# -- speed presets on the buttons -------------------------------------------------------------------------------------


def keyboard(answer: Call) -> dict[str, str]:
    return {b["text"]: b["callback_data"] for b in answer.params["reply_markup"]["inline_keyboard"][0]}


async def test_a_fast_pictures_buttons_stay_fast_and_the_toggle_switches_both_ways(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.5 fast")
    fast = await telegram.picture_for(photo)
    seed = check_picture(fast, (128, 96), strength=0.5, toggle="🎯 Best")
    assert " · fast\n" in fast.params["caption"]

    for text, strength, same_seed in (("🎲 Again", 0.5, False), ("💪 Stronger", 0.6, True)):
        mark = len(telegram.fake.calls)
        await telegram.fake.press(ALICE, fast.result, keyboard(fast)[text])
        answer = await telegram.picture_for(photo, after=mark)
        assert (check_picture(answer, (128, 96), strength=strength, toggle="🎯 Best") == seed) is same_seed, text
        assert " · fast\n" in answer.params["caption"], text  # made with the preset the picture was made with

    mark = len(telegram.fake.calls)
    await telegram.fake.press(ALICE, fast.result, keyboard(fast)["🎯 Best"])
    best = await telegram.picture_for(photo, after=mark)
    assert check_picture(best, (128, 96), strength=0.5, toggle="⚡ Fast") == seed  # same seed and strength
    assert "fast" not in best.params["caption"]

    mark = len(telegram.fake.calls)
    await telegram.fake.press(BOB, best.result, keyboard(best)["⚡ Fast"])
    again_fast = await telegram.picture_for(photo, after=mark)
    assert check_picture(again_fast, (128, 96), strength=0.5, toggle="🎯 Best") == seed
    assert " · fast\n" in again_fast.params["caption"]


async def test_a_default_pictures_buttons_stay_default(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.5")
    first = await telegram.picture_for(photo)
    check_picture(first, (128, 96), strength=0.5)
    mark = len(telegram.fake.calls)
    await telegram.fake.press(ALICE, first.result, keyboard(first)["🎲 Again"])
    answer = await telegram.picture_for(photo, after=mark)
    check_picture(answer, (128, 96), strength=0.5, toggle="⚡ Fast")
    assert "fast" not in answer.params["caption"]


async def test_button_data_without_a_speed_runs_at_the_styles_preset(telegram):
    photo = await telegram.fake.send_photo(GROUP, ALICE, PORTRAIT)
    old_picture = {"message_id": 9002, "date": 0, "chat": GROUP, "from": telegram.fake.bot_user,
                   "photo": photo["photo"], "caption": "clay · strength 0.5 · seed 42\nno tags",
                   "reply_to_message": photo}
    telegram.fake.messages[(GROUP["id"], 9002)] = old_picture

    await telegram.fake.press(BOB, old_picture, "c2|clay|0.6|42|")  # an empty speed: the style's own preset

    answer = await telegram.picture_for(photo)
    assert check_picture(answer, (96, 128), strength=0.6) == 42
    assert "fast" not in answer.params["caption"]  # the style's own preset: "default" in this config


@pytest.mark.parametrize("data, words", [
    ("c2|clay|0.6|42|turbo", ["'turbo'", "no longer have", "default, fast"]),  # a preset the config does not have
    ("c2|clay|0.6|42|" + "f" * 49, ["can't read this button"]),  # a preset name longer than config allows
    ("c2|clay|0.6|42|" + "f" * 60, ["can't read this button"]),  # over Telegram's 64 bytes
    ("c2|clay|0.6|42|Fast; drop", ["can't read this button"]),
    ("c2|clay|0.6|42|fast|more", ["can't read this button"]),
    ("c1|clay|0.6|42", ["can't read this button"]),  # a pre-release format: nothing was released with it
    ("not one of ours", ["can't read this button"]),  # any data at all gets an answer, never a spinning button
])
async def test_bad_speed_in_button_data_is_refused_with_a_clear_line(telegram, data, words):
    photo = await telegram.fake.send_photo(GROUP, ALICE, PORTRAIT)
    picture = {"message_id": 9003, "date": 0, "chat": GROUP, "from": telegram.fake.bot_user,
               "photo": photo["photo"], "caption": "clay · strength 0.5 · seed 42\nno tags",
               "reply_to_message": photo}
    telegram.fake.messages[(GROUP["id"], 9003)] = picture

    mark = len(telegram.fake.calls)
    query_id = await telegram.fake.press(BOB, picture, data)

    answer = await telegram.fake.wait_for(lambda c: c.method == "answerCallbackQuery", after=mark)
    assert answer.params["callback_query_id"] == query_id and answer.params["show_alert"] == "true"
    assert all(w in answer.params["text"] for w in words), answer.params["text"]
    # the bot still serves the next person; by then the press was handled (in order) without a request
    asked = await telegram.fake.send_photo(ALICE_CHAT, ALICE, LANDSCAPE, caption="/clay 0.5")
    check_picture(await telegram.picture_for(asked), (128, 96), strength=0.5)
    assert len([c for c in telegram.fake.calls[mark:] if c.method == "getFile"]) == 1  # the next person's
    assert all(c.reply_to == asked["message_id"] for c in telegram.fake.calls[mark:] if c.method == "sendMessage")


async def test_the_fast_best_button_shows_only_when_the_config_has_presets():
    def texts_and_data(speed: str, speeds: list[str]) -> list[tuple[str, tuple]]:
        done = Done(image=b"", width=1, height=1, tags=[], prompt="", seed=5, style="clay", strength=0.5, speed=speed)
        row = result_buttons(done, speeds).inline_keyboard[0]
        return [(b.text, parse_button(b.callback_data)) for b in row]

    assert [t for t, _ in texts_and_data("default", ["default"])] == ["🎲 Again", "💪 Stronger", "🪶 Weaker"]
    assert texts_and_data("default", ["default", "turbo", "fast"])[-1] == ("⚡ Fast", ("clay", 0.5, 5, "turbo"))
    assert texts_and_data("fast", ["default", "turbo", "fast"])[-1] == ("🎯 Best", ("clay", 0.5, 5, "default"))
    assert all(data[3] == "fast" for _, data in texts_and_data("fast", ["default", "fast"])[:3])
