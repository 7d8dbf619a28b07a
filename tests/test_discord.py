"""The Discord front end end to end: the real discord.py client against a fake Discord, the real queue and worker on
the tiny models. Each test asserts what a user would see: what the bot sent where, and the picture itself."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from pathlib import Path

import discord
import pytest
import pytest_asyncio
from discord import app_commands
from PIL import Image

from bot.discord_client import ClayBot, DiscordFrontEnd, guild_scope
from bot.discord_photos import fit_upload
from bot.flow import FETCHING, RequestFlow
from bot.observability import Metrics
from bot.options import UserError
from cogs.admin import parse_emoji
from cogs.clay import clay_command, suggest
from pipeline.core.errors import ClaybotError
from pipeline.core.local import LocalQueue
from pipeline.core.safety import INPUT_REFUSED
from tests.conftest import photo_bytes, with_pipeline
from tests.fake_discord import EPHEMERAL, MANAGE_GUILD, Call, FakeDiscord, FakeInteraction
from tests.test_guard import _sample, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "fake-discord-token.for.claybot-tests"  # not shaped like a real token
PHOTO = photo_bytes((128, 96))
JOB = 60.0  # seconds a test waits for one picture at most
# the tiny config has a [speed.fast] preset: a default picture offers "Fast", a fast one "Best"
BUTTONS = ["Again", "Stronger", "Weaker", "Delete", "Fast"]
FAST_BUTTONS = ["Again", "Stronger", "Weaker", "Delete", "Best"]


# -- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    """Jobs of about 0.3 s on the tiny models: long enough for a status line to show progress."""
    return with_pipeline(tiny_config.gpu(), steps=40)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake():
    fake = FakeDiscord(TOKEN)
    await fake.start()
    yield fake
    await fake.close()


def on_fake(config, fake: FakeDiscord, data_dir: Path, **changes):
    """``config`` pointed at the fake Discord (reactions on, quick start and status edits), its data in
    ``data_dir``; ``changes``: other sections replaced whole."""
    discord_settings = config.discord.model_copy(update={
        "api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url, "guild_ready_timeout": 0.05,
        "message_content_intent": True, "status_edit_interval": 0.1})
    bot_settings = config.bot.model_copy(update={"data_dir": str(data_dir)})
    return config.model_copy(update={"discord": discord_settings, "bot": bot_settings, **changes})


@pytest.fixture(scope="module")
def config(tiny_config, fake, tmp_path_factory):
    return on_fake(tiny_config, fake, tmp_path_factory.mktemp("discord-data"))


@contextlib.asynccontextmanager
async def running_front_end(config, queue, token=TOKEN, flow=None):
    front_end = DiscordFrontEnd(config, flow or RequestFlow(queue, config), token)
    await asyncio.wait_for(front_end.start(), 30)
    try:
        yield front_end
    finally:
        await asyncio.wait_for(front_end.close(), 30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front_end(config, queue, fake):
    async with running_front_end(config, queue) as front_end:
        yield front_end


class LoggedErrors(logging.Handler):
    """The errors logged by the packages ``roots`` names (a test fails on any: a task nobody awaits dies silently)."""

    def __init__(self, roots: tuple[str, ...] = ("discord", "bot", "cogs", "tests")) -> None:
        super().__init__(logging.ERROR)
        self.roots = roots
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in self.roots:
            self.records.append(record)


@pytest_asyncio.fixture(loop_scope="module")
async def bot(front_end, fake) -> ClayBot:
    """The running bot, with its server's settings back to the defaults; fails the test on any logged error."""
    await front_end.store.clear(guild_scope(fake.guild_id))
    front_end.bot.token_margin = 60.0
    errors = LoggedErrors()
    logging.getLogger().addHandler(errors)
    try:
        yield front_end.bot
    finally:
        logging.getLogger().removeHandler(errors)
    # A task nobody awaits dies silently: the gateway task must still run, and nothing may have been logged.
    assert not front_end.connection.done(), front_end.connection
    assert not errors.records, [errors.format(r) for r in errors.records]


# -- helpers ----------------------------------------------------------------------------------------------------------


def result_of(interaction: FakeInteraction):
    """Matches the edit of an interaction's original response that carries the picture."""
    return lambda call: (call.method == "PATCH" and call.path.endswith(f"/{interaction.token}/messages/@original")
                         and bool(call.files))


def fields(call: Call) -> dict[str, str]:
    return {field["name"]: field["value"] for field in call.json["embeds"][0]["fields"]}


def labels(call: Call) -> list[str]:
    return [button["label"] for row in call.json["components"] for button in row["components"]]


def picture(call: Call) -> tuple[str, Image.Image]:
    name = next(name for name in call.files if name.startswith("clay."))
    image = Image.open(io.BytesIO(call.files[name]))
    image.load()
    return name, image


def assert_photo_shape(image: Image.Image) -> None:
    assert abs(image.width / image.height - 128 / 96) < 0.03, image.size


