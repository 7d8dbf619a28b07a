"""Every kind of job claybot makes, registered: import this package (not the registry alone) to have them.

``picture`` (pipeline/core/kinds/picture.py) and ``clip`` (clip.py) are claybot's own; a kind of an operator's is a
module named in ``[pipeline] plugins`` (``load_plugins``). The registry itself is ``pipeline.core.kind``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.errors import ClaybotError
from pipeline.core.kind import (
    ENGINE_OPTIONS,
    ENGINES,
    KINDS,
    JobKind,
    KindLimits,
    Spec,
    UnknownKind,
    by_rank,
    engine_takes,
    kind_of,
    load_plugins,
    register,
    register_engine,
)
from pipeline.core.kinds.clip import ClipKind, ClipSpec
from pipeline.core.kinds.picture import PictureKind, PictureSpec

DEFAULT_KIND = PictureKind.name  # what a request is when it names no kind: a picture of the photo

__all__ = ["DEFAULT_KIND", "ENGINE_OPTIONS", "ENGINES", "KINDS", "ClipKind", "ClipSpec", "JobKind", "KindLimits",
           "PictureKind", "PictureSpec", "Spec", "UnknownKind", "by_rank", "engine_takes", "flat_job",
           "flat_job_kinds", "kind_of", "load_plugins", "register", "register_engine", "worker_kinds"]


def flat_job(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A job's fields as claybot wrote them before kinds had specs (until 2026-12-05: every kind's options side by
    side, and a "kind" field, none for a picture), as they are written now: journals and Redis lanes of that
    version still hold such jobs, and they run as they were."""
    kind = KINDS.get(str(fields.get("kind") or DEFAULT_KIND))
    if kind is None or not kind.flat_fields:
        return dict(fields)  # read as it is: the codec's error names what is missing
    flat = {name for known in KINDS.values() for name in known.flat_fields} | {"kind"}
    job = {name: value for name, value in fields.items() if name not in flat}
    job["spec"] = {"op": kind.name} | {name: fields[name] for name in kind.flat_fields if name in fields}
    return job


def flat_job_kinds() -> dict[str, JobKind]:
    """The kinds that were ever written in the flat format (those that declare ``flat_fields``)."""
    return {name: kind for name, kind in KINDS.items() if kind.flat_fields}


def worker_kinds(gpu: Any, named: list[str]) -> tuple[JobKind, ...]:
    """The kinds a worker serves, in the order it takes them: ``named`` (``queue.worker_kinds``), or with none,
    every kind this config makes (``served_by_default``); ClaybotError naming ``queue.worker_kinds`` for a kind
    claybot does not know or this config does not make."""
    if not named:
        return tuple(kind for kind in by_rank() if kind.served_by_default(gpu))
    for name in named:
        if name not in KINDS:
            raise ClaybotError(f"queue.worker_kinds names {name[:40]!r}, which is no kind of job claybot knows "
                               f"(it knows: {', '.join(kind.name for kind in by_rank())}).")
        if (reason := KINDS[name].enabled(gpu)) is not None:
            raise ClaybotError(f"queue.worker_kinds names {name!r}, but this config does not make it: {reason} "
                               f"Switch it on here, or leave {name!r} out.")
    return tuple(kind for kind in by_rank() if kind.name in named)
