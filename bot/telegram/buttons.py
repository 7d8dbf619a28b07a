"""A Telegram result's buttons: their labels, and the one encoder and one parser of their callback data.

The callback data carries the whole request (style, strength, seed, speed preset), so buttons keep working after a
restart with nothing stored; the photo is the message the result replies to. Bump ``BUTTON_PREFIX`` only when the
format changes after a release (nothing was released before ``c2``). The 🎬 Animate button (``ANIMATE_PREFIX``) makes
a clip of the picture it is under: that picture is the button's own message, so its data carries only the style
(its motion prompt) and the seed.

Each family of buttons has its own ``*_PATTERN``, which the Application routes on (bot/telegram/app.py); it matches
only the family's prefix, so a garbled press of a family still reaches that family's parser and gets its answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.options import speed_toggle, style_switch, toggle_label, variant
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH, MP4, Done

BUTTON_PREFIX = "c2"
ANIMATE_PREFIX = "c2a"
BUTTON_PATTERN = re.compile(rf"^{BUTTON_PREFIX}\|")  # 🎲 / 💪 / 🪶 / ⚡ (``c2a|`` does not match it)
ANIMATE_PATTERN = re.compile(rf"^{ANIMATE_PREFIX}\|")  # 🎬
ANIMATE_LABEL = "🎬 Animate"
SPEED_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # what config accepts as a [speed.*] name, and "default"
MAX_CALLBACK_DATA = 64  # bytes, Telegram's limit
LABELS = {"again": "🎲 Again", "stronger": "💪 Stronger", "weaker": "🪶 Weaker", "Fast": "⚡ Fast", "Best": "🎯 Best"}


def button_data(style: str, strength: float | None, seed: int | None, speed: str | None = None) -> str:
    """Callback data that carries the whole request (max 64 bytes): ``c2|style|strength|seed|speed`` (an empty
    strength: a style whose engine has none; an empty seed: a new one; an empty speed: the style's own preset; an
    empty style: the default, when the name is too long). The person's own words are the result's caption's."""
    tail = f"{'' if strength is None else f'{strength:g}'}|{'' if seed is None else seed}|{speed or ''}"
    data = f"{BUTTON_PREFIX}|{style}|{tail}"
    if len(data.encode()) > MAX_CALLBACK_DATA:  # a very long style name: fall back to the default style
        data = f"{BUTTON_PREFIX}||{tail}"
    return data


def parse_button(data: str) -> tuple[str | None, float | None, int | None, str | None]:
    """``button_data``'s (style, strength, seed, speed); ValueError for anything else."""
    if len(data.encode()) > MAX_CALLBACK_DATA:  # Telegram's own limit: anything longer is not ours, and is not parsed
        raise ValueError("callback data too long")
    prefix, _, rest = data.partition("|")
    fields = rest.split("|")
    if prefix != BUTTON_PREFIX or len(fields) != 4:
        raise ValueError(f"unknown button format {prefix[:8]!r}")
    style, strength, seed, speed = fields
    value = float(strength) if strength else None
    if value is not None and not MIN_STRENGTH <= value <= MAX_STRENGTH:  # NaN fails this too
        raise ValueError(f"strength {strength!r} out of range")
    if seed and not (seed.isascii() and seed.isdigit() and int(seed) <= MAX_SEED):
        raise ValueError(f"seed {seed!r} out of range")
    if style != style.strip():
        raise ValueError(f"style {style!r}")
    if speed and not SPEED_NAME.fullmatch(speed):
        raise ValueError(f"speed {speed!r}")
    return style or None, value, int(seed) if seed else None, speed or None


def animate_data(style: str, seed: int) -> str:
    """The 🎬 button's callback data: ``c2a|style|seed`` (an empty style: the default, when the name is too long)."""
    data = f"{ANIMATE_PREFIX}|{style}|{seed}"
    return data if len(data.encode()) <= MAX_CALLBACK_DATA else f"{ANIMATE_PREFIX}||{seed}"


def parse_animate(data: str) -> tuple[str | None, int] | None:
    """``animate_data``'s (style, seed); None when the data is not a 🎬 button's at all (another button's);
    ValueError when it claims to be one and is garbled."""
    if len(data.encode()) > MAX_CALLBACK_DATA:
        return None  # not ours: parse_button refuses it
    prefix, _, rest = data.partition("|")
    if prefix != ANIMATE_PREFIX:
        return None
    fields = rest.split("|")
    if len(fields) != 2:
        raise ValueError("a 🎬 button needs a style and a seed")
    style, seed = fields
    if not (seed.isascii() and seed.isdigit() and int(seed) <= MAX_SEED):
        raise ValueError(f"seed {seed[:20]!r} out of range")
    if style != style.strip():
        raise ValueError(f"style {style[:20]!r}")
    return style or None, int(seed)


def result_buttons(done: Done, speeds: Sequence[str] = (), *, animate: bool = False,
                   styles: Sequence[str] = ()) -> InlineKeyboardMarkup | None:
    """🎲 Again, 💪 Stronger and 🪶 Weaker (the flow's ``variant`` rule), each with the picture's speed preset; and
    ⚡ Fast / 🎯 Best (same seed and strength, the other preset) when the config has presets (``speeds``: the
    config's speed names, "default" first); only 🎲 Again for a picture without a strength (the edit engine's);
    🎨 and the next style (``styles``: the config's) when there are several: the same photo and words in it; with
    ``animate`` ([animate] enabled), 🎬 Animate on a row of its own.
    A clip has no buttons (None)."""
    if done.media == MP4:
        return None
    def button(action: str, speed: str, label: str) -> InlineKeyboardButton:
        data = button_data(done.style, *variant(action, done.strength, done.seed), speed)
        return InlineKeyboardButton(LABELS[label], callback_data=data)

    if not done.strength:  # an engine without strength or speed presets (the edit engine): only 🎲 means something
        rows = [[InlineKeyboardButton(LABELS["again"], callback_data=button_data(done.style, None, None))]]
    else:
        row = [button(action, done.speed, action) for action in ("again", "stronger", "weaker")]
        other = speed_toggle(done.speed, list(speeds))
        if other is not None:
            row.append(button("speed", other, toggle_label(other)))
        rows = [row]
    switch = style_switch(done.style, styles)
    if switch is not None:  # a new seed in the other style, at its own strength and speed; the words stay
        rows[0].append(InlineKeyboardButton(f"🎨 {switch.capitalize()}", callback_data=button_data(switch, None, None)))
    if animate:
        rows.append([InlineKeyboardButton(ANIMATE_LABEL, callback_data=animate_data(done.style, done.seed))])
    return InlineKeyboardMarkup(rows)
