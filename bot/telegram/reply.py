"""One Telegram request's answers: a status line replying to the photo, edited in place, then the picture (or clip)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from telegram import Bot, Message
from telegram.constants import ChatAction
from telegram.error import TelegramError

from bot.config import PackSettings
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
    """The flow's ``Reply`` on Telegram; the flow paces the status edits (bot/pacing.py). For a clip, ``photo`` is
    the picture it animates: the status line and the clip reply to it."""

    private = False  # everything it says is seen by the whole chat

    def __init__(self, bot: Bot, photo: TelegramPhoto, *, uploading: UploadingPhoto,
                 on_sent: Callable[[Message], None] | None = None, speeds: Sequence[str] = (),
                 animate: bool = False, clip: bool = False) -> None:
        self.bot, self.photo, self.uploading, self.on_sent = bot, photo, uploading, on_sent
        self.speeds = list(speeds)  # the config's speed presets, for the Fast/Best button
        self.animate = animate  # [animate] enabled: a picture gets the 🎬 button
        self.action = ChatAction.UPLOAD_VIDEO if clip else ChatAction.UPLOAD_PHOTO
        self.status_message_id: int | None = None
        self._uploading = False
        self._finished = False

    async def status(self, text: str) -> None:
        """Send the status message the first time, then edit it in place."""
        if self._finished:
            return
        if self.status_message_id is None:
            sent = await self.bot.send_message(self.photo.chat_id, text, reply_parameters=reply_to(
                self.photo.message_id), message_thread_id=self.photo.thread_id)
            self.status_message_id = sent.message_id
            self.uploading.begin(self.bot, self.photo.chat_id, self.photo.thread_id, self.action)
            self._uploading = True
        else:
            await self.bot.edit_message_text(text, chat_id=self.photo.chat_id, message_id=self.status_message_id)

    async def result(self, done: Done, caption: str) -> None:
        """The picture (or clip) as a reply to the photo, with its caption and buttons; then the status message goes."""
        await self.finish()
        sent = await send_result(self.bot, self.photo.chat_id, done, caption, speeds=self.speeds,
                                 reply_to_id=self.photo.message_id, thread_id=self.photo.thread_id,
                                 animate=self.animate)
        if self.on_sent:
            self.on_sent(sent)
        await self._delete_status()

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        """The reason there is no picture, in place of the status message (or as a reply to the photo)."""
        await self.finish()
        if self.status_message_id is not None:
            try:
                await self.bot.edit_message_text(text, chat_id=self.photo.chat_id,
                                                 message_id=self.status_message_id)
                return
            except TelegramError as err:
                logger.warning("could not edit the status message into the error (%s); sending it", err)
        await self.bot.send_message(self.photo.chat_id, text, reply_parameters=reply_to(self.photo.message_id),
                                    message_thread_id=self.photo.thread_id)

    def placeholder(self) -> dict[str, Any]:
        """The status message, for a restarted process to remove."""
        return {"status_message_id": self.status_message_id} if self.status_message_id is not None else {}

    async def finish(self) -> None:
        """No more status edits, and no more "sending photo…" for this request."""
        self._finished = True
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
