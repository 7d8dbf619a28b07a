"""Admission: the one step that decides, before anything is downloaded, whether a request may run.

For every request, once: the photo's announced size, the kind of job switched on and its options and style valid
(the kind settles them: ``pipeline.core.intake.settle``), the limits per person, chat and kind, and every
``AdmissionRule`` (credits reserve here) — a ticket in the journal (``bot.journal``), written in ONE database
transaction with what the rules hold — then room in the queue. A front end that must answer before the request runs
(a button press answered with an alert, a Discord interaction before it is deferred) calls ``RequestFlow.admit``
itself and hands the ``Admitted`` to ``RequestFlow.handle``; every other request is admitted inside ``handle``.

What a rule holds is settled in the transaction that marks the ticket answered, whatever answers it (the live
request, a restarted process replaying it, a refusal after admission): so a crash anywhere leaves a ticket and its
hold agreeing, and a replayed job keeps its hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.ask import Ask
from bot.journal import NOT_COUNTED, AdmissionRule, Journal

__all__ = ["Admission", "AdmissionRule", "Admitted"]
from pipeline.core.intake import settle
from pipeline.core.jobs import JobQueue
from pipeline.core.kinds import kind_of
from pipeline.core.settings import GpuSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """A request let in: its ticket in the journal (None without a journal)."""

    ticket: int | None = None


class Admission:
    """The checks every request passes before its photo is fetched."""

    def __init__(self, gpu: GpuSettings, queue: JobQueue, journal: Journal | None) -> None:
        self.gpu, self.queue, self.journal = gpu, queue, journal

    async def admit(self, ask: Ask, coming: int = 0) -> Admitted:
        """Admit ``ask`` or raise the refusal (BadRequest, RateLimited, QueueBusy, QueueClosed, or a rule's own);
        ``coming``: photos this process is still fetching for the queue."""
        # 1. the kind (switched on, known) with its options and style, and the kind made first in a chain
        kind = kind_of(ask.kind)
        if ask.first is not None:
            settle(self.gpu, kind=ask.first, style=ask.style)
        settle(self.gpu, kind=ask.kind, style=ask.style, options=ask.options)
        # 2. limits and rules: a ticket in the journal with what the rules hold (or the refusal, nothing written)
        admitted = Admitted()
        if self.journal is not None:
            admitted = Admitted(await self.journal.admit(ask.platform, ask.user_id, ask.chat_id,
                                                         ask.group_id or ask.chat_id, ask.answer_to, ask.origin,
                                                         kind.name, ask=ask))
        try:
            # 3. room in the queue for every job it will queue: a raid is refused before anything is downloaded
            await self.queue.check_room(coming, tuple(dict.fromkeys(filter(None, (ask.first, ask.kind)))))
        except BaseException:
            if self.journal is not None and admitted.ticket is not None:  # refused after all: not their doing
                await self.journal.answered(admitted.ticket, NOT_COUNTED)
            raise
        return admitted
