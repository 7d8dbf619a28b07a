"""Clips on Telegram, end to end: the 🎬 Animate button under every picture, /animate as a reply or a caption, and
the clip sent with sendAnimation as a reply to the picture; the real python-telegram-bot Application against the fake
Bot API server, the real queue and worker on the tiny models (tiny Wan: clips of a few seconds on the CPU, so few of
them here), and claybot's SQLite journal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.config import Config
from bot.flow import FETCH_FAILED, FETCHING, RequestFlow
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from bot.telegram.buttons import ANIMATE_LABEL, MAX_CALLBACK_DATA, animate_data, parse_animate, result_buttons
from bot.telegram.handlers import PICTURE_GONE
from bot.telegram.help import ANIMATE_USAGE
from pipeline.core.intake import take_in
from pipeline.core.jobs import MAX_SEED, MP4, Done
from pipeline.core.kinds.clip import ANIMATE_OFF, clip_frames
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import photo_bytes
from tests.fake_telegram import Call, FakeTelegram, private_chat, user
from tests.test_clip import decode
from tests.test_telegram import TOKEN, Running, check_picture, with_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHOTO = photo_bytes((128, 96))
LIMITS = {"clip_user_per_hour": 1}  # each test's people ask for one clip at most, but the one over the limit
STEPS = 20  # denoising steps of a tiny clip: long enough (about a second) for its status line to show progress
EDIT_INTERVAL = 0.1  # the least telegram.status_edit_interval allows: a tiny clip's status line shows its progress
CLIP_TIMEOUT = 180.0  # seconds to wait for a clip: a few on the tiny Wan, more on 2 busy cores


@dataclass
class Animating(Running):
    """A started TelegramFrontEnd with claybot's journal, and the fake server it talks to."""

    flow: RequestFlow

    async def clip_for(self, picture: dict, *, after: int = 0) -> Call:
        """The clip sent as a reply to ``picture`` (an animation, or the MP4 as a file)."""
        return await self.fake.wait_for(
            lambda c: c.method in ("sendAnimation", "sendDocument") and c.params["chat_id"] == picture["chat"]["id"]
            and c.reply_to == picture["message_id"], after=after, answered=True, timeout=CLIP_TIMEOUT)

    async def picture(self, chat: dict, who: dict) -> tuple[dict, dict]:
        """A person's photo (captioned /clay) and claybot's picture of it, as the picture's message."""
        photo = await self.fake.send_photo(chat, who, PHOTO, caption="/clay 0.5")
        picture = (await self.picture_for(photo)).result
        await self.settled()  # that request has ended: answered in the journal too
        return photo, picture

    async def old_picture(self, chat: dict, who: dict) -> dict:
        """A picture claybot sent before this process started (its photo, replying to a person's photo)."""
        photo = await self.fake.send_photo(chat, who, PHOTO)
        message_id = 9000 + photo["message_id"]
        picture = {"message_id": message_id, "date": 1_800_000_000, "chat": chat, "from": self.fake.bot_user,
                   "photo": photo["photo"], "caption": "clay · strength 0.5 · seed 42\nno tags",
                   "reply_to_message": photo}
        self.fake.messages[(chat["id"], message_id)] = picture
        return picture

    async def settled(self) -> None:
        """Every request task has finished (its answer recorded in the journal too, not only sent)."""
        tasks = [task for task in self.front_end.requests.running.tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=CLIP_TIMEOUT)


