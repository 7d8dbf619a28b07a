"""Telegram's flood limits: one budget per group for everything the bot says there, and Telegram's "retry after"
honoured (``FloodLimiter``, python-telegram-bot's rate-limiter hook, set once on the Application).

Telegram lets a bot send about 20 messages a minute in a group (edits count); past that it answers 429 "Too Many
Requests: retry after N" and the message is NOT sent. So every message the bot sends in a group takes a turn from
that group's budget (``telegram.group_messages`` per ``telegram.group_window`` seconds), and what it is decides
whether it waits:

- **answers** (the default: pictures, clips, the reason an accepted request failed) wait for a turn when the
  budget is spent, first come first served, and are sent again after Telegram's ``retry_after`` until they go out
  (or until ``ANSWER_PATIENCE`` is over: the journal then keeps the job unanswered for a restarted claybot);
- **status** lines and their edits (``rate_limit_args=STATUS``) go out only while the window keeps room for an
  answer to every request under way in the group (``expect``), no answer waits for a turn and Telegram has not
  asked the bot to wait; otherwise they are skipped (``Skipped``), never delayed: a missed progress edit costs
  nothing, a lost picture does;
- **chatter** (``CHATTER``: help, usage and refusal replies) as status lines, and at most a quarter of the budget
  per window, however many people ask (one person is held back before that: ``ReplyGaps``).

Private chats are not paced (Telegram allows about one message a second there, and the status pacer stays well
below it), but their 429s are honoured the same way. Why not PTB's ``AIORateLimiter``: it stops every chat while
one group waits out a 429, takes turns in arrival order whatever the message (progress edits ahead of pictures),
and counts chat actions and deletions against the group's budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, cast

from telegram import Bot
from telegram.error import RetryAfter, TelegramError
from telegram.ext import BaseRateLimiter, ExtBot
from telegram.warnings import PTBDeprecationWarning

logger = logging.getLogger(__name__)

STATUS = "status"  # rate_limit_args of a status line or its edit: skipped when the group's budget is tight
CHATTER = "chatter"  # of a help, usage or refusal reply: the same, and a quarter of the budget at most
# Calls that put a message on the group's screen, as Telegram counts them against its flood limit.
MESSAGES = frozenset({
    "sendMessage", "sendPhoto", "sendDocument", "sendAnimation", "sendVideo", "sendAudio", "sendVoice",
    "sendSticker", "sendMediaGroup", "copyMessage", "forwardMessage", "editMessageText", "editMessageCaption",
    "editMessageMedia", "editMessageReplyMarkup",
})
CHATTER_SHARE = 4  # chatter may use 1/CHATTER_SHARE of a group's budget
ANSWER_PATIENCE = 600.0  # seconds an answer keeps waiting out Telegram's "retry after" before it is given up
MAX_GROUPS = 1000  # groups remembered before the quiet ones are forgotten

Chat = int | str | None  # a chat id, an @channel name, or None for calls about no chat
Callback = Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]]


class Skipped(TelegramError):
    """A status line or a help reply not sent: the group's budget is kept for answers."""


def paced(bot: Bot) -> ExtBot[str]:
    """The Application's bot, typed to take ``rate_limit_args`` (``ContextTypes.DEFAULT_TYPE`` types it for none)."""
    if not isinstance(bot, ExtBot):
        raise TypeError("the Telegram bot must be the Application's ExtBot (build_application makes it)")
    return cast("ExtBot[str]", bot)


def limiter_of(bot: Bot) -> FloodLimiter | None:
    """The bot's FloodLimiter (build_application sets one), if any."""
    limiter = bot.rate_limiter if isinstance(bot, ExtBot) else None
    return limiter if isinstance(limiter, FloodLimiter) else None


def retry_seconds(error: RetryAfter) -> float:
    """Telegram's ``retry_after``, in seconds, whichever type this PTB version hands out."""
    with warnings.catch_warnings():  # PTB 22 warns that the int becomes a timedelta
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def is_group(chat_id: object) -> bool:
    """Groups, supergroups and channels have negative ids (or an @name); people positive ones."""
    return isinstance(chat_id, str) or (isinstance(chat_id, int) and chat_id < 0)


class GroupBudget:
    """One group's messages in the last window, the answers waiting for a turn, the requests under way."""

    def __init__(self) -> None:
        self.sent: deque[float] = deque()  # when each message of the window went out
        self.chatter: deque[float] = deque()  # the chatter among them
        self.waiting = 0  # answers waiting for a turn
        self.expected = 0  # requests under way: each will want an answer
        self.turns = asyncio.Lock()  # answers take turns first come, first served

    def forget_before(self, start: float) -> None:
        for times in (self.sent, self.chatter):
            while times and times[0] <= start:
                times.popleft()

    def quiet(self, start: float) -> bool:
        return not (self.waiting or self.expected or (self.sent and self.sent[-1] > start))


