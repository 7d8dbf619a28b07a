"""Clips on Discord end to end: the 🎬 Animate button, /animate and "Animate it", against the fake Discord, the real
queue and worker with the tiny Wan model (clips take seconds on the CPU: each test makes as few as it can), and
claybot's journal (the clips' own limits). Every MP4 is decoded back as a player would."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import pytest
import pytest_asyncio

from bot.discord_buttons import UNKNOWN_BUTTON
from bot.discord_client import NO_IMAGE
from bot.flow import RequestFlow
from bot.store import ClaybotDatabase
from cogs.results import NO_PICTURE
from pipeline.core.clip import encode_mp4
from pipeline.core.jobs import MP4, Done
from pipeline.core.kinds.clip import ANIMATE_OFF
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests import test_discord
from tests.conftest import with_pipeline
from tests.fake_discord import EPHEMERAL, Call, FakeDiscord, FakeInteraction
from tests.test_discord import (
    BUTTONS,
    JOB,
    PHOTO,
    clay,
    fields,
    labels,
    on_fake,
    result_of,
    rewrite_button,
    running_front_end,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

FRAMES, FPS = 9, 8  # the tiny Wan's clip: 9 frames (4k+1 and 8k+1) at 8 fps
ANIMATE_BUTTONS = [*BUTTONS, "Animate"]
SMALL_LIMIT = 10_000  # bytes: an interaction's attachment limit below what the tiny clip first encodes to (~18 KB)

# test_discord's fixtures (pytest finds them by name here): the fake Discord, and the running bot that fails a test on
# any logged error; `config`, `queue_gpu` and `front_end` below are this module's own.
fake = test_discord.fake
bot = test_discord.bot


# -- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tiny_config, fake, tmp_path_factory):
    """test_discord's config with clips on (the tiny Wan), one clip per person an hour, and no limit per server
    (every test here asks in the same one)."""
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = tiny_config.animate.model_copy(update={
        "enabled": True, "model": str(video.wan_folder), "frames": FRAMES, "fps": FPS, "steps": 2,
        "megapixels": 0.0123, "timeout": 300.0, "max_seconds": 16.0})
    limits = tiny_config.limits.model_copy(update={"clip_user_per_hour": 1, "chat_per_minute": 0,
                                                   "chat_per_hour": 0, "clip_chat_per_hour": 0})
    return on_fake(tiny_config, fake, tmp_path_factory.mktemp("animate-data"), animate=animate, limits=limits)


@pytest.fixture(scope="module")
def queue_gpu(config):
    """The module's worker has the tiny Wan loaded; pictures of about 0.3 s, as in test_discord."""
    return with_pipeline(config.gpu(), steps=40)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front_end(config, queue, fake, tmp_path_factory):
    """The Discord front end with claybot's database: the journal counts clips against their own limits."""
    store = ClaybotDatabase(tmp_path_factory.mktemp("animate-store") / "claybot.sqlite3")
    await store.open()
    try:
        async with running_front_end(config, queue, flow=RequestFlow(queue, config, store=store)) as front_end:
            yield front_end
    finally:
        await store.close()


# -- helpers ----------------------------------------------------------------------------------------------------------


def clip_of(interaction: FakeInteraction):
    """Matches the edit of an interaction's original response that carries an MP4."""
    return lambda call: result_of(interaction)(call) and any(name.endswith(".mp4") for name in call.files)


def mp4(call: Call) -> tuple[str, bytes]:
    (name,) = [name for name in call.files if name.endswith(".mp4")]
    return name, call.files[name]


