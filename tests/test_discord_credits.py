"""Credits on Discord end to end: the real discord.py client against the fake Discord (premium buttons, entitlements,
their consumption), the real queue and worker on the tiny models, with ``[credits] enabled = true, free_per_day = 1``.
Each test asserts what a person would see and what Discord would keep."""

from __future__ import annotations

import contextlib
import logging

import pytest

from bot.config import ConfigError, PackSettings
from bot.service import make_flow
from bot.store import ClaybotDatabase, store_path
from tests import test_discord
from tests.conftest import photo_bytes, with_pipeline
from tests.fake_discord import EPHEMERAL, Call, FakeDiscord, FakeInteraction
from tests.test_discord import (
    LoggedErrors,
    on_fake,
    reaction_answer,
    replies_to,
    result_of,
    running_front_end,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHOTO = photo_bytes((128, 96))
JOB = 60.0  # seconds a test waits for one picture at most
SKU = "1088510058284990888"  # the small pack's SKU id (Discord's are snowflakes)
PACK = PackSettings(id="small", credits=10, stars=50, discord_sku=SKU)


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    return with_pipeline(tiny_config.gpu(), steps=4)


# test_discord's fake Discord (pytest finds the fixture by name)
fake = test_discord.fake


def configured(tiny_config, fake, data_dir, packs=(PACK,)):
    """The tiny config on the fake Discord with credits on: one free credit a day, and ``packs`` for sale."""
    credits = tiny_config.credits.model_copy(update={"enabled": True, "free_per_day": 1, "packs": list(packs)})
    return on_fake(tiny_config, fake, data_dir, credits=credits)


@contextlib.asynccontextmanager
async def credits_bot(config, queue):
    """A front end with credits on, as ``claybot run`` builds it, over the config's database (kept across starts)."""
    async with ClaybotDatabase(store_path(config.bot)) as store:
        async with running_front_end(config, queue, flow=make_flow(queue, config, store)) as front_end:
            yield front_end


@pytest.fixture
def no_errors():
    errors = LoggedErrors(("discord", "bot", "cogs"))
    logging.getLogger().addHandler(errors)
    yield
    logging.getLogger().removeHandler(errors)
    assert not errors.records, [errors.format(r) for r in errors.records]


# -- helpers ----------------------------------------------------------------------------------------------------------


def callback_of(interaction: FakeInteraction):
    return lambda call: call.path.endswith(f"/{interaction.token}/callback")


def premium_skus(data: dict) -> list[str]:
    """The SKU ids of a message's premium buttons (style 6), in order."""
    return [button["sku_id"] for row in data.get("components") or [] for button in row["components"]
            if button.get("style") == 6]


async def clay(fake: FakeDiscord, user: dict) -> tuple[FakeInteraction, dict]:
    """/clay a new photo: the interaction, and the photo's attachment."""
    photo = fake.attachment(PHOTO)
    return await fake.slash("clay", user, image=photo), photo


async def balance(fake: FakeDiscord, user: dict) -> dict:
    """/balance: the answer's data (content, flags, components)."""
    interaction = await fake.slash("balance", user)
    answer = await fake.wait_for(callback_of(interaction), timeout=10)
    assert answer.json["type"] == 4
    return answer.json["data"]


def consumes(fake: FakeDiscord, entitlement: dict) -> list[Call]:
    return [call for call in fake.calls if call.method == "POST"
            and call.path == f"/applications/{fake.app_id}/entitlements/{entitlement['id']}/consume"]


async def jobs(store: ClaybotDatabase) -> int:
    return await store.run(lambda db: db.execute("SELECT count(*) FROM jobs").fetchone()[0])


# -- tests ------------------------------------------------------------------------------------------------------------


async def test_out_of_credits_offers_the_packs_and_a_purchase_pays_for_the_next_picture(
        tiny_config, fake, queue, tmp_path, no_errors):
    config = configured(tiny_config, fake, tmp_path)
    async with credits_bot(config, queue) as front_end:
        first, _ = await clay(fake, fake.alice)
        await fake.wait_for(result_of(first), timeout=JOB)  # the free credit of the day

        second, photo = await clay(fake, fake.alice)
        refusal = await fake.wait_for(callback_of(second), timeout=10)
        assert refusal.json["type"] == 4 and refusal.json["data"]["flags"] == EPHEMERAL
        assert "credit" in refusal.json["data"]["content"]
        assert premium_skus(refusal.json["data"]) == [SKU]  # Discord's own purchase button for the pack
        assert photo["url"].removeprefix(fake.base) not in fake.downloads  # refused before anything was fetched
        assert await jobs(front_end.store) == 1  # and nothing entered the queue

        entitlement = await fake.buy(fake.alice, SKU, times=2)  # Discord has delivered ENTITLEMENT_CREATE twice
        await fake.wait_for(lambda call: bool(consumes(fake, entitlement)), timeout=10)
        assert fake.consumed(entitlement)  # so the pack can be bought again
        shown = await balance(fake, fake.alice)
        assert shown["flags"] == EPHEMERAL
        assert "10 credits" in shown["content"], shown["content"]  # the pack's credits, once

        third, _ = await clay(fake, fake.alice)
        await fake.wait_for(result_of(third), timeout=JOB)
        assert "9 credits" in (await balance(fake, fake.alice))["content"]


async def test_a_reaction_out_of_credits_is_answered_with_the_line_and_the_premium_buttons(
        tiny_config, fake, queue, tmp_path, no_errors):
    config = configured(tiny_config, fake, tmp_path)
    async with credits_bot(config, queue):
        first = fake.post_message(fake.bob, attachments=[fake.attachment(PHOTO)])
        await fake.react(first, fake.owner)
        await reaction_answer(fake, first)
        photo = fake.attachment(PHOTO)
        second = fake.post_message(fake.bob, attachments=[photo])
        await fake.react(second, fake.owner)
        await fake.wait_for(lambda call: bool(replies_to(fake, second)), timeout=10)
        refusal = next(m for m in fake.messages.values()
                       if str(m.get("message_reference", {}).get("message_id")) == second["id"])
        assert refusal["content"].startswith(f"<@{fake.owner['id']}> You have no credits left")
        assert premium_skus(refusal) == [SKU]
        assert photo["url"].removeprefix(fake.base) not in fake.downloads


async def test_a_purchase_made_while_the_bot_was_down_is_credited_once_at_the_next_start(
        tiny_config, fake, queue, tmp_path, no_errors):
    config = configured(tiny_config, fake, tmp_path)
    async with credits_bot(config, queue):
        pass
    bought = fake.entitlement(fake.bob, SKU)  # nobody heard of it
    fake.answer_oddly("POST", f"/entitlements/{bought['id']}/consume", 400, {"message": "try later", "code": 0})
    async with credits_bot(config, queue):  # credited; its consume fails
        assert "11 credits" in (await balance(fake, fake.bob))["content"]  # the free one and the pack's 10
        assert len(consumes(fake, bought)) == 1 and not fake.consumed(bought)
    async with credits_bot(config, queue):  # still unconsumed: consumed now, not credited again
        await fake.wait_for(lambda call: len(consumes(fake, bought)) == 2, timeout=10)
        assert fake.consumed(bought)
        assert "11 credits" in (await balance(fake, fake.bob))["content"]
    listed = [call for call in fake.calls if call.method == "GET"
              and call.path == f"/applications/{fake.app_id}/entitlements"]
    assert listed and all(call.query.get("sku_ids") == SKU and call.query.get("exclude_ended") == "1"
                          for call in listed)


async def test_with_no_sku_configured_the_refusal_has_no_button(tiny_config, fake, queue, tmp_path, no_errors):
    config = configured(tiny_config, fake, tmp_path, packs=[PACK.model_copy(update={"discord_sku": ""})])
    async with credits_bot(config, queue):
        first, _ = await clay(fake, fake.admin)
        await fake.wait_for(result_of(first), timeout=JOB)
        second, _ = await clay(fake, fake.admin)
        refusal = await fake.wait_for(callback_of(second), timeout=10)
        assert refusal.json["data"]["flags"] == EPHEMERAL and "credit" in refusal.json["data"]["content"]
        assert not refusal.json["data"].get("components")  # the line alone: Discord users have the free allowance


async def test_a_sku_that_is_not_an_id_is_refused_at_start(tiny_config, fake, queue, tmp_path):
    config = configured(tiny_config, fake, tmp_path, packs=[PACK.model_copy(update={"discord_sku": "small-pack"})])
    with pytest.raises(ConfigError, match="discord_sku must be a SKU id"):
        async with credits_bot(config, queue):
            pass