def index_of(fake: FakeDiscord, predicate) -> int:
    return next(i for i, call in enumerate(fake.calls) if predicate(call))


async def clay(fake: FakeDiscord, user: dict, **options) -> tuple[FakeInteraction, Call]:
    """/clay with the photo; the interaction and the edit that brought the picture."""
    interaction = await fake.slash("clay", user, image=fake.attachment(PHOTO), **options)
    return interaction, await fake.wait_for(result_of(interaction), timeout=JOB)


async def barrier(fake: FakeDiscord, bot: ClayBot) -> None:
    """Wait until the bot has handled the events sent so far (an interaction's answer comes after them)."""
    interaction = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD)
    await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    await asyncio.sleep(0.05)


def replies_to(fake: FakeDiscord, message: dict) -> list[Call]:
    return [call for call in fake.calls if call.method == "POST" and call.path.endswith("/messages")
            and str((call.json or {}).get("message_reference", {}).get("message_id")) == message["id"]]


async def reaction_answer(fake: FakeDiscord, message: dict) -> tuple[Call, Call]:
    """The reply the bot posted to a message someone reacted to, and the edit that brought the picture."""
    status = await fake.wait_for(lambda call: bool(replies_to(fake, message)), timeout=10)
    status = replies_to(fake, message)[0]
    answer = next(m for m in fake.messages.values()
                  if str(m.get("message_reference", {}).get("message_id")) == message["id"])
    final = await fake.wait_for(lambda call: call.method == "PATCH" and bool(call.files)
                                and call.path == f"/channels/{answer['channel_id']}/messages/{answer['id']}",
                                timeout=JOB)
    return status, final


# -- /clay ------------------------------------------------------------------------------------------------------------


async def test_slash_command_defers_at_once_then_shows_progress_and_the_picture_with_buttons(bot, fake):
    photo = fake.attachment(PHOTO)
    interaction = await fake.slash("clay", fake.alice, image=photo, strength=0.6, seed=42)
    final = await fake.wait_for(result_of(interaction), timeout=JOB)

    calls = fake.calls_of(interaction)
    assert calls[0].path.endswith("/callback") and calls[0].json["type"] == 5  # deferred, "thinking"
    assert calls[0].at - interaction.sent_at < 3.0  # Discord's limit for the acknowledgement
    download = index_of(fake, lambda call: call.path == photo["url"].removeprefix(fake.base))
    assert index_of(fake, lambda call: call is calls[0]) < download  # acknowledged before the photo was even fetched
    statuses = [call.json["content"] for call in calls if call.method == "PATCH" and not call.files]
    # Heard at once, before the download; the queue position then shows unless the job started before the chat's
    # next turn for an edit (the pacer sends the latest line, never a stale one).
    assert statuses[0] == FETCHING, statuses
    assert any("oven" in text or "Queued" in text or text.startswith("Sculpting") for text in statuses[1:2]), statuses
    assert any(text.startswith("Sculpting") for text in statuses), statuses
    assert final is calls[-1]

    name, image = picture(final)
    assert name == "clay.png" and image.format == "PNG"
    assert_photo_shape(image)
    assert final.json["content"] is None  # the status line is gone
    assert fields(final) == {"Style": "clay", "Strength": "0.6", "Seed": "42"}
    embed = final.json["embeds"][0]
    assert embed["image"]["url"] == "attachment://clay.png"
    assert embed["thumbnail"]["url"] == "attachment://source.jpg" and "source.jpg" in final.files
    assert embed["description"]  # the tags used
    assert labels(final) == BUTTONS
    assert fake.original(interaction)["attachments"][0]["filename"] == "clay.png"


async def test_a_non_image_attachment_is_refused_ephemerally_without_downloading_it(bot, fake):
    document = fake.attachment(b"%PDF-1.4 not a photo", "notes.pdf", "application/pdf")
    interaction = await fake.slash("clay", fake.alice, image=document)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert "not an image" in answer.json["data"]["content"]
    await barrier(fake, bot)
    assert document["url"].removeprefix(fake.base) not in fake.downloads


async def test_an_attachment_over_the_limit_is_refused_ephemerally_without_downloading_it(bot, fake):
    ours = fake.attachment(PHOTO, size=30 * 2**20)  # over bot.max_photo_mb (20)
    theirs = fake.attachment(PHOTO, size=3 * 2**20)  # over the interaction's attachment_size_limit below
    for photo, limit, said in ((ours, 10 * 2**20, "30.0 MB"), (theirs, 2 * 2**20, "up to 2 MB")):
        interaction = await fake.slash("clay", fake.alice, image=photo, size_limit=limit)
        answer = await fake.wait_for(lambda call, i=interaction: call.path.endswith(f"/{i.token}/callback"),
                                     timeout=10)
        assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
        assert said in answer.json["data"]["content"]
    await barrier(fake, bot)
    assert not {ours["url"], theirs["url"]} & {fake.base + path for path in fake.downloads}


