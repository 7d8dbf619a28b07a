"""The reactions feature: the server's emoji on a message with an image → a reply with its clay picture."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.discord_client import emoji_key

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)


class Reactions(commands.Cog):
    """Watches reactions in servers; one job per message at a time, however many people react."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot
        self.running: set[int] = set()  # ids of messages whose picture is being made

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        member = event.member
        if event.guild_id is None or member is None or member.bot:
            return
        settings = await self.bot.guild_settings(event.guild_id)
        if not settings.reactions or emoji_key(str(event.emoji)) != emoji_key(settings.emoji):
            return
        channel = self.bot.get_channel(event.channel_id) or self.bot.get_partial_messageable(
            event.channel_id, guild_id=event.guild_id)
        if not settings.allows(channel):
            logger.info("discord: reaction in channel %s, where this server does not let me answer", event.channel_id)
            return
        if event.message_id in self.running:  # someone else's reaction already started this picture
            return
        self.running.add(event.message_id)
        try:
            if not isinstance(channel, discord.abc.Messageable):  # a category or forum: no message of ours there
                return
            message = await channel.fetch_message(event.message_id)
            await self.bot.serve_reaction(message, member, settings)
        except discord.HTTPException as err:
            logger.warning("discord: could not answer a reaction on message %s: %s", event.message_id, err)
        finally:
            self.running.discard(event.message_id)


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Reactions(bot))
