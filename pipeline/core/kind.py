"""What a kind of job declares, once, and the registry of kinds and engines.

A kind of job (a picture, a clip, …) is one torch-free module under ``pipeline/core/kinds/`` that subclasses
``JobKind`` and ``Spec`` and calls ``register``: its options (a frozen ``Spec``), how intake settles them, its batch
key and batch size, its rank (the order kinds run in, and its Redis lane), its time limit, its own limits, its cost
and the engine that makes it. The queues, the lanes, the journal, the codec, the worker loop and the request flow
read this registry and never name a kind. An engine is registered by name as ``"module:Class"`` (the GPU side imports
it only when a worker serves it), so this module and the kinds stay free of torch.

A kind outside claybot is a module named in ``[pipeline] plugins``: every process that reads the config (the chat
process, a spawned or Redis worker) imports it, and it registers itself (``tests/echo_kind.py`` is an example).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.core.errors import BadRequest, ClaybotError

PNG, MP4 = "image/png", "video/mp4"  # what a Done may carry


class UnknownKind(BadRequest):
    """A job of a kind this claybot does not know (never run as something else)."""


@dataclass(frozen=True)
class Spec:
    """A kind's own options, settled at intake; a subclass is a frozen dataclass naming its kind in ``KIND``."""

    KIND: ClassVar[str] = ""

    def describe(self) -> str:
        """The options for a log line."""
        return ", ".join(f"{name}={value!r}" for name, value in vars(self).items())


@dataclass(frozen=True)
class KindLimits:
    """A kind's own limits, on top of those every request counts against: (most, window in seconds) per person
    and per chat, and how many of the kind may wait or run at once, everyone's together (0: no cap)."""

    user: tuple[tuple[int, float], ...] = ()
    chat: tuple[tuple[int, float], ...] = ()
    waiting: int = 0


class JobKind:
    """One kind of job, declared once: subclass it in pipeline/core/kinds/<name>.py and ``register`` it."""

    name: ClassVar[str]  # the name jobs, lanes, the journal and heartbeats carry
    spec: ClassVar[type[Spec]]
    rank: ClassVar[int] = 0  # the order kinds run in (lower first): a job waits behind the lower ranks only
    lane: ClassVar[str | None] = None  # its Redis lane's suffix (None: its name; "": the first lane, "<prefix>:jobs")
    engine: ClassVar[str] = ""  # the engine that makes it (register_engine), unless ``engine_for`` says otherwise
    media: ClassVar[str] = PNG  # what its answer carries
    noun: ClassVar[str] = "job"  # in users' words: "3 pictures in the last minute"
    doing: ClassVar[str] = "Working…"  # its status line while it runs
    cost: ClassVar[int] = 1  # credits it costs, unless [credits] names it
    no_worker_reason: ClassVar[str] = "Nothing that makes this is running right now; please ask again later."
    flat_fields: ClassVar[tuple[str, ...]] = ()  # its options' names in jobs written before kinds had specs

    def enabled(self, gpu: Any) -> str | None:
        """None when this config makes the kind; else why not, in users' words."""
        return None

    def settle(self, gpu: Any, style: str, options: Mapping[str, Any]) -> Spec:
        """The kind's options with every default decided (BadRequest for one the config does not allow, or one
        the kind does not have)."""
        return self.spec()

    def unrunnable(self, spec: Spec, gpu: Any) -> str | None:
        """Why a worker with this config cannot run a job with these options (settled by a chat process of
        another config); None when it can."""
        return None

    def batch_key(self, job: Any) -> str:
        """Jobs with equal keys may share one engine call."""
        width, height = job.work_size
        return f"{self.name}|{job.style}|{width}x{height}"

    def max_batch(self, gpu: Any, job: Any = None) -> int:
        """The most jobs of this kind one engine call takes (``job``: one of them, when the answer depends on it)."""
        return 1

    def time_limit(self, spec: Spec) -> float | None:
        """Seconds a job may take on the GPU; None: the queue's ``job_timeout``."""
        return None

    def limits(self, limits: Any) -> KindLimits:
        """Its own limits, from the chat side's ``[limits]`` (``bot.config.LimitSettings``)."""
        return KindLimits()

    def engine_for(self, job: Any, gpu: Any) -> str:
        """The engine that makes this job (a picture's style may name its own)."""
        return self.engine

    def engines(self, gpu: Any) -> set[str]:
        """Every engine a worker serving this kind loads."""
        return {self.engine}

    def served_by_default(self, gpu: Any) -> bool:
        """Whether a worker with no ``queue.worker_kinds`` serves it."""
        return self.enabled(gpu) is None

    def lane_name(self) -> str:
        """The suffix of its Redis lane ("" for the first lane)."""
        return self.name if self.lane is None else self.lane

    def plural(self, count: int) -> str:
        """"1 picture", "3 pictures"."""
        return f"{count} {self.noun}{'' if count == 1 else 's'}"


