"""One Discord request's answers: the flow's ``Reply`` for an interaction and for a reaction (the flow paces the
status edits: bot/pacing.py; the result's look is bot/discord_render.py's)."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import discord

from bot.config import Config, PackSettings
from bot.discord_credits import premium_view
from bot.discord_photos import PhotoMessage
from bot.discord_render import Requester, render
from pipeline.core.jobs import Done

RESULT_EVENT = "clay_result"  # dispatched with (result message, PhotoMessage | None) once a result is posted


class Answering(Protocol):
    """What a reply needs of the bot that makes it (bot/discord_client.py's ClayBot)."""

    @property
    def config(self) -> Config: ...

    @property
    def token_margin(self) -> float:
        """Seconds: answers due later than the interaction token's 15 minutes minus this go to the channel."""

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None: ...

    def get_partial_messageable(self, id: int, *, guild_id: int | None = None,
                                type: discord.ChannelType | None = None) -> discord.PartialMessageable: ...


class _KeepsPhoto:
    """A reply that remembers the downloaded photo: its result message carries it for the buttons."""

    source: bytes | None = None
    photo: PhotoMessage | None = None

    def keep_source(self, read: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[bytes]]:
        """The download, remembering the photo."""
        async def download() -> bytes:
            self.source = await read()
            return self.source
        return download


class InteractionReply(_KeepsPhoto):
    """A request from an interaction: progress and answer in its original response, in the channel once too late."""

    private = True  # its refusals are ephemeral: only the person who asked sees them

    def __init__(self, bot: Answering, interaction: discord.Interaction, photo: PhotoMessage | None = None) -> None:
        self.bot, self.interaction, self.photo = bot, interaction, photo
        self.shown = False  # while nothing is shown, Discord would turn a follow-up into the (public) response

    def token_alive(self) -> bool:
        """Whether the interaction token still has time for an answer (15 minutes minus the bot's margin)."""
        margin = datetime.timedelta(seconds=self.bot.token_margin)
        return discord.utils.utcnow() < self.interaction.expires_at - margin

    async def status(self, text: str) -> None:
        if self.token_alive():
            await self.interaction.edit_original_response(content=text)
            self.shown = True

    async def result(self, done: Done, caption: str) -> None:
        user = self.interaction.user
        message = await render(self.bot.config, done, self.source, Requester(user.id, user.display_name),
                               self.interaction.filesize_limit, self.photo)
        sent: discord.Message
        if self.token_alive():
            sent = await self.interaction.edit_original_response(content=None, embed=message.embed,
                                                                 attachments=message.files, view=message.view)
        else:
            sent = await self._channel().send(f"{user.mention} here is your {message.what}.", embed=message.embed,
                                              files=message.files, view=message.view)
        self.bot.dispatch(RESULT_EVENT, sent, self.photo)

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        """A refusal; ``offer``: packs to buy (one premium button each, for those with a SKU)."""
        view = premium_view(offer)
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        if not self.token_alive():
            await self._channel().send(f"{self.interaction.user.mention} {text}", **extra)
            return
        if not self.shown:  # end the "thinking" state first, or the follow-up would become the public response
            await self.interaction.edit_original_response(content="Checking your photo…")
        await self.interaction.followup.send(text, ephemeral=True, **extra)
        await self.interaction.delete_original_response()

    def placeholder(self) -> dict[str, Any]:
        """Nothing a restarted process could remove: the response goes with the interaction's token."""
        return {}

    def _channel(self) -> discord.abc.Messageable:
        channel = self.interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self.bot.get_partial_messageable(self.interaction.channel_id or 0, guild_id=self.interaction.guild_id)


class ChannelReply(_KeepsPhoto):
    """A request from a reaction: a reply to the photo's message that mentions who reacted, edited as it goes."""

    private = False  # a reply in the channel, seen by everyone there

    def __init__(self, bot: Answering, message: discord.Message, member: discord.Member) -> None:
        self.bot, self.message, self.member = bot, message, member
        self.photo = PhotoMessage.of(message)
        self.answer: discord.Message | None = None
        guild = member.guild
        self.limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def status(self, text: str) -> None:
        await self._show(f"{self.member.mention} {text}")

    def placeholder(self) -> dict[str, Any]:
        """The status reply, for a restarted process to remove."""
        return {"status_message_id": self.answer.id} if self.answer is not None else {}

    async def result(self, done: Done, caption: str) -> None:
        message = await render(self.bot.config, done, self.source,
                               Requester(self.member.id, self.member.display_name), self.limit, self.photo)
        await self._show(self.member.mention, embed=message.embed, files=message.files, view=message.view)
        self.bot.dispatch(RESULT_EVENT, self.answer, self.photo)

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        """A refusal; ``offer``: packs to buy (one premium button each, for those with a SKU)."""
        await self._show(f"{self.member.mention} {text}", view=premium_view(offer))

    async def _show(self, content: str, *, embed: discord.Embed | None = None, files: list[discord.File] | None = None,
                    view: discord.ui.View | None = None) -> None:
        if self.answer is None:
            extra: dict[str, Any] = {k: v for k, v in {"embed": embed, "files": files, "view": view}.items()
                                     if v is not None}
            self.answer = await self.message.reply(
                content, mention_author=False,
                allowed_mentions=discord.AllowedMentions(users=[self.member], replied_user=False), **extra)
        elif files is not None:
            self.answer = await self.answer.edit(content=content, embed=embed, attachments=files, view=view)
        else:
            kept: dict[str, Any] = {"view": view} if view is not None else {}  # a status line has no buttons to keep
            self.answer = await self.answer.edit(content=content, **kept)
