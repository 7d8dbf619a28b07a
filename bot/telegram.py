"""The Telegram front end: python-telegram-bot glue around the shared request flow.

Ways to ask: a photo (or an image sent as a file) captioned ``/clay [strength]``; ``/clay [strength]`` as a reply to a
photo; in groups, a reaction with the configured emoji on a photo the bot has seen; the buttons under each result.
Each becomes an ``Ask`` for ``RequestFlow.handle``, run as its own task so a slow job never holds up other updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReactionTypeEmoji,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    MessageReactionHandler,
    filters,
)

from bot.config import Config, ConfigError, TelegramSettings
from bot.flow import (
    MAX_STRENGTH,
    MIN_STRENGTH,
    USAGE,
    Ask,
    RequestFlow,
    RunningRequests,
    UserError,
    button_speed,
    is_image,
    not_an_image,
    parse_options,
    speed_toggle,
    toggle_label,
    user_line,
    variant,
)
from bot.observability import HIDE_SECRETS, hide_secret
from bot.outage import Outage, telegram_polling
from bot.store import ClaybotDatabase
from bot.telegram_hints import fetch_failed, hint_for_plain_message
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import MAX_SEED, Done

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
# Telegram's Bot API lets bots download files up to 20 MB; a self-hosted server in local mode has no such limit.
# Should Telegram count a MB as 10**6 bytes, a getFile refused as "file is too big" still gets a clear answer.
DOWNLOAD_LIMIT = 20 * 2**20
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.MESSAGE_REACTION]
POLL_TIMEOUT = 10.0  # seconds a getUpdates long poll waits for news
# httpcore scans its whole pool (quadratically) whenever a request starts or ends: PTB's default of 256 connections
# made a burst of 200 photos spend a third of the chat process's CPU there. Fewer, with a longer wait for a free one.
CONNECTIONS = 32
POOL_TIMEOUT = 30.0  # seconds a call may wait for a free connection (PTB's default, 1 s, fails calls in a burst)
CHAT_ACTION_EVERY = 4.5  # a chat action shows for 5 s or until the next message
BUTTON_PREFIX = "c2"  # callback data version: bump when the format below changes
OLD_BUTTON_PREFIX = "c1"  # style|strength|seed, from before speed presets: the style's own preset
SPEED_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # what config accepts as a [speed.*] name, and "default"
MAX_CALLBACK_DATA = 64  # bytes, Telegram's limit
CAPTION_LIMIT = 1024
COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")  # what Telegram accepts as a command
SETTINGS_USAGE = "Group admins: /claysettings nsfw on (or off) lets me work on any photo in this chat."


# -- photos ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TelegramPhoto:
    """A photo message on Telegram the bot can work on: where it is, and the file to fetch."""

    chat_id: int
    message_id: int
    file_id: str
    size: int | None  # bytes, from Telegram's metadata
    thread_id: int | None = None  # forum topic, so answers land in the same topic


def photo_in(message: Message | None) -> TelegramPhoto | None:
    """The photo (or image file) of a message; None when it has none; UserError for a file that is not an image."""
    if message is None:
        return None
    if message.photo:
        best = message.photo[-1]  # Telegram lists the sizes smallest first
        file_id, size = best.file_id, best.file_size
    elif message.document is not None:
        document = message.document
        if not is_image(document.mime_type, document.file_name):
            raise not_an_image(document.mime_type or "unknown type")
        file_id, size = document.file_id, document.file_size
    else:
        return None
    thread_id = message.message_thread_id if message.is_topic_message else None
    return TelegramPhoto(message.chat_id, message.message_id, file_id, size, thread_id)


class RecentPhotos:
    """Photo messages seen lately, bounded and expiring: a reaction update names a message but carries no photo."""

    def __init__(self, max_size: int, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size, self.ttl, self.clock = max_size, ttl, clock
        self._photos: OrderedDict[tuple[int, int], tuple[float, TelegramPhoto]] = OrderedDict()

    def remember(self, photo: TelegramPhoto) -> None:
        """Keep a photo for ``ttl`` seconds; the oldest go first beyond ``max_size``."""
        if self.max_size <= 0:
            return
        key = (photo.chat_id, photo.message_id)
        self._photos[key] = (self.clock() + self.ttl, photo)
        self._photos.move_to_end(key)
        while len(self._photos) > self.max_size:
            self._photos.popitem(last=False)

    def get(self, chat_id: int, message_id: int) -> TelegramPhoto | None:
        """The photo of that message, if it was seen and has not expired."""
        self._expire()
        entry = self._photos.get((chat_id, message_id))
        return entry[1] if entry else None

    def __len__(self) -> int:
        self._expire()
        return len(self._photos)

    def _expire(self) -> None:
        now = self.clock()
        while self._photos and next(iter(self._photos.values()))[0] <= now:  # equal TTLs: oldest expire first
            self._photos.popitem(last=False)


# -- buttons ---------------------------------------------------------------------------------------------------------


def button_data(style: str, strength: float, seed: int | None, speed: str | None = None) -> str:
    """Callback data that carries the whole request, so buttons keep working after a restart (max 64 bytes):
    ``c2|style|strength|seed|speed`` (an empty seed: a new one; an empty speed: the style's own preset)."""
    tail = f"{strength:g}|{'' if seed is None else seed}|{speed or ''}"
    data = f"{BUTTON_PREFIX}|{style}|{tail}"
    if len(data.encode()) > MAX_CALLBACK_DATA:  # a very long style name: fall back to the default style
        data = f"{BUTTON_PREFIX}||{tail}"
    return data


def parse_button(data: str) -> tuple[str | None, float, int | None, str | None]:
    """``button_data``'s (style, strength, seed, speed); also the older ``c1|style|strength|seed`` (speed None: the
    style's own preset); ValueError for anything else."""
    if len(data.encode()) > MAX_CALLBACK_DATA:  # Telegram's own limit: anything longer is not ours, and is not parsed
        raise ValueError("callback data too long")
    prefix, _, rest = data.partition("|")
    fields = rest.split("|")
    if prefix == BUTTON_PREFIX and len(fields) == 4:
        style, strength, seed, speed = fields
    elif prefix == OLD_BUTTON_PREFIX and len(fields) == 3:
        (style, strength, seed), speed = fields, ""
    else:
        raise ValueError(f"unknown button format {prefix[:8]!r}")
    value = float(strength)
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:  # NaN fails this too
        raise ValueError(f"strength {strength!r} out of range")
    if seed and not (seed.isascii() and seed.isdigit() and int(seed) <= MAX_SEED):
        raise ValueError(f"seed {seed!r} out of range")
    if style != style.strip():
        raise ValueError(f"style {style!r}")
    if speed and not SPEED_NAME.fullmatch(speed):
        raise ValueError(f"speed {speed!r}")
    return style or None, value, int(seed) if seed else None, speed or None


def result_buttons(done: Done, speeds: Sequence[str] = ()) -> InlineKeyboardMarkup:
    """🎲 Again, 💪 Stronger and 🪶 Weaker (the flow's ``variant`` rule), each with the picture's speed preset; and
    ⚡ Fast / 🎯 Best (same seed and strength, the other preset) when the config has presets (``speeds``: the
    config's speed names, "default" first)."""
    def data(action: str, speed: str) -> str:
        return button_data(done.style, *variant(action, done.strength, done.seed), speed)

    row = [
        InlineKeyboardButton("🎲 Again", callback_data=data("again", done.speed)),
        InlineKeyboardButton("💪 Stronger", callback_data=data("stronger", done.speed)),
        InlineKeyboardButton("🪶 Weaker", callback_data=data("weaker", done.speed)),
    ]
    other = speed_toggle(done.speed, list(speeds))
    if other is not None:
        label = toggle_label(other)
        row.append(InlineKeyboardButton(f"{'🎯' if label == 'Best' else '⚡'} {label}",
                                        callback_data=data("speed", other)))
    return InlineKeyboardMarkup([row])


# -- answering one request -------------------------------------------------------------------------------------------


def _reply_to(message_id: int) -> ReplyParameters:
    # the photo may have been deleted meanwhile: answer anyway
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


class ChatPace:
    """Status edits in one chat no faster than one per ``interval``, however many requests share the chat:
    Telegram's limits are per chat (about one message a second, 20 a minute in a group)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[int, float] = {}  # chat → when its next edit may go out

    async def turn(self, chat_id: int) -> None:
        """Wait for the chat's next free moment, and take it."""
        now = time.monotonic()
        if len(self._next) > 1000:  # forget quiet chats
            self._next = {chat: at for chat, at in self._next.items() if at > now}
        slot = max(now, self._next.get(chat_id, 0.0))
        self._next[chat_id] = slot + self.interval
        await asyncio.sleep(slot - now)

    def sent(self, chat_id: int) -> None:
        """Something just went out in the chat: the next edit waits a whole interval from now."""
        self._next[chat_id] = max(self._next.get(chat_id, 0.0), time.monotonic() + self.interval)


class UploadingPhoto:
    """Telegram's "sending photo…" in every chat with a request under way: one loop per chat, not per request."""

    def __init__(self) -> None:
        self._requests: dict[tuple[int, int | None], int] = {}
        self._loops: dict[tuple[int, int | None], asyncio.Task] = {}

    def begin(self, bot, chat_id: int, thread_id: int | None) -> None:
        key = (chat_id, thread_id)
        self._requests[key] = self._requests.get(key, 0) + 1
        if key not in self._loops:
            self._loops[key] = asyncio.create_task(self._show(bot, chat_id, thread_id))

    def end(self, chat_id: int, thread_id: int | None) -> None:
        key = (chat_id, thread_id)
        self._requests[key] = self._requests.get(key, 1) - 1
        if self._requests[key] <= 0:
            del self._requests[key]
            loop = self._loops.pop(key, None)
            if loop is not None:
                loop.cancel()

    def stop(self) -> None:
        """Cancel every loop (the front end is closing)."""
        for loop in self._loops.values():
            loop.cancel()
        self._loops.clear()
        self._requests.clear()

    @staticmethod
    async def _show(bot, chat_id: int, thread_id: int | None) -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, ChatAction.UPLOAD_PHOTO, message_thread_id=thread_id)
            except TelegramError as err:
                logger.debug("chat action failed in chat %s: %s", chat_id, err)
            await asyncio.sleep(CHAT_ACTION_EVERY)


