"""Limits, the SFW gate and chat settings on Telegram, end to end: the real python-telegram-bot Application against
the fake Bot API server, the real queue and worker on the tiny models, and claybot's SQLite journal."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
import pytest_asyncio

from bot.flow import RequestFlow
from bot.observability import Metrics
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from pipeline.core.safety import INPUT_REFUSED
from tests.conftest import photo_bytes, with_pipeline
from tests.fake_telegram import FakeTelegram, group_chat, private_chat, user
from tests.test_telegram import TOKEN, Running, with_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHOTO = photo_bytes((128, 96))
RED = photo_bytes((64, 64), color=(255, 0, 0), fmt="PNG")  # the tiny tagger rates pure red "explicit"
MAX_MB = 10  # below Telegram's 20 MB, so our own limit is the one that bites
LIMITS = {"user_per_minute": 2, "user_per_hour": 0, "chat_per_minute": 3, "chat_per_hour": 0, "user_queued": 1}


class Clock:
    """The journal's clock, moved by the tests (the limits' windows are a minute long)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    """Jobs of about half a second: a person's second photo, sent right after the first, finds it still queued."""
    return with_pipeline(tiny_config.gpu(), steps=60)


@pytest_asyncio.fixture(loop_scope="module")
async def guarded(tiny_config, queue, tmp_path, clock):
    """TelegramFrontEnd with claybot's database (journal, limits, chat settings) and metrics, as `claybot run`."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = with_telegram(tiny_config, fake)
    config = config.model_copy(update={"limits": config.limits.model_copy(update=LIMITS),
                                       "bot": config.bot.model_copy(update={"max_photo_mb": MAX_MB})})
    store = ClaybotDatabase(tmp_path / "claybot.sqlite3")
    await store.open()
    flow = RequestFlow(queue, config, store=store, metrics=Metrics(), clock=clock)
    front_end = TelegramFrontEnd(config, flow, TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        yield Running(fake, front_end)
        await settled(Running(fake, front_end))
        assert await flow.journal.unanswered() == []  # every request answered, no photo kept
    finally:
        await asyncio.wait_for(front_end.close(), 30)
        await fake.close()
        await store.close()


async def settled(running: Running) -> None:
    """Every request task has finished (its answer recorded in the journal and the metrics, not only sent)."""
    tasks = [task for task in running.front_end.requests.running.tasks if not task.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def answer_text(running: Running, sent: dict) -> str:
    """The last words the user sees for a request: its status message as last edited, or its text reply."""
    status = await running.text_for(sent)
    await settled(running)
    edits = running.edits_of(status)
    return edits[-1].params["text"] if edits else status.params["text"]


def _sample(metrics: Metrics, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_a_person_over_their_limit_is_told_when_to_ask_again_and_can_once_the_minute_is_over(guarded, clock):
    alice = user(2001, "Alice")
    chat = private_chat(alice)
    for _ in range(2):
        sent = await guarded.fake.send_photo(chat, alice, PHOTO, caption="/clay")
        await guarded.picture_for(sent)
        await settled(guarded)  # answered in the journal too: she has no photo waiting (limits.user_queued = 1)
        clock.now += 10
    sent = await guarded.fake.send_photo(chat, alice, PHOTO, caption="/clay")
    refusal = await guarded.text_for(sent)
    # The first of the two left the window 60 s after it came, 20 s ago: 40 s to go.
    assert refusal.params["text"] == ("You have asked for 2 pictures in the last minute; "
                                      "please ask again in 40 seconds.")
    clock.now += 41
    sent = await guarded.fake.send_photo(chat, alice, PHOTO, caption="/clay")
    await guarded.picture_for(sent)
    await settled(guarded)

    metrics = guarded.front_end.requests.flow.metrics
    assert _sample(metrics, "claybot_requests_total", platform="telegram", outcome="image") == 3
    assert _sample(metrics, "claybot_requests_total", platform="telegram", outcome="rate_limited") == 1
    assert _sample(metrics, "claybot_ack_seconds_count", platform="telegram") == 4


async def test_a_busy_chat_is_limited_as_a_whole(guarded, clock):
    group = group_chat(-1002001, "Busy group")
    people = [user(2100 + i, f"Person {i}") for i in range(4)]
    sent = [await guarded.fake.send_photo(group, who, PHOTO, caption="/clay") for who in people[:3]]
    for message in sent:
        await guarded.picture_for(message)
    clock.now += 30
    fourth = await guarded.fake.send_photo(group, people[3], PHOTO, caption="/clay")
    refusal = await guarded.text_for(fourth)
    assert refusal.params["text"] == ("People here have asked for 3 pictures in the last minute; "
                                      "please ask again in 30 seconds.")
    other_group = group_chat(-1002002, "Quiet group")  # another chat is not held up
    await guarded.picture_for(await guarded.fake.send_photo(other_group, people[3], PHOTO, caption="/clay"))


async def test_one_person_may_have_one_photo_in_the_queue_at_a_time(guarded):
    bob = user(2201, "Bob")
    chat = private_chat(bob)
    first = await guarded.fake.send_photo(chat, bob, PHOTO, caption="/clay")
    second = await guarded.fake.send_photo(chat, bob, PHOTO, caption="/clay")
    refusal = await guarded.text_for(second)
    assert refusal.params["text"] == ("You already have 1 photo waiting or being made; "
                                      "send the next one when it is done.")
    await guarded.picture_for(first)
    assert not [c for c in guarded.fake.calls_to("sendPhoto", "sendDocument") if c.reply_to == second["message_id"]]


async def test_an_explicit_photo_is_refused_until_a_group_admin_marks_the_chat_nsfw(guarded, clock):
    group = group_chat(-1002301, "Art club")
    carol, admin = user(2301, "Carol"), user(2302, "Admin")
    guarded.fake.admins.add(admin["id"])

    sent = await guarded.fake.send_photo(group, carol, RED, caption="/clay")
    assert await answer_text(guarded, sent) == INPUT_REFUSED
    # An ordinary photo in the same chat is fine.
    await guarded.picture_for(await guarded.fake.send_photo(group, carol, PHOTO, caption="/clay"))

    # A member cannot change the setting; the chat stays all-ages.
    asked = await guarded.fake.send_text(group, carol, "/claysettings nsfw on")
    assert (await guarded.text_for(asked)).params["text"] == "Only this group's admins can change my settings."
    asked = await guarded.fake.send_text(group, admin, "/claysettings")
    assert (await guarded.text_for(asked)).params["text"].startswith("NSFW: off")

    asked = await guarded.fake.send_text(group, admin, "/claysettings nsfw on")
    assert (await guarded.text_for(asked)).params["text"].startswith("NSFW: on")
    clock.now += 61  # Carol's two requests of this minute are behind her
    sent = await guarded.fake.send_photo(group, carol, RED, caption="/clay")
    await guarded.picture_for(sent)
    await settled(guarded)

    metrics = guarded.front_end.requests.flow.metrics
    assert _sample(metrics, "claybot_requests_total", platform="telegram", outcome="refused") == 1
    assert _sample(metrics, "claybot_failures_total", kind="not_allowed") == 1


async def test_an_anonymous_group_admin_can_change_the_settings(guarded):
    group = group_chat(-1002351, "Quiet admins")
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
    asked = await guarded.fake.send_text(group, anonymous, "/claysettings nsfw on", as_chat=group)
    assert (await guarded.text_for(asked)).params["text"].startswith("NSFW: on")
    stranger = {"id": -1009999, "type": "channel", "title": "Some channel"}  # posting as another chat: no
    asked = await guarded.fake.send_text(group, anonymous, "/claysettings nsfw off", as_chat=stranger)
    assert (await guarded.text_for(asked)).params["text"] == "Only this group's admins can change my settings."


async def test_settings_usage_and_a_private_chat_owner_deciding_for_their_own_chat(guarded):
    dave = user(2401, "Dave")
    chat = private_chat(dave)
    asked = await guarded.fake.send_text(chat, dave, "/claysettings nsfw maybe")
    assert "/claysettings nsfw on" in (await guarded.text_for(asked)).params["text"]
    asked = await guarded.fake.send_text(chat, dave, "/claysettings nsfw on")
    assert (await guarded.text_for(asked)).params["text"].startswith("NSFW: on")
    assert re.search(r"seed \d+", (await guarded.picture_for(
        await guarded.fake.send_photo(chat, dave, RED, caption="/clay"))).params["caption"])


async def test_a_failed_download_gets_a_calm_answer_and_the_token_stays_out_of_every_log_line(guarded, caplog):
    caplog.set_level(logging.DEBUG)
    erin = user(2501, "Erin")
    guarded.fake.files_gone = True
    sent = await guarded.fake.send_photo(private_chat(erin), erin, PHOTO, caption="/clay")
    text = await answer_text(guarded, sent)
    assert text == "I could not fetch that photo from Telegram; please send it again."  # all they can do
    assert "could not fetch a photo from Telegram" in caplog.text  # logged in one line
    assert TOKEN not in caplog.text


async def test_a_file_whose_size_only_getfile_tells_is_refused_before_its_bytes_are_fetched(guarded):
    frank = user(2601, "Frank")
    sent = await guarded.fake.send_document(private_chat(frank), frank, PHOTO, file_name="big.jpg",
                                            mime_type="image/jpeg", caption="/clay", file_size=15 * 2**20,
                                            size_in_metadata=False)
    refusal = await guarded.refusal_for(sent)
    assert refusal == f"That file is 15.0 MB; I can take photos up to {MAX_MB} MB."
    assert guarded.fake.calls_to("getFile") and not guarded.fake.calls_to("download")


async def until(check, timeout: float = 30.0) -> None:
    """Wait for ``check()`` to hold (the tests' clock is fake, the event loop is not)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_person_over_their_limit_is_told_once_however_often_they_react_again(guarded, clock):
    group = group_chat(-1002701, "Reacting group")
    gina = user(2701, "Gina")
    photos = [await guarded.fake.send_photo(group, gina, PHOTO) for _ in range(3)]
    for photo in photos[:2]:
        await guarded.fake.react(group, gina, photo["message_id"], "🗿")
        await guarded.picture_for(photo)
        await settled(guarded)
    metrics = guarded.front_end.requests.flow.metrics
    for attempt in range(1, 5):  # she takes her reaction back and adds it again, four times
        await guarded.fake.react(group, gina, photos[2]["message_id"], "🗿", old=("👍",))
        await until(lambda attempt=attempt: _sample(metrics, "claybot_requests_total", platform="telegram",
                                                    outcome="rate_limited") == attempt)
        await guarded.fake.react(group, gina, photos[2]["message_id"], "👍", old=("🗿",))
    refusals = [c for c in guarded.fake.calls_to("sendMessage") if c.reply_to == photos[2]["message_id"]]
    assert [c.params["text"] for c in refusals] == [
        "You have asked for 2 pictures in the last minute; please ask again in 60 seconds."]

    clock.now += 61  # the wait she was told of is over: her next reaction is served
    await guarded.fake.react(group, gina, photos[2]["message_id"], "🗿", old=("👍",))
    await guarded.picture_for(photos[2])


async def test_anonymous_admins_of_different_groups_do_not_share_one_quota(guarded):
    # Telegram names one user (GroupAnonymousBot) as the sender of every anonymous admin's message, in every
    # group: they are counted per chat they post as.
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
    first, second = group_chat(-1002801, "First group"), group_chat(-1002802, "Second group")
    for _ in range(2):
        await guarded.picture_for(await guarded.fake.send_photo(first, anonymous, PHOTO, caption="/clay",
                                                                as_chat=first))
        await settled(guarded)
    over = await guarded.fake.send_photo(first, anonymous, PHOTO, caption="/clay", as_chat=first)
    assert (await guarded.text_for(over)).params["text"].startswith("You have asked for 2 pictures")
    await settled(guarded)
    # Another group's anonymous admin, and someone posting there as their channel, are served.
    channel = {"id": -1002899, "type": "channel", "title": "Someone's channel"}
    channel_bot = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}
    await guarded.picture_for(await guarded.fake.send_photo(second, anonymous, PHOTO, caption="/clay",
                                                            as_chat=second))
    await settled(guarded)
    await guarded.picture_for(await guarded.fake.send_photo(second, channel_bot, PHOTO, caption="/clay",
                                                            as_chat=channel))
