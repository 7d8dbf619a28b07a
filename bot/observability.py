"""Logs and metrics for running the bot: every log line carries its job id, and Prometheus can scrape /metrics.

The job id lives in a context variable, so each asyncio task (one per chat event) logs its own job without passing
the id around; a filter on the root handler stamps it on records from every logger, libraries' included. Metrics
are off by default and, when on, served on a loopback address only: they say how busy the bot is, which is nobody
else's business. This module runs in the chat process, so it stays light (no torch, no pipeline imports).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pythonjsonlogger.json import JsonFormatter

logger = logging.getLogger(__name__)

JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("claybot_job_id", default=None)

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(job_id)s]: %(message)s"
NO_JOB = "-"

# A job takes seconds on a warm GPU and minutes behind a queue or on a CPU; an acknowledgement should take well under
# a second, and ten is already a failure to the user.
JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
ACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


# ---------------------------------------------------------------------------------------------------------------------
# Logs


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Log every line of the block (and of tasks it starts) with ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JobIdFilter(logging.Filter):
    """Stamp ``record.job_id`` from the current job context ("-" outside one); an explicit ``extra`` id wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job_id = JOB_ID.get()
            record.job_id = NO_JOB if job_id is None else job_id
        return True


class _JobJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with our field names, the timestamp first and null for "no job"."""

    def __init__(self) -> None:
        super().__init__("{levelname}{name}{job_id}{message}", style="{", timestamp=True,
                         rename_fields={"levelname": "level", "name": "logger"})

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        if log_data.get("job_id") == NO_JOB:
            log_data["job_id"] = None
        return {"timestamp": log_data.pop("timestamp", None), **log_data}


class HideSecrets(logging.Filter):
    """Blanks bot tokens out of log lines, tracebacks included: the ones registered with ``hide_secret``, and
    anything shaped like a Telegram token (libraries log API URLs, which contain it)."""

    # "<bot id>:<secret>", as @BotFather hands them out. A match starts only where a run of digits starts: log
    # lines quote what users wrote (a caption of 100,000 digits), and trying every digit of a run is quadratic.
    pattern = re.compile(r"(?<!\d)\d{3,}+:[A-Za-z0-9_-]{20,}+")

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def hide(self, text: str) -> str:
        text = self.pattern.sub("<token>", text)
        for secret in self.secrets:
            text = text.replace(secret, "<token>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = self.hide(message)
        if hidden != message:
            record.msg, record.args = hidden, ()
        if record.exc_info:  # a traceback that quotes a secret is replaced by its hidden text (formatters use it)
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            hidden = self.hide(text)
            if hidden != text:
                record.exc_text, record.exc_info = hidden, None
        elif record.exc_text:
            record.exc_text = self.hide(record.exc_text)
        return True


HIDE_SECRETS = HideSecrets()


def hide_secret(secret: str) -> None:
    """Never write this value (a bot token) to a log."""
    if secret:
        HIDE_SECRETS.secrets.add(secret)


def setup_logging(level: int, fmt: str = "text", stream: TextIO = sys.stderr) -> None:
    """Send the root logger's records to ``stream`` as text or JSON lines, each with its job id.

    Replaces the root logger's handlers (``claybot`` calls it once at start-up, instead of ``logging.basicConfig``).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(map(repr, LOG_FORMATS))}, not {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT) if fmt == "text" else _JobJsonFormatter())
    # On the handler, not a logger: logger filters only see records logged to that very logger, not its children's.
    handler.addFilter(JobIdFilter())
    handler.addFilter(HIDE_SECRETS)  # every logger's lines, whichever library wrote them
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """The bot's Prometheus metrics, in a registry of their own (so tests and tools can make as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("claybot_requests", "Chat requests by platform and outcome.",
                                ["platform", "outcome"], registry=r)
        self.job_seconds = Histogram("claybot_job_seconds", "Seconds from accepting a request to answering it.",
                                     ["outcome"], buckets=JOB_BUCKETS, registry=r)
        self.ack_seconds = Histogram("claybot_ack_seconds", "Seconds from a chat event to its first acknowledgement.",
                                     ["platform"], buckets=ACK_BUCKETS, registry=r)
        self.failures = Counter("claybot_failures", "Failed requests by kind.", ["kind"], registry=r)
        self.credit_events = Counter("claybot_credits", "Credits reserved, committed and released.", ["event"],
                                     registry=r)
        self.payments = Counter("claybot_payments", "Payments credited, by platform.", ["platform"], registry=r)
        self.queue_waiting = Gauge("claybot_queue_waiting", "Jobs waiting in the queue.", registry=r)
        self.queue_running = Gauge("claybot_queue_running", "Jobs being run by a worker.", registry=r)
        self.workers_alive = Gauge("claybot_workers_alive", "Pipeline workers that are alive.", registry=r)
        self.gpu_memory = Gauge("claybot_gpu_memory_bytes", "GPU memory in use, per worker that reports it.",
                                ["worker"], registry=r)
        self._gpu_workers: set[str] = set()

    def credits(self, event: str, amount: int) -> None:
        """Credits reserved, committed or released (bot/credits.py)."""
        self.credit_events.labels(event).inc(amount)

    def payment(self, platform: str) -> None:
        """A payment credited (once per payment id)."""
        self.payments.labels(platform).inc()

    def request(self, platform: str, outcome: str) -> None:
        """Count one chat request ("image", "failed", "busy", "rate_limited", "refused", "bad_input", ...)."""
        self.requests.labels(platform=platform, outcome=outcome).inc()

    def job_finished(self, outcome: str, seconds: float) -> None:
        """Record how long an accepted request took to answer."""
        self.job_seconds.labels(outcome=outcome).observe(seconds)

    def acknowledged(self, platform: str, seconds: float) -> None:
        """Record how long the user waited for the first sign that the bot heard them."""
        self.ack_seconds.labels(platform=platform).observe(seconds)

    def failure(self, kind: str) -> None:
        """Count one failure ("bad_image", "timeout", "internal", "not_allowed", ...)."""
        self.failures.labels(kind=kind).inc()

    def update_queue(self, snapshot: dict[str, Any]) -> None:
        """Set the queue and worker gauges from a queue status dict (``LocalQueue.status()``, ``redis_status()``)."""
        workers = snapshot.get("workers") or []
        self.queue_waiting.set(snapshot.get("waiting") or 0)
        self.queue_running.set(snapshot.get("running") or 0)
        self.workers_alive.set(sum(1 for w in workers if w.get("alive")))
        reporting: set[str] = set()
        for worker in workers:
            mb = worker.get("gpu_memory_mb")
            if mb is not None:
                name = str(worker.get("name"))
                self.gpu_memory.labels(worker=name).set(float(mb) * 2**20)
                reporting.add(name)
        # A worker that left (or stopped reporting) must not keep showing its last value forever.
        for gone in self._gpu_workers - reporting:
            with contextlib.suppress(KeyError):
                self.gpu_memory.remove(gone)
        self._gpu_workers = reporting

    def render(self) -> bytes:
        """The metrics in Prometheus' text exposition format."""
        return generate_latest(self.registry)


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (localhost, 127.0.0.0/8, ::1): the only place metrics may listen."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # "" and names other than localhost, which could resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


