"""How a result looks on Telegram (a picture, or a clip), built in one place for live answers and for answers after a
restart."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import Bot, Message, ReplyParameters
from telegram.error import BadRequest

from bot.telegram.buttons import result_buttons
from pipeline.core.jobs import MP4, Done

logger = logging.getLogger(__name__)

CAPTION_LIMIT = 1024  # characters, Telegram's limit on a photo's caption
CLIP_UPLOAD_LIMIT = 50 * 10**6  # bytes a bot may upload through the Bot API ("50 MB"; counted the smaller way)
CLIP_WRITE_TIMEOUT = 120.0  # seconds to upload a clip: PTB's 20 s for files is short for tens of MB


def reply_to(message_id: int | None) -> ReplyParameters | None:
    """Answer that message, or without a reply should it have been deleted meanwhile."""
    if not message_id:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


async def send_result(bot: Bot, chat_id: int, done: Done, caption: str, *, speeds: Sequence[str],
                      reply_to_id: int | None, thread_id: int | None, animate: bool = False,
                      styles: Sequence[str] = ()) -> Message:
    """The picture, captioned, with its buttons (🎬 Animate too with ``animate``), as a reply to the photo it was made
    from (the buttons find the photo there); sent as a PNG file when Telegram will not take it as a photo. A clip
    goes to ``send_clip``."""
    if done.media == MP4:
        return await send_clip(bot, chat_id, done, caption, reply_to_id=reply_to_id, thread_id=thread_id)
    text, where = caption[:CAPTION_LIMIT], reply_to(reply_to_id)
    buttons = result_buttons(done, speeds, animate=animate, styles=styles)
    name = f"clay-{done.seed}.png"
    try:
        return await bot.send_photo(chat_id, done.image, filename=name, caption=text, reply_markup=buttons,
                                    reply_parameters=where, message_thread_id=thread_id)
    except BadRequest as err:  # e.g. a shape Telegram will not show as a photo: send the PNG as a file
        logger.warning("sending the result as a photo failed (%s); sending it as a file", err)
        return await bot.send_document(chat_id, done.image, filename=name, caption=text, reply_markup=buttons,
                                       reply_parameters=where, message_thread_id=thread_id)


async def send_clip(bot: Bot, chat_id: int, done: Done, caption: str, *, reply_to_id: int | None,
                    thread_id: int | None) -> Message:
    """The clip, captioned, as a reply to the picture it animates: sendAnimation, which plays an H.264 MP4 without
    sound inline and loops it; sent as an MP4 file when Telegram will not take it as an animation. No buttons."""
    text, where, name = caption[:CAPTION_LIMIT], reply_to(reply_to_id), f"clay-{done.seed}.mp4"
    try:
        return await bot.send_animation(chat_id, done.image, filename=name, caption=text, width=done.width,
                                        height=done.height, reply_parameters=where, message_thread_id=thread_id,
                                        write_timeout=CLIP_WRITE_TIMEOUT)
    except BadRequest as err:
        logger.warning("sending the clip as an animation failed (%s); sending it as a file", err)
        return await bot.send_document(chat_id, done.image, filename=name, caption=text, reply_parameters=where,
                                       message_thread_id=thread_id, write_timeout=CLIP_WRITE_TIMEOUT)