def decoded(data: bytes) -> tuple[str, int, int, tuple[int, int]]:
    """An MP4's video codec, frame count, audio tracks and size, as a player reads them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, frames, len(container.streams.audio), (stream.width, stream.height)


def statuses(fake: FakeDiscord, interaction: FakeInteraction) -> list[str]:
    return [call.json["content"] for call in fake.calls_of(interaction) if call.method == "PATCH" and not call.files
            and (call.json or {}).get("content")]


def downloaded(fake: FakeDiscord, attachment: dict) -> bool:
    return attachment["url"].removeprefix(fake.base) in fake.downloads


def attachment_named(message: dict, prefix: str) -> dict:
    return next(a for a in message["attachments"] if a["filename"].startswith(prefix))


async def ephemeral_answer(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    """The ephemeral line an interaction was answered with at once (no deferral, nothing public)."""
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL, answer.json
    return answer.json["data"]["content"]


# -- the button -------------------------------------------------------------------------------------------------------


async def test_animate_makes_a_clip_of_that_picture_with_progress_and_looks_the_same_after_a_restart(bot, front_end,
                                                                                                   fake):
    carol = fake.user("carol")
    first, made = await clay(fake, carol, strength=0.6, seed=42)
    assert labels(made) == ANIMATE_BUTTONS
    result = fake.messages[first.original]

    press = await fake.press(first.original, "Animate", carol)
    final = await fake.wait_for(clip_of(press), timeout=JOB)

    calls = fake.calls_of(press)
    assert calls[0].path.endswith("/callback") and calls[0].json["type"] == 5  # answered at once, "thinking"
    assert calls[0].at - press.sent_at < 3.0
    assert any(text.startswith("Animating") for text in statuses(fake, press)), statuses(fake, press)
    assert not any(text.startswith("Sculpting") for text in statuses(fake, press))  # no new picture first
    # a clip of THAT picture: the result's picture was fetched, not the copy of the photo it carries
    assert downloaded(fake, attachment_named(result, "clay.")) and not downloaded(fake, attachment_named(result,
                                                                                                         "source."))
    assert first.original in fake.messages  # the picture stays; the clip is the press's own message
    name, data = mp4(final)
    assert name == "clay-42.mp4" and list(final.files) == [name]
    codec, frames, audio, size = decoded(data)
    assert (codec, frames, audio) == ("h264", FRAMES, 0)
    assert size[0] > size[1]  # the picture's 4:3, landscape
    embed = final.json["embeds"][0]
    assert "clip" in embed["title"] and fields(final) == {"Style": "clay", "Seed": "42"}
    assert embed["footer"]["text"] == "for carol" and final.json["content"] is None
    assert labels(final) == ["Delete"]

    # The same clip answered by a restarted process looks the same: embed, file, buttons.
    # (a clip carries no strength: the picture's is not the clip's business)
    done = Done(data, *size, embed["description"].split(", "), "", 42, "clay", media=MP4)
    mark = len(fake.calls)
    await front_end.deliver(str(fake.channel_id), done, "", {"requester": int(carol["id"]),
                                                             "requester_name": "carol"})
    posted = await fake.wait_for(lambda call: call.method == "POST" and bool(call.files), after=mark, timeout=10)
    assert posted.json["embeds"] == final.json["embeds"] and posted.json["components"] == final.json["components"]
    assert posted.files == final.files
    assert posted.json["content"] == f"<@{carol['id']}> here is your clay clip."


async def test_a_picture_sent_after_a_restart_has_the_same_animate_button(bot, front_end, fake):
    dan = fake.user("dan")
    _, live = await clay(fake, dan, strength=0.6, seed=43)
    png = live.files["clay.png"]
    done = Done(png, 128, 96, live.json["embeds"][0]["description"].split(", "), "", 43, "clay", 0.6)
    mark = len(fake.calls)
    await front_end.deliver(str(fake.channel_id), done, "", {"requester": int(dan["id"]), "requester_name": "dan"})
    posted = await fake.wait_for(lambda call: call.method == "POST" and bool(call.files), after=mark, timeout=10)
    assert labels(posted) == ANIMATE_BUTTONS
    assert posted.json["components"] == live.json["components"]  # the same custom ids: the same clip when pressed


async def test_animate_it_on_a_picture_with_a_tiny_attachment_limit_re_encodes_the_clip_to_fit(bot, fake):
    erin, fay = fake.user("erin"), fake.user("fay")
    first, _ = await clay(fake, erin, seed=44, size_limit=SMALL_LIMIT)  # a picture made to fit there too
    result = fake.messages[first.original]
    press = await fake.press(first.original, "Animate", erin)  # where the interaction's limit is 10 MiB
    _, roomy = mp4(await fake.wait_for(clip_of(press), timeout=JOB))
    assert len(roomy) > SMALL_LIMIT, len(roomy)  # else the small limit below proves nothing

    menu = await fake.context_menu("Animate it", result, fay, size_limit=SMALL_LIMIT)
    final = await fake.wait_for(clip_of(menu), timeout=JOB)
    name, data = mp4(final)
    assert name == "clay-44.mp4" and len(data) <= SMALL_LIMIT  # the same frames (picture, seed), encoded to fit
    codec, frames, audio, _ = decoded(data)
    assert (codec, frames, audio) == ("h264", FRAMES, 0)
    # the picture animated as it is: one clip, no new picture made first
    assert [call for call in fake.calls_of(menu) if call.files] == [final]
    assert not any(text.startswith("Sculpting") for text in statuses(fake, menu))
    assert fields(final)["Seed"] == "44" and final.json["embeds"][0]["footer"]["text"] == "for fay"


# -- the commands -----------------------------------------------------------------------------------------------------


async def test_animate_command_makes_the_photo_clay_first_then_answers_once_with_the_clip(bot, fake):
    gus = fake.user("gus")
    definition = fake.command("animate")
    assert [option["name"] for option in definition["options"]] == ["image", "seconds"]
    assert "Animate it" in {d["name"] for d in fake.commands["global"]}
    photo = fake.attachment(PHOTO)
    interaction = await fake.slash("animate", gus, image=photo, seconds=1.0)
    final = await fake.wait_for(clip_of(interaction), timeout=JOB)

    texts = statuses(fake, interaction)
    sculpting = [i for i, text in enumerate(texts) if text.startswith("Sculpting")]
    animating = [i for i, text in enumerate(texts) if text.startswith("Animating")]
    assert sculpting and animating and max(sculpting) < min(animating), texts  # clay first, then the clip
    assert [call for call in fake.calls_of(interaction) if call.files] == [final]  # one answer: the clip alone
    assert downloaded(fake, photo)
    _, data = mp4(final)
    codec, frames, audio, _ = decoded(data)
    assert (codec, frames, audio) == ("h264", 9, 0)  # 1 s at 8 fps, as the model makes it (8k+1)


async def test_animate_it_on_a_persons_photo_makes_it_clay_first_and_links_the_clip_to_it(bot, fake):
    mo = fake.user("mo")
    photo = fake.attachment(PHOTO)
    message = fake.post_message(fake.bob, "my cat", attachments=[photo])
    menu = await fake.context_menu("Animate it", message, mo)
    final = await fake.wait_for(clip_of(menu), timeout=JOB)

    texts = statuses(fake, menu)
    assert any(t.startswith("Sculpting") for t in texts) and any(t.startswith("Animating") for t in texts), texts
    assert [call for call in fake.calls_of(menu) if call.files] == [final]
    assert downloaded(fake, photo)
    embed = final.json["embeds"][0]
    assert embed["url"].endswith(f"/{message['channel_id']}/{message['id']}")  # the photo's message
    assert decoded(mp4(final)[1])[:3] == ("h264", FRAMES, 0)


@pytest.mark.parametrize("seconds, said", [(1e9, "up to 16.0 seconds"), (0.0, "not 0"), (-3.0, "not -3")])
async def test_animate_with_a_silly_length_is_refused_at_once_without_fetching_the_photo(bot, fake, seconds, said):
    photo = fake.attachment(PHOTO)
    interaction = await fake.slash("animate", fake.user("hal"), image=photo, seconds=seconds)
    assert said in await ephemeral_answer(fake, interaction)
    assert not downloaded(fake, photo)


async def test_animate_refuses_what_is_not_a_picture_clearly(bot, front_end, fake):
    document = fake.attachment(b"%PDF-1.4 not a photo", "notes.pdf", "application/pdf")
    slash = await fake.slash("animate", fake.alice, image=document)
    assert "not an image" in await ephemeral_answer(fake, slash)
    assert not downloaded(fake, document)

    text = fake.post_message(fake.bob, "no pictures here")
    assert await ephemeral_answer(fake, await fake.context_menu("Animate it", text, fake.alice)) == NO_IMAGE

    # a clip of claybot's (its MP4 is no picture), as a restarted process posts it
    frames = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(3)]
    done = Done(encode_mp4(frames, fps=8).data, 32, 32, ["solo"], "", 7, "clay", 0.5, media=MP4)
    mark = len(fake.calls)
    await front_end.deliver(str(fake.channel_id), done, "", {"requester": int(fake.alice["id"])})
    posted = await fake.wait_for(lambda call: call.method == "POST" and bool(call.files), after=mark, timeout=10)
    assert list(posted.files) == ["clay-7.mp4"] and labels(posted) == ["Delete"]
    message = next(m for m in fake.messages.values() if m["attachments"]
                   and m["attachments"][0]["filename"] == "clay-7.mp4")
    assert await ephemeral_answer(fake, await fake.context_menu("Animate it", message, fake.alice)) == NO_PICTURE


# -- hostile presses --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("custom_id", [
    "clay:animate:not-a-number",  # no button of ours
    "clay:animate:{user}:clay:0.5:{seed}:default:extra:parts",
    "clay:animate:{user}:clay:7:44",  # our shape, a strength no result has
    "clay:animate:{user}:clay:0.5:99999999999999999999",  # our shape, a seed past the largest
])
async def test_a_forged_animate_button_gets_a_clear_line_and_queues_nothing(bot, queue, fake, custom_id):
    ivy = fake.user("ivy")
    first, _ = await clay(fake, ivy, seed=45)
    result = fake.messages[first.original]
    rewrite_button(fake, first.original, "Animate", custom_id.format(user=ivy["id"], seed=45))
    ran = queue.stats.done + sum(queue.stats.failed.values())
    press = await fake.press(first.original, "Animate", ivy)
    assert await ephemeral_answer(fake, press) == UNKNOWN_BUTTON
    assert not downloaded(fake, attachment_named(result, "clay."))
    _, made = await clay(fake, ivy, seed=46)  # and the next request is served
    assert fields(made)["Seed"] == "46"
    assert queue.stats.done + sum(queue.stats.failed.values()) == ran + 1  # the next picture alone ran


async def test_animate_on_a_result_whose_picture_is_gone_says_so(bot, fake):
    jo = fake.user("jo")
    first, _ = await clay(fake, jo, seed=47)
    result = fake.messages[first.original]
    source = attachment_named(result, "source.")
    result["attachments"] = [source]  # only the copy of the photo is left
    press = await fake.press(first.original, "Animate", jo)
    assert await ephemeral_answer(fake, press) == NO_PICTURE
    assert not downloaded(fake, source)


async def test_two_presses_at_once_over_the_clip_limit_make_one_clip_and_one_clear_refusal(bot, fake):
    kim = fake.user("kim")
    first, _ = await clay(fake, kim, seed=48)
    presses = await asyncio.gather(*(fake.press(first.original, "Animate", kim) for _ in range(2)))
    clips, refusals = [], []
    for press in presses:
        # admitted before it is deferred: the press over the limit is answered at once, ephemerally
        answer = await fake.wait_for(lambda call, p=press: clip_of(p)(call) or (
            call.path.endswith(f"/{p.token}/callback") and call.json["type"] == 4), timeout=JOB)
        (clips if answer.files else refusals).append(answer)
    assert len(clips) == 1 and len(refusals) == 1, (clips, refusals)
    refusal = refusals[0].json["data"]
    assert refusal["flags"] == EPHEMERAL and "clip in the last hour" in refusal["content"]
    assert decoded(mp4(clips[0])[1])[:3] == ("h264", FRAMES, 0)


# -- clips switched off -----------------------------------------------------------------------------------------------


async def test_with_clips_off_there_is_no_animate_and_an_old_button_says_why(bot, front_end, config, queue, fake):
    lee = fake.user("lee")
    first, _ = await clay(fake, lee, seed=49)  # made while clips were on: it has the button
    result = fake.messages[first.original]
    registered = {where: list(definitions) for where, definitions in fake.commands.items()}
    off = config.model_copy(update={"animate": config.animate.model_copy(update={"enabled": False})})
    try:
        async with running_front_end(off, queue) as restarted:
            names = {d["name"] for d in fake.commands["global"]}
            assert {"clay", "Clay it"} <= names and not {"animate", "Animate it"} & names
            press = await fake.press(first.original, "Animate", lee)
            assert await ephemeral_answer(fake, press) == ANIMATE_OFF
            assert not downloaded(fake, attachment_named(result, "clay."))

            png = next(call for call in fake.calls_of(first) if call.files).files["clay.png"]
            mark = len(fake.calls)
            await restarted.deliver(str(fake.channel_id), Done(png, 128, 96, [], "", 49, "clay", 0.5),
                                    "", {"requester": int(lee["id"])})
            posted = await fake.wait_for(lambda call: call.method == "POST" and bool(call.files), after=mark,
                                         timeout=10)
            assert labels(posted) == BUTTONS  # no 🎬 while clips are off
    finally:
        fake.commands = registered  # as the module's bot registered them (Discord keeps the last registration)