@contextlib.asynccontextmanager
async def started(config: Config, queue, tmp_path, *, animate: bool = True) -> AsyncIterator[Animating]:
    """A front end on a fresh fake server and journal, clips on or off; every request answered by the end."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = with_telegram(config, fake, status_edit_interval=EDIT_INTERVAL)
    config = config.model_copy(update={"limits": config.limits.model_copy(update=LIMITS),
                                       "animate": config.animate.model_copy(update={"enabled": animate})})
    store = ClaybotDatabase(tmp_path / "claybot.sqlite3")
    await store.open()
    flow = RequestFlow(queue, config, store=store)
    front_end = TelegramFrontEnd(config, flow, TOKEN)
    try:
        await asyncio.wait_for(front_end.start(), 15)
        running = Animating(fake, front_end, flow)
        yield running
        await running.settled()
        assert await flow.journal.unanswered() == []  # nothing lost
    finally:
        await asyncio.wait_for(front_end.close(), 30)
        await fake.close()
        await store.close()


@pytest.fixture(scope="module")
def clip_config(tiny_config, tmp_path_factory) -> Config:
    """The tiny config with clips on, made by the tiny Wan model (9 frames at 8 fps: what `tiny-models` writes)."""
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = AnimateSettings(enabled=True, max_seconds=16.0, model=str(video.wan_folder), frames=9, fps=8, steps=STEPS,
                              megapixels=0.0123, timeout=300)
    return tiny_config.model_copy(update={"animate": animate})


@pytest.fixture(scope="module")
def queue_gpu(clip_config):
    """The module's `queue` (tests/conftest.py) runs a worker that has the tiny Wan loaded."""
    return clip_config.gpu()


@pytest_asyncio.fixture(loop_scope="module")
async def animator(clip_config, queue, tmp_path, caplog):
    """Clips on (tiny Wan), logs captured at DEBUG; the token never in them."""
    caplog.set_level(logging.DEBUG)
    async with started(clip_config, queue, tmp_path) as running:
        yield running
    assert TOKEN not in caplog.text


def check_clip(answer: Call, frames: int) -> bytes:
    """An H.264 MP4 without sound, of ``frames`` frames, captioned as a clip, without buttons; its bytes."""
    data = answer.files.get("animation") or answer.files["document"]
    stream, decoded, audio_streams = decode(data)
    assert stream.codec_context.name == "h264"
    assert audio_streams == 0  # sendAnimation loops an MP4 inline only when it has no sound
    assert len(decoded) == frames
    assert answer.params["caption"].startswith("🎬 clay · seed ")
    assert "reply_markup" not in answer.params  # no 🎬 under a clip
    return data


def animate_button(picture: dict) -> dict:
    """The 🎬 button under a picture: alone on the second row."""
    rows = picture["reply_markup"]["inline_keyboard"]
    assert len(rows) == 2 and [b["text"] for b in rows[1]] == [ANIMATE_LABEL]
    return rows[1][0]


async def alert_for(running: Running, query_id: str) -> Call:
    return await running.fake.wait_for(lambda c: c.method == "answerCallbackQuery"
                                       and c.params["callback_query_id"] == query_id, answered=True)


async def nothing_queued(running: Animating, mark: int) -> None:
    """Every update so far was handled without a request: nothing fetched, nothing in the journal."""
    await running.handled()
    assert not [c for c in running.fake.calls[mark:] if c.method == "getFile"]
    assert await running.flow.journal.unanswered() == []


# -- the 🎬 button ---------------------------------------------------------------------------------------------------


async def test_pressing_animate_sends_a_clip_of_that_picture_as_a_reply_to_it(animator):
    alice = user(3001, "Alice")
    chat = private_chat(alice)
    _, picture = await animator.picture(chat, alice)
    button = animate_button(picture)
    assert len(button["callback_data"].encode()) <= MAX_CALLBACK_DATA
    mark = len(animator.fake.calls)

    # two presses at once (a double tap, or two people): one clip, and the second is told it is on its way
    first = await animator.fake.press(alice, picture, button["callback_data"])
    second = await animator.fake.press(alice, picture, button["callback_data"])
    clip = await animator.clip_for(picture, after=mark)

    assert clip.method == "sendAnimation"
    check_clip(clip, frames=animator.front_end.config.animate.frames)
    since = animator.fake.calls[mark:]
    acked = next(i for i, c in enumerate(since) if c.method == "answerCallbackQuery"
                 and c.params["callback_query_id"] == first)
    fetched = next(i for i, c in enumerate(since) if c.method == "getFile")
    assert acked < fetched, "the press is acknowledged before any work"
    assert since[fetched].params["file_id"] == picture["photo"][-1]["file_id"]  # the picture itself, not the photo
    assert "already animating" in (await alert_for(animator, second)).params["text"]
    status = next(c for c in since if c.method == "sendMessage" and c.reply_to == picture["message_id"])
    assert status.params["text"] == FETCHING
    texts = [e.params["text"] for e in animator.edits_of(status)]
    assert any(t.startswith("Animating…") for t in texts), texts
    await animator.status_removed(status)
    assert any(c.params.get("action") == "upload_video" for c in animator.fake.calls_to("sendChatAction"))
    await animator.settled()
    assert [c.method for c in animator.fake.calls[mark:] if c.method in ("sendAnimation", "sendPhoto")] == \
        ["sendAnimation"]