async def test_a_corrupt_image_gets_an_ephemeral_answer_and_the_next_request_works(bot, fake):
    broken = fake.attachment(b"\x89PNG\r\n\x1a\n this is not really a PNG", "photo.png", "image/png")
    interaction = await fake.slash("clay", fake.alice, image=broken)
    follow_up = await fake.wait_for(lambda call: call.method == "POST" and call.path.endswith(interaction.token),
                                    timeout=JOB)
    assert follow_up.json["flags"] == EPHEMERAL and "not an image I can read" in follow_up.json["content"]
    await fake.wait_for(lambda call: call.method == "DELETE" and interaction.token in call.path, timeout=10)
    ephemeral = [m for m in fake.messages.values() if "not an image I can read" in m["content"]]
    assert ephemeral and all(m["flags"] & EPHEMERAL for m in ephemeral)  # nobody else saw it
    assert fake.original(interaction) is None  # the "thinking" message is gone

    _, final = await clay(fake, fake.bob, seed=7)
    assert fields(final)["Seed"] == "7"


async def test_an_explicit_photo_is_refused_except_in_an_age_restricted_channel(bot, fake):
    red = photo_bytes((64, 64), color=(255, 0, 0), fmt="PNG")  # the tiny tagger rates pure red "explicit"
    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(red, "red.png", "image/png"))
    follow_up = await fake.wait_for(lambda call: call.method == "POST" and call.path.endswith(interaction.token),
                                    timeout=JOB)
    assert follow_up.json["content"] == INPUT_REFUSED and follow_up.json["flags"] == EPHEMERAL
    assert not [call for call in fake.calls_of(interaction) if call.files]  # no picture was posted

    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(red, "red.png", "image/png"),
                                   channel_id=fake.nsfw_channel_id)
    name, image = picture(await fake.wait_for(result_of(interaction), timeout=JOB))
    assert name == "clay.png" and image.size == (128, 128)


async def test_a_picture_over_the_upload_limit_is_sent_as_a_smaller_jpeg_or_webp(bot, fake):
    limit = 12_000  # the photo fits; the tiny model's noisy PNG does not
    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), size_limit=limit, seed=3)
    final = await fake.wait_for(result_of(interaction), timeout=JOB)
    name, image = picture(final)
    assert name in ("clay.jpg", "clay.webp") and image.format in ("JPEG", "WEBP")
    assert sum(len(data) for data in final.files.values()) <= limit
    assert_photo_shape(image)
    assert final.json["embeds"][0]["image"]["url"] == f"attachment://{name}"


async def test_a_job_that_outlives_the_interaction_token_answers_in_the_channel(bot, fake):
    bot.token_margin = 15 * 60 + 5  # as if the 15 minutes were already over
    start = len(fake.calls)
    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), seed=11)
    posted = await fake.wait_for(lambda call: call.method == "POST" and call.files
                                 and call.path == f"/channels/{fake.channel_id}/messages", timeout=JOB, after=start)
    assert posted.json["content"].startswith(f"<@{fake.alice['id']}>")
    assert fields(posted)["Seed"] == "11" and labels(posted) == BUTTONS
    assert_photo_shape(picture(posted)[1])
    assert not [call for call in fake.calls_of(interaction) if call.method == "PATCH"]  # no use of the dead token


# -- "Clay it" --------------------------------------------------------------------------------------------------------


async def test_context_menu_on_a_message_with_an_image_attachment_answers_with_the_picture(bot, fake):
    message = fake.post_message(fake.bob, "my cat", attachments=[fake.attachment(PHOTO)])
    interaction = await fake.context_menu("Clay it", message, fake.alice)
    final = await fake.wait_for(result_of(interaction), timeout=JOB)
    calls = fake.calls_of(interaction)
    assert calls[0].json["type"] == 5 and calls[0].at - interaction.sent_at < 3.0
    assert any(call.json["content"].startswith("Sculpting") for call in calls if call.method == "PATCH"
               and not call.files)
    assert fields(final)["Strength"] == "0.5"  # the style's default
    assert labels(final) == BUTTONS
    name, image = picture(final)
    assert name == "clay.png"
    assert_photo_shape(image)


async def test_context_menu_on_a_posted_image_link_uses_its_image_embed(bot, fake):
    embed = fake.image_embed(PHOTO)
    message = fake.post_message(fake.bob, "https://example.com/cat.jpg", embeds=[embed])
    interaction = await fake.context_menu("Clay it", message, fake.alice)
    final = await fake.wait_for(result_of(interaction), timeout=JOB)
    assert embed["thumbnail"]["proxy_url"].removeprefix(fake.base) in fake.downloads  # through Discord's proxy
    assert_photo_shape(picture(final)[1])


async def test_context_menu_on_a_message_without_an_image_is_answered_ephemerally(bot, fake):
    message = fake.post_message(fake.bob, "no pictures here")
    interaction = await fake.context_menu("Clay it", message, fake.alice)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert "no image" in answer.json["data"]["content"]


# -- buttons ----------------------------------------------------------------------------------------------------------


