"""/animate on one of claybot's pictures takes the picture's style and seed from its own 🎬 button data, never from
the caption's words (a caption is text: edited by nobody, but read back it is a guess)."""

from __future__ import annotations

import datetime

from telegram import Chat, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.telegram.buttons import animate_data, button_data
from bot.telegram.handlers import animate_button_of


def _picture(caption: str, markup: InlineKeyboardMarkup | None) -> Message:
    return Message(message_id=5, date=datetime.datetime.now(datetime.UTC), chat=Chat(1, "private"),
                   caption=caption, reply_markup=markup)


def test_the_style_and_seed_come_from_the_animate_button_not_the_caption():
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("🎲", callback_data=button_data("clay", 0.5, None))],
                                   [InlineKeyboardButton("🎬 Animate", callback_data=animate_data("clay", 42))]])
    picture = _picture("plastic · strength 0.5 · seed 7\nsmile", markup)  # the caption names another style
    assert animate_button_of(picture) == ("clay", 42)


def test_a_picture_without_its_button_animates_in_the_default_style():
    assert animate_button_of(_picture("clay · strength 0.5 · seed 7", None)) == (None, None)
    junk = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="c2a|||||")]])
    assert animate_button_of(_picture("clay", junk)) == (None, None)
