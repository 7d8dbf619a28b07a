"""Errors a user or an operator can cause, each with a message written for them."""

from __future__ import annotations


class ClaybotError(Exception):
    """Base of claybot's own errors; ``str(err)`` is the message to show."""


class BadImage(ClaybotError):
    """The uploaded file is not an image claybot can work on."""


class TooLarge(BadImage):
    """The image is too large (bytes or pixels) to work on."""


class ModelError(ClaybotError):
    """A model named in the config cannot be found, fetched or loaded."""
