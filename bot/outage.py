"""Quiet outages: when a platform cannot be reached, one log line when the connection is lost, one when it is back
(how long, how many failed attempts), and a reminder every few minutes in between, instead of the libraries'
traceback on every retry (python-telegram-bot polls again every 1–30 s, discord.py reconnects with a backoff).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from telegram.error import TelegramError
from telegram.request import HTTPXRequest

logger = logging.getLogger(__name__)

REMIND_EVERY = 600.0  # seconds between "still unreachable" lines during a long outage
MAX_REASON = 200  # characters of the error quoted in a line


def reason(error: BaseException | str | None) -> str:
    """An error in a few words for one log line: its type and its message, cut short, on one line."""
    if error is None:
        return "no reason given"
    if isinstance(error, str):
        return error[:MAX_REASON]
    text = " ".join(str(error).split())[:MAX_REASON]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def duration(seconds: float) -> str:
    """'12 s', '3 min 5 s', '2 h 14 min'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Outage:
    """One connection's state (``name``: "the Telegram Bot API"), logged only when it changes."""

    def __init__(self, name: str, *, log: logging.Logger = logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.log, self.clock = name, log, clock
        self.since: float | None = None  # when the connection was lost; None while it works
        self.failures = 0  # failed attempts in the current outage
        self.outages = 0  # outages so far (for tests and the curious)
        self._reminded = 0.0

    @property
    def down(self) -> bool:
        """Whether the connection is lost right now."""
        return self.since is not None

    def failed(self, error: BaseException | str | None = None) -> None:
        """An attempt failed: the first of an outage is logged, the others counted (and recalled now and then)."""
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since = self._reminded = now
            self.outages += 1
            self.log.warning("%s is unreachable (%s); retrying quietly until it is back", self.name, reason(error))
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            self.log.warning("%s still unreachable after %s (%d failed attempts; the last: %s)", self.name,
                             duration(now - self.since), self.failures, reason(error))

    def ok(self) -> None:
        """An attempt got through: the end of an outage is logged."""
        if self.since is None:
            return
        self.log.warning("%s is reachable again after %s (%d failed attempts)", self.name,
                         duration(self.clock() - self.since), self.failures)
        self.since, self.failures = None, 0


# -- Telegram ----------------------------------------------------------------------------------------------------------


class WatchedRequest(HTTPXRequest):
    """PTB's HTTP client for getUpdates (pass it to ``ApplicationBuilder.get_updates_request``), telling ``outage``
    each time a poll gets an answer from the Bot API. Failed polls reach the outage through ``start_polling``'s
    ``error_callback``, which also keeps PTB from logging a traceback for each of them."""

    def __init__(self, outage: Outage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outage = outage

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        code, payload = await super().do_request(*args, **kwargs)
        if code < 500:  # a proxy's 502 while Telegram is away is no answer from the Bot API
            self.outage.ok()
        return code, payload

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        return quiet_json(payload)


def quiet_json(payload: bytes) -> dict[str, Any]:
    """A Bot API answer's JSON (PTB's ``BaseRequest.parse_json_payload``) without PTB's traceback and whole page in
    the log when it is none: a proxy's 502 HTML page during an outage would log one per poll. The error PTB raises
    still names the status, and the outage quotes it once."""
    try:
        data = json.loads(payload.decode("utf-8", "replace"))
    except ValueError:
        raise TelegramError("Invalid server response") from None
    if not isinstance(data, dict):
        raise TelegramError("Invalid server response")
    return data


def telegram_polling(outage: Outage) -> WatchedRequest:
    """The getUpdates client, as PTB builds it by default (one connection), watched by ``outage``."""
    return WatchedRequest(outage, connection_pool_size=1)


# -- Discord ---------------------------------------------------------------------------------------------------------

DISCORD_GATEWAY = Outage("the Discord gateway")  # a process has one Discord connection
RECONNECT_LINE = "Attempting a reconnect in %.2fs"  # what discord.client logs, with a traceback, on each attempt


class DiscordReconnects(logging.Filter):
    """On the ``discord.client`` logger: each failed reconnect goes to the outage instead of the log."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != RECONNECT_LINE:
            return True
        self.outage.failed(record.exc_info[1] if record.exc_info else None)
        return False


def quiet_discord_reconnects(client: Any) -> Outage:
    """Wire a discord.py client (a ``commands.Bot``) to ``DISCORD_GATEWAY``: failed reconnects are counted, and
    its "connect" and "resumed" events end the outage."""
    log = logging.getLogger("discord.client")
    if not any(isinstance(f, DiscordReconnects) for f in log.filters):
        log.addFilter(DiscordReconnects(DISCORD_GATEWAY))

    async def back() -> None:
        DISCORD_GATEWAY.ok()

    client.add_listener(back, "on_connect")
    client.add_listener(back, "on_resumed")
    return DISCORD_GATEWAY
