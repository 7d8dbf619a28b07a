"""Every kind of job claybot makes, registered: import this package (not the registry alone) to have them.

``picture`` (pipeline/core/kinds/picture.py) and ``clip`` (clip.py) are claybot's own; a kind of an operator's is a
module named in ``[pipeline] plugins`` (``load_plugins``). The registry itself is ``pipeline.core.kind``.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import ClaybotError
from pipeline.core.kind import (
    ENGINES,
    KINDS,
    JobKind,
    KindLimits,
    Spec,
    UnknownKind,
    by_rank,
    kind_of,
    load_plugins,
    register,
    register_engine,
)
from pipeline.core.kinds.clip import ClipKind, ClipSpec
from pipeline.core.kinds.picture import PictureKind, PictureSpec

DEFAULT_KIND = PictureKind.name  # what a request is when it names no kind: a picture of the photo

__all__ = ["DEFAULT_KIND", "ENGINES", "KINDS", "ClipKind", "ClipSpec", "JobKind", "KindLimits", "PictureKind",
           "PictureSpec", "Spec", "UnknownKind", "by_rank", "kind_of", "load_plugins", "register", "register_engine",
           "worker_kinds"]


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
