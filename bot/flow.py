"""The request flow both chat front ends share: check, download, queue, show progress, answer.

A front end turns a platform event into an ``Ask`` (where the photo is, what was asked) and implements ``Reply``
(how to show a status line, the result and an error on its platform). Everything else — option parsing, size
limits, the queue, the wording, the pace of status edits — lives here, once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.config import Config
from pipeline.errors import ClaybotError
from pipeline.jobs import (
    BadRequest,
    Done,
    Failed,
    JobFailed,
    JobHandle,
    JobQueue,
    Progress,
    QueueBusy,
    QueueClosed,
    Queued,
    Started,
    StyleRequest,
)

logger = logging.getLogger(__name__)

MIN_STRENGTH, MAX_STRENGTH = 0.05, 1.0
STRENGTH_STEP = 0.1
USAGE = "Usage: /clay [strength 0.05–1], sent with a photo or as a reply to one. Example: /clay 0.6"


class UserError(ClaybotError):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True)
class Ask:
    """One platform-neutral request: where the photo is and what was asked."""

    platform: str
    user_id: str
    chat_id: str
    download: Callable[[], Awaitable[bytes]]  # fetches the photo through the platform's client
    size: int | None = None  # bytes, from the platform's metadata, when it tells
    style: str | None = None
    strength: float | None = None
    seed: int | None = None


class Reply(Protocol):
    """How a front end shows things; the flow decides what and when."""

    async def status(self, text: str) -> None:
        """Create or edit the one status message of this request."""

    async def result(self, done: Done, caption: str) -> None:
        """Post the stylized image (replacing or removing the status message)."""

    async def error(self, text: str) -> None:
        """Tell the user why there is no image (replacing the status message)."""


class FrontEnd(Protocol):
    """A chat platform's glue, as `claybot run` drives it."""

    name: str

    async def start(self) -> None:
        """Connect and begin taking requests; return once running."""

    async def stop_taking(self) -> None:
        """Take no new requests, but stay connected so running ones still get their answers."""

    async def close(self) -> None:
        """Disconnect."""

    async def deliver(self, chat_id: str, done: Done | None, text: str) -> None:
        """Post a result (or, with ``done`` None, a line of text) to a chat, without a message to reply to:
        for jobs a restarted chat process recovers from the queue."""


def parse_strength(text: str | None) -> float | None:
    """``"0.6"``, ``"60%"`` or ``".6"`` → 0.6; empty → None (the style's default); anything else → UserError."""
    if text is None or not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d*[.,]?\d+)\s*(%?)\s*", text)
    if not match:
        raise UserError(f"I could not read {text.strip()[:20]!r} as a strength. {USAGE}")
    value = float(match.group(1).replace(",", "."))
    if match.group(2):
        value /= 100
    check_strength(value)
    return value