class TelegramReply:
    """One request's answers: a status message replying to the photo and edited in place, then the picture."""

    private = False  # everything it says is seen by the whole chat

    def __init__(self, bot, photo: TelegramPhoto, *, pace: ChatPace, uploading: UploadingPhoto,
                 on_sent: Callable[[Message], None] | None = None, speeds: Sequence[str] = ()) -> None:
        self.bot, self.photo, self.pace, self.uploading, self.on_sent = bot, photo, pace, uploading, on_sent
        self.speeds = list(speeds)  # the config's speed presets, for the Fast/Best button
        self.status_message_id: int | None = None
        self._shown = ""  # the status text on screen
        self._wanted = ""  # the latest status text asked for
        self._lock = asyncio.Lock()
        self._edit_later: asyncio.Task | None = None
        self._uploading = False
        self._finished = False

    async def status(self, text: str) -> None:
        """Send the status message the first time, then edit it in place at the chat's pace."""
        if self._finished:
            return
        self._wanted = text
        if self.status_message_id is None:
            async with self._lock:
                if self.status_message_id is None:
                    sent = await self.bot.send_message(self.photo.chat_id, text, reply_parameters=_reply_to(
                        self.photo.message_id), message_thread_id=self.photo.thread_id)
                    self.pace.sent(self.photo.chat_id)
                    self.status_message_id, self._shown = sent.message_id, text
                    self.uploading.begin(self.bot, self.photo.chat_id, self.photo.thread_id)
                    self._uploading = True
            return
        # Telegram rate-limits edits: the latest text goes out at the chat's next turn, without holding up the
        # flow (which keeps reading the job's events meanwhile); texts superseded while waiting are never sent.
        if self._edit_later is None or self._edit_later.done():
            self._edit_later = asyncio.create_task(self._edit_when_allowed())

    async def _edit_when_allowed(self) -> None:
        while not self._finished and self._wanted != self._shown:
            await self.pace.turn(self.photo.chat_id)
            async with self._lock:
                if self._finished or self._wanted == self._shown:
                    return
                text = self._wanted
                try:
                    await self.bot.edit_message_text(text, chat_id=self.photo.chat_id,
                                                     message_id=self.status_message_id)
                    self._shown = text
                except TelegramError as err:  # deleted, rate limited: the job goes on, the next edit may work
                    logger.warning("could not edit the status message in chat %s: %s", self.photo.chat_id, err)
                    return
                finally:
                    self.pace.sent(self.photo.chat_id)

    async def result(self, done: Done, caption: str) -> None:
        """The picture as a reply to the photo, with its caption and buttons; then the status message goes."""
        await self.finish()
        options = dict(caption=caption[:CAPTION_LIMIT], reply_markup=result_buttons(done, self.speeds),
                       reply_parameters=_reply_to(self.photo.message_id), message_thread_id=self.photo.thread_id)
        try:
            sent = await self.bot.send_photo(self.photo.chat_id, done.image, filename=f"clay-{done.seed}.png",
                                             **options)
        except BadRequest as err:  # e.g. a shape Telegram will not show as a photo: send the PNG as a file
            logger.warning("sending the result as a photo failed (%s); sending it as a file", err)
            sent = await self.bot.send_document(self.photo.chat_id, done.image, filename=f"clay-{done.seed}.png",
                                                **options)
        if self.on_sent:
            self.on_sent(sent)
        await self._delete_status()

    async def error(self, text: str) -> None:
        """The reason there is no picture, in place of the status message (or as a reply to the photo)."""
        await self.finish()
        if self.status_message_id is not None:
            await self.pace.turn(self.photo.chat_id)
            try:
                await self.bot.edit_message_text(text, chat_id=self.photo.chat_id,
                                                 message_id=self.status_message_id)
                return
            except TelegramError as err:
                logger.warning("could not edit the status message into the error (%s); sending it", err)
        await self.bot.send_message(self.photo.chat_id, text, reply_parameters=_reply_to(self.photo.message_id),
                                    message_thread_id=self.photo.thread_id)

    def placeholder(self) -> dict[str, Any]:
        """The status message, for a restarted process to remove."""
        return {"status_message_id": self.status_message_id} if self.status_message_id is not None else {}

    async def finish(self) -> None:
        """No more status edits, and no more "sending photo…" for this request."""
        self._finished = True
        if self._uploading:
            self._uploading = False
            self.uploading.end(self.photo.chat_id, self.photo.thread_id)
        if self._edit_later is not None and not self._edit_later.done():
            self._edit_later.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._edit_later

    async def _delete_status(self) -> None:
        if self.status_message_id is None:
            return
        try:
            await self.bot.delete_message(self.photo.chat_id, self.status_message_id)
        except TelegramError as err:
            logger.warning("could not delete the status message in chat %s: %s", self.photo.chat_id, err)


