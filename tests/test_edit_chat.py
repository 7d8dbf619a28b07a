"""The second engine and a person's own words, end to end on both platforms: the unmodified bot (the real
python-telegram-bot and discord.py clients against the fake servers, the real queue and worker) answers a likeness
request made by the tiny FLUX.2 [klein] model, with Again, 🎨 and Animate and without Stronger/Weaker; Again and 🎨
keep the words; words too long or not plain text get a clear line and nothing reaches the queue. One worker for the
module: the tiny SDXL and the tiny klein (loaded on its first job)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from bot.cli import ROOT_CONFIG, tiny_config_text
from bot.config import load_config
from bot.telegram.buttons import ANIMATE_LABEL, MAX_CALLBACK_DATA
from pipeline.core.words import MAX_WORDS
from pipeline.gpu.tiny_edit import write_tiny_edit_model
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests import test_discord
from tests.fake_discord import EPHEMERAL
from tests.test_discord import PHOTO, fields, labels, on_fake, result_of
from tests.test_telegram import ALICE, ALICE_CHAT
from tests.test_telegram_animate import started

pytestmark = pytest.mark.asyncio(loop_scope="module")

KNIGHT = "as a knight in armour"

# test_discord's fake Discord and running bot (pytest finds fixtures by name); `config` and `queue_gpu` are this
# module's own, `front_end` test_discord's on this module's config.
fake = test_discord.fake
bot = test_discord.bot
front_end = test_discord.front_end


@pytest.fixture(scope="module")
def base_config(tiny_models, tmp_path_factory):
    """The repository's config on the tiny models: its likeness style made by the tiny klein, clips by the tiny
    Wan (what `claybot tiny-models` writes)."""
    folder = tmp_path_factory.mktemp("edit-chat")
    edit = write_tiny_edit_model(folder / "edit")
    video = write_tiny_video_models(folder / "video")
    path = folder / "config.toml"
    path.write_text(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny_models, video, edit),
                    encoding="utf-8")
    config = load_config(path)
    assert set(config.styles) == {"clay", "likeness"} and config.animate.enabled
    return config.model_copy(update={"animate": config.animate.model_copy(update={"max_seconds": 16.0})})


@pytest.fixture(scope="module")
def config(base_config, fake, tmp_path_factory):
    """Pointed at the fake Discord; no limits per server (every test here asks in the same one)."""
    limits = base_config.limits.model_copy(update={"chat_per_minute": 0, "chat_per_hour": 0, "user_per_minute": 0,
                                                   "user_per_hour": 0, "user_queued": 0})
    return on_fake(base_config, fake, tmp_path_factory.mktemp("edit-data"), limits=limits)


@pytest.fixture(scope="module")
def queue_gpu(config):
    """The worker makes pictures only: the front ends offer 🎬 (clips are on in their config), no test here asks
    for a clip, and loading the tiny Wan would only cost the suite time."""
    gpu = config.gpu()
    return gpu.model_copy(update={"animate": gpu.animate.model_copy(update={"enabled": False})})


@pytest_asyncio.fixture(loop_scope="module")
async def telegram(config, queue, tmp_path):
    async with started(config, queue, tmp_path) as running:
        yield running


def keyboard(answer) -> list[list[str]]:
    return [[button["text"] for button in row] for row in answer.params["reply_markup"]["inline_keyboard"]]


async def test_telegram_answers_clay_likeness_with_words_again_keeps_them_and_no_strength_buttons(telegram):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, PHOTO, caption=f"/clay likeness {KNIGHT}")
    answer = await telegram.picture_for(photo, timeout=120)
    caption = answer.params["caption"]
    head, words = caption.split("\n")[:2]
    assert head.startswith("likeness · seed ") and "strength" not in head
    assert words == f"“{KNIGHT}”"
    # no 💪 / 🪶 / ⚡: the edit engine has no strength; 🎨 remakes it in the other style
    assert keyboard(answer) == [["🎲 Again", "🎨 Clay"], [ANIMATE_LABEL]]
    rows = answer.params["reply_markup"]["inline_keyboard"]
    assert all(len(b["callback_data"].encode()) <= MAX_CALLBACK_DATA for row in rows for b in row)

    mark = len(telegram.fake.calls)
    await telegram.fake.press(ALICE, answer.result, rows[0][0]["callback_data"])
    again = await telegram.picture_for(photo, after=mark, timeout=120)
    again_head, again_words = again.params["caption"].split("\n")[:2]
    assert again_words == f"“{KNIGHT}”"  # Again keeps the person's words
    assert again_head.startswith("likeness · seed ") and again_head != head  # a new seed

    # 🎨 Clay: the same photo and words by the SDXL engine, with its strength buttons and the switch back
    mark = len(telegram.fake.calls)
    await telegram.fake.press(ALICE, again.result, rows[0][1]["callback_data"])
    clay = await telegram.picture_for(photo, after=mark, timeout=120)
    clay_head, clay_words = clay.params["caption"].split("\n")[:2]
    assert clay_head.startswith("clay · strength 0.5 · seed ") and clay_words == f"“{KNIGHT}”"
    assert keyboard(clay)[0] == ["🎲 Again", "💪 Stronger", "🪶 Weaker", "⚡ Fast", "🎨 Likeness"]

    # the SDXL style takes words from a caption too
    mark = len(telegram.fake.calls)
    snowy = await telegram.fake.send_photo(ALICE_CHAT, ALICE, PHOTO, caption="/clay 0.6 in a snowy street")
    answer = await telegram.picture_for(snowy, after=mark, timeout=120)
    lines = answer.params["caption"].split("\n")
    assert lines[0].startswith("clay · strength 0.6 · seed ") and lines[1] == "“in a snowy street”"


@pytest.mark.parametrize(("words", "expected"), [
    ("as a knight " * 30, f"at most {MAX_WORDS}"),
    ("as a knight\u202e", "invisible or control character (U+202E)"),
    ("0.6 as a knight", "The likeness style works by instruction and has no strength"),
])
async def test_telegram_words_too_long_or_not_plain_text_get_a_clear_line_and_nothing_is_queued(telegram, words,
                                                                                               expected):
    photo = await telegram.fake.send_photo(ALICE_CHAT, ALICE, PHOTO, caption=f"/clay likeness {words}")
    answer = await telegram.text_for(photo)
    assert expected in answer.params["text"]
    await telegram.settled()
    assert not telegram.fake.calls_to("getFile")  # refused before the photo was even fetched


async def test_discord_clay_style_likeness_with_words_again_keeps_them_and_no_strength_buttons(bot, fake):
    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), style="likeness", words=KNIGHT)
    made = await fake.wait_for(result_of(interaction), timeout=120)
    assert fields(made)["Style"] == "likeness" and "Strength" not in fields(made)
    assert fields(made)["Your words"] == f"“{KNIGHT}”"
    assert labels(made) == ["Again", "Delete", "Clay", "Animate"]  # no Stronger / Weaker / Fast; 🎨 Clay

    press = await fake.press(interaction.original, "Again", fake.alice)
    again = await fake.wait_for(result_of(press), timeout=120)
    assert fields(again)["Your words"] == f"“{KNIGHT}”" and fields(again)["Seed"] != fields(made)["Seed"]

    press = await fake.press(interaction.original, "Clay", fake.alice)
    clay = await fake.wait_for(result_of(press), timeout=120)
    assert fields(clay)["Style"] == "clay" and fields(clay)["Strength"] == "0.5"
    assert fields(clay)["Your words"] == f"“{KNIGHT}”"
    assert labels(clay) == ["Again", "Stronger", "Weaker", "Delete", "Fast", "Likeness", "Animate"]


async def test_discord_words_past_the_bound_from_a_forged_client_are_refused_and_nothing_is_queued(bot, fake):
    downloads = len(fake.downloads)
    interaction = await fake.slash("clay", fake.alice, image=fake.attachment(PHOTO), words="x" * (MAX_WORDS + 1))
    answer = await fake.wait_for(lambda call: call.path.endswith(f"/{interaction.token}/callback"), timeout=10)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert f"at most {MAX_WORDS}" in answer.json["data"]["content"]
    assert len(fake.downloads) == downloads  # the photo was never fetched