def check_strength(value: float) -> float:
    """A strength within the range users may ask for."""
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:
        raise UserError(f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, not {value:g}. {USAGE}")
    return value


def stronger(strength: float) -> float:
    """The "stronger" button's strength."""
    return round(min(MAX_STRENGTH, strength + STRENGTH_STEP), 2)


def weaker(strength: float) -> float:
    """The "weaker" button's strength."""
    return round(max(MIN_STRENGTH, strength - STRENGTH_STEP), 2)


def shorten(text: str, limit: int) -> str:
    """Cut at a word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",")
    return cut + "…"


def caption(done: Done, *, tag_chars: int = 200) -> str:
    """What the result says about itself: style, strength, seed and the tags used (shortened)."""
    tags = shorten(", ".join(done.tags), tag_chars) if done.tags else "no tags"
    return f"{done.style} · strength {done.strength:g} · seed {done.seed}\n{tags}"


class RequestFlow:
    """Check → download → queue → progress → answer, for every front end."""

    def __init__(self, queue: JobQueue, config: Config, *, min_edit_interval: float = 1.5) -> None:
        self.queue = queue
        self.config = config
        self.min_edit_interval = min_edit_interval

    def max_bytes(self, platform_limit: int | None = None) -> int:
        """The most bytes a photo may have: ours, or the platform's download limit if lower."""
        ours = int(self.config.bot.max_photo_mb * 1024 * 1024)
        return min(ours, platform_limit) if platform_limit else ours

    def check_size(self, size: int | None, platform_limit: int | None = None) -> None:
        """Refuse a photo that is too large before downloading it."""
        limit = self.max_bytes(platform_limit)
        if size is not None and size > limit:
            raise UserError(f"That file is {size / 2**20:.1f} MB; I can take photos up to {limit / 2**20:.0f} MB.")

    async def handle(self, ask: Ask, reply: Reply, *, platform_limit: int | None = None) -> Done | None:
        """Serve one request to the end; every outcome is answered through ``reply``."""
        try:
            return await self._handle(ask, reply, platform_limit)
        except (UserError, BadRequest, QueueBusy, QueueClosed) as err:
            await _safely(reply.error(str(err)))
        except Exception:
            logger.exception("request from %s user %s failed", ask.platform, ask.user_id)
            await _safely(reply.error("Something went wrong on my side; please try again."))
        return None

    async def _handle(self, ask: Ask, reply: Reply, platform_limit: int | None) -> Done | None:
        # 1. options and size, before any download
        if ask.strength is not None:
            check_strength(ask.strength)
        if ask.style is not None and ask.style not in self.config.styles:
            raise UserError(f"There is no style {ask.style!r}; try {', '.join(sorted(self.config.styles))}.")
        self.check_size(ask.size, platform_limit)

        # 2. download (through the platform's client; never a URL a user typed)
        data = await ask.download()
        self.check_size(len(data), platform_limit)

        # 3. queue
        seed = ask.seed if ask.seed is not None else secrets.randbelow(2**31)
        handle = await self.queue.submit(StyleRequest(data, style=ask.style, strength=ask.strength, seed=seed,
                                                      reply_to=(ask.platform, ask.chat_id)))
        logger.info("job %s from %s user %s in %s", handle.id, ask.platform, ask.user_id, ask.chat_id)

        # 4. progress, paced so platforms' edit rate limits are never hit
        pacer = _Pacer(reply, self.min_edit_interval)
        async for event in handle.events():
            if isinstance(event, Queued):
                await pacer.show("Waiting for my clay oven… you're next." if event.position == 1
                                 else f"Queued, #{event.position}.", urgent=True)
            elif isinstance(event, Started):
                await pacer.show("Sculpting…", urgent=True)
            elif isinstance(event, Progress):
                await pacer.show(f"Sculpting… {event.step * 100 // max(1, event.total)}%",
                                 urgent=event.step == event.total)
            elif isinstance(event, Done):
                await reply.result(event, caption(event))
                return event
            elif isinstance(event, Failed):
                await reply.error(event.reason)
                return None
        return None


async def resume(handle: JobHandle, front_ends: dict[str, FrontEnd]) -> None:
    """Answer a job accepted before a restart, in the chat it came from (``reply_to`` is (platform, chat id))."""
    try:
        platform, chat_id = handle.request.reply_to
        front_end = front_ends[platform]
    except (TypeError, ValueError, KeyError):
        logger.warning("recovered job %s has no front end to answer through (%r)", handle.id, handle.request.reply_to)
        return
    try:
        done = await handle.result()
    except JobFailed as err:
        await _safely(front_end.deliver(chat_id, None, str(err)))
        return
    await _safely(front_end.deliver(chat_id, done, caption(done)))
    logger.info("recovered job %s answered in %s %s", handle.id, platform, chat_id)


class _Pacer:
    """Shows status lines no faster than the platform allows; the latest line wins."""

    def __init__(self, reply: Reply, interval: float) -> None:
        self.reply, self.interval = reply, interval
        self.last_shown, self.last_text = 0.0, ""

    async def show(self, text: str, *, urgent: bool = False) -> None:
        now = time.monotonic()
        if text == self.last_text or (not urgent and now - self.last_shown < self.interval):
            return
        if urgent and now - self.last_shown < self.interval and self.last_shown:
            await asyncio.sleep(self.interval - (now - self.last_shown))
        self.last_shown, self.last_text = time.monotonic(), text
        await _safely(self.reply.status(text))


async def _safely(awaitable: Awaitable) -> None:
    """A status edit that fails (message deleted, rate limited) must not lose the job."""
    try:
        await awaitable
    except Exception as err:  # platform errors vary by library
        logger.warning("could not update the chat: %s", err)