async def test_animate_under_a_picture_sent_as_a_file_animates_that_file(animator):
    olivia = user(3013, "Olivia")
    chat = private_chat(olivia)
    animator.fake.fail_next("sendPhoto", 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    _, picture = await animator.picture(chat, olivia)
    assert picture["document"]["mime_type"] == "image/png"  # Telegram would not take it as a photo
    mark = len(animator.fake.calls)

    await animator.fake.press(olivia, picture, animate_button(picture)["callback_data"])

    clip = await animator.clip_for(picture, after=mark)
    check_clip(clip, frames=animator.front_end.config.animate.frames)
    fetched = [c.params["file_id"] for c in animator.fake.calls[mark:] if c.method == "getFile"]
    assert fetched == [picture["document"]["file_id"]]


async def test_a_picture_delivered_after_a_restart_has_the_animate_button_of_a_live_one(animator):
    bob = user(3002, "Bob")
    chat = private_chat(bob)
    live = await animator.picture_for(await animator.fake.send_photo(chat, bob, PHOTO, caption="/clay 0.5"))
    seed = check_picture(live, (128, 96), strength=0.5)
    await animator.settled()
    # What a process that died while making the same picture left in its journal: the restarted one runs it again.
    again = await animator.fake.send_photo(chat, bob, PHOTO)
    flow, where = animator.flow, str(chat["id"])
    ticket = await flow.journal.admit("telegram", str(bob["id"]), where, where,
                                      {"message_id": again["message_id"], "thread_id": None})
    await flow.journal.queued(ticket, "job-of-the-dead-process", await take_in(
        flow.config, PHOTO, seed=seed, reply_to=("telegram", where), options={"strength": 0.5}))
    assert await flow.recover({"telegram": animator.front_end}, await flow.unanswered()) == 1

    after = await animator.picture_for(again)
    await asyncio.gather(*flow.recovering.tasks)

    assert after.params["reply_markup"] == live.params["reply_markup"]
    assert animate_button(after.result)["callback_data"] == animate_data("clay", seed)


async def test_a_clip_delivered_after_a_restart_is_the_animation_a_live_one_is(animator):
    carol = user(3003, "Carol")
    chat = private_chat(carol)
    _, picture = await animator.picture(chat, carol)
    flow, where = animator.flow, str(chat["id"])
    ticket = await flow.journal.admit("telegram", str(carol["id"]), where, where,
                                      {"message_id": picture["message_id"], "thread_id": None}, kind="clip")
    await flow.journal.queued(ticket, "clip-of-the-dead-process", await take_in(
        flow.config, PHOTO, seed=7, reply_to=("telegram", where), kind="clip"))
    mark = len(animator.fake.calls)
    animator.fake.fail_next("sendAnimation", 400, "Bad Request: wrong type of the web page content")

    assert await flow.recover({"telegram": animator.front_end}, await flow.unanswered()) == 1
    clip = await animator.clip_for(picture, after=mark)
    await asyncio.gather(*flow.recovering.tasks)

    # Telegram refused the animation: the same MP4 as a file, captioned, still replying to the picture
    assert [c.method for c in animator.fake.calls[mark:] if c.method.startswith("send")
            and c.method != "sendChatAction"] == ["sendAnimation", "sendDocument"]
    assert clip.method == "sendDocument" and clip.params["caption"].startswith("🎬 clay · seed 7")
    check_clip(clip, frames=flow.config.animate.frames)


def clip_message(fake: FakeTelegram, chat: dict, message_id: int) -> dict:
    """A clip claybot sent (Telegram sets ``document`` beside ``animation``)."""
    fake.chats[chat["id"]] = chat
    video = {"file_id": "clip", "file_unique_id": "uclip", "mime_type": "video/mp4"}
    message = {"message_id": message_id, "date": 1_800_000_000, "chat": chat, "from": fake.bot_user,
               "animation": {**video, "width": 64, "height": 48, "duration": 1}, "document": video,
               "caption": "🎬 clay · seed 42\nno tags"}
    fake.messages[(chat["id"], message_id)] = message
    return message


async def test_the_animate_button_on_a_message_whose_picture_is_gone_says_so(animator):
    dave = user(3004, "Dave")
    chat = private_chat(dave)
    animator.fake.chats[chat["id"]] = chat
    mark = len(animator.fake.calls)
    # a message older than 48 hours (Telegram sends it without its content) and a picture deleted into text
    old = {"message_id": 9100, "date": 0, "chat": chat, "from": animator.fake.bot_user}
    text = {"message_id": 9101, "date": 1_800_000_000, "chat": chat, "from": animator.fake.bot_user,
            "text": "clay · strength 0.5 · seed 42"}
    for message in (old, text):
        animator.fake.messages[(chat["id"], message["message_id"])] = message
        query_id = await animator.fake.press(dave, message, animate_data("clay", 42))
        alert = await alert_for(animator, query_id)
        assert alert.params["text"] == PICTURE_GONE and alert.params["show_alert"] == "true"
    # a forged press under a clip (clips have no 🎬)
    query_id = await animator.fake.press(dave, clip_message(animator.fake, chat, 9102), animate_data("clay", 42))
    assert "clip already" in (await alert_for(animator, query_id)).params["text"]
    await nothing_queued(animator, mark)


async def test_animate_on_a_picture_whose_file_telegram_lost_says_so_and_makes_nothing(animator):
    nina = user(3014, "Nina")
    _, picture = await animator.picture(private_chat(nina), nina)
    animator.fake.files_gone = True  # the file server answers 404
    mark = len(animator.fake.calls)

    await animator.fake.press(nina, picture, animate_button(picture)["callback_data"])

    assert await animator.refusal_for(picture) == FETCH_FAILED
    await animator.settled()
    assert not animator.fake.calls_to("sendAnimation") and await animator.flow.journal.unanswered() == []
    assert [c for c in animator.fake.calls[mark:] if c.method == "download"]  # it did try


@pytest.mark.parametrize(("data", "words"), [
    ("c2a|clay", "can't read this button"),
    ("c2a|clay|1|2", "can't read this button"),
    ("c2a|clay|-1", "can't read this button"),
    ("c2a|clay|", "can't read this button"),
    ("c2a|clay|٣", "can't read this button"),  # a digit, but not an ASCII one
    ("c2a|clay|99999999999999999999", "can't read this button"),
    ("c2a| clay|5", "can't read this button"),
    ("c2a|clay|5" + "0" * 60, "can't read this button"),  # over Telegram's 64 bytes: not ours
    ("c2a|no-such-style|5", "no longer have"),
])
async def test_a_forged_or_garbled_animate_button_gets_an_alert_and_queues_nothing(animator, data, words):
    erin = user(3005, "Erin")
    picture = await animator.old_picture(private_chat(erin), erin)
    mark = len(animator.fake.calls)

    query_id = await animator.fake.press(erin, picture, data)

    alert = await alert_for(animator, query_id)
    assert alert.params["show_alert"] == "true" and words in alert.params["text"]
    await nothing_queued(animator, mark)


async def test_a_person_over_the_clip_limit_gets_the_journals_line(animator):
    frank = user(3006, "Frank")
    chat = private_chat(frank)
    _, picture = await animator.picture(chat, frank)
    where = str(chat["id"])  # Frank had his clip this hour already
    await animator.flow.journal.answered(await animator.flow.journal.admit(
        "telegram", str(frank["id"]), where, where, {}, kind="clip"), "image")
    mark = len(animator.fake.calls)

    query_id = await animator.fake.press(frank, picture, animate_button(picture)["callback_data"])

    refusal = await alert_for(animator, query_id)  # a button's refusal: an alert, not a line in the chat
    assert refusal.params["show_alert"] == "true"
    assert refusal.params["text"].startswith("You have asked for 1 clip")
    assert "in the last hour; please ask again in" in refusal.params["text"]
    await nothing_queued(animator, mark)
    assert not [c for c in animator.fake.calls[mark:] if c.method == "sendMessage" and c.reply_to is not None
                and c.reply_to == picture["message_id"]]


# -- /animate --------------------------------------------------------------------------------------------------------


async def test_animate_replying_to_a_persons_photo_makes_it_clay_first_and_answers_once_with_the_clip(animator):
    grace = user(3007, "Grace")
    chat = private_chat(grace)
    photo = await animator.fake.send_photo(chat, grace, PHOTO)
    mark = len(animator.fake.calls)

    await animator.fake.send_text(chat, grace, "/animate", reply_to=photo)

    clip = await animator.clip_for(photo, after=mark)
    await animator.settled()
    check_clip(clip, frames=animator.front_end.config.animate.frames)
    answers = [c for c in animator.fake.calls[mark:] if c.method in ("sendPhoto", "sendAnimation", "sendDocument")]
    assert answers == [clip]  # one answer: the clay picture on the way was not posted
    status = next(c for c in animator.fake.calls[mark:] if c.method == "sendMessage" and c.params["text"] == FETCHING)
    texts = [e.params["text"] for e in animator.edits_of(status)]
    assert status.reply_to == photo["message_id"]
    assert any(t.startswith("Sculpting") for t in texts) and any(t.startswith("Animating") for t in texts), texts


async def test_animate_replying_to_a_claybot_picture_animates_it_as_it_is_for_the_seconds_asked(animator):
    heidi = user(3008, "Heidi")
    chat = private_chat(heidi)
    _, picture = await animator.picture(chat, heidi)
    mark = len(animator.fake.calls)

    await animator.fake.send_text(chat, heidi, "/animate 2", reply_to=picture)

    clip = await animator.clip_for(picture, after=mark)
    await animator.settled()
    frames = clip_frames(animator.front_end.config.animate, 2)  # intake's rule: the model's steps
    assert frames != animator.front_end.config.animate.frames  # so the length asked shows
    check_clip(clip, frames=frames)
    fetched = [c.params["file_id"] for c in animator.fake.calls[mark:] if c.method == "getFile"]
    assert fetched == [picture["photo"][-1]["file_id"]]
    status = next(c for c in animator.fake.calls[mark:] if c.method == "sendMessage" and c.params["text"] == FETCHING)
    assert any(e.params["text"].startswith("Animating") for e in animator.edits_of(status))
    assert not any(e.params["text"].startswith("Sculpting") for e in animator.edits_of(status))  # not made clay again


@pytest.mark.parametrize(("text", "target", "words"), [
    ("/animate", None, ANIMATE_USAGE),
    ("/animate 3", "text", ANIMATE_USAGE),
    ("/animate banana", "photo", "could not read 'banana' as a number of seconds"),
    ("/animate 2.5.1", "photo", "could not read"),
    ("/animate -1", "photo", "could not read"),
    ("/animate nan", "photo", "could not read"),
    ("/animate 1e9", "photo", "could not read"),
    ("/animate " + "9" * 100_000, "photo", "could not read"),  # a hostile 100 kB length
    ("/animate 0", "photo", "A clip can be up to"),
    ("/animate 999", "photo", "A clip can be up to"),
    ("/animate 3 4", "photo", "could not read"),
    ("/animate", "clip", "That is a clip already"),
    ("/animate", "pdf", "not an image"),
])
async def test_animate_with_nothing_to_animate_or_a_silly_length_gets_a_clear_line(animator, text, target, words):
    ivan = user(3009, "Ivan")
    chat = private_chat(ivan)
    targets = {
        "text": lambda: animator.fake.send_text(chat, ivan, "hello"),
        "photo": lambda: animator.fake.send_photo(chat, ivan, PHOTO),
        "pdf": lambda: animator.fake.send_document(chat, ivan, b"%PDF-1.4", file_name="a.pdf",
                                                   mime_type="application/pdf"),
    }
    if target == "clip":
        replied = clip_message(animator.fake, chat, 9200)
    else:
        replied = await targets[target]() if target else None
    mark = len(animator.fake.calls)

    asked = await animator.fake.send_text(chat, ivan, text, reply_to=replied)

    # A length [animate] cannot make is refused by admission, with the kind's own line (no usage after it), as a
    # reply to the photo it would have animated; the command's own mistakes reply to the command.
    admission = words.startswith("A clip can be up to")
    if admission:  # the photo had its private-chat hint as a reply too
        answer = await animator.fake.wait_for(
            lambda c: c.method == "sendMessage" and c.reply_to == replied["message_id"]
            and words in c.params["text"], answered=True, timeout=30)
    else:
        answer = await animator.text_for(asked)
    assert words in answer.params["text"]
    if admission:
        assert ANIMATE_USAGE not in answer.params["text"]
    await nothing_queued(animator, mark)


async def test_a_photo_captioned_animate_with_a_bad_length_gets_a_clear_line(animator):
    judy = user(3010, "Judy")
    chat = private_chat(judy)
    mark = len(animator.fake.calls)
    photo = await animator.fake.send_photo(chat, judy, PHOTO, caption="/animate forever")
    answer = await animator.text_for(photo)
    assert "could not read 'forever' as a number of seconds" in answer.params["text"]
    await nothing_queued(animator, mark)


async def test_help_and_the_command_menu_mention_animate(animator):
    commands = animator.fake.calls_to("setMyCommands")[0].params["commands"]
    assert "animate" in [c["command"] for c in commands]
    ken = user(3011, "Ken")
    await animator.fake.send_text(private_chat(ken), ken, "/help")
    text = (await animator.fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == ken["id"],
                                         answered=True)).params["text"]
    assert "🎬 Animate" in text and "/animate [seconds]" in text


