"""Per-chat settings, each declared once with its type and default (as Red-DiscordBot's ``register_guild``): a
front end declares its chats' schema (``ChatSettings``) and reads typed values with the defaults applied; nothing
merges a default by hand at a call site, and a value of the wrong type in the database is its default again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bot.store import ClaybotDatabase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One per-chat setting: its type (bool, str, float, list) and its default (a value, or a function of the
    config, for defaults the operator sets)."""

    kind: type
    default: Any = None

    def default_for(self, config: Any) -> Any:
        """The default in this config (a fresh one for a list)."""
        if self.kind is list:
            return list(self.default or [])
        return self.default(config) if callable(self.default) else self.default

    def accepts(self, value: Any) -> bool:
        """Whether a stored value has the setting's type (a whole number is a float's)."""
        if self.kind is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        return isinstance(value, self.kind)


class ChatSettings:
    """The settings of one kind of chat (a Telegram chat, a Discord server), stored under ``<prefix>:<id>``."""

    def __init__(self, prefix: str, **settings: Setting) -> None:
        self.prefix, self.settings = prefix, settings

    def scope(self, chat_id: int | str) -> str:
        """The settings-store scope of one chat."""
        return f"{self.prefix}:{chat_id}"

    async def read(self, store: ClaybotDatabase | None, chat_id: int | str, config: Any = None) -> dict[str, Any]:
        """Every setting of a chat, typed, the defaults where it set none (without a store: the defaults)."""
        stored = await store.scope(self.scope(chat_id)) if store is not None else {}
        values = {}
        for key, setting in self.settings.items():
            value = stored.get(key)
            if value is not None and not setting.accepts(value):
                logger.warning("setting %s/%s has an unexpected type; using the default", self.scope(chat_id), key)
                value = None
            values[key] = setting.default_for(config) if value is None else value
        return values

    async def set(self, store: ClaybotDatabase, chat_id: int | str, key: str, value: Any) -> None:
        """Change one declared setting (None: back to its default)."""
        setting = self.settings[key]  # KeyError: a setting nobody declared is a bug, not a user's mistake
        if value is not None and not setting.accepts(value):
            raise TypeError(f"{self.prefix} setting {key} takes a {setting.kind.__name__}, not {value!r}")
        await store.set(self.scope(chat_id), key, value)

    async def reset(self, store: ClaybotDatabase, chat_id: int | str) -> None:
        """Every setting of a chat back to its default."""
        await store.clear(self.scope(chat_id))