async def test_again_makes_a_new_picture_from_the_same_photo_with_another_seed(bot, fake):
    first, made = await clay(fake, fake.alice, strength=0.5, seed=100)
    press = await fake.press(first.original, "Again", fake.bob)
    again = await fake.wait_for(result_of(press), timeout=JOB)
    assert fake.calls_of(press)[0].json["type"] == 5  # a new "thinking" message, the first picture stays
    assert fields(again)["Strength"] == "0.5" and fields(again)["Seed"] != "100"
    assert first.original in fake.messages
    source = next(a for a in fake.messages[first.original]["attachments"] if a["filename"] == "source.jpg")
    assert source["url"].removeprefix(fake.base) in fake.downloads  # the photo came from the result message
    assert_photo_shape(picture(again)[1])
    assert fake.original(press)["embeds"][0]["footer"]["text"] == "for bob"  # bob's picture now


async def test_stronger_and_weaker_change_the_strength_by_a_tenth_and_keep_the_seed(bot, fake):
    first, _ = await clay(fake, fake.alice, strength=0.5, seed=200)
    for label, strength in (("Stronger", "0.6"), ("Weaker", "0.4")):
        press = await fake.press(first.original, label, fake.alice)
        answer = await fake.wait_for(result_of(press), timeout=JOB)
        assert fields(answer) == {"Style": "clay", "Strength": strength, "Seed": "200"}
        assert labels(answer) == BUTTONS


