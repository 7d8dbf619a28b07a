"""Photos on Telegram: which file a message holds, the photos seen lately (for reactions), and the download."""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from telegram import Bot, Message
from telegram.error import BadRequest, TelegramError

from bot.config import TelegramSettings
from bot.flow import RequestFlow, is_image, not_an_image
from bot.options import UserError
from bot.telegram.hints import fetch_failed

# Telegram's Bot API lets bots download files up to 20 MB; a self-hosted server in local mode has no such limit.
# Should Telegram count a MB as 10**6 bytes, a getFile refused as "file is too big" still gets a clear answer.
DOWNLOAD_LIMIT = 20 * 2**20


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


def download_limit(settings: TelegramSettings) -> int | None:
    """The Bot API's download limit, or None on a self-hosted server in local mode."""
    return None if settings.local_mode else DOWNLOAD_LIMIT


async def download(bot: Bot, photo: TelegramPhoto, flow: RequestFlow, settings: TelegramSettings) -> bytes:
    """The photo's bytes, through getFile and Telegram's file server."""
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
    flow.check_size(file.file_size, download_limit(settings))
    out = io.BytesIO()
    try:
        await file.download_to_memory(out)
    except TelegramError as err:  # expired, or Telegram unreachable meanwhile
        raise fetch_failed(err) from None
    return out.getvalue()  # the buffer itself: one copy fewer than bytes(download_as_bytearray())


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
