"""The Discord front end: a discord.py bot (``ClayBot``, its services passed to its constructor, its features
loaded as cogs in ``setup_hook``) and ``DiscordFrontEnd``, as `claybot run` drives it.

Interactions are deferred at once and answered by editing their original response; a job that would outlive the
15-minute interaction token answers in the channel instead. The pieces: bot/discord_photos.py (which image, where it
was posted, fetching and fitting it), bot/discord_render.py (how a result looks, live and after a restart),
bot/discord_buttons.py (the buttons' state in their custom ids, who may press), bot/discord_reply.py (one request's
answers); the cogs: clay (/clay, "Clay it"), animate (/animate), reactions, results (the results' buttons, which it
registers, the 🎬 Animate button and "Animate it", deleted photos), admin, credits (/balance and premium purchases,
with [credits] enabled; bot/discord_credits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket

from bot.chat_settings import ChatSettings, Setting
from bot.config import Config, ConfigError
from bot.credits import OutOfCredits
from bot.discord_buttons import RESTARTING
from bot.discord_credits import premium_view
from bot.discord_photos import DiscordImage, PhotoMessage, find_photo
from bot.discord_render import Requester, render
from bot.discord_reply import RESULT_EVENT, ChannelReply, InteractionReply
from bot.flow import CLOSE_GRACE, Ask, RequestFlow, RunningRequests, user_line
from bot.options import UserError
from bot.outage import quiet_discord_reconnects
from bot.store import ClaybotDatabase, store_path
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import Done

logger = logging.getLogger(__name__)

COGS = ("cogs.clay", "cogs.animate", "cogs.reactions", "cogs.results", "cogs.admin", "cogs.credits")
NO_IMAGE = "That message has no image I can use: reply to one with a photo attached or an image link."
STYLE_NAME = re.compile(r"[\w.-]{1,32}")  # style names travel in button custom ids (100 characters at most)
START_TIMEOUT = 60.0

# discord.py's own endpoints, restored when the config names none (they are class attributes of the library)
DISCORD_API = discord.http.Route.BASE
DISCORD_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


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


# A server's settings (/claysettings), declared once with their defaults: the config's, where the operator sets them.
DISCORD_GUILD = ChatSettings(
    "discord:guild",
    reactions=Setting(bool, lambda config: config.discord.reactions),
    reaction_emoji=Setting(str, lambda config: config.discord.reaction_emoji),
    default_strength=Setting(float, None),  # None: the style's own default
    channels=Setting(list),  # empty: every channel
)


def guild_scope(guild_id: int) -> str:
    """The settings-store scope of one server."""
    return DISCORD_GUILD.scope(guild_id)


def answer_to(requester: discord.abc.User, photo: PhotoMessage | None) -> dict[str, Any]:
    """What a restarted process needs to answer as a live one would: who asked, and where the photo was posted."""
    where = {"requester": requester.id, "requester_name": requester.display_name}
    if photo is not None:
        where["photo"] = [photo.guild_id, photo.channel_id, photo.message_id, photo.author_id]
    return where


def recorded(answer_to: dict[str, Any]) -> tuple[Requester, PhotoMessage | None]:
    """``answer_to``'s requester and photo message, as the journal kept them (anything unreadable: unknown)."""
    try:
        requester = Requester(int(answer_to.get("requester") or 0), str(answer_to.get("requester_name") or ""))
    except (TypeError, ValueError):
        requester = Requester(0, "")
    try:
        kept: Any = answer_to.get("photo") or ()
        guild_id, channel_id, message_id, author_id = kept
        photo = PhotoMessage(int(guild_id) if guild_id else None, int(channel_id), int(message_id), int(author_id))
    except (TypeError, ValueError):
        photo = None
    return requester, photo


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
        intents.guild_messages = True  # MESSAGE_DELETE: the results of a deleted photo stop offering re-runs
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
        if guild_id is None:
            return GuildSettings(False, self.config.discord.reaction_emoji, None, ())
        values = await DISCORD_GUILD.read(self.store, guild_id, self.config)
        return GuildSettings(reactions=values["reactions"],
                             emoji=values["reaction_emoji"] or self.config.discord.reaction_emoji,
                             strength=values["default_strength"],
                             channels=tuple(int(channel) for channel in values["channels"]))

    # -- serving --------------------------------------------------------------------------------------------------

    async def serve(self, interaction: discord.Interaction, photo: DiscordImage | None, *, seed: int | None = None,
                    style: str | None = None, kind: str = "picture", options: dict[str, Any] | None = None,
                    first: str | None = None) -> None:
        """One request from an interaction: admitted first (refusals are ephemeral), then deferred, progress and
        the answer. ``options``: the kind's own (a picture's strength defaults to the server's); a clip is made to
        fit the interaction's attachment limit; ``first``: a chained request's first kind (a clip of a person's
        photo is made clay first)."""
        received = time.monotonic()
        if not self.taking:
            raise UserError(RESTARTING)
        settings = await self.guild_settings(interaction.guild_id)
        if not settings.allows(interaction.channel):
            raise UserError(settings.where())
        if photo is None:
            raise UserError(NO_IMAGE)
        photo.check(self.flow, interaction.filesize_limit)
        options = dict(options or {})
        if kind == "picture" and options.get("strength") is None:
            options["strength"] = settings.strength
        if kind == "clip":
            options["max_bytes"] = interaction.filesize_limit
        reply = InteractionReply(self, interaction, photo.posted_in)
        ask = Ask("discord", str(interaction.user.id), str(interaction.channel_id), reply.keep_source(photo.read),
                  size=photo.size, style=style, seed=seed, kind=kind, options=options, first=first,
                  group_id=str(interaction.guild_id or interaction.channel_id), nsfw=is_nsfw(interaction.channel),
                  answer_to=answer_to(interaction.user, photo.posted_in),
                  origin=f"interaction:{interaction.id}", received=received)
        admitted = await self.flow.admit(ask, platform_limit=interaction.filesize_limit)  # refused: ephemeral
        await interaction.response.defer(thinking=True)
        logger.info("discord: %s from user %s in guild %s channel %s", _what(interaction), interaction.user.id,
                    interaction.guild_id, interaction.channel_id)
        with self.running.this_task():
            await self.flow.handle(ask, reply, platform_limit=interaction.filesize_limit, admitted=admitted)

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
                  size=photo.size, options={"strength": settings.strength}, group_id=str(member.guild.id),
                  nsfw=is_nsfw(message.channel),
                  answer_to={"message_id": message.id, **answer_to(member, photo.posted_in)})
        logger.info("discord: reaction from user %s in guild %s channel %s", member.id, member.guild.id,
                    message.channel.id)
        with self.running.this_task():
            await self.flow.handle(ask, reply)

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
        view = premium_view(original.packs) if isinstance(original, OutOfCredits) else None
        extra: dict[str, Any] = {"view": view} if view is not None else {}  # the packs' premium buttons
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, **extra)
            else:
                await interaction.response.send_message(text, ephemeral=True, **extra)
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
    data: Any = interaction.data or {}
    custom_id = str(data.get("custom_id", ""))
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
        for pack in self.config.credits.packs if self.config.credits.enabled else ():
            if pack.discord_sku and not pack.discord_sku.isdigit():
                raise ConfigError(f"credits.packs {pack.id}: discord_sku must be a SKU id (digits: Developer Portal "
                                  f"→ Monetization → SKUs), not {pack.discord_sku!r}")
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
        logger.info("discord: connected as %s (id %s) to %d server(s)", self.bot.user,
                    self.bot.user.id if self.bot.user else None, len(self.bot.guilds))

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
        if self.connection is None:
            return ClaybotError("the Discord front end was never started")
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

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        """A recovered job's answer, posted in its channel (its interaction token is long gone), replying to the
        message reacted to when there was one: the result as a live answer shows it (embed, copy of the photo
        from ``source``, buttons), or the reason; then the status line the old process left is removed."""
        if self.bot is None:
            raise ClaybotError("the Discord front end is not started")
        channel: Any = self.bot.get_channel(int(chat_id)) or await self.bot.fetch_channel(int(chat_id))
        reference = (discord.MessageReference(message_id=answer_to["message_id"], channel_id=int(chat_id),
                                              fail_if_not_exists=False) if answer_to.get("message_id") else None)
        if done is None:
            await channel.send(text, reference=reference)
        else:
            requester, photo = recorded(answer_to)
            guild = getattr(channel, "guild", None)
            limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
            message = await render(self.config, done, source, requester, limit, photo)
            mention = f"<@{requester.id}> " if requester.id else ""
            sent = await channel.send(f"{mention}here is your {message.what}.", embed=message.embed,
                                      files=message.files, view=message.view, reference=reference,
                                      allowed_mentions=discord.AllowedMentions(users=[discord.Object(requester.id)]
                                                                               if requester.id else False))
            self.bot.dispatch(RESULT_EVENT, sent, photo)
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
