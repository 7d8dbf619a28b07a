"""The one pacer of status edits: each chat's edits no faster than its platform allows, the latest line winning.

Platforms rate-limit edits per chat (Telegram: about one message a second, 20 a minute in a group; Discord: a few
edits a second per channel), however many requests share the chat. So every request's status line takes turns in
its chat, the first line goes out at once (it tells the person they were heard), and a line superseded while it
waited for its turn is never sent. The interval is configured per platform (``telegram.status_edit_interval``,
``discord.status_edit_interval``) and read here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from bot.config import Config

logger = logging.getLogger(__name__)

Chat = tuple[str, str]  # (platform, chat id)
MAX_QUIET_CHATS = 1000  # chats remembered before those with no edit due are forgotten


def edit_intervals(config: Config) -> dict[str, float]:
    """Seconds between two status edits in one chat, per platform, from the config."""
    return {"telegram": config.telegram.status_edit_interval, "discord": config.discord.status_edit_interval}


class StatusPacer:
    """Turns for status edits, per chat: one edit per interval, whatever number of requests share the chat."""

    def __init__(self, intervals: Mapping[str, float], *, default: float = 1.5) -> None:
        self.intervals, self.default = dict(intervals), default
        self._next: dict[Chat, float] = {}  # chat → when its next edit may go out

    def interval(self, chat: Chat) -> float:
        """The seconds between two edits in this chat's platform."""
        return self.intervals.get(chat[0], self.default)

    async def turn(self, chat: Chat) -> None:
        """Wait for the chat's next free moment, and take it."""
        now = time.monotonic()
        if len(self._next) > MAX_QUIET_CHATS:
            self._next = {key: at for key, at in self._next.items() if at > now}
        slot = max(now, self._next.get(chat, 0.0))
        self._next[chat] = slot + self.interval(chat)
        await asyncio.sleep(slot - now)

    def sent(self, chat: Chat) -> None:
        """Something just went out in the chat: its next edit waits a whole interval from now."""
        self._next[chat] = max(self._next.get(chat, 0.0), time.monotonic() + self.interval(chat))

    def line(self, chat: Chat, show: Callable[[str], Awaitable[None]]) -> StatusLine:
        """One request's status line in ``chat``, shown through ``show`` (a Reply's ``status``)."""
        return StatusLine(self, chat, show)


class StatusLine:
    """One request's status line: its first text at once, later ones at the chat's turns, the latest winning.

    ``show`` never waits for a turn (the flow keeps reading the job's events meanwhile); ``close`` ends the line
    before the answer replaces it."""

    def __init__(self, pacer: StatusPacer, chat: Chat, show: Callable[[str], Awaitable[None]]) -> None:
        self.pacer, self.chat, self._show = pacer, chat, show
        self.shown = False  # a first line went out
        self._on_screen = ""
        self._wanted = ""
        self._later: asyncio.Task | None = None
        self._sending = False  # an edit is on its way
        self._closed = False

    async def show(self, text: str) -> None:
        """Ask for ``text`` on the status line."""
        if self._closed or text == self._wanted:
            return
        self._wanted = text
        if not self.shown:
            self.shown = True
            await self._send(text)
        elif self._later is None or self._later.done():
            self._later = asyncio.create_task(self._edit_in_turn())

    async def close(self) -> None:
        """No more edits: one waiting for its turn is dropped, one on its way finishes first (so it never lands
        after the answer)."""
        self._closed = True
        task = self._later
        if task is None or task.done():
            return
        if not self._sending:  # still waiting for its turn: drop it; an edit on its way finishes first
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def last_turn(self) -> None:
        """Close the line, then wait for the chat's turn to replace it (an error said in its place)."""
        await self.close()
        if self.shown:
            await self.pacer.turn(self.chat)

    async def _edit_in_turn(self) -> None:
        while not self._closed and self._wanted != self._on_screen:
            await self.pacer.turn(self.chat)
            if self._closed:
                return
            self._sending = True
            try:
                await self._send(self._wanted)
            finally:
                self._sending = False

    async def _send(self, text: str) -> None:
        try:
            await self._show(text)
        except Exception as err:  # deleted, rate limited (platform errors vary by library): the job goes on
            logger.warning("could not update the status line in %s chat %s: %s", *self.chat, err)
        finally:
            self._on_screen = text  # not retried: the next line may work
            self.pacer.sent(self.chat)