Snapshot = Callable[[], Awaitable[dict[str, Any]]]


class MetricsServer:
    """GET /metrics over aiohttp, optionally refreshing the queue gauges from ``snapshot`` every ``interval`` s."""

    def __init__(self, metrics: Metrics, host: str, port: int, *, snapshot: Snapshot | None = None,
                 interval: float = 5.0, scrape_timeout: float = 1.0) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self.interval = interval
        self.scrape_timeout = scrape_timeout
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task | None = None
        self._warned: set[str] = set()

    async def start(self) -> None:
        """Listen, and start the refresh loop when there is a snapshot to take."""
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the real one when asked for port 0
        if self.snapshot is not None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="claybot-metrics-refresh")
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        """Stop refreshing and listening."""
        runner, self._runner = self._runner, None  # also ends the refresh loop, should a snapshot eat the cancel
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if runner is not None:
            await runner.cleanup()

    async def refresh(self, timeout: float | None = None) -> None:
        """Update the queue gauges once; a failing or slow snapshot is logged (once per message), never raised."""
        if self.snapshot is None:
            return
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that lands as the snapshot
            # fails, and close() would then wait forever for the refresh loop.
            async with asyncio.timeout(timeout):
                snapshot = await self.snapshot()
            self.metrics.update_queue(snapshot)
        except TimeoutError:
            self._warn_once(f"queue snapshot took over {timeout:g} s; serving the last values")
        except Exception as err:  # a broken queue must not break the metrics endpoint
            self._warn_once(f"queue snapshot failed: {type(err).__name__}: {err}")

    async def _refresh_loop(self) -> None:
        while self._runner is not None:
            await self.refresh(timeout=self.interval)
            await asyncio.sleep(self.interval)

    async def _scrape(self, request: web.Request) -> web.Response:
        # Fresh queue numbers for the scrape, but a slow Redis only delays it by scrape_timeout.
        await self.refresh(timeout=self.scrape_timeout)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("%s", message)


async def serve_metrics(metrics: Metrics, host: str, port: int, *, snapshot: Snapshot | None = None,
                        interval: float = 5.0, scrape_timeout: float = 1.0) -> MetricsServer:
    """Start serving ``metrics`` at http://host:port/metrics (port 0 picks a free one; see ``MetricsServer.port``)."""
    server = MetricsServer(metrics, host, port, snapshot=snapshot, interval=interval, scrape_timeout=scrape_timeout)
    await server.start()
    return server
