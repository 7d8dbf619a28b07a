"""The results feature: what a result's buttons do, and what becomes of results whose photo is deleted.

Again / Stronger / Weaker / Fast-Best make a new picture from the copy of the photo the result carries; 🎬 Animate
makes a clip of the result's picture itself; Delete removes the result (its requester, or the photo's author). The
cog registers the buttons' classes itself (``cog_load``), each press answered by this cog. The "Animate it" message
menu (while [animate] is on) is here too: on a result it is the 🎬 button; on a person's photo it does what /animate
does (made clay first, then animated). When the photo's own message is deleted, its results
stop offering re-runs: their re-run buttons and their copy of the photo are removed (the results this process
posted, at once; any other, when one of its buttons is pressed)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_buttons import UNKNOWN_BUTTON, ResultState, UnknownButton, answered_by, state_of
from bot.discord_photos import SOURCE_NAME, DiscordImage, PhotoMessage, find_photo, picture_of
from bot.discord_render import PHOTO_GONE, photo_of, without_reruns, words_of
from bot.discord_reply import RESULT_EVENT
from bot.options import UserError, button_speed, variant
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH

if TYPE_CHECKING:
    from bot.discord_client import ClayBot

logger = logging.getLogger(__name__)

MAX_PHOTOS = 10_000  # photo messages whose results are remembered (the oldest forgotten first)
MAX_GONE = 10_000  # deleted photo messages remembered
NO_PICTURE = "That message has no clay picture (any more), so I have nothing to animate."


class Results(commands.Cog):
    """Button presses on results, "Animate it", and the results of deleted photos."""

    def __init__(self, bot: ClayBot) -> None:
        self.bot = bot
        self.results: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()  # photo → [(channel, result)]
        self.gone: OrderedDict[int, None] = OrderedDict()  # photo messages known deleted
        # every result's buttons, whenever they were sent; a clay: button none of them is, answered
        self.buttons = (answered_by(self), UnknownButton)
        self.animate_it_menu = app_commands.ContextMenu(name="Animate it", callback=self.animate_it)
        if bot.config.animate.enabled:
            bot.tree.add_command(self.animate_it_menu)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*self.buttons)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*self.buttons)
        self.bot.tree.remove_command(self.animate_it_menu.name, type=self.animate_it_menu.type)

    # -- presses -----------------------------------------------------------------------------------------------------

    async def pressed(self, interaction: discord.Interaction, action: str, state: ResultState) -> None:
        """A press on one of a result's buttons (their ``interaction_check`` has let it through)."""
        try:
            await self.press(interaction, action, state)
        except Exception as err:  # discord.py would only log it; the person gets an answer too
            await self.bot.report(interaction, err)

    async def animate_it(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The "Animate it" menu: a result of claybot's animated as it is; a person's photo made clay first."""
        me = self.bot.user
        state = state_of(message) if me is not None and message.author.id == me.id else None
        if state is not None:
            await self.press(interaction, "animate", state, message)
            return
        photo = find_photo(message, self.bot.session, self.bot.flow.max_bytes(interaction.filesize_limit))
        await self.bot.serve(interaction, photo, kind="clip", first="picture")

    async def press(self, interaction: discord.Interaction, action: str, state: ResultState,
                    message: discord.Message | None = None) -> None:
        """Delete the result, make a new picture from the same photo, or a clip of the picture (``message``: the
        result, when it is not the interaction's own, as for a context menu)."""
        strength_ok = state.strength == 0 or MIN_STRENGTH <= state.strength <= MAX_STRENGTH  # 0: an edit picture
        if not (strength_ok and state.seed <= MAX_SEED):
            raise UserError(UNKNOWN_BUTTON)  # a custom id of the right shape that no result of ours carries
        if action == "delete":  # who may: ResultButton.interaction_check
            await interaction.response.defer()  # for a button, the original response is the button's message
            try:
                await interaction.delete_original_response()
            except discord.NotFound:  # not an interaction's message after all: the bot may delete its own
                if interaction.message is not None:
                    await interaction.message.delete()
            return
        message = message or interaction.message
        if action == "animate":  # the picture itself
            source, missing = (picture_of(message) if message else None), NO_PICTURE
        else:  # the copy of the photo it was made from
            source = next((a for a in message.attachments if a.filename == SOURCE_NAME), None) if message else None
            missing = "I no longer have the photo this picture was made from; please send it again."
        if message is None or source is None:
            raise UserError(missing)
        speed = None if action == "animate" else button_speed(state.speed, self.bot.config.speed_names())
        photo = photo_of(message, state)
        if photo is not None and await self._deleted(photo):
            await interaction.response.send_message(PHOTO_GONE, ephemeral=True)
            await self._strip(message, state)
            return
        if action == "animate":  # the picture as it is, in its style's motion, with its seed
            await self.bot.serve(interaction, DiscordImage.from_attachment(source, photo), seed=state.seed,
                                 style=state.style or None, kind="clip")
            return
        if action == "style":  # the same photo and words in the style the button names, at its own defaults
            strength, seed, speed = None, None, None
        elif state.strength:
            strength, seed = variant(action, state.strength, state.seed)
        elif action == "again":  # a picture its engine made without a strength or presets: only a new seed
            strength, seed, speed = None, None, None
        else:
            raise UserError(UNKNOWN_BUTTON)
        await self.bot.serve(interaction, DiscordImage.from_attachment(source, photo), seed=seed,
                             style=state.style or None,
                             options={"strength": strength, "speed": speed, "words": words_of(message)})

    async def _deleted(self, photo: PhotoMessage) -> bool:
        """Whether the photo's message is gone: known from its deletion, else asked of Discord (the deletion may
        have happened while this process was not running)."""
        if photo.message_id in self.gone:
            return True
        channel = self.bot.get_partial_messageable(photo.channel_id, guild_id=photo.guild_id)
        try:
            await channel.fetch_message(photo.message_id)
        except discord.NotFound:
            self._forget(photo.message_id)
            return True
        except discord.HTTPException as err:  # no access any more, Discord's hiccup: let the person have it
            logger.info("discord: could not check photo message %s: %s", photo.message_id, err)
        return False

    # -- deleted photos ----------------------------------------------------------------------------------------------

    @commands.Cog.listener(f"on_{RESULT_EVENT}")
    async def on_result(self, result: discord.Message | None, photo: PhotoMessage | None) -> None:
        """A result was posted: remember it under its photo's message (a photo already deleted: strip it now)."""
        if result is None or photo is None:
            return
        if photo.message_id in self.gone:
            state = state_of(result)
            if state is not None:
                await self._strip(result, state)
            return
        self.results.setdefault(photo.message_id, []).append((result.channel.id, result.id))
        self.results.move_to_end(photo.message_id)
        while len(self.results) > MAX_PHOTOS:
            self.results.popitem(last=False)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        """A message was deleted: if it was a photo with results, those results make no more pictures of it."""
        results = self.results.get(event.message_id)
        self._forget(event.message_id)
        for channel_id, result_id in results or ():
            channel = self.bot.get_partial_messageable(channel_id, guild_id=event.guild_id)
            try:
                result = await channel.fetch_message(result_id)
                state = state_of(result)
                if state is not None:
                    await self._strip(result, state)
            except discord.HTTPException as err:  # the result was deleted too, or is out of reach
                logger.info("discord: could not tidy result %s of deleted photo %s: %s", result_id,
                            event.message_id, err)
        if results:
            logger.info("discord: photo message %s deleted: %d result(s) no longer offer re-runs", event.message_id,
                        len(results))

    def _forget(self, photo_id: int) -> None:
        """The photo's message is gone."""
        self.results.pop(photo_id, None)
        self.gone[photo_id] = None
        while len(self.gone) > MAX_GONE:
            self.gone.popitem(last=False)

    async def _strip(self, result: discord.Message, state: ResultState) -> None:
        try:
            await without_reruns(result, state)
        except discord.HTTPException as err:
            logger.warning("discord: could not remove the re-runs of result %s: %s", result.id, err)


async def setup(bot: ClayBot) -> None:
    await bot.add_cog(Results(bot))
