"""The admin feature: /claysettings, for members with Manage Server; stored in SQLite, applied at once."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_client import DISCORD_GUILD, GuildSettings
from bot.options import UserError
from pipeline.core.jobs import MAX_STRENGTH, MIN_STRENGTH

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)

Strength = app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH]


def parse_emoji(text: str) -> str:
    """A reaction emoji as settings keep it: a Unicode emoji, or a custom one as ``<:name:id>``."""
    text = text.strip()
    if re.fullmatch(r"<a?:\w+:\d+>", text):
        return text
    if 0 < len(text) <= 16 and any(ord(c) >= 0x2000 for c in text) and not any(
            c.isspace() or (c.isascii() and c.isalpha()) for c in text):
        return text
    raise UserError(f"{text[:20]!r} is not an emoji I can watch for: use a Unicode emoji such as 🏺, "
                    f"or pick one of this server's custom emojis.")


def describe(settings: GuildSettings, style_strength: float, *, message_content: bool, sfw_gate: bool) -> str:
    """The server's settings, for the admin."""
    reactions = f"on ({settings.emoji})" if settings.reactions else f"off (emoji {settings.emoji})"
    strength = f"{settings.strength:g}" if settings.strength is not None else f"the style's ({style_strength:g})"
    channels = ", ".join(f"<#{c}>" for c in settings.channels) if settings.channels else "every channel"
    text = f"**claybot here**\nReactions: {reactions}\nDefault strength: {strength}\nAnswers in: {channels}"
    if sfw_gate:
        text += "\nPictures: all-ages only, except in channels marked age-restricted (a Discord channel setting)"
    if settings.reactions and not message_content:
        text += ("\nNote: the bot runs without Discord's Message Content intent, so it cannot see the images of "
                 "messages people react to; \"Clay it\" and /clay work regardless.")
    return text


class Admin(commands.Cog):
    """/claysettings: reactions on/off, the reaction emoji, the default strength, the channels claybot answers in."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot

    @app_commands.command(name="claysettings", description="Show or change how claybot works in this server")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(
        reactions="Make a clay picture when someone reacts to an image with the emoji",
        emoji="The reaction emoji, e.g. 🏺",
        strength="Strength when a request names none (0.05–1)",
        allow_channel="Add a channel where claybot answers (with none listed: every channel)",
        remove_channel="Remove a channel from that list",
        all_channels="Answer in every channel again (empties the list)",
        reset="Back to the defaults first",
    )
    async def claysettings(self, interaction: discord.Interaction, reactions: bool | None = None,
                           emoji: str | None = None, strength: Strength | None = None,
                           allow_channel: discord.TextChannel | None = None,
                           remove_channel: discord.TextChannel | None = None, all_channels: bool | None = None,
                           reset: bool | None = None) -> None:
        """Every option is optional: with none, it shows the settings."""
        guild_id = interaction.guild_id
        assert guild_id is not None  # guild_only, and has_permissions fails in a DM (its permissions are empty)
        store = self.bot.store
        emoji = parse_emoji(emoji) if emoji is not None else None  # refuse before changing anything
        if reset:
            await DISCORD_GUILD.reset(store, guild_id)
        if reactions is not None:
            await DISCORD_GUILD.set(store, guild_id, "reactions", reactions)
        if emoji is not None:
            await DISCORD_GUILD.set(store, guild_id, "reaction_emoji", emoji)
        if strength is not None:
            await DISCORD_GUILD.set(store, guild_id, "default_strength", float(strength))
        channels = [int(c) for c in (await DISCORD_GUILD.read(store, guild_id, self.bot.config))["channels"]]
        if all_channels:
            channels = []
        if allow_channel is not None and allow_channel.id not in channels:
            channels.append(allow_channel.id)
        if remove_channel is not None and remove_channel.id in channels:
            channels.remove(remove_channel.id)
        await DISCORD_GUILD.set(store, guild_id, "channels", channels or None)
        settings = await self.bot.guild_settings(interaction.guild_id)
        changed = [name for name, value in (("reactions", reactions), ("emoji", emoji), ("strength", strength),
                                            ("allow_channel", allow_channel), ("remove_channel", remove_channel),
                                            ("all_channels", all_channels), ("reset", reset)) if value is not None]
        if changed:
            logger.info("discord: guild %s settings changed by user %s: %s", interaction.guild_id,
                        interaction.user.id, ", ".join(changed))
        style = self.bot.config.styles[self.bot.config.pipeline.default_style]
        text = describe(settings, style.default_strength, message_content=self.bot.intents.message_content,
                        sfw_gate=self.bot.config.safety.limit(nsfw=False) is not None)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Admin(bot))