async def test_only_the_requester_can_delete_a_picture(bot, fake):
    first, _ = await clay(fake, fake.alice, seed=300)
    refused = await fake.press(first.original, "Delete", fake.bob)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{refused.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert "Only the person who asked" in answer.json["data"]["content"]
    assert first.original in fake.messages

    allowed = await fake.press(first.original, "Delete", fake.alice)
    await fake.wait_for(lambda call: call.method == "DELETE" and allowed.token in call.path, timeout=10)
    assert fake.calls_of(allowed)[0].json["type"] == 6  # acknowledged without a new message
    assert first.original not in fake.messages


def rewrite_button(fake: FakeDiscord, message_id: int, label: str, custom_id: str) -> None:
    """Give a stored result's button other data: as an older version of the bot wrote it, or as a stale one."""
    for row in fake.messages[message_id]["components"]:
        for button in row["components"]:
            if button.get("label") == label:
                button["custom_id"] = custom_id


async def test_a_fast_pictures_buttons_stay_fast_and_the_toggle_switches_both_ways(bot, fake):
    first, made = await clay(fake, fake.alice, strength=0.5, seed=600, speed="fast")
    assert fields(made) == {"Style": "clay", "Strength": "0.5", "Seed": "600", "Speed": "fast"}
    assert labels(made) == FAST_BUTTONS

    again = await fake.press(first.original, "Again", fake.bob)
    answer = await fake.wait_for(result_of(again), timeout=JOB)
    assert fields(answer)["Speed"] == "fast" and fields(answer)["Seed"] != "600"  # made with the picture's preset
    weaker = await fake.press(first.original, "Weaker", fake.alice)
    answer = await fake.wait_for(result_of(weaker), timeout=JOB)
    assert fields(answer) == {"Style": "clay", "Strength": "0.4", "Seed": "600", "Speed": "fast"}

    best = await fake.press(first.original, "Best", fake.alice)
    answer = await fake.wait_for(result_of(best), timeout=JOB)
    assert fields(answer) == {"Style": "clay", "Strength": "0.5", "Seed": "600"}  # same picture, default preset
    assert labels(answer) == BUTTONS
    assert_photo_shape(picture(answer)[1])

    fast = await fake.press(best.original, "Fast", fake.alice)
    answer = await fake.wait_for(result_of(fast), timeout=JOB)
    assert fields(answer) == {"Style": "clay", "Strength": "0.5", "Seed": "600", "Speed": "fast"}
    assert labels(answer) == FAST_BUTTONS


async def test_old_buttons_without_a_speed_still_work_with_the_styles_preset(bot, fake):
    first, _ = await clay(fake, fake.alice, strength=0.5, seed=700, speed="fast")
    # as the bot wrote its buttons before speed presets: no speed part
    rewrite_button(fake, first.original, "Stronger", f"clay:stronger:{fake.alice['id']}:clay:0.5:700")
    press = await fake.press(first.original, "Stronger", fake.alice)
    answer = await fake.wait_for(result_of(press), timeout=JOB)
    assert fields(answer) == {"Style": "clay", "Strength": "0.6", "Seed": "700"}  # the style's own: default


@pytest.mark.parametrize("speed, words", [
    ("turbo", ["'turbo'", "no longer have", "default, fast"]),  # a preset taken out of the config since
    ("x" * 55, ["no longer have"]),  # near the 100 characters a custom id allows
    ("FAST", ["'FAST'", "no longer have"]),
])
async def test_a_button_naming_a_speed_the_bot_does_not_have_is_refused_clearly(bot, fake, speed, words):
    first, _ = await clay(fake, fake.alice, strength=0.5, seed=800)
    custom_id = f"clay:again:{fake.alice['id']}:clay:0.5:800:{speed}"
    assert len(custom_id) <= 100
    rewrite_button(fake, first.original, "Again", custom_id)
    downloads = len(fake.downloads)
    press = await fake.press(first.original, "Again", fake.alice)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{press.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert all(w in answer.json["data"]["content"] for w in words), answer.json["data"]["content"]
    _, made = await clay(fake, fake.bob, strength=0.5, seed=801)  # and the next person is served
    assert fields(made)["Seed"] == "801"
    assert len(fake.downloads) == downloads + 1  # only the next person's photo: the press fetched nothing


# -- reactions --------------------------------------------------------------------------------------------------------


async def test_a_reaction_gets_a_reply_to_that_message_mentioning_who_reacted(bot, fake):
    message = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
    await fake.react(message, fake.alice)
    status, final = await reaction_answer(fake, message)
    assert status.json["content"].startswith(f"<@{fake.alice['id']}>")
    assert [str(user) for user in status.json["allowed_mentions"]["users"]] == [fake.alice["id"]]
    assert not status.json["allowed_mentions"]["replied_user"]  # the poster is not pinged
    assert final.json["content"] == f"<@{fake.alice['id']}>"
    assert fields(final)["Strength"] == "0.5" and labels(final) == BUTTONS
    name, image = picture(final)
    assert name == "clay.png"
    assert_photo_shape(image)
    answer = f"/channels/{fake.channel_id}/messages/{final.path.rsplit('/', 1)[1]}"
    progress = [call.json["content"] for call in fake.calls if call.method == "PATCH" and call.path == answer
                and not call.files]
    assert any("Sculpting" in text for text in [status.json["content"], *progress]), progress


async def test_a_restarted_process_answers_a_reaction_in_reply_and_removes_the_old_status_line(bot, front_end, fake):
    from pipeline.core.jobs import Done

    photo_message = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
    stale = fake.post_message(fake.bot_user, "<@1> Queued, #3.")  # what the dead process had left
    done = Done(PHOTO, 128, 96, ["solo"], "claymation style", 9, "clay", 0.5)
    start = len(fake.calls)
    await front_end.deliver(str(fake.channel_id), done, "clay · strength 0.5 · seed 9",
                            {"message_id": int(photo_message["id"]), "status_message_id": int(stale["id"])})
    posted = [call for call in fake.calls[start:] if call.method == "POST" and call.path.endswith("/messages")]
    assert len(posted) == 1 and "clay.png" in posted[0].files
    assert str(posted[0].json["message_reference"]["message_id"]) == photo_message["id"]
    assert int(stale["id"]) not in fake.messages  # deleted


async def test_more_reactions_while_the_picture_is_being_made_start_nothing_more(bot, fake):
    photo = fake.attachment(PHOTO)
    message = fake.post_message(fake.bob, attachments=[photo])
    for user in (fake.alice, fake.bob, fake.admin):
        await fake.react(message, user)
    await reaction_answer(fake, message)
    await barrier(fake, bot)
    assert len(replies_to(fake, message)) == 1
    assert fake.downloads.count(photo["url"].removeprefix(fake.base)) == 1
    # Once it is done, a new reaction is a new request.
    await fake.react(message, fake.admin)
    await fake.wait_for(lambda call: len(replies_to(fake, message)) == 2, timeout=10)


async def test_a_person_over_their_limit_is_told_once_however_often_they_react_again(bot, front_end, config, queue,
                                                                                      fake):
    limits = {"user_per_minute": 1, "user_per_hour": 0, "chat_per_minute": 0, "chat_per_hour": 0, "user_queued": 0}
    limited = config.model_copy(update={"limits": config.limits.model_copy(update=limits)})
    # The same database as the module's bot (as a restarted process would have): the commands are not synced again.
    flow = RequestFlow(queue, limited, store=front_end.store, metrics=Metrics())
    async with running_front_end(limited, queue, flow=flow):
        first = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
        await fake.react(first, fake.alice)
        await reaction_answer(fake, first)
        second = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
        for attempt in range(1, 5):  # she reacts again and again
            await fake.react(second, fake.alice)
            await until(lambda attempt=attempt: _sample(flow.metrics, "claybot_requests_total",
                                                        platform="discord", outcome="rate_limited") == attempt)
        refusals = replies_to(fake, second)
        assert len(refusals) == 1
        assert refusals[0].json["content"].startswith(
            f"<@{fake.alice['id']}> You have asked for 1 picture in the last minute; please ask again in")
        # A slash command's refusal is ephemeral (seen by her alone): it is always given, as the interaction's
        # own reply (admitted before it is deferred).
        asked = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO))
        answer = await fake.wait_for(lambda call: call.path.endswith(f"/{asked.token}/callback"), timeout=JOB)
        assert answer.json["type"] == 4, answer.json
        refusal = answer.json["data"]
        assert refusal["flags"] == EPHEMERAL and "You have asked for 1 picture" in refusal["content"]


