"""Errors a user or an operator can cause, each with a message written for them."""

from __future__ import annotations


class ClaybotError(Exception):
    """Base of claybot's own errors; ``str(err)`` is the message to show."""


class BadImage(ClaybotError):
    """The uploaded file is not an image claybot can work on."""


class TooLarge(BadImage):
    """The image is too large (bytes or pixels) to work on."""


class BadRequest(ClaybotError):
    """A style, strength, kind or other option the config does not allow; the message is for the user."""


class ModelError(ClaybotError):
    """A model named in the config cannot be found, fetched or loaded."""


def quoted(value: object, limit: int = 80) -> str:
    """A value from outside (a Redis field, a name, a reason) as it may appear in a log line or an error: at most
    ``limit`` characters (bytes for bytes) of it, quoted with control characters escaped, and its full length when it
    was cut. Only the part shown is copied, so a 100 MB field costs nothing here."""
    head: str | bytes
    if isinstance(value, bytes | bytearray | memoryview):
        size, unit, head = len(value), "bytes", bytes(value[:limit])
    else:
        text = value if isinstance(value, str) else str(value)
        size, unit, head = len(text), "characters", text[:limit]
    shown = repr(head)  # quotes, and escapes newlines, ANSI codes and every other unprintable character
    return shown if size <= limit else f"{shown}… ({size:,} {unit})"
