"""The engine seam: what makes one kind of job (or one picture engine a style names), behind one protocol.

The worker loop (``pipeline.gpu.worker``) decodes a batch's photos, tags and rates them once with the worker's
tagger, then hands each group to the engine its kind (and style) names: ``Engine.run(group, run)``. An engine
answers every job of its group through ``run`` (Started, Progress per step, then Done or Failed), with settled
values only (the job's spec). Engines are registered by name in ``pipeline.core.kind`` ("module:Class") and built
here with ``(settings, tagger)``, so a new engine is one module plus one ``register_engine`` line, and no engine
imports the worker loop.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.errors import ModelError
from pipeline.core.jobs import ErrorKind, Failed, Job, Message, Task, Update
from pipeline.core.kinds import ENGINES
from pipeline.core.settings import GpuSettings

logger = logging.getLogger(__name__)

Send = Callable[[Message], None]
TAG_REASON = "I could not look at that picture; please try another one."


class LinkDown(Exception):
    """Sending an answer failed: the connection is gone, which ends the batch (not a fault of any photo)."""


class JobTimeout(Exception):
    """Raised from a step callback when a group runs past its time limit."""


@dataclass
class DecodedJob:
    """One job of a batch with its photo decoded (and, once tagged, its tags)."""

    task: Task
    image: Any  # a PIL image
    timings: dict[str, float] = field(default_factory=dict)
    tags: Any = None  # pipeline.gpu.tagger.Tags

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def job(self) -> Job:
        return self.task.job


@dataclass
class Run:
    """What an engine is given with a group: where answers go, the time limit, and the worker's tagger."""

    send: Send
    timeout: float  # the batch's time limit, in seconds
    deadline: float  # time.monotonic() past which a step stops the group
    tagger: Any  # the worker's pipeline.gpu.tagger.Tagger: rates what an engine made

    def fail(self, job_id: str, reason: str, kind: ErrorKind) -> None:
        """Answer one job with a failure."""
        self.send(Update((job_id,), Failed(reason, kind)))

    def tag(self, images: list, ids: list[str]) -> list:
        """The tagger's answer per image; None for an image it fails on (retried one at a time, so one bad image
        never costs its companions their tags)."""
        return tag_images(self.tagger, images, ids)

    def limit_text(self) -> str:
        """The batch's time limit as users read it."""
        return limit_text(self.timeout)


class Engine(Protocol):
    """Makes the jobs of one kind (or of the styles that name it): loaded once per worker."""

    def warm_up(self) -> None:
        """A throw-away run so the first job is not slow (may do nothing)."""

    def run(self, group: list[DecodedJob], run: Run) -> None:
        """Make and answer every job of ``group`` (decoded, tagged, allowed; one batch key) through ``run``."""


def load_engines(names: Iterable[str], settings: GpuSettings, tagger: Any) -> dict[str, Engine]:
    """Build the named engines (each registered as "module:Class", constructed with ``(settings, tagger)``)."""
    engines: dict[str, Engine] = {}
    for name in sorted(names):
        target = ENGINES.get(name)
        if target is None:
            raise ModelError(f"no engine called {name!r} is registered (have: {', '.join(sorted(ENGINES))})")
        module, _, attribute = target.partition(":")
        engine_class = getattr(importlib.import_module(module), attribute)
        started = time.perf_counter()
        engines[name] = engine_class(settings, tagger)
        logger.info("engine %s loaded in %.1f s", name, time.perf_counter() - started)
    return engines


def tag_images(tagger: Any, images: list, ids: list[str]) -> list:
    """``tagger``'s answer per image; None for an image it fails on."""
    try:
        return list(tagger(images))
    except Exception:
        if len(images) == 1:
            logger.exception("job %s: the tagger failed", ids[0])
            return [None]
    return [tag_images(tagger, [image], [job_id])[0] for image, job_id in zip(images, ids, strict=True)]


def limit_text(timeout: float) -> str:
    """A time limit as users read it: "90 seconds", "10 minutes"."""
    return f"{timeout:g} seconds" if timeout < 120 else f"{timeout / 60:g} minutes"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is the GPU running out of memory."""
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def free_gpu_memory() -> None:
    """Give cached GPU memory back after an out-of-memory error."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory_mb() -> float | None:
    """Memory the worker's tensors hold on the GPU, when there is one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated() / 2**20
