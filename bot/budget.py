"""The photo bytes the chat process holds at once, bounded (``bot.photo_budget_mb``).

A photo is held from its download until its request is answered: the queue keeps it for a retry, and the journal
for a restart. A raid of big photos would otherwise be downloaded all at once (60 × 17 MB took the chat process
past 2.6 GB). Room is reserved before the download, at the size the platform announces, so past the budget a
request waits its turn (first come, first served) without holding anything, up to ``bot.photo_budget_wait``
seconds; after that it is told claybot is busy, and nothing of it counts against the person's limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections import deque
from collections.abc import Iterator

from pipeline.core.jobs import QueueBusy

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter
BUDGET_BUSY = ("Lots of photos are on their way to me right now, and yours could not get in line in time; "
               "please send it again in a few minutes.")


class PhotoBudget:
    """At most ``limit`` bytes of photos held at once; reservations past it wait in line up to ``wait`` seconds."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit, self.wait = limit, wait
        self.held = 0  # bytes reserved or held right now
        self.high_water = 0  # the most ever held at once: what the raid benchmark and its test read
        self.coming = 0  # requests let past the queue's room check whose photo is not here yet
        self._line: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def reserve(self, size: int) -> int:
        """Room for a photo of ``size`` bytes (at most the whole budget): at once, or once the photos ahead in line
        are let in; QueueBusy after ``wait`` seconds in line. Returns the bytes reserved (give them to release)."""
        size = max(0, min(size, self.limit))
        if not self._line and self.held + size <= self.limit:
            self._take(size)
            return size
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        if not self._line:
            logger.info("photo budget full (%.1f MB of %.0f MB held): requests wait in line for room",
                        self.held / 2**20, self.limit / 2**20)
        self._line.append(entry)
        try:
            await asyncio.wait({turn}, timeout=self.wait)
        except BaseException:  # cancelled while in line: leave it, and give back room let in meanwhile
            self._leave(entry)
            raise
        if not turn.done():
            self._leave(entry)
            logger.warning("photo budget: a request waited %.0fs in line (%d bytes held, %d waiting); told busy",
                           self.wait, self.held, len(self._line))
            raise QueueBusy(BUDGET_BUSY)
        return size

    def resize(self, reserved: int, size: int) -> int:
        """The photo arrived with ``size`` bytes where ``reserved`` were set aside: hold exactly that (a platform
        that announced too little makes the budget overshoot by the difference, counted in ``high_water``)."""
        self._take(size - reserved)
        self._let_in()
        return size

    def release(self, held: int) -> None:
        """The request is answered: its photo no longer counts."""
        if held:
            self.held -= held
            self._let_in()

    def summary(self) -> str:
        """The most held at once so far, for the log (the raid benchmark reads it)."""
        return f"photos held at once: at most {self.high_water / 2**20:.1f} MB (bot.photo_budget_mb = " \
               f"{self.limit / 2**20:g})"

    @contextlib.contextmanager
    def on_the_way(self) -> Iterator[None]:
        """Count a photo as coming to the queue while it waits for room and downloads (``coming``)."""
        self.coming += 1
        try:
            yield
        finally:
            self.coming -= 1

    def _take(self, size: int) -> None:
        self.held += size
        self.high_water = max(self.high_water, self.held)

    def _let_in(self) -> None:
        """Let in, in order, the requests at the head of the line that now fit."""
        while self._line:
            size, turn = self._line[0]
            if turn.done():  # left the line already
                self._line.popleft()
                continue
            if self.held + size > self.limit:
                return
            self._line.popleft()
            self._take(size)
            turn.set_result(None)
            if not self._line:
                logger.info("photo budget: the line is empty again; %s", self.summary())

    def _leave(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        size, turn = entry
        if turn.done() and not turn.cancelled():  # let in at the last moment: that room is given back
            self.release(size)
            return
        turn.cancel()
        with contextlib.suppress(ValueError):
            self._line.remove(entry)
        self._let_in()  # the head of the line may have left: those behind it may fit


def big_buffers_back_to_the_system(threshold: int = 2**20) -> bool:
    """Make glibc give each photo-sized buffer (≥ ``threshold`` bytes) a mapping of its own, returned to the system
    once freed: by default glibc raises that threshold (up to 32 MB) after the first few such buffers are freed and
    keeps the later ones in its heap, which under a raid stayed resident (in the raid benchmark, 553 MB peak → 481
    MB). False where the C library is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
