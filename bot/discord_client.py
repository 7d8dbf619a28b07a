"""The Discord front end: a discord.py bot whose cogs turn /clay, the "Clay it" context menu and emoji reactions
into requests of the shared flow, and show the flow's progress and answers the Discord way.

Interactions are deferred at once and answered by editing their original response; a job that would outlive the
15-minute interaction token answers in the channel instead. The result message carries the photo it was made from
(``source.jpg``, the embed's thumbnail) and buttons whose ``custom_id`` holds the rest of the state, so the buttons
keep working after a restart without anything stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from PIL import Image

from bot.config import Config, ConfigError
from bot.flow import (
    CLOSE_GRACE,
    Ask,
    RequestFlow,
    RunningRequests,
    UserError,
    button_speed,
    is_image,
    not_an_image,
    shorten,
    speed_toggle,
    toggle_label,
    user_line,
    variant,
)
from bot.outage import quiet_discord_reconnects
from bot.store import ClaybotDatabase, store_path
from pipeline.core.errors import BadImage, ClaybotError
from pipeline.core.images import decode_thumbnail
from pipeline.core.jobs import Done

logger = logging.getLogger(__name__)

COGS = ("cogs.clay", "cogs.reactions", "cogs.admin")
RESTARTING = "claybot is restarting; please try again in a minute."
NO_IMAGE = "That message has no image I can use: reply to one with a photo attached or an image link."
SOURCE_NAME = "source.jpg"  # the photo a result was made from, carried by the result message for its buttons
SOURCE_MAX_PIXELS = 2_000_000  # above SDXL's working size, so "Again" on the copy matches the original
STYLE_NAME = re.compile(r"[\w.-]{1,32}")  # style names travel in button custom ids (100 characters at most)
CLAY_COLOUR = discord.Colour(0xB86B3C)
START_TIMEOUT = 60.0

# discord.py's own endpoints, restored when the config names none (they are class attributes of the library)
DISCORD_API = discord.http.Route.BASE
DISCORD_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


# -- photos ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscordImage:
    """An image on Discord a request can use (an attachment, an image embed), known from its metadata before it
    is downloaded."""

    filename: str
    content_type: str | None
    size: int | None
    read: Callable[[], Awaitable[bytes]]

    @classmethod
    def from_attachment(cls, attachment: discord.Attachment) -> DiscordImage:
        """An attached file (downloaded through discord.py's client)."""
        return cls(attachment.filename, attachment.content_type, attachment.size, attachment.read)

    def check(self, flow: RequestFlow, platform_limit: int | None) -> None:
        """Refuse what is not an image or is too large, before anything is downloaded."""
        if not is_image(self.content_type, self.filename):
            raise not_an_image(self.content_type)
        flow.check_size(self.size, platform_limit)


def find_photo(message: discord.Message, session: aiohttp.ClientSession, max_bytes: int) -> DiscordImage | None:
    """The first image of a message: an attached image, else an image embed (a posted image link)."""
    for attachment in message.attachments:
        if is_image(attachment.content_type, attachment.filename):
            return DiscordImage.from_attachment(attachment)
    for embed in message.embeds:
        media = embed.image if embed.image.proxy_url else embed.thumbnail if embed.type == "image" else None
        if media is not None and media.proxy_url:
            # Discord's media proxy, never the URL someone posted: it is Discord that fetched that one.
            url = media.proxy_url
            name = yarl.URL(url).name or "image"
            return DiscordImage(name, "image/*", None, lambda url=url: fetch_capped(session, url, max_bytes))
    return None


async def fetch_capped(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    """Download an image of unknown size, giving up as soon as it passes ``max_bytes``."""
    too_large = UserError(f"That image is larger than the {max_bytes / 2**20:.0f} MB I can take.")
    async with session.get(url) as response:
        if response.status != 200:
            raise UserError(f"I could not download that image (Discord answered {response.status}).")
        if not is_image(response.headers.get("Content-Type"), url):
            raise not_an_image(response.headers.get("Content-Type"))
        if response.content_length is not None and response.content_length > max_bytes:
            raise too_large
        data = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > max_bytes:
                raise too_large
    return bytes(data)


def fit_upload(png: bytes, limit: int, name: str = "clay") -> tuple[bytes, str]:
    """The result as a PNG when it fits the upload limit, else as a high-quality JPEG or WebP (smaller if need be)."""
    if len(png) <= limit:
        return png, f"{name}.png"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25):
        candidate = image if scale == 1.0 else image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        for fmt, quality in (("JPEG", 92), ("WEBP", 90), ("JPEG", 80), ("WEBP", 75), ("JPEG", 65)):
            buffer = io.BytesIO()
            candidate.save(buffer, format=fmt, quality=quality)
            if buffer.tell() <= limit:
                return buffer.getvalue(), f"{name}.{'jpg' if fmt == 'JPEG' else 'webp'}"
    raise UserError("The picture came out too large to upload here.")


def source_copy(data: bytes, limit: int, *, max_input_pixels: int) -> bytes | None:
    """The photo as the JPEG a result message carries for its buttons; None when there is no room for it."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG" and image.width * image.height <= SOURCE_MAX_PIXELS and len(data) <= limit:
            return data  # already a small JPEG (e.g. the source.jpg of an earlier result): no generational loss
        # The chat process decodes only a bounded copy (reduced while decoding, one at a time, under a budget);
        # a photo too large for that goes without its copy rather than taking the process's memory.
        image = decode_thumbnail(data, max_pixels=max_input_pixels, thumb_pixels=SOURCE_MAX_PIXELS)
    except (BadImage, OSError, MemoryError) as err:
        logger.info("no copy of the photo on the result: %s", err)
        return None
    scale = min(1.0, (SOURCE_MAX_PIXELS / (image.width * image.height)) ** 0.5)
    for quality in (90, 80, 70):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= limit:
            return buffer.getvalue()
        scale *= 0.7
    return None


# -- result messages and their buttons ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultState:
    """What a result's buttons need besides the photo: who asked, and how it was made."""

    requester: int
    style: str  # "": the default style (a custom id too long for the style's name)
    strength: float
    seed: int
    speed: str | None = None  # the speed preset; None (buttons from before presets): the style's own

    def custom_id(self, action: str) -> str:
        """The button's custom id (Discord allows 100 characters): ``clay:action:requester:style:strength:seed``,
        then ``:speed`` when it has one. Should a long style and a long preset name not fit together, the style is
        left out (the default style), as Telegram's buttons do."""
        speed = "" if self.speed is None else f":{self.speed}"
        custom_id = f"clay:{action}:{self.requester}:{self.style}:{self.strength:g}:{self.seed}{speed}"
        if len(custom_id) > MAX_CUSTOM_ID:
            custom_id = f"clay:{action}:{self.requester}::{self.strength:g}:{self.seed}{speed}"
        return custom_id


MAX_CUSTOM_ID = 100  # Discord's limit on a component's custom id


BUTTONS = {  # action: (label, emoji, style)
    "again": ("Again", "\N{GAME DIE}", discord.ButtonStyle.primary),
    "stronger": ("Stronger", "\N{HEAVY PLUS SIGN}", discord.ButtonStyle.secondary),
    "weaker": ("Weaker", "\N{HEAVY MINUS SIGN}", discord.ButtonStyle.secondary),
    "delete": ("Delete", "\N{WASTEBASKET}", discord.ButtonStyle.danger),
}
TOGGLE = {"Fast": "\N{HIGH VOLTAGE SIGN}", "Best": "\N{DIRECT HIT}"}  # the "speed" button: same picture, other preset


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button],
    # the speed part is read loosely here and checked against the config when pressed, so a preset the config no
    # longer has gets an answer that says so instead of a silent "interaction failed"
    template=r"clay:(?P<action>again|stronger|weaker|delete|speed):(?P<requester>\d+):(?P<style>[\w.-]*)"
             r":(?P<strength>\d*\.?\d+):(?P<seed>\d+)(?::(?P<speed>[^:]*))?",
):
    """One of a result's buttons; its state lives in its custom id, so it works after a restart."""

    def __init__(self, action: str, state: ResultState) -> None:
        if action == "speed":  # Fast / Best: the state holds the preset it switches to
            label = toggle_label(state.speed or "default")
            emoji, style = TOGGLE[label], discord.ButtonStyle.secondary
        else:
            label, emoji, style = BUTTONS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=state.custom_id(action)))
        self.action, self.state = action, state

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> ResultButton:
        state = ResultState(int(match["requester"]), match["style"], float(match["strength"]), int(match["seed"]),
                            match["speed"])
        return cls(match["action"], state)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if self.action == "delete" and interaction.user.id != self.state.requester:
            await interaction.response.send_message("Only the person who asked for this picture can delete it.",
                                                    ephemeral=True)
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: ClayBot = interaction.client  # type: ignore[assignment]
        try:
            await bot.press(interaction, self.action, self.state)
        except Exception as err:  # discord.py would only log it; the user gets an answer too
            await bot.report(interaction, err)


