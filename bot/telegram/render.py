"""How a result looks on Telegram, built in one place for live answers and for answers after a restart."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import Bot, Message, ReplyParameters
from telegram.error import BadRequest

from bot.telegram.buttons import result_buttons
from pipeline.core.jobs import Done

logger = logging.getLogger(__name__)

CAPTION_LIMIT = 1024  # characters, Telegram's limit on a photo's caption


def reply_to(message_id: int | None) -> ReplyParameters | None:
    """Answer that message, or without a reply should it have been deleted meanwhile."""
    if not message_id:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


async def send_result(bot: Bot, chat_id: int, done: Done, caption: str, *, speeds: Sequence[str],
                      reply_to_id: int | None, thread_id: int | None) -> Message:
    """The picture, captioned, with its buttons, as a reply to the photo it was made from (the buttons find the
    photo there); sent as a PNG file when Telegram will not take it as a photo."""
    text, buttons, where = caption[:CAPTION_LIMIT], result_buttons(done, speeds), reply_to(reply_to_id)
    name = f"clay-{done.seed}.png"
    try:
        return await bot.send_photo(chat_id, done.image, filename=name, caption=text, reply_markup=buttons,
                                    reply_parameters=where, message_thread_id=thread_id)
    except BadRequest as err:  # e.g. a shape Telegram will not show as a photo: send the PNG as a file
        logger.warning("sending the result as a photo failed (%s); sending it as a file", err)
        return await bot.send_document(chat_id, done.image, filename=name, caption=text, reply_markup=buttons,
                                       reply_parameters=where, message_thread_id=thread_id)