async def test_reactions_with_other_emoji_and_on_messages_without_images_are_ignored(bot, fake):
    with_photo = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
    without = fake.post_message(fake.bob, "just text")
    await fake.react(with_photo, fake.alice, "\N{THUMBS UP SIGN}")
    await fake.react(without, fake.alice)
    await barrier(fake, bot)
    assert not replies_to(fake, with_photo) and not replies_to(fake, without)


# -- someone else's photo, and deleted photos ------------------------------------------------------------------------


def buttons_of(message: dict) -> list[str]:
    return [button["label"] for row in message["components"] for button in row["components"]]


async def picture_of_bobs_photo(fake: FakeDiscord, how: str) -> tuple[dict, int]:
    """Bob's photo message, and the picture Alice asked for of it (by reacting, or with "Clay it")."""
    message = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
    if how == "reaction":
        await fake.react(message, fake.alice)
        _, final = await reaction_answer(fake, message)
        return message, int(final.path.rsplit("/", 1)[1])
    interaction = await fake.context_menu("Clay it", message, fake.alice)
    await fake.wait_for(result_of(interaction), timeout=JOB)
    return message, interaction.original


@pytest.mark.parametrize("how", ["reaction", "clay it"])
async def test_the_photos_author_may_delete_a_picture_someone_else_asked_for(bot, fake, how):
    _, result = await picture_of_bobs_photo(fake, how)
    refused = await fake.press(result, "Delete", fake.admin)  # neither asked for it nor posted the photo
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{refused.token}/callback"), timeout=10)
    assert answer.json["data"]["flags"] == EPHEMERAL and "Only the person who asked" in answer.json["data"]["content"]
    assert result in fake.messages

    allowed = await fake.press(result, "Delete", fake.bob)
    await fake.wait_for(lambda call: call.method == "DELETE" and allowed.token in call.path, timeout=10)
    assert result not in fake.messages


@pytest.mark.parametrize("how", ["reaction", "clay it"])
async def test_pictures_of_a_deleted_photo_stop_offering_re_runs(bot, fake, how):
    message, result = await picture_of_bobs_photo(fake, how)
    assert buttons_of(fake.messages[result]) == BUTTONS
    assert "source.jpg" in [a["filename"] for a in fake.messages[result]["attachments"]]
    mark = len(fake.calls)

    await fake.delete_message(message)  # Bob takes his photo down

    await fake.wait_for(lambda call: call.method == "PATCH" and call.path.endswith(f"/messages/{result}"),
                        after=mark, timeout=10)
    left = fake.messages[result]
    assert buttons_of(left) == ["Delete"]  # no Again, Stronger, Weaker, Fast
    assert [a["filename"] for a in left["attachments"]] == ["clay.png"]  # the copy of his photo is gone
    assert "thumbnail" not in left["embeds"][0] and left["embeds"][0]["image"]
    allowed = await fake.press(result, "Delete", fake.bob)  # and he can still remove the picture itself
    await fake.wait_for(lambda call: call.method == "DELETE" and allowed.token in call.path, timeout=10)
    assert result not in fake.messages


async def test_a_re_run_of_a_photo_deleted_unseen_says_the_photo_is_gone(bot, fake):
    message, result = await picture_of_bobs_photo(fake, "reaction")
    del fake.messages[int(message["id"])]  # deleted while claybot was not running: no event ever reached it
    downloads, mark = len(fake.downloads), len(fake.calls)

    press = await fake.press(result, "Again", fake.alice)

    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{press.token}/callback"), timeout=10)
    assert answer.json["data"]["flags"] == EPHEMERAL and "deleted" in answer.json["data"]["content"]
    await fake.wait_for(lambda call: call.method == "PATCH" and call.path.endswith(f"/messages/{result}"),
                        after=mark, timeout=10)
    assert buttons_of(fake.messages[result]) == ["Delete"]
    assert len(fake.downloads) == downloads  # no new picture was started
    assert not [call for call in fake.calls_of(press) if call.files]


