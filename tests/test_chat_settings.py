"""Per-chat settings are declared once with their types and defaults; readers get typed values, never a default
merged by hand, and a damaged stored value reads as its default."""

from __future__ import annotations

import pytest

from bot.chat_settings import ChatSettings, Setting
from bot.discord_client import DISCORD_GUILD
from bot.store import ClaybotDatabase


async def test_a_chat_reads_its_declared_defaults_until_it_sets_them(tmp_path, tiny_config):
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        fresh = await DISCORD_GUILD.read(store, 1, tiny_config)
        assert fresh == {"reactions": tiny_config.discord.reactions, "default_strength": None, "channels": [],
                         "reaction_emoji": tiny_config.discord.reaction_emoji}
        await DISCORD_GUILD.set(store, 1, "default_strength", 0.7)
        await DISCORD_GUILD.set(store, 1, "channels", [5, 6])
        assert (await DISCORD_GUILD.read(store, 1, tiny_config))["channels"] == [5, 6]
        assert (await DISCORD_GUILD.read(store, 2, tiny_config)) == fresh  # another server: its own
        await DISCORD_GUILD.set(store, 1, "default_strength", None)  # back to the default
        assert (await DISCORD_GUILD.read(store, 1, tiny_config))["default_strength"] is None
        await DISCORD_GUILD.reset(store, 1)
        assert await DISCORD_GUILD.read(store, 1, tiny_config) == fresh


async def test_a_damaged_value_reads_as_its_default_and_undeclared_settings_are_refused(tmp_path):
    chat = ChatSettings("test:chat", nsfw=Setting(bool, False), strength=Setting(float, 0.5))
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        await store.set(chat.scope(9), "nsfw", "yes please")  # written by hand, or by an older version
        await store.set(chat.scope(9), "strength", 1)  # a whole number is a float's
        assert await chat.read(store, 9) == {"nsfw": False, "strength": 1}
        with pytest.raises(KeyError):
            await chat.set(store, 9, "colour", "red")
        with pytest.raises(TypeError):
            await chat.set(store, 9, "nsfw", "on")
    assert await chat.read(None, 9) == {"nsfw": False, "strength": 0.5}  # no database: the defaults
