"""Small Telegram answers kept apart from the front end's wiring: the hint for a private message that asks for
nothing, and the answer to a photo Telegram would not hand over."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.flow import FETCH_FAILED
from bot.options import UserError
from bot.outage import reason

logger = logging.getLogger(__name__)

PLAIN_MESSAGE_HINT = ("Send me a photo with the caption /clay (or reply /clay to a photo) and I'll sculpt it in "
                      "clay. /help says more.")


async def hint_for_plain_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A private message that is neither a command nor a photo: say, in one line, how to ask."""
    message = update.effective_message
    if message is not None:
        await message.reply_text(PLAIN_MESSAGE_HINT, do_quote=True)


def fetch_failed(error: TelegramError) -> UserError:
    """Telegram refused to hand over a photo (getFile refused, the file expired, the API unreachable): logged in one
    line, and answered with "please send it again", which is all the person can do."""
    logger.warning("could not fetch a photo from Telegram: %s", reason(error))
    return UserError(FETCH_FAILED)
