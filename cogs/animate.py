"""The animate feature: /animate, registered only while [animate] is on.

/animate takes a person's photo: it is made clay first, then that picture is animated, with one answer; it defers at
once, then shows progress and the clip. The "Animate it" message menu is the results feature's (cogs/results.py): on
one of claybot's results it is the 🎬 button, and on a person's photo it does what /animate does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_photos import DiscordImage

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)

# Discord's client keeps the length within this; the config's own longest clip is checked when the command runs
# (a client that skips Discord's check, a config with fewer frames a second).
Seconds = app_commands.Range[float, 0.5, 60.0]
DESCRIPTIONS = {
    "image": "The photo to turn into a clay clip",
    "seconds": "About how long the clip plays; default: the server's usual length",
}


class Animate(commands.Cog):
    """/animate; not registered while clips are off."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot
        self.animate_command = animate_command(self)
        if bot.config.animate.enabled:
            bot.tree.add_command(self.animate_command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.animate_command.name)

    async def animate(self, interaction: discord.Interaction, image: discord.Attachment,
                      seconds: float | None) -> None:
        """/animate image:<attachment> [seconds]: the photo made clay, then animated."""
        await self.bot.serve(interaction, DiscordImage.from_attachment(image), kind="clip",
                             options={"seconds": seconds}, first="picture")



def animate_command(cog: Animate) -> app_commands.Command:
    """/animate image:<attachment> [seconds]."""

    @app_commands.describe(**DESCRIPTIONS)
    async def animate(interaction: discord.Interaction, image: discord.Attachment,
                      seconds: Seconds | None = None) -> None:
        await cog.animate(interaction, image, seconds)

    return app_commands.Command(name="animate", description="Turn a photo into a short claymation clip",
                                callback=animate)


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Animate(bot))