async def test_a_picture_sent_after_a_restart_has_the_embed_and_buttons_of_a_live_one(bot, front_end, config, queue,
                                                                                      fake, tmp_path, monkeypatch):
    _, live = await clay(fake, fake.alice, strength=0.6, seed=42)
    # A process that accepted the same request, then died before answering it: its worker never came, and it was
    # killed (its request task cancelled: nothing of it ran on the way down). Its journal is the module's database.
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
    stuck = LocalQueue(config.gpu(), config.queue.model_copy(update={"worker_address": str(tmp_path / "none.sock")}))
    await stuck.start()
    try:
        dying = RequestFlow(stuck, config, store=front_end.store)
        async with running_front_end(config, stuck, flow=dying) as old:
            asked = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), strength=0.6, seed=42)
            await fake.wait_for(lambda call: call.method == "PATCH" and asked.token in call.path
                                and "oven" in ((call.json or {}).get("content") or ""), timeout=JOB)
            for task in list(old.bot.running.tasks):
                task.cancel()
    finally:
        await stuck.close(grace=0)

    restarted = RequestFlow(queue, config, store=front_end.store)
    async with running_front_end(config, queue, flow=restarted) as new:
        mark = len(fake.calls)
        assert await restarted.recover({"discord": new}, await restarted.unanswered()) == 1
        after = await fake.wait_for(lambda call: call.method == "POST" and call.path.endswith("/messages")
                                    and bool(call.files), after=mark, timeout=JOB)
        await asyncio.gather(*restarted.recovering.tasks)
    assert after.json["embeds"] == live.json["embeds"]  # the same embed: fields, tags, picture, copy of the photo
    assert after.json["components"] == live.json["components"]  # the same buttons, carrying the same request
    assert sorted(after.files) == sorted(live.files) == ["clay.png", "source.jpg"]
    assert after.json["content"].startswith(f"<@{fake.alice['id']}>")


# -- /claysettings ----------------------------------------------------------------------------------------------------


async def test_claysettings_is_refused_without_manage_server(bot, fake):
    interaction = await fake.slash("claysettings", fake.alice, reactions=False)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["data"]["flags"] == EPHEMERAL and "Manage Server" in answer.json["data"]["content"]
    assert (await bot.guild_settings(fake.guild_id)).reactions is True
    definition = fake.command("claysettings")
    assert int(definition["default_member_permissions"]) == MANAGE_GUILD  # hidden from the others in Discord


async def test_claysettings_applies_at_once_reactions_emoji_and_strength(bot, fake):
    interaction = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD, reactions=False)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["data"]["flags"] == EPHEMERAL and "Reactions: off" in answer.json["data"]["content"]
    message = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
    await fake.react(message, fake.alice)
    await barrier(fake, bot)
    assert not replies_to(fake, message)  # reactions are off here now

    interaction = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD, reactions=True,
                                   emoji="\N{ARTIST PALETTE}", strength=0.3)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert "Reactions: on (\N{ARTIST PALETTE})" in answer.json["data"]["content"]
    assert "Default strength: 0.3" in answer.json["data"]["content"]
    await fake.react(message, fake.alice)  # the old emoji does nothing
    await fake.react(message, fake.alice, "\N{ARTIST PALETTE}")
    _, final = await reaction_answer(fake, message)
    assert fields(final)["Strength"] == "0.3"
    assert len(replies_to(fake, message)) == 1

    bad = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD, emoji="clay")
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{bad.token}/callback"), timeout=10)
    assert "not an emoji" in answer.json["data"]["content"]
    assert (await bot.guild_settings(fake.guild_id)).emoji == "\N{ARTIST PALETTE}"


async def test_claysettings_channels_limit_where_the_bot_answers(bot, fake):
    interaction = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD,
                                   allow_channel=fake.channel_id)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert f"Answers in: <#{fake.channel_id}>" in answer.json["data"]["content"]

    elsewhere = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)], channel_id=fake.other_channel_id)
    await fake.react(elsewhere, fake.alice)
    refused = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), channel_id=fake.other_channel_id)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{refused.token}/callback"), timeout=10)
    assert answer.json["data"]["flags"] == EPHEMERAL
    assert f"only answer in <#{fake.channel_id}>" in answer.json["data"]["content"]
    await barrier(fake, bot)
    assert not replies_to(fake, elsewhere)

    interaction = await fake.slash("claysettings", fake.admin, permissions=MANAGE_GUILD, all_channels=True)
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert "Answers in: every channel" in answer.json["data"]["content"]
    assert "all-ages only, except in channels marked age-restricted" in answer.json["data"]["content"]


# -- starting, stopping, secrets --------------------------------------------------------------------------------------


async def test_commands_are_registered_once_and_buttons_work_after_a_restart(bot, front_end, config, queue, fake):
    registrations = [call for call in fake.calls if call.method == "PUT" and call.path.endswith("/commands")]
    assert len(registrations) == 1 and front_end.bot.synced is True
    assert {d["name"] for d in registrations[0].json} == {"clay", "Clay it", "claysettings"}
    first, _ = await clay(fake, fake.alice, strength=0.5, seed=400)

    async with running_front_end(config, queue) as restarted:  # a new process, the same data directory
        assert restarted.bot.synced is False
        press = await fake.press(first.original, "Stronger", fake.alice)  # made by the old bot, pressed on the new
        answer = await fake.wait_for(result_of(press), timeout=JOB)
        assert fields(answer)["Strength"] == "0.6" and fields(answer)["Seed"] == "400"
    assert len([call for call in fake.calls if call.method == "PUT" and call.path.endswith("/commands")]) == 1

    test_guild = config.model_copy(update={"discord": config.discord.model_copy(
        update={"test_guild_id": fake.guild_id})})
    async with running_front_end(test_guild, queue) as in_guild:  # changed definitions: registered again
        assert in_guild.bot.synced is True
    put = [call for call in fake.calls if call.method == "PUT"][-1]
    assert put.path == f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands"


