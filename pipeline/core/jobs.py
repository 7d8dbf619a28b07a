"""The protocol between the chat side and the GPU side: the job, its events, the worker's messages, the queue.

A request becomes one ``Job`` at intake (``pipeline.core.intake``), its events come back as ``Queued``, ``Started``,
``Progress``, then ``Done`` or ``Failed``; a queue and its worker exchange ``Batch``/``Stop`` and ``Ready``/
``Fatal``/``Update``/``Idle``. These types are the protocol's documentation; ``pipeline.core.codec`` is its one
wire format. Importing this module never imports torch, diffusers or onnxruntime.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pipeline.core.errors import BadRequest as BadRequest  # re-exported: jobs' users name it from here
from pipeline.core.errors import ClaybotError
from pipeline.core.kind import MP4 as MP4
from pipeline.core.kind import PNG as PNG
from pipeline.core.kind import Spec, kind_of
from pipeline.core.safety import RATINGS


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


# What a user, the config and the command line may ask for: 0 would leave the photo as it is (and img2img runs no
# step at all), 1 ignores it.
MIN_STRENGTH, MAX_STRENGTH = 0.05, 1.0
MAX_SEED = 2**31 - 1  # seeds are 0…MAX_SEED: what Discord's option allows, and any generator takes
MAX_WEIGHT = 4.0  # a trigger weight (StyleSettings.trigger_weight allows the same)
MAX_GUIDE_SCALE = 2.0  # a structure or identity guide's scale (as StructureGuide/IdentityGuide allow)


def check_strength(value: float) -> float:
    """A strength within the range users may ask for (the one rule, for parsers and jobs alike)."""
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:
        raise BadRequest(f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, not {value:g}.")
    return value


@dataclass(frozen=True)
class Job:
    """One request with every default settled (at intake, in the chat process): what the worker runs, as it is.

    Built by ``pipeline.core.intake.take_in``; carried as it is by every queue backend and the journal
    (``pipeline.core.codec``). Nothing downstream decides a default again. It holds what every kind shares and ONE
    ``spec``: its kind's own options (``pipeline.core.kinds``; ``kind`` is the spec's). ``image`` is the photo's
    bytes (empty where it travels apart from the job, e.g. Redis's ``image:<id>``); ``reply_to`` is (platform, chat
    id), where a restarted chat process answers."""

    image: bytes
    style: str
    seed: int
    work_size: tuple[int, int]  # (width, height) the photo is worked on at
    spec: Spec
    max_rating: str | None = None  # the most the chat allows (pipeline.core.safety.RATINGS); None: anything
    reply_to: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, Spec) or not self.spec.KIND:
            raise BadRequest(f"spec must be a kind's options, not {type(self.spec).__name__}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise BadRequest(f"Seed must be a whole number from 0 to {MAX_SEED}, not {self.seed}.")
        if self.max_rating is not None and self.max_rating not in RATINGS:
            raise BadRequest(f"max_rating must be one of {', '.join(RATINGS)}, not {self.max_rating[:40]!r}.")
        if len(self.work_size) != 2 or min(self.work_size) < 1:
            raise BadRequest(f"work_size must be a width and a height, not {self.work_size!r}.")

    @property
    def kind(self) -> str:
        """The kind of job (its spec's)."""
        return self.spec.KIND

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys can share one engine call (their kind says which may)."""
        return kind_of(self.kind).batch_key(self)

    def __repr__(self) -> str:  # never put image bytes in a log line
        return (f"Job({self.kind}, <{len(self.image)} bytes>, style={self.style!r}, seed={self.seed}, "
                f"work_size={self.work_size}, max_rating={self.max_rating!r}, reply_to={self.reply_to!r}, "
                f"{self.spec.describe()})")


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
    """The result: a PNG (or, for a clip, an MP4: ``media``) and what was done to get it."""

    image: bytes
    width: int
    height: int
    tags: list[str]
    prompt: str
    seed: int
    style: str
    strength: float = 0.0  # a picture's denoise (0 where the kind has none)
    ratings: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    speed: str = "default"  # the speed preset it ran under
    media: str = PNG  # what ``image`` holds: PNG, or MP4 for a clip
    words: str = ""  # the person's own words it was asked with ("as a knight"), shown with it and kept by Again

    def __post_init__(self) -> None:
        if self.media not in (PNG, MP4):
            raise ValueError(f"media must be {PNG} or {MP4}, not {self.media[:40]!r}")

    def __repr__(self) -> str:
        return (f"Done(<{len(self.image)} bytes {self.media} {self.width}×{self.height}>, seed={self.seed}, "
                f"style={self.style!r})")


@dataclass(frozen=True)
class Failed:
    """The job ended without an image; ``reason`` is written for the user."""

    reason: str
    kind: ErrorKind


Event = Queued | Started | Progress | Done | Failed


# -- what a queue and a worker say to each other (pipeline.core.codec turns these into bytes and back) ---------------
# Queue → worker: Batch, then Stop at the end. Worker → queue: Ready (or Fatal) once, then per batch an Update per
# event (Started and Progress for the jobs running together, Done or Failed for each job) and Idle when it is over.


@dataclass(frozen=True)
class Task:
    """One job of a batch, under the id its queue gave it."""

    id: str
    job: Job


@dataclass(frozen=True)
class Batch:
    """Queue → worker: jobs sharing one batch key, to run together within ``timeout`` seconds."""

    tasks: tuple[Task, ...]
    timeout: float


@dataclass(frozen=True)
class Stop:
    """Queue → worker: finish and exit."""


@dataclass(frozen=True)
class Ready:
    """Worker → queue: the models are loaded; jobs may come."""

    device: str
    dtype: str
    max_batch: int


@dataclass(frozen=True)
class Fatal:
    """Worker → queue: the worker cannot start (``message`` names the config key or file)."""

    message: str


@dataclass(frozen=True)
class Update:
    """Worker → queue: an event of these jobs (Started and Progress for a group; Done and Failed for one job)."""

    ids: tuple[str, ...]
    event: Event


@dataclass(frozen=True)
class Idle:
    """Worker → queue: the batch is over; every job of it was answered."""

    gpu_memory_mb: float | None = None


Message = Job | Queued | Started | Progress | Done | Failed | Task | Batch | Stop | Ready | Fatal | Update | Idle


class JobFailed(ClaybotError):
    """Raised by ``JobHandle.result`` when the job failed, and by intake for a photo that cannot be used."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.reason)
        self.failed = failed
        self.kind = failed.kind


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


def new_job_id() -> str:
    """A short random id for logs and replies."""
    return secrets.token_hex(6)


class JobHandle:
    """What a submitter holds: the job's events in order, its result, and cancel-before-start."""

    def __init__(self, job_id: str, job: Job, canceller: Callable[[JobHandle], bool] | None = None) -> None:
        self.id = job_id
        self.job = job
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

    async def submit(self, job: Job) -> JobHandle:
        """Queue a settled job (``pipeline.core.intake.take_in``); raises QueueBusy when full and QueueClosed when
        shutting down."""

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        """Cheap, before a photo is downloaded: QueueBusy when the waiting jobs, plus ``coming`` photos this
        process is still fetching for the queue, fill it, or no worker serves one of ``kinds`` (every job a request
        will queue: a chained request's too); QueueClosed when shutting down."""

    async def recover(self) -> list[JobHandle]:
        """After a restart, handles for this process's accepted jobs that the queue still holds (Redis); none where
        the queue died with the process (local: the journal submits those again)."""

    async def status(self) -> dict[str, Any]:
        """Queue depth, workers and the last hour's jobs, as `claybot status` shows them (and the metrics)."""

    async def close(self, grace: float | None = None) -> None:
        """Stop taking jobs, let running ones finish within ``grace`` seconds, fail the rest."""
