"""The clay feature: the /clay slash command and the "Clay it" message context menu."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_photos import DiscordImage, find_photo
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)

Strength = app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH]
Seed = app_commands.Range[int, 0, MAX_SEED]

DESCRIPTIONS = {
    "image": "The photo to turn into clay",
    "strength": "How much to change it: 0.05 keeps the photo, 1 ignores it; 0.4–0.6 keeps the layout",
    "seed": "Makes the result reproducible; default: random",
    "style": "The look to give it",
    "speed": "fast: a few-step preset, seconds instead of a minute; default: the full-quality run",
}


class Clay(commands.Cog):
    """/clay and "Clay it": each defers at once, then shows progress and the picture with its buttons."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot
        self.clay_command = clay_command(self, sorted(bot.config.styles), bot.config.speed_names())
        self.clay_it_menu = app_commands.ContextMenu(name="Clay it", callback=self.clay_it)
        bot.tree.add_command(self.clay_command)
        bot.tree.add_command(self.clay_it_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.clay_command.name)
        self.bot.tree.remove_command(self.clay_it_menu.name, type=self.clay_it_menu.type)

    async def clay(self, interaction: discord.Interaction, image: discord.Attachment, *, strength: float | None,
                   seed: int | None, style: str | None, speed: str | None = None) -> None:
        """/clay image:<attachment> [strength] [seed] [style] [speed]."""
        await self.bot.serve(interaction, DiscordImage.from_attachment(image), seed=seed, style=style,
                             options={"strength": strength, "speed": speed})

    async def clay_it(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu on a message: its first image, at the server's default strength."""
        photo = find_photo(message, self.bot.session, self.bot.flow.max_bytes(interaction.filesize_limit))
        await self.bot.serve(interaction, photo)


def clay_command(cog: Clay, styles: list[str], speeds: Sequence[str] = ("default",)) -> app_commands.Command:
    """/clay, with a ``style`` choice only when the config has several styles, and a ``speed`` choice only when it
    has [speed.*] presets beside the default."""
    description = "Turn a photo into a claymation picture"

    @app_commands.describe(image=DESCRIPTIONS["image"], strength=DESCRIPTIONS["strength"], seed=DESCRIPTIONS["seed"])
    async def clay(interaction: discord.Interaction, image: discord.Attachment, strength: Strength | None = None,
                   seed: Seed | None = None) -> None:
        await cog.clay(interaction, image, strength=strength, seed=seed, style=None)

    @app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items() if k != "speed"})
    @app_commands.choices(style=[app_commands.Choice(name=name, value=name) for name in styles])
    async def clay_in_style(interaction: discord.Interaction, image: discord.Attachment,
                            strength: Strength | None = None, seed: Seed | None = None,
                            style: str | None = None) -> None:
        await cog.clay(interaction, image, strength=strength, seed=seed, style=style)

    speed_choices = [app_commands.Choice(name=name, value=name) for name in speeds]

    @app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items() if k != "style"})
    @app_commands.choices(speed=speed_choices)
    async def clay_at_speed(interaction: discord.Interaction, image: discord.Attachment,
                            strength: Strength | None = None, seed: Seed | None = None,
                            speed: str | None = None) -> None:
        await cog.clay(interaction, image, strength=strength, seed=seed, style=None, speed=speed)

    @app_commands.describe(**DESCRIPTIONS)
    @app_commands.choices(style=[app_commands.Choice(name=name, value=name) for name in styles], speed=speed_choices)
    async def clay_in_style_at_speed(interaction: discord.Interaction, image: discord.Attachment,
                                     strength: Strength | None = None, seed: Seed | None = None,
                                     style: str | None = None, speed: str | None = None) -> None:
        await cog.clay(interaction, image, strength=strength, seed=seed, style=style, speed=speed)

    callbacks = {(False, False): clay, (True, False): clay_in_style, (False, True): clay_at_speed,
                 (True, True): clay_in_style_at_speed}
    return app_commands.Command(name="clay", description=description,
                                callback=callbacks[len(styles) > 1, len(speeds) > 1])


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Clay(bot))
