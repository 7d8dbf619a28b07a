"""What people may ask for in a request, and its one reading: a style, strength and speed words and their own
words, and the result buttons' rules (again, stronger, weaker, the Fast/Best toggle). Both front ends parse with
these; the flow and intake settle the rest."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core import jobs
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import MAX_STRENGTH, MIN_STRENGTH, BadRequest
from pipeline.core.words import clean_words

STRENGTH_STEP = 0.1
USAGE = ("Usage: /clay [strength 0.05–1] [your own words], sent with a photo or as a reply to one. "
         "Example: /clay 0.6 as a knight in armour")


class UserError(ClaybotError):
    """Something the user can fix; the message says how."""


# A number, then an optional "%": no two parts can match the same characters, so a failed match never backtracks.
STRENGTH = re.compile(r"(\d+(?:[.,]\d+)?|[.,]\d+)\s*(%?)")
MAX_STRENGTH_CHARS = 16  # "0.05", "60 %", "0,6": nothing longer is a strength, so nothing longer is parsed


def parse_strength(text: str | None) -> float | None:
    """``"0.6"``, ``"60%"`` or ``".6"`` → 0.6; empty → None (the style's default); anything else → UserError.

    The text comes from strangers (a hostile client may send a caption of a megabyte): anything longer than a
    strength can be is refused before any pattern looks at it."""
    stripped = (text or "").strip()
    if not stripped:
        return None
    match = STRENGTH.fullmatch(stripped) if len(stripped) <= MAX_STRENGTH_CHARS else None
    if match is None:
        raise UserError(f"I could not read {stripped[:20]!r} as a strength. {USAGE}")
    value = float(match.group(1).replace(",", "."))
    if match.group(2):
        value /= 100
    check_strength(value)
    return value


def variant(action: str, strength: float, seed: int) -> tuple[float, int | None]:
    """The strength and seed of a result's "again", "stronger" or "weaker" (None: a new random seed).

    Again keeps the strength and takes a new seed. Stronger and weaker move the strength a tenth and keep the seed,
    so only the strength changes — except at the end of the range, where the strength cannot move: there they take
    a new seed, so the button still makes a new picture. "speed" (the Fast/Best toggle) keeps both: only the speed
    preset changes."""
    if action == "again":
        return strength, None
    if action == "speed":
        return strength, seed
    moved = stronger(strength) if action == "stronger" else weaker(strength)
    return moved, seed if moved != strength else None


def speed_toggle(speed: str, speeds: list[str]) -> str | None:
    """The preset a result's Fast/Best button switches to: from the default, the first [speed.*] preset ("Fast");
    from any other, the default ("Best"). None when the config has no presets (no such button)."""
    if len(speeds) < 2:
        return None
    return speeds[1] if speed == speeds[0] else speeds[0]


def style_switch(style: str, styles: Sequence[str]) -> str | None:
    """The style a result's 🎨 button remakes the photo in: the next of the config's styles after the picture's
    (cyclic); None with a single style (no such button)."""
    names = list(styles)
    if len(names) < 2:
        return None
    return names[(names.index(style) + 1) % len(names)] if style in names else names[0]


def toggle_label(speed: str) -> str:
    """The Fast/Best button's words for the preset it switches to."""
    return "Best" if speed == "default" else "Fast"


def button_speed(speed: str | None, speeds: list[str]) -> str | None:
    """A button's speed preset, checked against the config's (None: old buttons, the style's own preset); a preset
    the config no longer has → UserError that says so."""
    if speed is not None and speed not in speeds:
        raise UserError(f"This button asks for the speed {speed[:32]!r}, which I no longer have "
                        f"(speeds: {', '.join(speeds)}); please send the photo again.")
    return speed


@dataclass(frozen=True)
class Request:
    """What a caption or command's words ask for: ``/clay [style] [strength] [speed] [your own words…]``."""

    style: str | None  # a style named first ("/clay likeness as a knight"); None: the command's own
    options: dict[str, Any]  # the picture's options: strength, speed, words (None or "": the style's)


def read_request(text: str | None, speeds: list[str], styles: Sequence[str] = ()) -> Request:
    """``"likeness as a knight"``, ``"0.6 fast in a snowy street"``, ``"0.6"`` → a Request. The options come first,
    in any order (a style only first): a number is the strength, a [speed.*] name the preset ("best": the default);
    whatever follows is the person's own words (bounded: ``pipeline.core.words``). A number that is not a strength
    → UserError with the usage; so are words too long or not plain text.

    The text comes from strangers (a hostile client may send a caption of a megabyte): a strength is never parsed
    beyond ``MAX_STRENGTH_CHARS`` and words never beyond a few hundred characters."""
    tokens = (text or "").split()
    style = tokens.pop(0).lower() if tokens and tokens[0].lower() in styles else None
    strength_text: str | None = None
    speed: str | None = None
    while tokens:
        token = tokens[0]
        word = token.lower()
        word = "default" if word == "best" and "best" not in speeds else word
        if speed is None and len(speeds) > 1 and word in speeds:
            speed = word
        elif strength_text is None and (token[:1] in "0123456789.," or token[:1] in "+-" and token[1:2].isdigit()):
            if len(tokens) > 1 and tokens[1] == "%":  # "60 %"
                token += tokens.pop(1)
            strength_text = token
        else:
            break
        tokens.pop(0)
    try:
        words = clean_words(" ".join(tokens))
    except BadRequest as err:
        raise UserError(f"{err} {USAGE}") from None
    return Request(style, {"strength": parse_strength(strength_text), "speed": speed, "words": words or None})


def check_strength(value: float) -> float:
    """A strength within the range users may ask for (the jobs' one rule), refused with the usage line."""
    try:
        return jobs.check_strength(value)
    except BadRequest as err:
        raise UserError(f"{err} {USAGE}") from None


def stronger(strength: float) -> float:
    """The "stronger" button's strength."""
    return round(min(MAX_STRENGTH, strength + STRENGTH_STEP), 2)


def weaker(strength: float) -> float:
    """The "weaker" button's strength."""
    return round(max(MIN_STRENGTH, strength - STRENGTH_STEP), 2)


WORDS_FIELD = "Your words"  # a Discord result's embed field that carries them


def words_line(words: str) -> str:
    """A result's line that shows the person's own words (and from which Again reads them back): “as a knight”."""
    return f"“{words}”"


def words_in(caption: str | None) -> str | None:
    """The words a result's caption shows (``words_line``, its second line); None when it shows none."""
    lines = (caption or "").split("\n")
    line = lines[1] if len(lines) > 1 else ""
    if len(line) >= 2 and line.startswith("“") and line.endswith("”"):
        try:
            return clean_words(line[1:-1]) or None
        except BadRequest:  # not a line of ours after all
            return None
    return None
