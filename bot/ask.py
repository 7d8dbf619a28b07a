"""One request as the front ends hand it to the flow (``bot.flow``) and to admission (``bot.admission``): where
the photo is, what was asked, by whom, where."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.kinds import DEFAULT_KIND


@dataclass(frozen=True)
class Ask:
    """One platform-neutral request: where the photo is, what was asked, and by whom, where."""

    platform: str
    user_id: str
    chat_id: str
    download: Callable[[], Awaitable[bytes]]  # fetches the photo through the platform's client
    size: int | None = None  # bytes, from the platform's metadata, when it tells
    style: str | None = None
    seed: int | None = None
    kind: str = DEFAULT_KIND  # what to make of the photo (pipeline/core/kinds)
    options: Mapping[str, Any] = field(default_factory=dict)  # the kind's own (a picture's strength, a clip's
    #                                                           seconds…); None values: the defaults
    first: str | None = None  # a chained request: the photo is made into this kind first, and that into ``kind``
    group_id: str | None = None  # whose chat limits apply: the Discord server; default: the chat
    nsfw: bool = False  # the chat is marked NSFW (a Discord age-restricted channel; a Telegram chat's setting)
    answer_to: dict[str, Any] = field(default_factory=dict)  # for a restarted process: e.g. the message to reply to
    origin: str | None = None  # the platform's id of the event (a Telegram update id): delivered twice, served once
    received: float = field(default_factory=time.monotonic)  # when the platform event arrived
