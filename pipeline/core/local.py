"""The default queue backend: jobs wait in the chat process and feed ONE pipeline worker child process.

The parent never imports torch: it reads photo headers (Pillow) to group compatible jobs, sends one batch at a
time over a pipe to a spawned child that owns the GPU, and turns the child's messages into job events. A child
that dies is restarted and its jobs retried; a job that runs too long is stopped; shutdown answers every job.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pipeline.core import codec
from pipeline.core.errors import ClaybotError, ModelError
from pipeline.core.jobs import (
    CRASH_REASON,
    SHUTDOWN_REASON,
    Batch,
    Done,
    ErrorKind,
    Failed,
    Fatal,
    Idle,
    Job,
    JobHandle,
    Message,
    QueueBusy,
    QueueClosed,
    Queued,
    Ready,
    Started,
    Stop,
    Task,
    Update,
    busy_message,
    new_job_id,
)
from pipeline.core.kinds import by_rank, kind_of
from pipeline.core.link import ANSWER_LIMIT, BadMessage, connect, receive, worker_key
from pipeline.core.settings import GpuSettings, QueueSettings
from pipeline.core.status import History, write_atomically

logger = logging.getLogger(__name__)

UNAVAILABLE_REASON = "The picture engine is not available right now; please try again later."


@dataclass(eq=False)
class QueuedJob:
    """A job this queue holds until it is answered: its handle, and its place and tries."""

    id: str
    handle: JobHandle
    job: Job
    submitted: float
    attempts: int = 0
    position: int = 0
    answered: bool = False


@dataclass
class QueueStats:
    """Counters for status and benchmarks."""

    done: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    worker_starts: int = 0
    batches: list[int] = field(default_factory=list)


# What a worker imports before it can load a model: seconds of CPU (transformers, diffusers, compel, torch).
WORKER_IMPORTS = ["pipeline.gpu.worker", "pipeline.gpu.stylizer", "pipeline.gpu.animate", "pipeline.gpu.tagger"]


def worker_context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    """How worker processes start: forked from a fork server that imported the GPU libraries once (where the
    platform has one), so a worker, and every restart after a crash, starts without paying for those imports again;
    the chat process itself still imports none of them. The server imports only: no model, no CUDA context (a forked
    CUDA context would be unusable), so a worker initialises CUDA itself as a spawned one does. Elsewhere: spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_IMPORTS)
    return context


