"""Job types and the queue interface shared by the chat side and the GPU side.

Importing this module never imports torch, diffusers or onnxruntime: the chat process uses it to submit jobs and
await their events while the GPU work happens in another process.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pipeline.core.errors import ClaybotError


class ErrorKind(StrEnum):
    """Why a job failed, for front ends that answer differently per kind."""

    BAD_IMAGE = "bad_image"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    NOT_ALLOWED = "not_allowed"  # over the chat's content rating (the SFW gate)
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


@dataclass(frozen=True)
class StyleRequest:
    """What a user asked for. ``None`` means the configured default; ``reply_to`` belongs to the front end."""

    image: bytes
    style: str | None = None
    strength: float | None = None
    seed: int | None = None
    reply_to: Any = None
    trigger_weight: float | None = None  # operators' sweeps only; users get the style's weight
    structure_scale: float | None = None  # operators' sweeps only: the style's guide scales otherwise
    identity_scale: float | None = None
    max_rating: str | None = None  # the most the chat allows (pipeline.core.safety.RATINGS); None: anything
    speed: str | None = None  # a [speed.*] preset ("fast") or "default"; None: the style's

    def __repr__(self) -> str:  # never put image bytes in a log line
        return (f"StyleRequest(<{len(self.image)} bytes>, style={self.style!r}, strength={self.strength!r}, "
                f"seed={self.seed!r}, reply_to={self.reply_to!r}, max_rating={self.max_rating!r}, "
                f"speed={self.speed!r})")


# What a user, the config and the command line may ask for: 0 would leave the photo as it is (and img2img runs no
# step at all), 1 ignores it.
MIN_STRENGTH, MAX_STRENGTH = 0.05, 1.0
MAX_SEED = 2**31 - 1  # seeds are 0…MAX_SEED: what Discord's option allows, and any generator takes


# -- events, in the order a handle yields them ----------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """Waiting; ``position`` counts the jobs ahead (running ones too) plus one. Sent again when it changes."""

    position: int


@dataclass(frozen=True)
class Started:
    """The worker took the job (``batch_size`` jobs run together)."""

    batch_size: int = 1


@dataclass(frozen=True)
class Progress:
    """Denoising step ``step`` of ``total`` finished."""

    step: int
    total: int


@dataclass(frozen=True)
class Done:
    """The result: a PNG and what was done to get it."""

    image: bytes
    width: int
    height: int
    tags: list[str]
    prompt: str
    seed: int
    style: str
    strength: float
    ratings: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    speed: str = "default"  # the speed preset it ran under

    def __repr__(self) -> str:
        return f"Done(<{len(self.image)} bytes {self.width}×{self.height}>, seed={self.seed}, style={self.style!r})"


@dataclass(frozen=True)
class Failed:
    """The job ended without an image; ``reason`` is written for the user."""

    reason: str
    kind: ErrorKind


Event = Queued | Started | Progress | Done | Failed


class JobFailed(ClaybotError):
    """Raised by ``JobHandle.result`` when the job failed."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.reason)
        self.kind = failed.kind


class BadRequest(ClaybotError):
    """A style or strength the config does not allow; the message is for the user."""


class QueueBusy(ClaybotError):
    """The queue is full: the submit is refused at once."""

    kind = ErrorKind.BUSY


class QueueClosed(ClaybotError):
    """The queue is shutting down and takes no new jobs."""

    kind = ErrorKind.SHUTTING_DOWN


# Why a job failed, in the words users read; every queue backend uses the same ones.
CRASH_REASON = "The picture engine crashed on this photo; please try another one."
SHUTDOWN_REASON = "claybot is restarting; please send your photo again in a minute."


def busy_message(waiting: int, limit: int) -> str:
    """What a user hears when the queue is full."""
    return (f"I'm busy: {waiting} photos are already waiting (the limit is {limit}). "
            "Please try again in a few minutes.")


def job_message(job_id: str, image: bytes, options) -> dict[str, Any]:
    """One job of a batch message; ``options`` has the job's seed, trigger_weight and max_rating."""
    return {"id": job_id, "image": image, "seed": options.seed, "trigger_weight": options.trigger_weight,
            "max_rating": options.max_rating, "structure_scale": options.structure_scale,
            "identity_scale": options.identity_scale}


def batch_message(intake, jobs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """The worker's batch message: jobs (see ``job_message``) sharing style, strength, speed and working size."""
    return {"op": "batch", "style": intake.style, "strength": intake.strength, "speed": intake.speed,
            "timeout": timeout, "jobs": jobs}


def new_job_id() -> str:
    """A short random id for logs and replies."""
    return secrets.token_hex(6)


class JobHandle:
    """What a submitter holds: the job's events in order, its result, and cancel-before-start."""

    def __init__(self, job_id: str, request: StyleRequest, canceller=None) -> None:
        self.id = job_id
        self.request = request
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._final: Done | Failed | None = None
        self._canceller = canceller

    # called by the queue backend (on the event loop)
    def push(self, event: Event) -> None:
        """Deliver one event; nothing after the final Done/Failed."""
        if self._final is not None:
            return
        if isinstance(event, Done | Failed):
            self._final = event
        self._events.put_nowait(event)

    @property
    def finished(self) -> bool:
        """Whether Done or Failed was delivered."""
        return self._final is not None

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order, ending with Done or Failed."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Done | Failed):
                return

    async def result(self, timeout: float | None = None) -> Done:
        """Wait for the end; the Done event, or JobFailed."""
        async def last() -> Done | Failed:
            final: Done | Failed | None = None
            async for event in self.events():
                final = event if isinstance(event, Done | Failed) else final
            assert final is not None
            return final

        final = self._final if self._final is not None else await asyncio.wait_for(last(), timeout)
        if isinstance(final, Failed):
            raise JobFailed(final)
        return final

    def cancel(self) -> bool:
        """Cancel if the job has not started; True when it was cancelled."""
        return bool(self._canceller and self._canceller(self))


class JobQueue(Protocol):
    """The only bridge between the chat side and the GPU side; local and Redis backends implement it."""

    async def start(self) -> None:
        """Start serving (spawn or connect to workers)."""

    async def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until jobs can be served (local: the worker loaded its models; Redis: the server answers); what is
        known of the worker (``device``, …)."""

    async def submit(self, request: StyleRequest) -> JobHandle:
        """Queue a job; raises QueueBusy when full and QueueClosed when shutting down."""

    async def check_room(self, coming: int = 0) -> None:
        """Cheap, before a photo is downloaded: QueueBusy when the waiting jobs, plus ``coming`` photos this
        process is still fetching for the queue, fill it; QueueClosed when shutting down."""

    async def recover(self) -> list[JobHandle]:
        """After a restart, handles for this process's accepted jobs that the queue still holds (Redis); none where
        the queue died with the process (local: the journal submits those again)."""

    async def status(self) -> dict[str, Any]:
        """Queue depth, workers and the last hour's jobs, as `claybot status` shows them (and the metrics)."""

    async def close(self, grace: float | None = None) -> None:
        """Stop taking jobs, let running ones finish within ``grace`` seconds, fail the rest."""