async def test_stop_taking_refuses_new_requests_while_running_ones_still_get_their_picture(bot, config, queue, fake):
    async with running_front_end(config, queue) as stopping:
        running = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), seed=500)
        await fake.wait_for(lambda call: call.method == "PATCH" and running.token in call.path, timeout=JOB)
        await stopping.stop_taking()
        late = await fake.slash("clay", fake.bob, image=fake.attachment(PHOTO))
        answer = await fake.wait_for(lambda call: call.path.endswith(f"/{late.token}/callback"), timeout=10)
        assert answer.json["data"]["flags"] == EPHEMERAL and "restarting" in answer.json["data"]["content"]
        final = await fake.wait_for(result_of(running), timeout=JOB)
        assert fields(final)["Seed"] == "500"


async def test_the_token_never_appears_in_the_logs(bot, config, queue, fake, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_front_end(config, queue):
        await clay(fake, fake.alice, seed=600)
    assert caplog.records and "logging in using static token" in caplog.text  # DEBUG logs were captured
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and TOKEN not in str(record.args)
        assert TOKEN.split(".")[-1] not in record.getMessage()
    assert TOKEN not in repr(bot) and TOKEN not in caplog.text


async def test_a_wrong_token_stops_start_with_a_message_naming_the_variable(bot, config, queue, fake):
    with pytest.raises(ClaybotError, match="CLAYBOT_DISCORD_TOKEN") as refused:
        async with running_front_end(config, queue, token="wrong-token"):
            pass
    assert "wrong-token" not in str(refused.value)


async def test_reactions_without_the_message_content_intent_warn_the_operator(bot, config, queue, fake, caplog):
    without = config.model_copy(update={"discord": config.discord.model_copy(update={"message_content_intent": False})})
    caplog.set_level(logging.WARNING, logger="bot.discord_client")
    async with running_front_end(without, queue):
        pass
    assert "message_content_intent is off" in caplog.text
    content = discord.Intents(message_content=True).value
    assert not fake.identify_payloads[-1]["intents"] & content
    assert fake.identify_payloads[0]["intents"] & content  # the module's bot asked for it

    fake.allow_message_content = False  # asked for while the portal has it off: a clear refusal
    try:
        with pytest.raises(ClaybotError, match="MESSAGE CONTENT intent"):
            async with running_front_end(config, queue):
                pass
    finally:
        fake.allow_message_content = True


# -- pieces -----------------------------------------------------------------------------------------------------------


async def test_fit_upload_keeps_a_png_that_fits_and_shrinks_one_that_does_not():
    noisy = Image.effect_noise((256, 192), 64).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    png = buffer.getvalue()
    assert fit_upload(png, len(png)) == (png, "clay.png")
    for limit in (len(png) // 3, 6_000):
        data, name = fit_upload(png, limit)
        image = Image.open(io.BytesIO(data))
        assert len(data) <= limit and name.split(".")[1] in ("jpg", "webp") and image.format in ("JPEG", "WEBP")
        assert abs(image.width / image.height - 256 / 192) < 0.03


async def test_clay_offers_a_style_choice_only_when_there_are_several_styles():
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    one = clay_command(None, ["clay"]).to_dict(tree)
    several = clay_command(None, ["clay", "plasticine"]).to_dict(tree)
    assert [o["name"] for o in one["options"]] == ["image", "strength", "seed", "words"]
    style = several["options"][-2]
    assert style["name"] == "style" and [c["value"] for c in style["choices"]] == ["clay", "plasticine"]
    strength = one["options"][1]
    assert (strength["min_value"], strength["max_value"]) == (0.05, 1.0)  # Discord refuses the rest itself
    assert all(option["description"] for option in one["options"])


async def test_clay_suggests_style_names_as_typed_when_there_are_more_than_discord_lists():
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    styles = [f"clay-{n:02}" for n in range(30)] + ["plasticine"]  # Discord lists 25 choices at most
    many = clay_command(None, styles, ["default", "fast"]).to_dict(tree)
    style, speed = many["options"][-3:-1]
    assert style["name"] == "style" and style["autocomplete"] and "choices" not in style
    assert [c["value"] for c in speed["choices"]] == ["default", "fast"]  # few: still a choice Discord checks
    assert [c.value for c in await suggest(styles)(None, "PLAST")] == ["plasticine"]
    assert len(await suggest(styles)(None, "")) == 25


async def test_reaction_emoji_settings_accept_emoji_and_refuse_words():
    assert parse_emoji(" \N{AMPHORA} ") == "\N{AMPHORA}"
    assert parse_emoji("<:clay:123456789012345678>") == "<:clay:123456789012345678>"
    heart = "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"
    assert parse_emoji(heart) == heart
    for word in ("clay", "", "🏺 and more words"):
        with pytest.raises(UserError, match="not an emoji"):
            parse_emoji(word)
