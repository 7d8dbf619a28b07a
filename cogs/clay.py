"""The clay feature: the /clay slash command and the "Clay it" message context menu."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_photos import DiscordImage, find_photo
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH
from pipeline.core.words import MAX_WORDS

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)

Strength = app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH]
Seed = app_commands.Range[int, 0, MAX_SEED]
Words = app_commands.Range[str, 1, MAX_WORDS]  # Discord's client holds people to it; intake checks again
MAX_CHOICES = 25  # Discord's limit on an option's choices (and on autocomplete suggestions)

DESCRIPTIONS = {
    "image": "The photo to turn into clay",
    "strength": "How much to change it: 0.05 keeps the photo, 1 ignores it; 0.4–0.6 keeps the layout",
    "seed": "Makes the result reproducible; default: random",
    "style": "The look to give it",
    "speed": "fast: a few-step preset, seconds instead of a minute; default: the full-quality run",
    "words": "Your own words to add, e.g. as a knight in armour, in a snowy street",
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
                   seed: int | None, style: str | None, speed: str | None = None, words: str | None = None) -> None:
        """/clay image:<attachment> [strength] [seed] [style] [speed] [words]."""
        await self.bot.serve(interaction, DiscordImage.from_attachment(image), seed=seed, style=style,
                             options={"strength": strength, "speed": speed, "words": words or None})

    async def clay_it(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu on a message: its first image, at the server's default strength."""
        photo = find_photo(message, self.bot.session, self.bot.flow.max_bytes(interaction.filesize_limit))
        await self.bot.serve(interaction, photo)


def clay_command(cog: Clay, styles: list[str], speeds: Sequence[str] = ("default",)) -> app_commands.Command:
    """/clay, one callback: its ``style`` option only when the config has several styles, its ``speed`` option only
    when it has [speed.*] presets beside the default; each a choice of the config's names (Discord checks the pick),
    or, past Discord's 25 choices, names suggested as the person types (the flow refuses a name it does not know)."""
    names = {"style": list(styles), "speed": list(speeds)}
    hidden = {name for name, values in names.items() if len(values) < 2}
    offered = [name for name in names if name not in hidden]

    async def clay(interaction: discord.Interaction, image: discord.Attachment, strength: Strength | None = None,
                   seed: Seed | None = None, style: str | None = None, speed: str | None = None,
                   words: Words | None = None) -> None:
        await cog.clay(interaction, image, strength=strength, seed=seed, style=style, speed=speed, words=words)

    # discord.py reads the options from the callback's signature: the one callback shows only the offered ones
    signature = inspect.signature(clay)
    clay.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in hidden])
    app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items() if k not in hidden})(clay)
    choices = {name: names[name] for name in offered if len(names[name]) <= MAX_CHOICES}
    if choices:
        app_commands.choices(**{name: [app_commands.Choice(name=value, value=value) for value in values]
                                for name, values in choices.items()})(clay)
    suggested = {name: suggest(names[name]) for name in offered if name not in choices}
    if suggested:
        app_commands.autocomplete(**suggested)(clay)
    return app_commands.Command(name="clay", description="Turn a photo into a claymation picture", callback=clay)


Suggestions = Callable[[discord.Interaction, str], Coroutine[Any, Any, list[app_commands.Choice[str]]]]


def suggest(names: list[str]) -> Suggestions:
    """An autocomplete callback: the names that contain what was typed so far (Discord shows 25 at most)."""

    async def complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        typed = current.strip().lower()
        return [app_commands.Choice(name=name, value=name) for name in names if typed in name.lower()][:MAX_CHOICES]

    return complete


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Clay(bot))