# -- clips switched off ----------------------------------------------------------------------------------------------


async def test_with_clips_off_there_is_no_button_and_asking_gets_a_clear_line(clip_config, queue, tmp_path):
    mallory = user(3012, "Mallory")
    chat = private_chat(mallory)
    async with started(clip_config, queue, tmp_path, animate=False) as off:
        photo, picture = await off.picture(chat, mallory)
        assert len(picture["reply_markup"]["inline_keyboard"]) == 1  # no 🎬 row
        mark = len(off.fake.calls)

        query_id = await off.fake.press(mallory, picture, animate_data("clay", 42))  # a button from before
        alert = await alert_for(off, query_id)
        assert alert.params["text"] == ANIMATE_OFF and alert.params["show_alert"] == "true"
        await off.fake.send_text(chat, mallory, "/animate 2", reply_to=photo)
        refusal = await off.text_for(photo, after=mark)
        assert refusal.params["text"] == ANIMATE_OFF
        help_text = (await off.handled()).params["text"]
        assert "/animate" not in help_text
        assert "animate" not in [c["command"] for c in off.fake.calls_to("setMyCommands")[0].params["commands"]]
        await nothing_queued(off, mark)


# -- the button's data -----------------------------------------------------------------------------------------------


async def test_animate_data_fits_telegrams_64_bytes_and_round_trips():
    assert parse_animate(animate_data("clay", MAX_SEED)) == ("clay", MAX_SEED)
    long = animate_data("a-very-long-style-name-" * 4, 12)  # too long to carry: the default style
    assert len(long.encode()) <= MAX_CALLBACK_DATA and parse_animate(long) == (None, 12)
    assert parse_animate("c2|clay|0.5|1|") is None  # another button's: not a 🎬 one


async def test_a_clip_has_no_buttons_and_a_picture_has_the_animate_row_only_when_clips_are_on():
    picture = Done(image=b"", width=1, height=1, tags=[], prompt="", seed=5, style="clay", strength=0.5)
    clip = Done(image=b"", width=1, height=1, tags=[], prompt="", seed=5, style="clay", strength=0.5, media=MP4)
    assert len(result_buttons(picture, ["default"]).inline_keyboard) == 1
    rows = result_buttons(picture, ["default"], animate=True).inline_keyboard
    assert [b.text for b in rows[1]] == [ANIMATE_LABEL] and parse_animate(rows[1][0].callback_data) == ("clay", 5)
    assert result_buttons(clip, ["default"], animate=True) is None
