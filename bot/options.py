"""What people may ask for in a request, and its one reading: strength and speed words, and the result buttons'
rules (again, stronger, weaker, the Fast/Best toggle). Both front ends parse with these; the flow and intake settle
the rest."""

from __future__ import annotations

import re
from typing import Any

from pipeline.core import jobs
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import MAX_STRENGTH, MIN_STRENGTH, BadRequest

STRENGTH_STEP = 0.1
USAGE = "Usage: /clay [strength 0.05–1], sent with a photo or as a reply to one. Example: /clay 0.6"


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


def parse_options(text: str | None, speeds: list[str]) -> tuple[float | None, str | None]:
    """``"0.6 fast"``, ``"fast"``, ``"0.6"`` → (strength, speed preset); a word that names no preset → UserError.

    ``speeds``: the config's presets ("default" among them; "best" is another name for it)."""
    words = (text or "").split()
    # Preset names start with a letter (the config checks); anything else is read, and refused, as a strength.
    named = [word.lower() for word in words if word[:1].isalpha()]
    speed = None
    for word in named:
        word = "default" if word == "best" and "best" not in speeds else word
        if word not in speeds or speed is not None:
            if len(speeds) == 1:  # no presets configured: the words can only have been meant as a strength
                parse_strength(text)
            raise UserError(f"I could not read {word[:20]!r}: give a strength and at most one speed "
                            f"({', '.join(speeds)}). {USAGE} {speeds[-1].capitalize()}: /clay 0.6 {speeds[-1]}")
        speed = word
    rest = " ".join(word for word in words if not word[:1].isalpha())
    return parse_strength(rest), speed


def picture_words(text: str | None, speeds: list[str]) -> dict[str, Any]:
    """A picture's options as a caption or command's words ask for them (``"0.6 fast"``): what Telegram's /clay
    hands the flow, as the kind's options (pipeline/core/kinds/picture.py settles the rest)."""
    strength, speed = parse_options(text, speeds)
    return {"strength": strength, "speed": speed}


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