KINDS: dict[str, JobKind] = {}
ENGINES: dict[str, str] = {}  # engine name → "module:Class" (pipeline/gpu/engine.py loads it)
# engine name → the per-request options it acts on (a picture's strength means nothing to an instruction engine):
# intake refuses the others by name, and the front ends show only the buttons that change one of them
ENGINE_OPTIONS: dict[str, frozenset[str]] = {}
ONE_JOB_ENGINES: set[str] = set()  # engines that take one job per call (an edit model's references go to every prompt)
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def register(kind: JobKind) -> JobKind:
    """Add a kind to the registry (once per name; registering the same class again is a no-op)."""
    if not NAME.fullmatch(kind.name):
        raise ValueError(f"a kind's name is a lowercase word of up to 32 letters, digits or _, not {kind.name!r}")
    if kind.spec.KIND != kind.name:
        raise ValueError(f"kind {kind.name!r}: its spec {kind.spec.__name__} names {kind.spec.KIND!r}")
    known = KINDS.get(kind.name)
    if known is not None and type(known) is not type(kind):
        raise ValueError(f"two kinds are called {kind.name!r}: {type(known).__name__} and {type(kind).__name__}")
    lanes = {other.lane_name(): other.name for other in KINDS.values() if other.name != kind.name}
    if kind.lane_name() in lanes:
        raise ValueError(f"kind {kind.name!r} would share the Redis lane of {lanes[kind.lane_name()]!r}")
    KINDS[kind.name] = kind
    return kind


def register_engine(name: str, target: str, *, options: Iterable[str] | None = None, batches: bool = True) -> None:
    """Name an engine: ``target`` is "module:Class", imported on the GPU side only when a worker loads it;
    ``options``: the per-request options it acts on (None: every option of the kinds it makes); ``batches``: False
    for an engine that makes one job per call."""
    if ":" not in target:
        raise ValueError(f"engine {name!r}: {target!r} is not 'module:Class'")
    ENGINES[name] = target
    if options is not None:
        ENGINE_OPTIONS[name] = frozenset(options)
    if not batches:
        ONE_JOB_ENGINES.add(name)


def engine_takes(engine: str, option: str) -> bool:
    """Whether the named engine acts on a per-request option (e.g. "strength")."""
    return engine not in ENGINE_OPTIONS or option in ENGINE_OPTIONS[engine]


def kind_of(name: str) -> JobKind:
    """The registered kind called ``name``; UnknownKind (a BadRequest) when there is none."""
    kind = KINDS.get(name)
    if kind is None:
        known = ", ".join(kind.name for kind in by_rank())
        raise UnknownKind(f"claybot has no kind of job called {str(name)[:40]!r} (it knows: {known}).")
    return kind


def by_rank() -> list[JobKind]:
    """Every kind, in the order they run (and their lanes are read): lowest rank first, then by name."""
    return sorted(KINDS.values(), key=lambda kind: (kind.rank, kind.name))


def spec_type(name: str) -> type[Spec]:
    """The spec class of a registered kind (the codec reads a job's options with it)."""
    return kind_of(name).spec


def load_plugins(modules: Iterable[str], key: str = "pipeline.plugins") -> None:
    """Import the modules that register kinds and engines of their own; a clear error naming ``key`` when one
    cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or the module's own error while registering
            raise ClaybotError(f"{key}: cannot import {module!r} ({type(err).__name__}: {err})") from None

