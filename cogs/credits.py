"""The credits feature (loaded only with [credits] enabled): /balance, purchases through Discord's premium buttons
(ENTITLEMENT_CREATE), and the purchases made while the bot was down, settled at start (bot/discord_credits.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_credits import Entitlements, account_of, balance_line, premium_view

if TYPE_CHECKING:
    from bot.credits import Credits
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)


class CreditsCog(commands.Cog, name="Credits"):
    """/balance and the premium purchases."""

    def __init__(self, bot: ClayBot, credits: Credits) -> None:
        self.bot, self.credits = bot, credits
        self.entitlements = Entitlements(bot, credits)

    async def cog_load(self) -> None:
        await self.entitlements.reconcile()  # the bot is logged in: its application id is known

    @app_commands.command(name="balance", description="How many credits you have for pictures and clips")
    async def balance(self, interaction: discord.Interaction) -> None:
        balance = await self.credits.balance(account_of(interaction.user.id))
        view = premium_view(self.credits.settings.packs)
        extra: dict[str, Any] = {"view": view} if view is not None else {}  # the packs' premium buttons
        await interaction.response.send_message(balance_line(balance), ephemeral=True, **extra)

    @commands.Cog.listener()
    async def on_entitlement_create(self, entitlement: discord.Entitlement) -> None:
        try:
            await self.entitlements.settle(entitlement)
        except Exception:  # settled again at the next start
            logger.exception("discord: could not credit entitlement %s", entitlement.id)


async def setup(bot: ClayBot) -> None:
    credits = bot.flow.credits
    if credits is None:  # credits off: no /balance, and purchases are nobody's business
        return
    await bot.add_cog(CreditsCog(bot, credits))