# -- handlers --------------------------------------------------------------------------------------------------------


def download_limit(settings: TelegramSettings) -> int | None:
    """The Bot API's download limit, or None on a self-hosted server in local mode."""
    return None if settings.local_mode else DOWNLOAD_LIMIT


def style_commands(config: Config) -> list[str]:
    """One command per style (``/clay`` for the default); names Telegram cannot take as commands are skipped."""
    return [name for name in config.styles if COMMAND_NAME.fullmatch(name)]


def caption_pattern(commands: list[str]) -> re.Pattern[str]:
    """``/clay[@bot] [strength]``: groups 1 the command, 2 the bot named, 3 the rest."""
    return re.compile(rf"^/({'|'.join(map(re.escape, commands))})(?:@(\w+))?(?:\s+(.*))?$", re.DOTALL)


def help_text(config: Config, bot_username: str | None) -> str:
    """/start and /help: every way to ask, in a few lines."""
    settings = config.telegram
    default = config.styles[config.pipeline.default_style].default_strength
    limit = download_limit(settings)
    most_mb = min(config.bot.max_photo_mb, limit / 2**20 if limit else config.bot.max_photo_mb)
    mention = f"/clay@{bot_username}" if bot_username else "/clay@<my name>"
    lines = [
        "I turn photos into claymation pictures.",
        f"• Send a photo with the caption /clay, or /clay 0.6 to change it more (strength {MIN_STRENGTH:g}–"
        f"{MAX_STRENGTH:g}, default {default:g}). Send it as a file to skip Telegram's compression.",
        "• Or reply /clay [strength] to any photo in the chat.",
    ]
    if config.speed:
        lines.append(f"• Add a speed: /clay {next(iter(config.speed))} or /clay 0.6 {next(iter(config.speed))} is "
                     f"quicker, /clay best the full-quality run (speeds: {', '.join(config.speed_names())}).")
    if settings.reaction_emoji:
        lines.append(f"• In a group, react to a photo with {settings.reaction_emoji} and I answer with its clay "
                     f"version.")
    lines.append("• Under each picture: 🎲 Again (new seed), 💪 Stronger, 🪶 Weaker"
                 + (", and ⚡ Fast / 🎯 Best: the same picture at the other speed." if config.speed else "."))
    others = [f"/{name}" for name in style_commands(config) if name != config.pipeline.default_style]
    if others:
        lines.append(f"Other styles: {' '.join(others)}.")
    lines.append(f"Photos up to {most_mb:g} MB.")
    lines.append(f"Group admins: make me an admin so I see the group's photos and get reactions (Telegram sends "
                 f"reactions only to admin bots). Without that, my privacy mode shows me only commands: reply "
                 f"{mention} to a photo.")
    if config.safety.limit(nsfw=False) is not None:
        lines.append(f"I make all-ages pictures only. {SETTINGS_USAGE}")
    return "\n".join(lines)