class FloodLimiter(BaseRateLimiter[str]):
    """Every Bot API call passes here (PTB's rate-limiter hook): groups' budgets, and Telegram's 429 honoured."""

    def __init__(self, *, group_messages: int = 20, group_window: float = 60.0,
                 patience: float = ANSWER_PATIENCE) -> None:
        self.group_messages, self.group_window = group_messages, group_window
        self.chatter_messages = max(1, group_messages // CHATTER_SHARE)
        self.patience = patience
        self._groups: dict[int | str, GroupBudget] = {}
        self._hold: dict[Chat, float] = {}  # chat → when Telegram lets the bot send there again

    async def initialize(self) -> None:
        """Nothing to open."""

    async def shutdown(self) -> None:
        """Nothing to close."""

    def expect(self, chat_id: int) -> None:
        """A request in this chat is under way: keep room for its answer."""
        budget = self._budget(chat_id)
        if budget is not None:
            budget.expected += 1

    def settled(self, chat_id: int) -> None:
        """That request is answered (or will not be)."""
        budget = self._budget(chat_id)
        if budget is not None:
            budget.expected = max(0, budget.expected - 1)

    async def process_request(self, callback: Callback, args: Any, kwargs: dict[str, Any], endpoint: str,
                              data: dict[str, Any], rate_limit_args: str | None
                              ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        """Take a turn in the chat (or skip a status line or chatter), make the call, and make it again after
        Telegram's ``retry_after`` (an answer, within ``patience``)."""
        chat = _chat_id(data.get("chat_id"))
        spare = rate_limit_args in (STATUS, CHATTER)
        budget = self._budget(chat) if endpoint in MESSAGES else None
        give_up = time.monotonic() + self.patience
        while True:
            if spare:
                self._take_spare(chat, budget, endpoint, chatter=rate_limit_args == CHATTER)
            else:
                await self._take_turn(chat, budget)
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as err:
                wait = retry_seconds(err)
                self._hold[chat] = max(self._hold.get(chat, 0.0), time.monotonic() + wait)
                if spare or time.monotonic() + wait > give_up:
                    logger.warning("Telegram refused %s in chat %s (flood control: retry after %g s); not sent",
                                   endpoint, chat, wait)
                    raise
                logger.info("Telegram: %s in chat %s hit the flood limit; sending it again in %g s", endpoint, chat,
                            wait)

    def _budget(self, chat: Chat) -> GroupBudget | None:
        if not self.group_messages or chat is None or not is_group(chat):
            return None
        budget = self._groups.get(chat)
        if budget is None:
            if len(self._groups) > MAX_GROUPS:
                start = time.monotonic() - self.group_window
                self._groups = {key: b for key, b in self._groups.items() if not b.quiet(start)}
            budget = self._groups[chat] = GroupBudget()
        return budget

    def _take_spare(self, chat: Chat, budget: GroupBudget | None, endpoint: str, *, chatter: bool) -> None:
        now = time.monotonic()
        if self._hold.get(chat, 0.0) > now:
            raise Skipped(f"{endpoint} skipped: Telegram asked to wait in chat {chat}")
        if budget is None:
            return
        budget.forget_before(now - self.group_window)
        if (budget.waiting or len(budget.sent) + 1 + budget.expected > self.group_messages
                or (chatter and len(budget.chatter) >= self.chatter_messages)):
            raise Skipped(f"{endpoint} skipped: group {chat}'s messages are kept for answers")
        budget.sent.append(now)
        if chatter:
            budget.chatter.append(now)

    async def _take_turn(self, chat: Chat, budget: GroupBudget | None) -> None:
        if budget is None:
            await self._sleep_out_hold(chat)
            return
        budget.waiting += 1
        try:
            async with budget.turns:
                while True:
                    await self._sleep_out_hold(chat)
                    now = time.monotonic()
                    budget.forget_before(now - self.group_window)
                    if len(budget.sent) < self.group_messages:
                        budget.sent.append(now)
                        return
                    await asyncio.sleep(budget.sent[0] + self.group_window - now)
        finally:
            budget.waiting -= 1

    async def _sleep_out_hold(self, chat: Chat) -> None:
        while (wait := self._hold.get(chat, 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(wait)


def _chat_id(value: object) -> Chat:
    """The call's chat: an int id (PTB may pass it as a string), an @channel name, or None."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return None


class ReplyGaps:
    """Help, usage and refusal replies in a group: at most one per person per ``gap`` seconds (0: no gap), so one
    person sending command after command does not spend the group's messages. Private chats have no gap."""

    def __init__(self, gap: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.gap, self.clock = gap, clock
        self._last: dict[tuple[int, int], float] = {}  # (group, person) → when they were last answered

    def allow(self, chat_id: int, person: int) -> bool:
        """Whether to answer this person in this chat now (and, if so, count it)."""
        if not self.gap or not is_group(chat_id):
            return True
        now = self.clock()
        if len(self._last) > MAX_GROUPS * 10:
            self._last = {key: at for key, at in self._last.items() if at > now - self.gap}
        if self._last.get((chat_id, person), float("-inf")) > now - self.gap:
            return False
        self._last[(chat_id, person)] = now
        return True
