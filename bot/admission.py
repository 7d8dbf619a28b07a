"""Admission: the one step that decides, before anything is downloaded, whether a request may run.

For every request, once: the photo's announced size, the kind of job switched on and its options and style valid
(the kind settles them: ``pipeline.core.intake.settle``), the limits per person, chat and kind (a ticket in the
journal, ``bot.journal``), every ``AdmissionRule`` (credits reserve here), and room in the queue. A front end that
must answer before the request runs (a button press answered with an alert) calls ``RequestFlow.admit`` itself and
hands the ``Admitted`` to ``RequestFlow.handle``; every other request is admitted inside ``handle``. Whatever the
rules hold is settled by the request's outcome (``Admitted.settle``): committed when the answer was posted,
released on every other outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.ask import Ask
from bot.journal import NOT_COUNTED, Journal
from pipeline.core.intake import settle
from pipeline.core.jobs import JobQueue
from pipeline.core.kinds import JobKind, kind_of
from pipeline.core.settings import GpuSettings

logger = logging.getLogger(__name__)


class Hold(Protocol):
    """What a rule holds for an admitted request until its outcome is known (credits: a reservation)."""

    async def settle(self, outcome: str) -> None:
        """The request ended with ``outcome`` ("image" when its answer was posted; anything else releases)."""


class AdmissionRule(Protocol):
    """A check before every request, after the limits: refuse by raising an error whose message is for the user
    (``bot.options.UserError``), or let it in, holding what it must until the outcome (None: nothing held)."""

    async def admit(self, ask: Ask, kind: JobKind) -> Hold | None:
        """Let the request in (holding what it costs) or refuse it."""


@dataclass
class Admitted:
    """A request let in: its ticket in the journal (None without a journal) and what the rules hold for it."""

    ticket: int | None = None
    holds: list[Hold] = field(default_factory=list)
    settled: bool = False

    async def settle(self, outcome: str) -> None:
        """Once: commit (``outcome`` "image") or release what the rules hold."""
        if self.settled:
            return
        self.settled = True
        for hold in self.holds:
            try:
                await hold.settle(outcome)
            except Exception:  # one rule's failure must not keep the others from settling
                logger.exception("admission: could not settle a hold (%s)", outcome)


class Admission:
    """The checks every request passes before its photo is fetched."""

    def __init__(self, gpu: GpuSettings, queue: JobQueue, journal: Journal | None,
                 rules: Sequence[AdmissionRule] = ()) -> None:
        self.gpu, self.queue, self.journal, self.rules = gpu, queue, journal, list(rules)

    async def admit(self, ask: Ask, coming: int = 0) -> Admitted:
        """Admit ``ask`` or raise the refusal (BadRequest, RateLimited, QueueBusy, QueueClosed, or a rule's own);
        ``coming``: photos this process is still fetching for the queue."""
        # 1. the kind (switched on, known) with its options and style, and the kind made first in a chain
        kind = kind_of(ask.kind)
        if ask.first is not None:
            settle(self.gpu, kind=ask.first, style=ask.style)
        settle(self.gpu, kind=ask.kind, style=ask.style, options=ask.options)
        # 2. limits: a ticket in the journal (or RateLimited saying when to ask again)
        admitted = Admitted()
        if self.journal is not None:
            admitted.ticket = await self.journal.admit(ask.platform, ask.user_id, ask.chat_id,
                                                       ask.group_id or ask.chat_id, ask.answer_to, ask.origin,
                                                       ask.kind)
        try:
            # 3. the rules (credits), then room in the queue: a raid is refused before anything is downloaded
            for rule in self.rules:
                hold = await rule.admit(ask, kind)
                if hold is not None:
                    admitted.holds.append(hold)
            await self.queue.check_room(coming, tuple(dict.fromkeys(filter(None, (ask.first, ask.kind)))))
        except BaseException:
            await admitted.settle(NOT_COUNTED)
            if self.journal is not None and admitted.ticket is not None:  # refused after all: not the person's doing
                await self.journal.answered(admitted.ticket, NOT_COUNTED)
            raise
        return admitted
