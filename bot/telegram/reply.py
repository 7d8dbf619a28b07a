"""One Telegram request's answers: a status line replying to the photo, edited in place, then the picture (or clip)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from telegram import Bot, CallbackQuery, Message
from telegram.constants import ChatAction
from telegram.error import TelegramError

from bot.config import PackSettings
from bot.telegram.flood import CHATTER, STATUS, ReplyGaps, Skipped, limiter_of, paced
from bot.telegram.payments import buy_buttons
from bot.telegram.photos import TelegramPhoto
from bot.telegram.render import reply_to, send_result
from pipeline.core.jobs import Done

logger = logging.getLogger(__name__)

CHAT_ACTION_EVERY = 4.5  # a chat action shows for 5 s or until the next message


Key = tuple[int, int | None, ChatAction]


class UploadingPhoto:
    """Telegram's "sending photo…" (or "sending video…" for a clip) in every chat with a request under way: one loop
    per chat and action, not per request."""

    def __init__(self) -> None:
        self._requests: dict[Key, int] = {}
        self._loops: dict[Key, asyncio.Task] = {}

    def begin(self, bot: Bot, chat_id: int, thread_id: int | None,
              action: ChatAction = ChatAction.UPLOAD_PHOTO) -> None:
        """A request in this chat is under way."""
        key = (chat_id, thread_id, action)
        self._requests[key] = self._requests.get(key, 0) + 1
        if key not in self._loops:
            self._loops[key] = asyncio.create_task(self._show(bot, chat_id, thread_id, action))

    def end(self, chat_id: int, thread_id: int | None, action: ChatAction = ChatAction.UPLOAD_PHOTO) -> None:
        """A request in this chat is answered."""
        key = (chat_id, thread_id, action)
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
    async def _show(bot: Bot, chat_id: int, thread_id: int | None, action: ChatAction) -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, action, message_thread_id=thread_id)
            except TelegramError as err:
                logger.debug("chat action failed in chat %s: %s", chat_id, err)
            await asyncio.sleep(CHAT_ACTION_EVERY)


class TelegramReply:
    """The flow's ``Reply`` on Telegram; the flow paces the status edits (bot/pacing.py), Telegram's flood limits
    are bot/telegram/flood.py's. For a clip, ``photo`` is the picture it animates: the status line and the clip reply
    to it. For a button press (``query``), the press is answered with ``toast`` once the request is let in, and a
    refusal before that is an alert only the presser sees, not a line in the chat."""

    def __init__(self, bot: Bot, photo: TelegramPhoto, *, uploading: UploadingPhoto,
                 on_sent: Callable[[Message], None] | None = None, speeds: Sequence[str] = (),
                 styles: Sequence[str] = (), animate: bool = False, clip: bool = False, asker: int = 0,
                 gaps: ReplyGaps | None = None,
                 query: CallbackQuery | None = None, toast: str = "") -> None:
        self.bot, self.photo, self.uploading, self.on_sent = bot, photo, uploading, on_sent
        self.speeds = list(speeds)  # the config's speed presets, for the Fast/Best button
        self.styles = list(styles)  # the config's styles, for the 🎨 button
        self.animate = animate  # [animate] enabled: a picture gets the 🎬 button
        self.action = ChatAction.UPLOAD_VIDEO if clip else ChatAction.UPLOAD_PHOTO
        self.asker, self.gaps = asker, gaps  # who asked; refusals in a group at most once per person per gap
        self.query, self.toast = query, toast
        self.status_message_id: int | None = None
        self._heard = False  # the request was let in (its first status line was asked for)
        self._query_answered = False
        self._uploading = False
        self._finished = False
        self._limiter = limiter_of(bot)
        if self._limiter is not None:  # the group keeps room for this request's answer
            self._limiter.expect(photo.chat_id)

    @property
    def private(self) -> bool:
        """A button press's refusals are alerts the presser alone sees; everything else the whole chat sees."""
        return self.query is not None

    async def status(self, text: str) -> None:
        """Send the status message the first time, then edit it in place; skipped when the group's messages are
        kept for answers (bot/telegram/flood.py): "sending photo…" still shows the request was heard."""
        if self._finished:
            return
        if not self._heard:
            self._heard = True
            await self._answer_query(self.toast)
            self.uploading.begin(self.bot, self.photo.chat_id, self.photo.thread_id, self.action)
            self._uploading = True
        try:
            if self.status_message_id is None:
                sent = await paced(self.bot).send_message(
                    self.photo.chat_id, text, reply_parameters=reply_to(self.photo.message_id),
                    message_thread_id=self.photo.thread_id, rate_limit_args=STATUS)
                self.status_message_id = sent.message_id
            else:
                await paced(self.bot).edit_message_text(text, chat_id=self.photo.chat_id,
                                                        message_id=self.status_message_id, rate_limit_args=STATUS)
        except Skipped as err:
            logger.debug("%s", err)

    async def result(self, done: Done, caption: str) -> None:
        """The picture (or clip) as a reply to the photo, with its caption and buttons; then the status message goes.
        Raises when Telegram would not take it (the journal then keeps the job for a restarted claybot)."""
        await self.finish()
        sent = await send_result(self.bot, self.photo.chat_id, done, caption, speeds=self.speeds,
                                 reply_to_id=self.photo.message_id, thread_id=self.photo.thread_id,
                                 animate=self.animate, styles=self.styles)
        if self.on_sent:
            self.on_sent(sent)
        await self._delete_status()

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        """The reason there is no picture, in place of the status message (or as a reply to the photo); ``offer``:
        the credit packs to buy (a refusal for want of credits), one button each. A refusal before the request was
        let in (a limit, a bad option) is a button's alert, or a spare line in the chat."""
        if not self._heard:
            await self._refuse(text, offer)
            return
        await self.finish()
        markup = buy_buttons(offer)
        if self.status_message_id is not None:
            try:
                await self.bot.edit_message_text(text, chat_id=self.photo.chat_id,
                                                 message_id=self.status_message_id, reply_markup=markup)
                return
            except TelegramError as err:
                logger.warning("could not edit the status message into the error (%s); sending it", err)
        await self.bot.send_message(self.photo.chat_id, text, reply_parameters=reply_to(self.photo.message_id),
                                    message_thread_id=self.photo.thread_id, reply_markup=markup)

    async def _refuse(self, text: str, offer: Sequence[PackSettings] = ()) -> None:
        if self.query is not None:
            await self._answer_query(text, alert=True)
            if not offer:  # an alert carries no buttons: packs to buy come as a line of their own
                return
        chat = self.photo.chat_id
        if self.gaps is not None and not self.gaps.allow(chat, self.asker):
            logger.info("telegram: not telling user %s in chat %s again so soon: %s", self.asker, chat, text[:80])
            return
        try:
            await paced(self.bot).send_message(chat, text, reply_parameters=reply_to(self.photo.message_id),
                                               message_thread_id=self.photo.thread_id, rate_limit_args=CHATTER,
                                               reply_markup=buy_buttons(offer))
        except Skipped as err:
            logger.info("%s: %s", err, text[:80])

    async def _answer_query(self, text: str, *, alert: bool = False) -> None:
        """The button press's answer (once): a toast, or an alert (Telegram shows at most 200 characters)."""
        if self.query is None or self._query_answered:
            return
        self._query_answered = True
        try:
            await self.query.answer(text[:200] or None, show_alert=alert)
        except TelegramError as err:  # too old (the process was busy or restarting): the request goes on
            logger.warning("could not answer the button press of user %s: %s", self.asker, err)

    def placeholder(self) -> dict[str, Any]:
        """The status message, for a restarted process to remove."""
        return {"status_message_id": self.status_message_id} if self.status_message_id is not None else {}

    async def finish(self) -> None:
        """No more status edits, and no more "sending photo…" for this request; a button press is answered."""
        if not self._finished and self._limiter is not None:
            self._limiter.settled(self.photo.chat_id)
        self._finished = True
        await self._answer_query("")
        if self._uploading:
            self._uploading = False
            self.uploading.end(self.photo.chat_id, self.photo.thread_id, self.action)

    async def _delete_status(self) -> None:
        if self.status_message_id is None:
            return
        try:
            await self.bot.delete_message(self.photo.chat_id, self.status_message_id)
        except TelegramError as err:
            logger.warning("could not delete the status message in chat %s: %s", self.photo.chat_id, err)
