"""The requests a front end is serving, each in its own task, held until done and given a moment at close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

CLOSE_GRACE = 10.0  # seconds a closing front end gives running requests to send their answers


class RunningRequests:
    """The requests a front end is serving, each in its own task: held until done (the event loop keeps only weak
    references to tasks), and given a moment to send their answers when the front end closes."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def add(self, task: asyncio.Task) -> asyncio.Task:
        """Hold a task until it is done."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    @contextlib.contextmanager
    def this_task(self) -> Iterator[None]:
        """Count the running task (one the platform's library started) while the block runs."""
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            yield
        finally:
            self.tasks.discard(task)

    async def finish(self, grace: float = CLOSE_GRACE) -> int:
        """Wait up to ``grace`` seconds for every request to end, then cancel the others; how many were cancelled."""
        pending = [task for task in self.tasks if not task.done() and task is not asyncio.current_task()]
        if not pending:
            return 0
        _, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
        return len(late)
