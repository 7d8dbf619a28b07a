"""The Telegram handlers: each way to ask becomes an ``Ask`` for the shared flow, run in its own task.

Ways to ask: a photo (or an image sent as a file) captioned ``/clay [strength]``; ``/clay [strength]`` as a reply to a
photo; in groups, a reaction with the configured emoji on a photo the bot has seen; the buttons under each result.
Clips ([animate]): the 🎬 button under a picture; ``/animate [seconds]`` as a reply to a picture (claybot's is animated
as it is, a person's photo is made clay first) or as a photo's caption.
Mistakes a user can fix are raised as ``UserError`` and answered by ``on_error``, the one place errors become chat
lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

from telegram import CallbackQuery, Message, ReactionType, ReactionTypeEmoji, Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.admission import Admitted
from bot.chat_settings import ChatSettings, Setting
from bot.config import Config
from bot.flow import Ask, RequestFlow, RunningRequests, user_line
from bot.journal import RateLimited
from bot.options import USAGE, UserError, button_speed, read_request, words_in
from bot.store import ClaybotDatabase
from bot.telegram.buttons import parse_animate, parse_button
from bot.telegram.flood import CHATTER, ReplyGaps, Skipped, paced
from bot.telegram.help import (
    ANIMATE_USAGE,
    PLAIN_PHOTO_HINT,
    SETTINGS_USAGE,
    animate_pattern,
    caption_pattern,
    help_text,
    start_text,
    style_commands,
)
from bot.telegram.payments import TelegramPayments, buy_buttons
from bot.telegram.photos import RecentPhotos, TelegramPhoto, download, download_limit, photo_in
from bot.telegram.render import CLIP_UPLOAD_LIMIT, reply_to
from bot.telegram.reply import TelegramReply, UploadingPhoto
from pipeline.core.jobs import BadRequest, QueueBusy, QueueClosed

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
# A chat's settings, declared once: /claysettings nsfw on lets any photo through there.
TELEGRAM_CHAT = ChatSettings("telegram:chat", nsfw=Setting(bool, False))
# "3", "2.5", "2,5": a clip's length in seconds; nothing longer than this is read as one
SECONDS = re.compile(r"\d{1,3}(?:[.,]\d{1,2})?")
PICTURE_GONE = "I can't read this picture any more; send it again and press 🎬 under the new one."


class TelegramRequests:
    """The handlers and what they share: the flow, the photos seen lately, the requests in progress."""

    def __init__(self, config: Config, flow: RequestFlow, store: ClaybotDatabase | None = None) -> None:
        self.config, self.flow = config, flow
        self.store = store  # the chats' settings (NSFW); without one every chat is all-ages
        self.settings = config.telegram
        self.photos = RecentPhotos(self.settings.remember_photos, self.settings.remember_hours * 3600)
        self.commands = style_commands(config)
        self.running = RunningRequests()
        self.uploading = UploadingPhoto()
        self.caption_command = caption_pattern(self.commands)
        self.animate_caption = animate_pattern()
        self.animating: set[tuple[int, int]] = set()  # (chat, message) of the pictures being animated right now
        self.gaps = ReplyGaps(self.settings.reply_gap)  # help, usage and refusals: once per person per gap, in groups
        self.payments: TelegramPayments | None = None  # set by build_application

    # -- the ways to ask ----------------------------------------------------------------------------------------------

    async def remember_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Every photo the bot sees, so a reaction on it later can be answered."""
        photo = photo_in(update.effective_message)
        if photo is not None:
            self.photos.remember(photo)

    async def on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start: three lines, pointing to /help."""
        await message_of(update).reply_text(start_text(self.config))

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/help: the whole text."""
        await self.say(context, update, help_text(self.config, context.bot.username))

    async def on_captioned_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or file captioned ``/clay [strength]``."""
        message = message_of(update)
        match = self.caption_command.match(message.caption or "")
        if match is None or not _for_this_bot(match.group(2), context):
            return
        request = read_request(match.group(3), self.config.speed_names(), list(self.config.styles))
        photo = photo_in(message)
        if photo is None:  # a caption on something else (a video, an audio file)
            raise UserError(f"There is no photo here to work on. {USAGE}")
        self.serve_in_task(context, update, photo, user_id=asker(update), style=request.style or match.group(1),
                           how="caption", options=request.options)

    async def on_clay_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/clay [strength]`` as a reply to a photo (on its own it answers with the usage)."""
        message = message_of(update)
        request = read_request(" ".join(context.args or []), self.config.speed_names(), list(self.config.styles))
        photo = photo_in(message.reply_to_message)
        if photo is None:
            raise UserError(USAGE)
        style = request.style or (message.text or "/").split()[0].lstrip("/").split("@")[0].lower()
        self.serve_in_task(context, update, photo, user_id=asker(update), style=style, how="reply",
                           options=request.options)

    async def on_plain_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo without the command, in a private chat: say how to ask."""
        await self.say(context, update, PLAIN_PHOTO_HINT, quote=True)

    async def on_reaction(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The configured emoji added to a photo the bot has seen; anything else is ignored quietly."""
        reaction = update.message_reaction
        if reaction is None:  # the handler's filter lets only reactions through
            return
        emoji = self.settings.reaction_emoji

        def has(reactions: Sequence[ReactionType]) -> bool:
            return any(isinstance(r, ReactionTypeEmoji) and r.emoji == emoji for r in reactions)

        if not has(reaction.new_reaction) or has(reaction.old_reaction):
            return
        photo = self.photos.get(reaction.chat.id, reaction.message_id)
        if photo is None:
            logger.debug("reaction on message %s in chat %s: no photo seen there", reaction.message_id,
                         reaction.chat.id)
            return
        who = reaction.user or reaction.actor_chat
        self.serve_in_task(context, update, photo, user_id=who.id if who else 0, style=None, how="reaction")

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """🎲 / 💪 / 🪶 / ⚡ under a result (``BUTTON_PATTERN``): the same photo (the result's reply_to_message)
        again."""
        query = update.callback_query
        if query is None:  # the handler's filter lets only button presses through
            return
        try:
            style, strength, seed, speed = parse_button(query.data or "")
        except ValueError as err:
            await unreadable_button(query, err)
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
        words = words_in(query.message.caption if isinstance(query.message, Message) else None)
        self.serve_in_task(context, update, photo, user_id=query.from_user.id, style=style, seed=seed, how="button",
                           options=picture(strength, speed, words), query=query,
                           toast=f"Again, with a new seed{at_speed}." if seed is None or strength is None
                           else f"Strength {strength:g}{at_speed}.")

    async def on_unknown_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A press whose data no button family claims (forged, or from a format that is gone): an answer all the
        same, never a spinning button."""
        if update.callback_query is not None:
            await unreadable_button(update.callback_query, ValueError("no button family has this data"))

    # -- clips ---------------------------------------------------------------------------------------------------------

    async def on_animate_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """🎬 under a picture (``ANIMATE_PATTERN``): a clip of THAT picture (the button's own message), replying to
        it."""
        query = update.callback_query
        if query is None:  # the handler's filter lets only button presses through
            return
        try:
            found = parse_animate(query.data or "")
            if found is None:  # longer than Telegram allows: not a 🎬 button's after all
                raise ValueError("callback data too long")
        except ValueError as err:
            await unreadable_button(query, err)
            return
        style, seed = found
        if isinstance(query.message, Message) and query.message.animation is not None:  # only by a forged press
            await query.answer("That is a clip already: press 🎬 under a picture.", show_alert=True)
            return
        try:  # a message older than 48 hours comes as an InaccessibleMessage, without its photo
            picture_ = photo_in(query.message) if isinstance(query.message, Message) else None
        except UserError:
            picture_ = None
        if picture_ is None:
            await query.answer(PICTURE_GONE, show_alert=True)
            return
        if (picture_.chat_id, picture_.message_id) in self.animating:
            await query.answer("I'm already animating this picture; the clip is on its way.")
            return
        if style is not None and style not in self.config.styles:  # the button's own words, not admission's
            await query.answer(f"This button asks for the style {style[:32]!r}, which I no longer have; please "
                               f"send the photo again."[:200], show_alert=True)
            return
        ask = self.ask(update, context, picture_, user_id=query.from_user.id, style=style, seed=seed, kind="clip",
                       options=clip())
        try:  # admitted before it is answered: a refusal (clips off, a limit, a style gone) is the press's alert
            admitted = await self.flow.admit(ask, platform_limit=download_limit(self.settings))
        except (UserError, BadRequest, RateLimited, QueueBusy, QueueClosed) as err:
            await query.answer(str(err)[:200], show_alert=True)  # Telegram shows at most 200 characters
            offer = getattr(err, "packs", None)  # out of credits: the packs to buy, under the line
            if offer and isinstance(query.message, Message):
                await context.bot.send_message(query.message.chat.id, str(err), reply_markup=buy_buttons(offer),
                                               message_thread_id=query.message.message_thread_id
                                               if query.message.is_topic_message else None)
            return
        await query.answer("Animating this picture…")
        self.serve_in_task(context, update, picture_, user_id=query.from_user.id, style=style, seed=seed,
                           how="🎬 button", kind="clip", options=clip(), admitted=admitted)

    async def on_animate_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/animate [seconds]`` as a reply to a picture (on its own it answers with the usage)."""
        message = message_of(update)
        seconds = self.clip_seconds(" ".join(context.args or []))
        self.animate(context, update, message.reply_to_message, seconds, ours=_from_bot(message.reply_to_message,
                                                                                         context))

    async def on_animate_caption(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo (or image file) captioned ``/animate [seconds]``: made clay first, then animated."""
        message = message_of(update)
        match = self.animate_caption.match(message.caption or "")
        if match is None or not _for_this_bot(match.group(1), context):
            return
        self.animate(context, update, message, self.clip_seconds(match.group(2)), ours=False)

    def animate(self, context: ContextTypes.DEFAULT_TYPE, update: Update, source: Message | None,
                seconds: float | None, *, ours: bool) -> None:
        """A clip of ``source``'s picture: claybot's own (``ours``) as it is, in the style and with the seed its 🎬
        button carries; a person's photo made clay first (one answer)."""
        if source is not None and (source.animation is not None or source.video is not None):
            raise UserError(f"That is a clip already. {ANIMATE_USAGE}")
        picture_ = photo_in(source)
        if picture_ is None:
            raise UserError(ANIMATE_USAGE)
        if (picture_.chat_id, picture_.message_id) in self.animating:
            raise UserError("I'm already animating that picture; the clip is on its way.")
        style, seed = animate_button_of(source) if ours and source is not None else (None, None)
        self.serve_in_task(context, update, picture_, user_id=asker(update), style=style, seed=seed, how="/animate",
                           kind="clip", options=clip(seconds), first=None if ours else "picture")

    @staticmethod
    def clip_seconds(text: str | None) -> float | None:
        """``"3"`` or ``"2.5"`` → seconds (admission checks them against [animate]); empty → None."""
        stripped = (text or "").strip()
        if not stripped:
            return None
        if not SECONDS.fullmatch(stripped):
            raise UserError(f"I could not read {stripped[:20]!r} as a number of seconds. {ANIMATE_USAGE}")
        return float(stripped.replace(",", "."))

    # -- running a request --------------------------------------------------------------------------------------------

    def ask(self, update: Update, context: ContextTypes.DEFAULT_TYPE, photo: TelegramPhoto, *, user_id: int,
            style: str | None, seed: int | None = None, kind: str = "picture",
            options: dict[str, Any] | None = None, first: str | None = None) -> Ask:
        """The request for ``photo``: fetched through the bot, answered replying to it."""
        bot = context.bot

        async def fetch() -> bytes:
            return await download(bot, photo, self.flow, self.settings)

        return Ask(platform=PLATFORM, user_id=str(user_id), chat_id=str(photo.chat_id), download=fetch,
                   size=photo.size, style=style, seed=seed, kind=kind, options=options or {}, first=first,
                   answer_to={"message_id": photo.message_id, "thread_id": photo.thread_id},
                   origin=f"update:{update.update_id}")

    def serve_in_task(self, context: ContextTypes.DEFAULT_TYPE, update: Update, photo: TelegramPhoto, *,
                      user_id: int, style: str | None, how: str, seed: int | None = None, kind: str = "picture",
                      options: dict[str, Any] | None = None, first: str | None = None,
                      admitted: Admitted | None = None, query: CallbackQuery | None = None, toast: str = "") -> None:
        """Serve the request in its own task, so the next update is handled at once (``admitted``: by the
        handler already). A clip of ``photo`` replies to it, in a file Telegram lets bots upload. A button press
        (``query``) is answered with ``toast`` once the request is let in, or with an alert saying why not."""
        ask = self.ask(update, context, photo, user_id=user_id, style=style, seed=seed, kind=kind, options=options,
                       first=first)
        is_clip = kind == "clip"
        reply = TelegramReply(context.bot, photo, uploading=self.uploading, on_sent=self.remember_result,
                              speeds=self.config.speed_names(), styles=list(self.config.styles),
                              animate=self.config.animate.enabled, clip=is_clip,
                              asker=user_id, gaps=self.gaps, query=query, toast=toast)
        logger.info("telegram %s request (%s) from user %s in chat %s on message %s: style %s, %s", kind, how,
                    user_id, photo.chat_id, photo.message_id, style or "default",
                    ", ".join(f"{k} {v}" for k, v in (options or {}).items() if v is not None) or "defaults")
        key = (photo.chat_id, photo.message_id)
        if is_clip:
            self.animating.add(key)
        self.running.add(context.application.create_task(
            self._serve(ask, reply, key if is_clip else None, admitted), update=update,
            name=f"claybot-telegram-{photo.chat_id}-{photo.message_id}"))

    async def _serve(self, ask: Ask, reply: TelegramReply, animating: tuple[int, int] | None = None,
                     admitted: Admitted | None = None) -> None:
        try:
            ask = dataclasses.replace(ask, nsfw=await self.nsfw(int(ask.chat_id)))
            await self.flow.handle(ask, reply, platform_limit=download_limit(self.settings), admitted=admitted)
        finally:
            if animating is not None:
                self.animating.discard(animating)
            await reply.finish()

    async def nsfw(self, chat_id: int) -> bool:
        """Whether an admin marked this chat NSFW (/claysettings nsfw on)."""
        return bool((await TELEGRAM_CHAT.read(self.store, chat_id))["nsfw"])

    def remember_result(self, message: Message) -> None:
        """A result the bot sent is a photo too: a reaction on it can be answered."""
        with contextlib.suppress(UserError):  # a result sent as a PNG file is an image: never raises
            photo = photo_in(message)
            if photo is not None:
                self.photos.remember(photo)

    # -- settings ----------------------------------------------------------------------------------------------------

    async def on_settings(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/claysettings`` shows this chat's settings; ``/claysettings nsfw on|off`` (chat admins) changes them."""
        message, chat, person = message_of(update), update.effective_chat, update.effective_user
        if chat is None or person is None:
            return
        if self.store is None:
            raise UserError("Settings are not available: this claybot runs without its database.")
        args = [arg.lower() for arg in context.args or []]
        if args:
            if len(args) != 2 or args[0] != "nsfw" or args[1] not in ("on", "off"):
                raise UserError(SETTINGS_USAGE)
            anonymous_admin = message.sender_chat is not None and message.sender_chat.id == chat.id
            if not anonymous_admin and not await self._is_admin(context, chat.id, chat.type, person.id):
                raise UserError("Only this group's admins can change my settings.")
            await TELEGRAM_CHAT.set(self.store, chat.id, "nsfw", args[1] == "on" or None)
            logger.info("telegram: chat %s set nsfw %s (user %s)", chat.id, args[1], person.id)
        nsfw = await self.nsfw(chat.id)
        await self.say(context, update,
                       f"NSFW: {'on: any photo is fine here' if nsfw else 'off: I only make all-ages pictures here'}."
                       f"\n{SETTINGS_USAGE}", quote=True)

    @staticmethod
    async def _is_admin(context: ContextTypes.DEFAULT_TYPE, chat_id: int, chat_type: str, user_id: int) -> bool:
        """In a private chat the person is the chat; in a group, only its creator and administrators."""
        if chat_type == ChatType.PRIVATE:
            return True
        member = await context.bot.get_chat_member(chat_id, user_id)
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    # -- the one place errors become chat lines ----------------------------------------------------------------------

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A UserError is answered with its own words; anything else is logged and gets a calm line. A button
        press is answered with an alert only the presser sees."""
        error = context.error
        if error is None:
            return
        text = user_line(error, "handling a Telegram update", logger)
        if not isinstance(update, Update) or update.effective_chat is None:
            return
        if update.callback_query is not None:
            with contextlib.suppress(TelegramError):  # it may have been answered already
                await update.callback_query.answer(text[:200], show_alert=True)
            return
        try:
            await self.say(context, update, text, quote=True)
        except TelegramError as err:
            logger.warning("could not tell chat %s about the error: %s", update.effective_chat.id, err)

    async def say(self, context: ContextTypes.DEFAULT_TYPE, update: Update, text: str, *,
                  quote: bool | None = None) -> None:
        """Help, a hint, a usage line or a refusal, replying to the update's message: in a group, at most one per
        person per ``telegram.reply_gap`` seconds, and only with the group's spare messages (bot/telegram/flood.py),
        so that command after command from one person cannot hold up anyone's picture. ``quote``: reply to the
        message (default: in groups, as PTB's ``reply_text`` does)."""
        chat, message = update.effective_chat, update.effective_message
        if chat is None:
            return
        who = asker(update)
        if not self.gaps.allow(chat.id, who):
            logger.info("telegram: not answering user %s in chat %s again so soon", who, chat.id)
            return
        quoted = quote if quote is not None else chat.type != ChatType.PRIVATE
        where, thread = None, None
        if isinstance(message, Message):
            where = reply_to(message.message_id) if quoted else None
            thread = message.message_thread_id if message.is_topic_message else None
        try:
            await paced(context.bot).send_message(chat.id, text, reply_parameters=where, message_thread_id=thread,
                                                  rate_limit_args=CHATTER)
        except Skipped as err:
            logger.info("%s", err)


def picture(strength: float | None = None, speed: str | None = None, words: str | None = None) -> dict[str, Any]:
    """A picture's options as a button asks for them (None: the style's)."""
    return {"strength": strength, "speed": speed, "words": words}


def clip(seconds: float | None = None) -> dict[str, Any]:
    """A clip's options: its length, in a file Telegram lets bots upload."""
    return {"seconds": seconds, "max_bytes": CLIP_UPLOAD_LIMIT}


def animate_button_of(message: Message) -> tuple[str | None, int | None]:
    """The style and seed a picture of claybot's carries in its 🎬 button (its own data: never its caption's
    words); (None, None) when it has none."""
    markup = message.reply_markup
    for row in markup.inline_keyboard if markup is not None else ():
        for button in row:
            try:
                found = parse_animate(button.callback_data) if isinstance(button.callback_data, str) else None
            except ValueError:
                continue
            if found is not None:
                return found
    return None, None


async def unreadable_button(query: CallbackQuery, err: ValueError) -> None:
    """The one answer to a press whose data does not parse, whichever family it claims to be."""
    logger.info("telegram: unreadable button data from user %s: %s", query.from_user.id, str(err)[:100])
    await query.answer("I can't read this button (it may be from an older version of me); please send the photo "
                       "again.", show_alert=True)


def asker(update: Update) -> int:
    """Who asked, as the limits count people: the chat a message was sent on behalf of (every anonymous group
    admin and everyone posting as a channel share one Telegram user, so they are counted per such chat; chat ids
    are negative, user ids positive), else the person."""
    message = update.effective_message
    if message is not None and message.sender_chat is not None:
        return message.sender_chat.id
    return update.effective_user.id if update.effective_user is not None else 0


def message_of(update: Update) -> Message:
    """The message a message handler was called for (its filters let through only updates that have one)."""
    message = update.effective_message
    if message is None:
        raise TypeError(f"update {update.update_id} has no message")
    return message


def _from_bot(message: Message | None, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Whether claybot sent that message (its pictures are animated as they are)."""
    return message is not None and message.from_user is not None and message.from_user.id == context.bot.id


def _for_this_bot(name: str | None, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """``/clay@otherbot`` is for another bot in the group."""
    return name is None or name.lower() == (context.bot.username or "").lower()