class TelegramRequests:
    """The handlers and what they share: the flow, the photos seen lately, the requests in progress."""

    def __init__(self, config: Config, flow: RequestFlow, store: ClaybotDatabase | None = None) -> None:
        self.config, self.flow = config, flow
        self.store = store  # the chats' settings (NSFW); without one every chat is all-ages
        self.settings = config.telegram
        self.photos = RecentPhotos(self.settings.remember_photos, self.settings.remember_hours * 3600)
        self.commands = style_commands(config)
        self.running = RunningRequests()
        self.pace = ChatPace(self.settings.status_edit_interval)
        self.uploading = UploadingPhoto()
        self.caption_command = caption_pattern(self.commands)

    # -- the ways to ask ----------------------------------------------------------------------------------------------

    async def remember_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Every photo the bot sees, so a reaction on it later can be answered."""
        photo = photo_in(update.effective_message)
        if photo is not None:
            self.photos.remember(photo)

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start and /help."""
        await update.effective_message.reply_text(help_text(self.config, context.bot.username))

    async def on_captioned_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or file captioned ``/clay [strength]``."""
        message = update.effective_message
        match = self.caption_command.match(message.caption or "")
        if match is None or not _for_this_bot(match.group(2), context):
            return
        strength, speed = parse_options(match.group(3), self.config.speed_names())
        photo = photo_in(message)
        if photo is None:  # a caption on something else (a video, an audio file)
            raise UserError(f"There is no photo here to work on. {USAGE}")
        self.serve_in_task(context, update, photo, user_id=asker(update), style=match.group(1), strength=strength,
                           how="caption", speed=speed)

    async def on_clay_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/clay [strength]`` as a reply to a photo (on its own it answers with the usage)."""
        message = update.effective_message
        strength, speed = parse_options(" ".join(context.args or []), self.config.speed_names())
        photo = photo_in(message.reply_to_message)
        if photo is None:
            raise UserError(USAGE)
        style = message.text.split()[0].lstrip("/").split("@")[0].lower()
        self.serve_in_task(context, update, photo, user_id=asker(update), style=style, strength=strength, how="reply",
                           speed=speed)

    async def on_plain_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo without the command, in a private chat: say how to ask."""
        await update.effective_message.reply_text(
            "Reply /clay to this photo (or /clay 0.6 to change it more) and I'll sculpt it in clay. /help says more.",
            do_quote=True)

    async def on_reaction(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The configured emoji added to a photo the bot has seen; anything else is ignored quietly."""
        reaction = update.message_reaction
        emoji = self.settings.reaction_emoji

        def has(reactions) -> bool:
            return any(isinstance(r, ReactionTypeEmoji) and r.emoji == emoji for r in reactions)

        if not has(reaction.new_reaction) or has(reaction.old_reaction):
            return
        photo = self.photos.get(reaction.chat.id, reaction.message_id)
        if photo is None:
            logger.debug("reaction on message %s in chat %s: no photo seen there", reaction.message_id,
                         reaction.chat.id)
            return
        who = reaction.user or reaction.actor_chat
        self.serve_in_task(context, update, photo, user_id=who.id if who else 0, style=None, strength=None,
                           how="reaction")

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """🎲 / 💪 / 🪶 under a result: the same photo (the result's reply_to_message) again."""
        query = update.callback_query
        try:
            style, strength, seed, speed = parse_button(query.data or "")
        except ValueError as err:
            logger.info("telegram: unreadable button data from user %s: %s", query.from_user.id, str(err)[:100])
            await query.answer("I can't read this button (it may be from an older version of me); please send the "
                               "photo again.", show_alert=True)
            return
        try:
            button_speed(speed, self.config.speed_names())
        except UserError as err:
            await query.answer(str(err)[:200], show_alert=True)  # Telegram shows at most 200 characters
            return
        source = query.message.reply_to_message if isinstance(query.message, Message) else None
        try:
            photo = photo_in(source)
        except UserError:
            photo = None
        if photo is None:
            await query.answer("I can't find the original photo any more; please send it again.", show_alert=True)
            return
        at_speed = f", {speed}" if speed is not None and speed != "default" else ""
        await query.answer(f"Again, with a new seed{at_speed}." if seed is None
                           else f"Strength {strength:g}{at_speed}.")
        self.serve_in_task(context, update, photo, user_id=query.from_user.id, style=style, strength=strength,
                           seed=seed, how="button", speed=speed)

    # -- running a request --------------------------------------------------------------------------------------------

    def serve_in_task(self, context: ContextTypes.DEFAULT_TYPE, update: Update, photo: TelegramPhoto, *,
                      user_id: int, style: str | None, strength: float | None, how: str,
                      seed: int | None = None, speed: str | None = None) -> None:
        """Serve the request in its own task, so the next update is handled at once."""
        bot = context.bot

        async def download() -> bytes:
            try:
                file = await bot.get_file(photo.file_id)
            except BadRequest as err:  # in case the metadata had no size
                if "too big" in str(err).lower():
                    raise UserError(f"That file is larger than the {DOWNLOAD_LIMIT // 2**20} MB Telegram lets "
                                    f"bots download.") from None
                raise fetch_failed(err) from None
            except TelegramError as err:
                raise fetch_failed(err) from None
            # getFile tells the size even when the message did not (files sent without it, local mode)
            self.flow.check_size(file.file_size, download_limit(self.settings))
            out = io.BytesIO()
            try:
                await file.download_to_memory(out)
            except TelegramError as err:  # expired, or Telegram unreachable meanwhile
                raise fetch_failed(err) from None
            return out.getvalue()  # the buffer itself: one copy fewer than bytes(download_as_bytearray())

        ask = Ask(platform=PLATFORM, user_id=str(user_id), chat_id=str(photo.chat_id), download=download,
                  size=photo.size, style=style, strength=strength, seed=seed, speed=speed,
                  answer_to={"message_id": photo.message_id, "thread_id": photo.thread_id},
                  origin=f"update:{update.update_id}")
        reply = TelegramReply(bot, photo, pace=self.pace, uploading=self.uploading, on_sent=self._remember_result,
                              speeds=self.config.speed_names())
        logger.info("telegram request (%s) from user %s in chat %s on message %s: style %s, strength %s",
                    how, user_id, photo.chat_id, photo.message_id, style or "default",
                    "default" if strength is None else f"{strength:g}")
        self.running.add(context.application.create_task(
            self._serve(ask, reply), update=update, name=f"claybot-telegram-{photo.chat_id}-{photo.message_id}"))

    async def _serve(self, ask: Ask, reply: TelegramReply) -> None:
        try:
            ask = dataclasses.replace(ask, nsfw=await self.nsfw(int(ask.chat_id)))
            await self.flow.handle(ask, reply, platform_limit=download_limit(self.settings))
        finally:
            await reply.finish()

    async def nsfw(self, chat_id: int) -> bool:
        """Whether an admin marked this chat NSFW (/claysettings nsfw on)."""
        return self.store is not None and await self.store.get_bool(chat_scope(chat_id), "nsfw", False)

    # -- settings ----------------------------------------------------------------------------------------------------

    async def on_settings(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/claysettings`` shows this chat's settings; ``/claysettings nsfw on|off`` (chat admins) changes them."""
        message, chat = update.effective_message, update.effective_chat
        if self.store is None:
            raise UserError("Settings are not available: this claybot runs without its database.")
        args = [arg.lower() for arg in context.args or []]
        if args:
            if len(args) != 2 or args[0] != "nsfw" or args[1] not in ("on", "off"):
                raise UserError(SETTINGS_USAGE)
            anonymous_admin = message.sender_chat is not None and message.sender_chat.id == chat.id
            if not anonymous_admin and not await self._is_admin(context, chat.id, chat.type,
                                                                update.effective_user.id):
                raise UserError("Only this group's admins can change my settings.")
            await self.store.set(chat_scope(chat.id), "nsfw", args[1] == "on" or None)
            logger.info("telegram: chat %s set nsfw %s (user %s)", chat.id, args[1], update.effective_user.id)
        nsfw = await self.nsfw(chat.id)
        await message.reply_text(
            f"NSFW: {'on: any photo is fine here' if nsfw else 'off: I only make all-ages pictures here'}.\n"
            f"{SETTINGS_USAGE}", do_quote=True)

    @staticmethod
    async def _is_admin(context: ContextTypes.DEFAULT_TYPE, chat_id: int, chat_type: str, user_id: int) -> bool:
        """In a private chat the person is the chat; in a group, only its creator and administrators."""
        if chat_type == ChatType.PRIVATE:
            return True
        member = await context.bot.get_chat_member(chat_id, user_id)
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    def _remember_result(self, message: Message) -> None:
        with contextlib.suppress(UserError):  # a result sent as a PNG file is an image: never raises
            photo = photo_in(message)
            if photo is not None:
                self.photos.remember(photo)

    # -- the one place errors become chat lines ----------------------------------------------------------------------

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A UserError is answered with its own words; anything else is logged and gets a calm line."""
        error = context.error
        text = user_line(error, "handling a Telegram update", logger)
        if not isinstance(update, Update) or update.effective_chat is None:
            return
        message = update.effective_message
        try:
            if update.callback_query is not None and not isinstance(error, UserError):
                with contextlib.suppress(TelegramError):  # it may have been answered already
                    await update.callback_query.answer()
            await context.bot.send_message(
                update.effective_chat.id, text,
                reply_parameters=_reply_to(message.message_id) if isinstance(message, Message) else None,
                message_thread_id=message.message_thread_id
                if isinstance(message, Message) and message.is_topic_message else None)
        except TelegramError as err:
            logger.warning("could not tell chat %s about the error: %s", update.effective_chat.id, err)


def asker(update: Update) -> int:
    """Who asked, as the limits count people: the chat a message was sent on behalf of (every anonymous group
    admin and everyone posting as a channel share one Telegram user, so they are counted per such chat; chat ids
    are negative, user ids positive), else the person."""
    message = update.effective_message
    if message is not None and message.sender_chat is not None:
        return message.sender_chat.id
    return update.effective_user.id


def chat_scope(chat_id: int) -> str:
    """The settings-store scope of one Telegram chat."""
    return f"telegram:chat:{chat_id}"


def _for_this_bot(name: str | None, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """``/clay@otherbot`` is for another bot in the group."""
    return name is None or name.lower() == (context.bot.username or "").lower()


# A logger's filters see only the records logged on it, not its children's: name each logger that may quote a URL.
TOKEN_QUOTING_LOGGERS = ("telegram.Bot", "telegram.ext.ExtBot", "telegram.ext.Updater", "telegram.ext.Application",
                         "telegram.ext", __name__)


def hide_token_in_logs(token: str) -> None:
    """Keep the token out of every log line PTB or this module writes (httpx's request lines are silenced); the
    `claybot` command's own handler hides it from every other logger too."""
    hide_secret(token)
    for name in TOKEN_QUOTING_LOGGERS:
        if HIDE_SECRETS not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(HIDE_SECRETS)
    for noisy in ("httpx", "httpcore"):  # httpx logs each request's URL at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_application(config: Config, flow: RequestFlow, token: str,
                      store: ClaybotDatabase | None = None) -> Application:
    """The PTB Application, pointed at the configured Bot API server, with every handler registered here."""
    settings = config.telegram
    hide_token_in_logs(token)
    application = (
        Application.builder()
        .token(token)
        .base_url(settings.api_base_url)
        .base_file_url(settings.file_base_url)
        .local_mode(settings.local_mode)
        .connection_pool_size(CONNECTIONS).pool_timeout(POOL_TIMEOUT)
        .get_updates_request(telegram_polling(outage := Outage("the Telegram Bot API")))
        .build()
    )
    application.bot_data["outage"] = outage  # start_polling's error_callback: no traceback per failed poll
    requests = TelegramRequests(config, flow, store if store is not None else flow.store)
    application.bot_data["requests"] = requests

    only_new = filters.UpdateType.MESSAGE  # edits of old messages ask for nothing
    images = filters.PHOTO | filters.Document.IMAGE
    # group -1 sees every update before the others: remember photos for reactions, whatever else happens.
    application.add_handler(MessageHandler(only_new & images, requests.remember_photo), group=-1)
    application.add_handler(CommandHandler(["start", "help"], requests.on_help, filters=only_new))
    application.add_handler(CommandHandler("claysettings", requests.on_settings, filters=only_new))
    application.add_handler(MessageHandler(
        only_new & (filters.PHOTO | filters.Document.ALL) & filters.CaptionRegex(requests.caption_command),
        requests.on_captioned_photo))
    application.add_handler(CommandHandler(requests.commands, requests.on_clay_command, filters=only_new))
    application.add_handler(MessageHandler(only_new & filters.ChatType.PRIVATE & images, requests.on_plain_photo))
    application.add_handler(MessageHandler(only_new & filters.ChatType.PRIVATE & ~filters.COMMAND
                                           & ~filters.StatusUpdate.ALL, hint_for_plain_message))
    if settings.reaction_emoji:
        application.add_handler(MessageReactionHandler(
            requests.on_reaction, message_reaction_types=MessageReactionHandler.MESSAGE_REACTION_UPDATED))
    # every button press, whatever its data: today's, older formats, and data that is not ours all get an answer
    application.add_handler(CallbackQueryHandler(requests.on_button))
    application.add_error_handler(requests.on_error)
    return application


class TelegramFrontEnd:
    """`claybot run`'s Telegram glue: long-polls the Bot API and serves requests through the shared flow."""

    name = "telegram"

    def __init__(self, config: Config, flow: RequestFlow, token: str) -> None:
        self.config = config
        self.application = build_application(config, flow, token)
        self.requests: TelegramRequests = self.application.bot_data["requests"]

    async def start(self) -> None:
        """Check the token, then poll for messages, button presses and reactions."""
        settings = self.config.telegram
        try:
            await self.application.initialize()
        except InvalidToken:  # PTB's own message quotes the token: never let it reach a log or the console
            raise ConfigError(f"Telegram refused the bot token in {settings.token_env}; "
                              f"check it with @BotFather") from None
        except NetworkError as err:
            raise ClaybotError(f"cannot reach the Telegram Bot API at {settings.api_base_url}: {err}") from None
        await self.application.start()
        await self._set_commands()
        await self.application.updater.start_polling(timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES,
                                                     error_callback=self.application.bot_data["outage"].failed)
        logger.info("Telegram bot @%s is polling (reactions: %s)", self.application.bot.username,
                    settings.reaction_emoji or "off")

    async def _set_commands(self) -> None:
        default = self.config.pipeline.default_style
        commands = [BotCommand(name, "Sculpt a photo in clay: send with a photo or reply to one" if name == default
                               else f"The {name} style: send with a photo or reply to one")
                    for name in self.requests.commands]
        commands.append(BotCommand("claysettings", "This chat's settings (admins change them)"))
        commands.append(BotCommand("help", "How to use me"))
        try:
            await self.application.bot.set_my_commands(commands)
        except TelegramError as err:  # only the command menu is missing
            logger.warning("could not set the bot's command menu: %s", err)

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any]) -> None:
        """A recovered job's answer, replying to the photo: the picture with its caption, or the reason; then the
        status message the old process left is removed."""
        bot = self.application.bot
        where = {"reply_parameters": _reply_to(answer_to["message_id"]) if answer_to.get("message_id") else None,
                 "message_thread_id": answer_to.get("thread_id")}
        if done is None:
            await bot.send_message(int(chat_id), text, **where)
        else:
            await bot.send_photo(int(chat_id), photo=done.image, caption=text[:CAPTION_LIMIT], **where)
        if answer_to.get("status_message_id"):  # the old process's "Queued, #3" line
            with contextlib.suppress(TelegramError):
                await bot.delete_message(int(chat_id), answer_to["status_message_id"])

    async def ended(self) -> Exception:
        """python-telegram-bot polls again by itself after network errors and Telegram's hiccups: never."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stop_taking(self) -> None:
        """Stop polling; requests already running keep going and still send their answers."""
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()

    async def close(self) -> None:
        """Give running requests a moment to send their answers, then stop and shut the application down."""
        await self.stop_taking()
        late = await self.requests.running.finish()
        if late:
            logger.warning("%d Telegram request(s) still running at close were cancelled", late)
        self.requests.uploading.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()