class LocalQueue:
    """Bounded in-process queue in front of one spawned pipeline worker."""

    def __init__(self, gpu: GpuSettings, settings: QueueSettings, *, log_level: int = logging.INFO,
                 status_path: Path | None = None) -> None:
        self.gpu = gpu
        self.settings = settings
        self.stats = QueueStats()
        self.history = History()
        self._status_path = status_path
        self.worker_info: dict[str, Any] = {}
        self._log_level = log_level
        self._pending: list[QueuedJob] = []
        self._in_flight: dict[str, QueuedJob] = {}
        self._batch_started = 0.0
        self._batch_timeout = settings.job_timeout
        self._closing = False
        self._fatal: str | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None  # the worker's, from the first start on
        self._generation = 0
        self._startup_failures = 0
        self._tasks: list[asyncio.Task] = []
        self._authkey = b""
        if settings.worker_address:
            key = worker_key(settings.worker_key_env)
            if not key:
                raise ClaybotError(f"queue.worker_address is set, so the environment variable "
                                   f"{settings.worker_key_env} must hold the secret shared with `claybot worker`.")
            self._authkey = key

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the worker and start scheduling."""
        self._loop = asyncio.get_running_loop()
        self._start_worker()
        self._tasks = [asyncio.create_task(self._schedule(), name="claybot-scheduler"),
                       asyncio.create_task(self._watchdog(), name="claybot-watchdog")]

    async def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the worker has loaded its models; ModelError if it cannot."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self._fatal:
            raise ModelError(self._fatal)
        return self.worker_info

    async def close(self, grace: float | None = None) -> None:
        """Stop taking jobs; waiting ones are told so at once, running ones get ``grace`` seconds to finish."""
        if self._closing:
            return
        self._closing = True
        grace = self.settings.shutdown_grace if grace is None else grace
        for job in list(self._pending):
            self._fail(job, SHUTDOWN_REASON, ErrorKind.SHUTTING_DOWN)
        self._pending.clear()
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning("%d running job(s) did not finish within %.0fs", len(self._in_flight), grace)
        for job in list(self._in_flight.values()):
            self._fail(job, SHUTDOWN_REASON, ErrorKind.SHUTTING_DOWN)
        self._in_flight.clear()
        for task in self._tasks:
            task.cancel()
        await self._stop_worker()

    # -- submitting ------------------------------------------------------------------------------------------------

    async def submit(self, job: Job) -> JobHandle:
        """Queue a settled job and return its handle; QueueBusy/QueueClosed at once."""
        if self._closing:
            raise QueueClosed(SHUTDOWN_REASON)
        kind_of(job.kind)  # UnknownKind (a BadRequest) for a kind this claybot does not make
        handle = JobHandle(new_job_id(), job, canceller=self._cancel)
        if len(self._pending) >= self.settings.max_queue:
            self._count_failure(ErrorKind.BUSY)
            raise QueueBusy(busy_message(len(self._pending), self.settings.max_queue))
        if self._fatal:
            handle.push(Failed(UNAVAILABLE_REASON, ErrorKind.INTERNAL))
            return handle
        queued = QueuedJob(handle.id, handle, job, time.monotonic())
        self._pending.append(queued)
        self._announce_positions()  # its own, and the clips' it goes ahead of
        logger.info("job %s (%s) queued at #%d (style %s, seed %d)", queued.id, job.kind, queued.position, job.style,
                    job.seed)
        self._wake.set()
        return handle

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        """QueueBusy when the waiting jobs and the ``coming`` ones fill the queue; QueueClosed when closing (the one
        worker serves every kind the config makes: ``kinds`` needs no check here)."""
        if self._closing:
            raise QueueClosed(SHUTDOWN_REASON)
        if len(self._pending) + coming >= self.settings.max_queue:
            self._count_failure(ErrorKind.BUSY)
            raise QueueBusy(busy_message(len(self._pending) + coming, self.settings.max_queue))

    def _cancel(self, handle: JobHandle) -> bool:
        for job in self._pending:
            if job.handle is handle:
                self._pending.remove(job)
                self._fail(job, "Cancelled.", ErrorKind.CANCELLED)
                self._announce_positions()
                return True
        return False

    @property
    def depth(self) -> int:
        """Jobs waiting (not running)."""
        return len(self._pending)

    # -- scheduling ------------------------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Idle, not merely "no job in flight": the worker's "idle" can come after the last "done", and a batch
            # sent before it would be taken for the unanswered part of the previous one.
            busy = self._in_flight or not self._idle.is_set()
            if self._closing or busy or not self._ready.is_set() or self._fatal or not self._pending:
                continue
            batch, wait = self._next_batch()
            if batch:
                await self._dispatch(batch)
            elif wait > 0:
                asyncio.get_running_loop().call_later(wait, self._wake.set)

    def _in_order(self) -> list[QueuedJob]:
        """The waiting jobs in the order they will run: by their kind's rank (a picture waits behind at most the
        clip already running: a clip costs tens of pictures), each kind oldest first."""
        return sorted(self._pending, key=lambda job: kind_of(job.job.kind).rank)  # stable: oldest first

    def _next_batch(self) -> tuple[list[QueuedJob], float]:
        """The next job (``_in_order``) with up to max_batch compatible companions; or how long to wait for more."""
        first = self._in_order()[0]
        batch = [job for job in self._pending if job.job.batch_key == first.job.batch_key]
        size = kind_of(first.job.kind).max_batch(self.gpu, first.job)  # a clip fills the GPU alone
        batch = batch[:size]
        waited = time.monotonic() - first.submitted
        if len(batch) < size and waited < self.settings.batch_window:
            return [], self.settings.batch_window - waited
        return batch, 0.0

    async def _dispatch(self, batch: list[QueuedJob]) -> None:
        for job in batch:
            self._pending.remove(job)
            self._in_flight[job.id] = job
        self._idle.clear()
        self._batch_started = time.monotonic()
        first = batch[0].job
        self._batch_timeout = kind_of(first.kind).time_limit(first.spec) or self.settings.job_timeout
        self.stats.batches.append(len(batch))
        message = codec.encode(Batch(tuple(Task(job.id, job.job) for job in batch), self._batch_timeout))
        self._announce_positions()
        conn = self._conn
        assert conn is not None  # the worker said Ready on it
        try:
            await asyncio.to_thread(conn.send_bytes, message)
        except (OSError, ValueError):  # the worker died between ready and now: its exit handler retries the batch
            logger.warning("could not hand batch %s to the worker", [job.id for job in batch])

    def _announce_positions(self) -> None:
        """Positions count the running jobs too: "#2" means one job is ahead of yours. They follow the order jobs
        run in: a picture counts the pictures ahead of it, a clip every picture and the clips ahead of it."""
        for index, job in enumerate(self._in_order(), start=len(self._in_flight) + 1):
            if job.position != index:
                job.position = index
                job.handle.push(Queued(index))

    async def _watchdog(self) -> None:
        """Kill a worker stuck past the time limit (the step callback stops ordinary slow jobs itself)."""
        while True:
            limit = self._batch_timeout + self.settings.kill_after
            await asyncio.sleep(min(1.0, limit / 4))
            if self._in_flight and time.monotonic() - self._batch_started > limit:
                logger.error("worker stuck for %.0fs on %s: killing it", limit, list(self._in_flight))
                for job in list(self._in_flight.values()):  # answered now, so not retried on the exit
                    self._fail(job, f"This took longer than {limit:g} seconds and was stopped.", ErrorKind.TIMEOUT)
                if self._process is not None:
                    self._process.kill()
                elif self._conn is not None:  # an external worker: drop it; it serves the next connection
                    _hang_up(self._conn)

    # -- the worker process ----------------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self.settings.worker_address:
            self._generation += 1
            self.stats.worker_starts += 1
            threading.Thread(target=self._connect, args=(self._generation,), name="claybot-worker-connect",
                             daemon=True).start()
        else:
            self._spawn()

    def _connect(self, generation: int) -> None:
        """External worker (`claybot worker`): connect, retrying while it (re)starts, then read from it.
        Connecting and the handshake have a deadline, so a worker address that swallows connections (or a
        stranger's port) is retried instead of holding this thread forever."""
        while not self._closing and generation == self._generation:
            try:
                conn = connect(self.settings.worker_address, self._authkey)
            except (OSError, EOFError, AssertionError, multiprocessing.AuthenticationError) as err:
                logger.warning("cannot reach the worker at %s (%s); retrying", self.settings.worker_address, err)
                time.sleep(2.0)
                continue
            self._process, self._conn = None, conn
            self._read(generation, conn, None)
            return

    def _spawn(self) -> None:
        from pipeline.gpu.worker import child_main

        self._generation += 1
        context = worker_context()
        parent_conn, child_conn = context.Pipe()
        process = context.Process(target=child_main, args=(self.gpu, child_conn, self._log_level),
                                  name=f"claybot-worker-{self._generation}", daemon=True)
        process.start()
        child_conn.close()  # so the parent sees EOF when the child dies
        self._process, self._conn = process, parent_conn
        self.stats.worker_starts += 1
        logger.info("started pipeline worker pid %d", process.pid)
        threading.Thread(target=self._read, args=(self._generation, parent_conn, process),
                         name=f"claybot-worker-reader-{self._generation}", daemon=True).start()

    def _read(self, generation: int, conn: Connection, process: BaseProcess | None) -> None:
        """Reader thread: worker messages → the event loop, then the worker's exit."""
        while True:
            try:
                data = receive(conn, ANSWER_LIMIT)
            except BadMessage as err:  # the connection is closed: as when the worker dies
                logger.warning("dropping the worker's connection: %s", err)
                break
            except (EOFError, OSError):
                break
            try:
                message = codec.decode(data)
            except codec.CodecError as err:  # a worker of another version, or a bug: skipped; its "idle" (or the
                logger.error("the worker sent what is not a message: %s", err)  # watchdog) answers the jobs
                continue
            self._call(self._on_message, generation, message)
        if process is None:
            self._call(self._on_exit, generation, None)
            return
        process.join()
        self._call(self._on_exit, generation, process.exitcode)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None  # start() sets it before any worker thread exists
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _on_message(self, generation: int, message: Message) -> None:
        if generation != self._generation:
            return
        if isinstance(message, Ready):
            pid = self._process.pid if self._process else None
            self.worker_info = {"device": message.device, "dtype": message.dtype, "max_batch": message.max_batch,
                                "pid": pid}
            self._startup_failures = 0
            logger.info("worker ready on %s (%s)", message.device, message.dtype)
            self._ready.set()
            self._wake.set()
            self._write_status()
        elif isinstance(message, Fatal):
            self._fatal = message.message
            logger.error("the pipeline worker cannot start: %s", self._fatal)
            for job in [*self._pending, *self._in_flight.values()]:
                self._fail(job, UNAVAILABLE_REASON, ErrorKind.INTERNAL)
            self._pending.clear()
            self._ready.set()
        elif isinstance(message, Update):
            self._on_update(message)
        elif isinstance(message, Idle):
            self.worker_info["gpu_memory_mb"] = message.gpu_memory_mb
            for job in list(self._in_flight.values()):  # never leave a job without an answer
                self._fail(job, CRASH_REASON, ErrorKind.INTERNAL)
            self._in_flight.clear()
            self._idle.set()
            self._announce_positions()
            self._wake.set()

    def _on_update(self, update: Update) -> None:
        event = update.event
        if isinstance(event, Done):
            job = self._in_flight.pop(update.ids[0], None) if update.ids else None
            if job is not None and not job.answered:
                job.answered = True
                job.handle.push(event)
                self.stats.done += 1
                self._record(job, "done")
                logger.info("job %s done: %s", job.id, " ".join(f"{k}={v:.2f}s" for k, v in event.timings.items()))
        elif isinstance(event, Failed):
            for job_id in update.ids:
                if (job := self._in_flight.pop(job_id, None)) is not None:
                    self._fail(job, event.reason, event.kind)
        else:
            if isinstance(event, Started):  # the engine begins: a model loaded on its first job is not stuck time
                self._batch_started = max(self._batch_started, time.monotonic())
            for job in self._jobs(update.ids):
                job.handle.push(event)

    def _on_exit(self, generation: int, exitcode: int | None) -> None:
        if generation != self._generation:
            return
        was_ready = self._ready.is_set() and not self._fatal
        self._ready.clear()
        lost = [job for job in self._in_flight.values() if not job.answered]
        self._in_flight.clear()
        self._idle.set()
        if self._closing:
            return
        if self._fatal:
            self._ready.set()  # wait_ready() reports the fatal error
            return
        logger.error("pipeline worker exited with code %s while running %d job(s)", exitcode, len(lost))
        retry = []
        for job in lost:
            job.attempts += 1
            if job.attempts > self.settings.max_retries:
                self._fail(job, CRASH_REASON, ErrorKind.INTERNAL)
            else:
                retry.append(job)
                self.stats.retried += 1
        self._pending[:0] = retry
        self._announce_positions()
        if not was_ready:
            self._startup_failures += 1
        delay = min(30.0, 2.0 ** self._startup_failures - 1)
        if self._startup_failures >= 3:
            for job in list(self._pending):  # do not let users wait on a worker that cannot start
                self._fail(job, UNAVAILABLE_REASON, ErrorKind.INTERNAL)
            self._pending.clear()
        asyncio.get_running_loop().call_later(delay, self._respawn)  # on the loop: _call brought the exit here

    def _respawn(self) -> None:
        if not self._closing:
            self._start_worker()

    async def _stop_worker(self) -> None:
        process, conn = self._process, self._conn
        self._generation += 1  # ignore whatever the old worker still says
        if process is None:  # an external worker keeps running for the next queue
            if conn is not None:
                _hang_up(conn)
            return
        assert conn is not None  # _spawn sets both
        try:
            conn.send_bytes(codec.encode(Stop()))
        except (OSError, ValueError):
            pass
        await asyncio.to_thread(process.join, 5.0)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        conn.close()

    # -- answers ---------------------------------------------------------------------------------------------------

    def _jobs(self, ids: tuple[str, ...]) -> list[QueuedJob]:
        return [self._in_flight[i] for i in ids if i in self._in_flight]

    def _fail(self, job: QueuedJob, reason: str, kind: ErrorKind) -> None:
        if job.answered:
            return
        job.answered = True
        self._in_flight.pop(job.id, None)
        job.handle.push(Failed(reason, kind))
        self._count_failure(kind)
        self._record(job, kind.value)
        logger.info("job %s failed (%s): %s", job.id, kind.value, reason)

    def _count_failure(self, kind: ErrorKind) -> None:
        self.stats.failed[kind.value] = self.stats.failed.get(kind.value, 0) + 1

    def _record(self, job: QueuedJob, outcome: str) -> None:
        self.history.add(time.monotonic() - job.submitted, outcome)
        self._write_status()

    async def recover(self) -> list[JobHandle]:
        """Nothing: a local queue's jobs die with its process (the journal submits them again)."""
        return []

    async def status(self) -> dict[str, Any]:
        """Queue depth, the worker, and the last hour's jobs (what `claybot status` shows)."""
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """``status``, at once: what the status file keeps."""
        pid = self._process.pid if self._process else None
        kinds = [kind.name for kind in by_rank() if kind.served_by_default(self.gpu)]
        worker = {"name": f"local-{pid}" if pid else self.settings.worker_address, "pid": pid,
                  "alive": self._ready.is_set() and not self._fatal, "kinds": kinds, **self.worker_info}
        return {"backend": "local", "updated": time.time(), "owner_pid": os.getpid(),
                "waiting": len(self._pending), "running": len(self._in_flight),
                "workers": [worker] if self._process or self.settings.worker_address else [],
                "history": self.history.recent()}

    def _write_status(self) -> None:
        if self._status_path is not None:
            try:
                write_atomically(self._status_path, self.snapshot())
            except OSError as err:
                logger.warning("cannot write %s: %s", self._status_path, err)


def _hang_up(conn: Connection) -> None:
    """Close a socket connection so that both ends see it at once: a plain close() from this thread would not
    wake our reader thread blocked in recv(), and the worker would never hear we left."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except OSError:
        pass
    conn.close()