class ResultView(discord.ui.View):
    """Again · Stronger · Weaker · Delete, and Fast / Best (``toggle``: the other preset) when the config has
    presets; persistent (no timeout)."""

    def __init__(self, state: ResultState, toggle: str | None = None) -> None:
        super().__init__(timeout=None)
        for action in BUTTONS:
            self.add_item(ResultButton(action, state))
        if toggle is not None:
            self.add_item(ResultButton("speed", dataclasses.replace(state, speed=toggle)))


@dataclass
class ResultMessage:
    """Everything a result message is made of."""

    embed: discord.Embed
    files: list[discord.File]
    view: ResultView


async def build_result(bot: ClayBot, done: Done, source: bytes | None, requester: discord.abc.User,
                       limit: int) -> ResultMessage:
    """The embed (style, strength, seed, tags), the image fitted to the upload limit, the photo, the buttons."""
    max_input_pixels = int(bot.config.pipeline.max_input_megapixels * 1e6)
    copy = None
    if source is not None:
        copy = await asyncio.to_thread(source_copy, source, limit // 4, max_input_pixels=max_input_pixels)
    image, name = await asyncio.to_thread(fit_upload, done.image, limit - len(copy or b""))
    embed = discord.Embed(title="Your clay picture", colour=CLAY_COLOUR,
                          description=shorten(", ".join(done.tags), 300) if done.tags else "no tags")
    embed.add_field(name="Style", value=done.style)
    embed.add_field(name="Strength", value=f"{done.strength:g}")
    embed.add_field(name="Seed", value=str(done.seed))
    if done.speed != "default":
        embed.add_field(name="Speed", value=done.speed)
    embed.set_image(url=f"attachment://{name}")
    files = [discord.File(io.BytesIO(image), filename=name)]
    if copy is not None:
        embed.set_thumbnail(url=f"attachment://{SOURCE_NAME}")
        files.append(discord.File(io.BytesIO(copy), filename=SOURCE_NAME))
    embed.set_footer(text=f"for {requester.display_name}")
    view = ResultView(ResultState(requester.id, done.style, done.strength, done.seed, done.speed),
                      toggle=speed_toggle(done.speed, bot.config.speed_names()))
    return ResultMessage(embed, files, view)


# -- replies: how the flow's status lines and answers look on Discord -----------------------------------------------


class _KeepsPhoto:
    """A reply that remembers the downloaded photo: its result message carries it for the buttons."""

    source: bytes | None = None

    def keep_source(self, read: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[bytes]]:
        """The download, remembering the photo."""
        async def download() -> bytes:
            self.source = await read()
            return self.source
        return download


class InteractionReply(_KeepsPhoto):
    """A request from an interaction: progress and answer in its original response, in the channel once too late."""

    private = True  # its refusals are ephemeral: only the person who asked sees them

    def __init__(self, bot: ClayBot, interaction: discord.Interaction) -> None:
        self.bot, self.interaction = bot, interaction
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
        message = await build_result(self.bot, done, self.source, user, self.interaction.filesize_limit)
        if self.token_alive():
            await self.interaction.edit_original_response(content=None, embed=message.embed,
                                                          attachments=message.files, view=message.view)
        else:
            await self._channel().send(f"{user.mention} here is your clay picture.", embed=message.embed,
                                       files=message.files, view=message.view)

    async def error(self, text: str) -> None:
        if not self.token_alive():
            await self._channel().send(f"{self.interaction.user.mention} {text}")
            return
        if not self.shown:  # end the "thinking" state first, or the follow-up would become the public response
            await self.interaction.edit_original_response(content="Checking your photo…")
        await self.interaction.followup.send(text, ephemeral=True)
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

    def __init__(self, bot: ClayBot, message: discord.Message, member: discord.Member) -> None:
        self.bot, self.message, self.member = bot, message, member
        self.answer: discord.Message | None = None
        guild = member.guild
        self.limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def status(self, text: str) -> None:
        await self._show(f"{self.member.mention} {text}")

    def placeholder(self) -> dict[str, Any]:
        """The status reply, for a restarted process to remove."""
        return {"status_message_id": self.answer.id} if self.answer is not None else {}

    async def result(self, done: Done, caption: str) -> None:
        message = await build_result(self.bot, done, self.source, self.member, self.limit)
        await self._show(self.member.mention, embed=message.embed, files=message.files, view=message.view)

    async def error(self, text: str) -> None:
        await self._show(f"{self.member.mention} {text}")

    async def _show(self, content: str, *, embed: discord.Embed | None = None, files: list[discord.File] | None = None,
                    view: discord.ui.View | None = None) -> None:
        if self.answer is None:
            extra = {k: v for k, v in {"embed": embed, "files": files, "view": view}.items() if v is not None}
            self.answer = await self.message.reply(
                content, mention_author=False,
                allowed_mentions=discord.AllowedMentions(users=[self.member], replied_user=False), **extra)
        elif files is not None:
            self.answer = await self.answer.edit(content=content, embed=embed, attachments=files, view=view)
        else:
            self.answer = await self.answer.edit(content=content)


# -- the bot --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuildSettings:
    """A server's choices from /claysettings, over the config's defaults."""

    reactions: bool
    emoji: str
    strength: float | None  # None: the style's own default
    channels: tuple[int, ...]  # empty: every channel

    def allows(self, channel: object) -> bool:
        """Whether claybot may answer in this channel (a thread counts as its parent channel)."""
        if not self.channels:
            return True
        return bool({getattr(channel, "id", None), getattr(channel, "parent_id", None)} & set(self.channels))

    def where(self) -> str:
        """Where claybot answers in this server, for a refusal."""
        return "Here I only answer in " + ", ".join(f"<#{channel}>" for channel in self.channels) + "."


def is_nsfw(channel: object) -> bool:
    """Whether a channel is age-restricted (a thread: its parent); DMs and unknown channels are not."""
    check = getattr(channel, "is_nsfw", None)
    return bool(check()) if callable(check) else False


def guild_scope(guild_id: int) -> str:
    """The settings-store scope of one server."""
    return f"discord:guild:{guild_id}"


def emoji_key(text: str) -> str:
    """What makes two spellings of a reaction emoji the same: a custom emoji's id, a Unicode emoji sans VS16."""
    match = re.fullmatch(r"<a?:\w+:(\d+)>", text.strip())
    return match.group(1) if match else text.strip().replace("\N{VARIATION SELECTOR-16}", "")


class ClayTree(app_commands.CommandTree):
    """The command tree; every failed command goes to the bot's one error handler."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        await self.client.report(interaction, error)  # type: ignore[attr-defined]


class ClayBot(commands.Bot):
    """claybot on Discord; the request flow, the settings store and the config come in through the constructor."""

    def __init__(self, config: Config, flow: RequestFlow, store: ClaybotDatabase) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channels and permissions of the servers
        intents.guild_reactions = True
        intents.message_content = config.discord.message_content_intent  # privileged: images of fetched messages
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, intents=intents,
                         tree_cls=ClayTree, guild_ready_timeout=config.discord.guild_ready_timeout,
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True,
                                                                  replied_user=False))
        self.config, self.flow, self.store = config, flow, store
        self.taking = True  # False once stopping: new requests are told to come back later
        self.token_margin = 60.0  # seconds: answers due later than 15 min minus this go to the channel
        self.session: aiohttp.ClientSession | None = None  # image embeds are fetched with it
        self.synced: bool | None = None  # whether this start registered the commands with Discord
        self.running = RunningRequests()
        quiet_discord_reconnects(self)  # one log line per gateway outage, not a traceback per reconnect attempt

    async def setup_hook(self) -> None:
        self.session = aiohttp.ClientSession()
        self.add_dynamic_items(ResultButton)  # every result's buttons, whenever they were sent
        for name in COGS:
            await self.load_extension(name)
        self.synced = await self.sync_commands()

    async def close(self) -> None:
        await super().close()
        if self.session is not None:
            await self.session.close()

    async def sync_commands(self) -> bool:
        """Register the commands with Discord, only when their definitions changed since the last time."""
        guild_id = self.config.discord.test_guild_id
        guild = discord.Object(guild_id) if guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        definitions = sorted((command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)),
                             key=lambda d: (d.get("type", 1), d["name"]))
        digest = hashlib.sha256(json.dumps(definitions, sort_keys=True).encode()).hexdigest()
        scope, key = f"discord:app:{self.application_id}", f"commands:{guild_id or 'global'}"
        if await self.store.get_str(scope, key, None) == digest:
            logger.info("discord: commands unchanged since they were last registered; not syncing")
            return False
        try:
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException as err:  # the commands registered before still work
            logger.warning("discord: could not register the commands (%s); trying again at the next start", err)
            return False
        await self.store.set(scope, key, digest)
        logger.info("discord: registered %d commands %s", len(synced), f"in server {guild_id}" if guild else "globally")
        return True

    async def guild_settings(self, guild_id: int | None) -> GuildSettings:
        """A server's settings (outside servers: the config's defaults, and no reactions)."""
        defaults = self.config.discord
        if guild_id is None:
            return GuildSettings(False, defaults.reaction_emoji, None, ())
        scope = guild_scope(guild_id)
        channels = await self.store.get_list(scope, "channels")
        return GuildSettings(
            reactions=await self.store.get_bool(scope, "reactions", defaults.reactions),
            emoji=await self.store.get_str(scope, "reaction_emoji", defaults.reaction_emoji) or defaults.reaction_emoji,
            strength=await self.store.get_float(scope, "default_strength", None),
            channels=tuple(int(channel) for channel in channels),
        )

    # -- serving --------------------------------------------------------------------------------------------------

    async def serve(self, interaction: discord.Interaction, photo: DiscordImage | None, *,
                    strength: float | None = None, seed: int | None = None, style: str | None = None,
                    speed: str | None = None) -> None:
        """One request from an interaction: refusals are ephemeral; else defer at once, then progress and answer."""
        received = time.monotonic()
        if not self.taking:
            raise UserError(RESTARTING)
        settings = await self.guild_settings(interaction.guild_id)
        if not settings.allows(interaction.channel):
            raise UserError(settings.where())
        if photo is None:
            raise UserError(NO_IMAGE)
        photo.check(self.flow, interaction.filesize_limit)
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(self, interaction)
        ask = Ask("discord", str(interaction.user.id), str(interaction.channel_id), reply.keep_source(photo.read),
                  size=photo.size, style=style, seed=seed, speed=speed,
                  strength=strength if strength is not None else settings.strength,
                  group_id=str(interaction.guild_id or interaction.channel_id), nsfw=is_nsfw(interaction.channel),
                  origin=f"interaction:{interaction.id}", received=received)
        logger.info("discord: %s from user %s in guild %s channel %s", _what(interaction), interaction.user.id,
                    interaction.guild_id, interaction.channel_id)
        with self.running.this_task():
            await self.flow.handle(ask, reply, platform_limit=interaction.filesize_limit)

    async def serve_reaction(self, message: discord.Message, member: discord.Member, settings: GuildSettings) -> None:
        """One request from a reaction: the answer is a reply to the message, mentioning who reacted."""
        reply = ChannelReply(self, message, member)
        if not self.taking:
            await reply.error(RESTARTING)
            return
        photo = find_photo(message, self.session, self.flow.max_bytes())
        if photo is None:
            logger.info("discord: reaction on message %s, which has no image I can see", message.id)
            return
        ask = Ask("discord", str(member.id), str(message.channel.id), reply.keep_source(photo.read),
                  size=photo.size, strength=settings.strength, group_id=str(member.guild.id),
                  nsfw=is_nsfw(message.channel), answer_to={"message_id": message.id})
        logger.info("discord: reaction from user %s in guild %s channel %s", member.id, member.guild.id,
                    message.channel.id)
        with self.running.this_task():
            await self.flow.handle(ask, reply)

    async def press(self, interaction: discord.Interaction, action: str, state: ResultState) -> None:
        """A result's button: delete it, or make a new picture from the same photo."""
        if action == "delete":
            await interaction.response.defer()  # for a button, the original response is the button's message
            try:
                await interaction.delete_original_response()
            except discord.NotFound:  # not an interaction's message after all: the bot may delete its own
                if interaction.message is not None:
                    await interaction.message.delete()
            return
        message = interaction.message
        source = next((a for a in message.attachments if a.filename == SOURCE_NAME), None) if message else None
        if source is None:
            raise UserError("I no longer have the photo this picture was made from; please send it again.")
        speed = button_speed(state.speed, self.config.speed_names())
        strength, seed = variant(action, state.strength, state.seed)
        await self.serve(interaction, DiscordImage.from_attachment(source), strength=strength, seed=seed,
                         style=state.style or None, speed=speed)

    async def report(self, interaction: discord.Interaction, error: Exception) -> None:
        """The one place a failed interaction is answered: the user's mistakes as they are, the rest calmly."""
        original = getattr(error, "original", error)  # CommandInvokeError wraps what the callback raised
        if isinstance(error, app_commands.MissingPermissions):
            text = "You need the Manage Server permission for that."
        elif isinstance(error, app_commands.NoPrivateMessage):
            text = "That works only in a server."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You can't use that here."
        else:
            text = user_line(original, f"discord: {_what(interaction)}", logger)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as err:
            logger.warning("discord: could not answer an interaction: %s", err)


