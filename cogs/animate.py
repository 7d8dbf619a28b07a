"""The animate feature: /animate and the "Animate it" message context menu, registered only while [animate] is on.

/animate takes a person's photo: it is made clay first, then that picture is animated, with one answer. "Animate
it" on one of claybot's results animates the picture as it is (the 🎬 button's path, cogs/results.py); on a
person's photo it does what /animate does. Each defers at once, then shows progress and the clip.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_buttons import RESTARTING, RESULTS_COG, state_of
from bot.discord_photos import DiscordImage, find_photo
from bot.options import UserError

if TYPE_CHECKING:
    from bot.discord_client import ClayBot
    from cogs.results import Results

logger = logging.getLogger(__name__)

# Discord's client keeps the length within this; the config's own longest clip is checked when the command runs
# (a client that skips Discord's check, a config with fewer frames a second).
Seconds = app_commands.Range[float, 0.5, 60.0]
DESCRIPTIONS = {
    "image": "The photo to turn into a clay clip",
    "seconds": "About how long the clip plays; default: the server's usual length",
}


class Animate(commands.Cog):
    """/animate and "Animate it"; nothing is registered while clips are off."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot
        self.animate_command = animate_command(self)
        self.animate_it_menu = app_commands.ContextMenu(name="Animate it", callback=self.animate_it)
        if bot.config.animate.enabled:
            bot.tree.add_command(self.animate_command)
            bot.tree.add_command(self.animate_it_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.animate_command.name)
        self.bot.tree.remove_command(self.animate_it_menu.name, type=self.animate_it_menu.type)

    async def animate(self, interaction: discord.Interaction, image: discord.Attachment,
                      seconds: float | None) -> None:
        """/animate image:<attachment> [seconds]: the photo made clay, then animated."""
        await self.bot.serve(interaction, DiscordImage.from_attachment(image), kind="clip",
                             options={"seconds": seconds}, first="picture")

    async def animate_it(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu: a result of claybot's animated as it is; a person's photo made clay first."""
        me = self.bot.user
        state = state_of(message) if me is not None and message.author.id == me.id else None
        if state is not None:
            results: Results | None = self.bot.get_cog(RESULTS_COG)  # type: ignore[assignment]
            if results is None:  # being unloaded: claybot is stopping
                raise UserError(RESTARTING)
            await results.press(interaction, "animate", state, message)
            return
        photo = find_photo(message, self.bot.session, self.bot.flow.max_bytes(interaction.filesize_limit))
        await self.bot.serve(interaction, photo, kind="clip", first="picture")


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
