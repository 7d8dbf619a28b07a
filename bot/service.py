"""What `claybot run` builds and connects: the database, the queue and its worker, the metrics page and the chat
front ends, kept running until SIGINT/SIGTERM and then stopped in order.

A front end that fails (at start, or later when its connection is lost for good) is logged in one line and started
again with backoff while the others keep serving; only what the operator must fix (a refused token, a config value
the platform rejects: ``ConfigError``) stops claybot, with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.budget import big_buffers_back_to_the_system
from bot.config import Config, ConfigError
from bot.credits import Credits, CreditsRule
from bot.flow import FrontEnd, RequestFlow
from bot.observability import Metrics, hide_secret, serve_metrics
from bot.store import ClaybotDatabase, store_path
from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import Done, JobQueue
from pipeline.core.local import LocalQueue

logger = logging.getLogger(__name__)

RETRY_FIRST = 5.0  # seconds before a failed front end is started again
RETRY_MAX = 300.0  # the longest wait between two attempts
STEADY = 600.0  # a front end that ran this long before failing starts again from the shortest wait


def open_queue(config: Config, *, log_level: int = logging.INFO, status: bool = False) -> JobQueue:
    """The configured queue backend (``status``: the local one keeps `claybot status`'s file up to date)."""
    if config.queue.backend == "redis":
        from pipeline.core.redis_queue import RedisQueue

        return RedisQueue(config.gpu(), config.queue)
    return LocalQueue(config.gpu(), config.queue, log_level=log_level,
                      status_path=status_file(config) if status else None)


def status_file(config: Config) -> Path:
    """Where a running local-backend claybot keeps its status."""
    return Path(config.bot.data_dir) / "status.json"


def make_flow(queue: JobQueue, config: Config, store: ClaybotDatabase, metrics: Metrics | None = None
              ) -> RequestFlow:
    """The request flow over claybot's database; with ``[credits] enabled``, every request reserves its credits
    (``CreditsRule``) and the front ends reach the ledger as ``flow.credits``."""
    if not config.credits.enabled:
        return RequestFlow(queue, config, store=store, metrics=metrics)
    return RequestFlow(queue, config, store=store, metrics=metrics,
                       rules=[CreditsRule(config.credits, metrics)],
                       credits=Credits(store, config.credits, metrics=metrics))


def build_front_end(name: str, config: Config, flow: RequestFlow, token: str) -> FrontEnd:
    """A fresh, unconnected front end (each attempt to start one gets a new one)."""
    if name == "telegram":
        from bot.telegram import TelegramFrontEnd

        return TelegramFrontEnd(config, flow, token)
    from bot.discord_client import DiscordFrontEnd

    return DiscordFrontEnd(config, flow, token)


class KeptFrontEnd:
    """A front end kept running: a failed start or a lost connection is retried with backoff (5 s, doubling up to
    5 minutes); a ``ConfigError`` is left to the operator (``fatal``). Answers go through whichever instance runs."""

    def __init__(self, name: str, build: Callable[[], FrontEnd], *, first_delay: float = RETRY_FIRST,
                 max_delay: float = RETRY_MAX) -> None:
        self.name = name
        self._build = build
        self.first_delay, self.max_delay = first_delay, max_delay
        self.current: FrontEnd | None = None
        self.fatal: asyncio.Future[ConfigError] | None = None  # set when a retry meets what the operator must fix
        self._keeper: asyncio.Task | None = None

    async def start(self) -> None:
        """The first attempt: a ConfigError stops here; any other failure is logged and retried in the background."""
        fatal = self.fatal = asyncio.get_running_loop().create_future()
        try:
            await self._start_one()
            failure = None
        except ConfigError:
            raise
        except Exception as err:  # whatever the platform's library raised: it must not stop the other front end
            failure = err
        self._keeper = asyncio.create_task(self._keep(failure, fatal), name=f"claybot-keep-{self.name}")

    async def _start_one(self) -> None:
        front_end = self._build()
        try:
            await front_end.start()
        except BaseException:
            await _quietly(front_end.close())
            raise
        self.current = front_end
        logger.info("%s front end running", self.name)

    async def _keep(self, failure: Exception | None, fatal: asyncio.Future[ConfigError]) -> None:
        delay = self.first_delay
        while True:
            if failure is None:
                running = self.current
                assert running is not None  # no failure: the last start succeeded, and set it
                started = time.monotonic()
                failure = await running.ended()
                await _quietly(running.close())
                self.current = None
                if isinstance(failure, ConfigError):
                    logger.error("%s front end: %s", self.name, failure)
                    fatal.set_result(failure)
                    return
                if time.monotonic() - started > STEADY:
                    delay = self.first_delay
            logger.error("%s front end failed: %s; trying again in %.0f s", self.name, _describe(failure), delay)
            logger.debug("%s front end failure", self.name, exc_info=failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)
            try:
                await self._start_one()
                failure = None
            except ConfigError as err:
                logger.error("%s front end: %s", self.name, err)
                fatal.set_result(err)
                return
            except Exception as err:
                failure = err

    async def ended(self) -> Exception:
        """Never: this front end starts its platform again by itself."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        """Through the running instance; while there is none, the answer cannot go out."""
        if self.current is None:
            raise ClaybotError(f"the {self.name} front end is not connected")
        await self.current.deliver(chat_id, done, text, answer_to, source=source)

    async def stop_taking(self) -> None:
        """No more retries; the running instance takes no new requests."""
        await self._stop_keeping()
        if self.current is not None:
            await self.current.stop_taking()

    async def close(self) -> None:
        """No more retries; the running instance disconnects."""
        await self._stop_keeping()
        if self.current is not None:
            await self.current.close()
            self.current = None

    async def _stop_keeping(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None


def _describe(error: BaseException) -> str:
    """One line: our own errors say what is wrong; a library's unexpected one is named by its type."""
    if isinstance(error, ClaybotError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def out_of_the_collectors_sight() -> None:
    """Move every object alive now (modules, the libraries' tables, the config) out of the garbage collector's
    sight: they live as long as the process, and a full collection would walk them all again (160 ms seen in the
    middle of a burst of 200 photos, just when their first lines were due); collections then walk only what came
    later."""
    gc.freeze()


async def run_claybot(config: Config, tokens: dict[str, str], verbose: bool) -> int:
    """Run claybot until SIGINT/SIGTERM: the queue and its worker, and a front end per token."""
    for secret in tokens.values():
        hide_secret(secret)
    big_buffers_back_to_the_system()  # photos freed after a raid leave the process's memory
    store = ClaybotDatabase(store_path(config.bot))
    await store.open()
    queue = open_queue(config, log_level=logging.DEBUG if verbose else logging.INFO, status=True)
    metrics = Metrics() if config.metrics.enabled else None
    metrics_server = None
    front_ends: list[KeptFrontEnd] = []
    flow: RequestFlow | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await queue.start()
        flow = make_flow(queue, config, store, metrics)
        unanswered = await flow.unanswered()  # before any new request is taken
        if metrics is not None:
            metrics_server = await serve_metrics(metrics, config.metrics.host, config.metrics.port,
                                                 snapshot=queue.status)
            logger.info("metrics at http://%s:%d/metrics", config.metrics.host, metrics_server.port)
        gc.collect()  # start-up's garbage is not kept forever; the front ends are not polling yet
        out_of_the_collectors_sight()
        for name in ("telegram", "discord"):
            if name in tokens:
                kept = KeptFrontEnd(name, functools.partial(build_front_end, name, config, flow, tokens[name]))
                front_ends.append(kept)
                await kept.start()
        out_of_the_collectors_sight()  # and what the front ends loaded (their libraries, the bots' accounts)
        info = await queue.wait_ready()
        logger.info("claybot is running (worker on %s)", info.get("device"))
        # Jobs accepted before a restart: Redis still has its own; the journal runs the others again.
        handles = await queue.recover()
        recovered = await flow.recover({kept.name: kept for kept in front_ends}, unanswered, handles)
        if recovered:
            logger.info("answering %d job(s) accepted before the restart", recovered)
        fatal = await _first_fatal(stop, front_ends)
        if fatal is not None:
            raise fatal
        logger.info("stopping: no new requests; running jobs get %.0fs", config.queue.shutdown_grace)
    finally:
        for front_end in front_ends:
            await _quietly(front_end.stop_taking())
        await queue.close()  # answers every job: finished within the grace, or "restarting"
        await asyncio.sleep(0.5)  # let the last answers go out
        for front_end in front_ends:
            await _quietly(front_end.close())
        if metrics_server is not None:
            await _quietly(metrics_server.close())
        await _quietly(store.close())
        if flow is not None:
            logger.info("%s", flow.budget.summary())
    return 0


async def _first_fatal(stop: asyncio.Event, front_ends: list[KeptFrontEnd]) -> ConfigError | None:
    """Wait for the signal to stop, or for a front end to meet what only the operator can fix (returned)."""
    fatals = [kept.fatal for kept in front_ends if kept.fatal is not None]  # every started one has its own
    stopping = asyncio.ensure_future(stop.wait())
    waits: list[asyncio.Future[Any]] = [stopping, *fatals]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return next((fatal.result() for fatal in fatals if fatal.done()), None)


async def _quietly(awaitable: Awaitable) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("while stopping")