def _fatal(error: BaseException | None) -> ConfigError | None:
    """What Discord refused that only the operator can fix, as the message that says how."""
    if isinstance(error, discord.LoginFailure):
        return ConfigError(f"Discord refused the bot token ({error})")
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return ConfigError("Discord refused the MESSAGE CONTENT intent: switch it on in the developer portal "
                           "(Bot → Privileged Gateway Intents) or set discord.message_content_intent = false")
    return None


def _what(interaction: discord.Interaction) -> str:
    """A request's kind for the log: "/clay", "/Clay it", "button stronger"."""
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    custom_id = str((interaction.data or {}).get("custom_id", ""))
    return f"button {custom_id.split(':')[1]}" if custom_id.count(":") >= 2 else "interaction"


# -- the front end ------------------------------------------------------------------------------------------------


def point_client_at(api_base_url: str, gateway_url: str) -> None:
    """Send discord.py's REST calls and gateway connection where the config says (its defaults when empty)."""
    # Both are class attributes read when a request or connection is made: process-wide, like the library's own.
    discord.http.Route.BASE = api_base_url or DISCORD_API
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url) if gateway_url else DISCORD_GATEWAY


class DiscordFrontEnd:
    """claybot on Discord, as ``claybot run`` drives it: start, stop taking requests, close."""

    name = "discord"

    def __init__(self, config: Config, flow: RequestFlow, token: str) -> None:
        self.config, self.flow = config, flow
        self._token = token  # never logged, never in a repr
        self.store: ClaybotDatabase | None = None
        self._own_store = False
        self.bot: ClayBot | None = None
        self.connection: asyncio.Task | None = None  # the gateway connection; it ending early is logged
        self._closing = False

    def __repr__(self) -> str:
        return f"<DiscordFrontEnd bot={self.bot.user if self.bot else None}>"

    async def start(self) -> None:
        """Log in, register the commands if they changed, connect, and return once Discord says ready."""
        settings = self.config.discord
        for name in self.config.styles:
            if not STYLE_NAME.fullmatch(name):
                raise ConfigError(f"styles.{name}: on Discord a style name must be 1–32 letters, digits, '.', '-' "
                                  f"or '_' (it travels in buttons)")
        if settings.reactions and not settings.message_content_intent:
            logger.warning("discord: reactions are on but discord.message_content_intent is off: Discord will hide "
                           "the images of the messages people react to. Switch on the MESSAGE CONTENT intent in the "
                           "developer portal and set message_content_intent = true (or reactions = false).")
        point_client_at(settings.api_base_url, settings.gateway_url)
        if self.flow.store is not None:  # claybot run's one database
            self.store, self._own_store = self.flow.store, False
        else:
            self.store, self._own_store = ClaybotDatabase(store_path(self.config.bot)), True
            await self.store.open()
        self.bot = ClayBot(self.config, self.flow, self.store)
        try:
            await self.bot.login(self._token)
        except discord.LoginFailure:
            await self.close()
            raise ConfigError(f"Discord refused the bot token in {settings.token_env}: copy it again from the "
                              f"developer portal (Bot → Reset Token)") from None
        except BaseException:
            await self.close()
            raise
        self.connection = asyncio.create_task(self.bot.connect(reconnect=True), name="claybot-discord-gateway")
        ready = asyncio.create_task(self.bot.wait_until_ready())
        try:
            done, _ = await asyncio.wait({self.connection, ready}, timeout=START_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self.connection in done or not done:
            error = self._start_error(self.connection if done else None)
            await self.close()
            raise error
        self.connection.add_done_callback(self._connection_ended)
        logger.info("discord: connected as %s (id %s) to %d server(s)", self.bot.user, self.bot.user.id,
                    len(self.bot.guilds))

    def _start_error(self, ended: asyncio.Task | None) -> ClaybotError:
        if ended is None:
            return ClaybotError(f"Discord did not get ready within {START_TIMEOUT:g} seconds")
        error = None if ended.cancelled() else ended.exception()
        return _fatal(error) or ClaybotError(f"the Discord connection ended during start: {error!r}")

    def _connection_ended(self, task: asyncio.Task) -> None:
        if self._closing or task.cancelled():
            return
        logger.warning("discord: the gateway connection ended: %r", task.exception())

    async def ended(self) -> Exception:
        """The gateway connection (discord.py reconnects by itself) ended for good: why."""
        try:
            await asyncio.shield(self.connection)
        except asyncio.CancelledError:
            if not self.connection.cancelled():
                raise
            return ClaybotError("the Discord connection was cancelled")
        except Exception as err:
            return _fatal(err) or err
        return ClaybotError("the Discord connection ended")

    async def stop_taking(self) -> None:
        """New requests are told claybot is restarting; running ones still get their answers."""
        if self.bot is not None:
            self.bot.taking = False

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any]) -> None:
        """A recovered job's answer, posted in its channel (its interaction token is long gone), replying to the
        message reacted to when there was one."""
        channel = self.bot.get_channel(int(chat_id)) or await self.bot.fetch_channel(int(chat_id))
        reference = (discord.MessageReference(message_id=answer_to["message_id"], channel_id=int(chat_id),
                                              fail_if_not_exists=False) if answer_to.get("message_id") else None)
        if done is None:
            await channel.send(text, reference=reference)
        else:
            await channel.send(text[:2000], file=discord.File(io.BytesIO(done.image), filename="clay.png"),
                               reference=reference)
        if answer_to.get("status_message_id"):  # the old process's status reply
            with contextlib.suppress(discord.HTTPException):
                await channel.get_partial_message(answer_to["status_message_id"]).delete()

    async def close(self) -> None:
        """Let running requests answer (briefly), then disconnect and close the store."""
        self._closing = True
        if self.bot is not None:
            self.bot.taking = False
            await self.bot.running.finish(CLOSE_GRACE)
            await self.bot.close()
        if self.connection is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.connection, 10.0)
        if self.store is not None and self._own_store:
            await self.store.close()
