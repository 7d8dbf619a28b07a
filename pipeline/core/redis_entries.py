"""Reading what other processes left in Redis, without trusting it.

Every entry a claybot process reads from Redis — a job on the shared stream, an event on an owner's stream, a stored
result, a worker's heartbeat — was written by another process, perhaps of another version, perhaps by hand. One that
does not parse is a *bad entry*: it is logged once, copied with the reason to the dead-letter stream
``<prefix>:dead`` (bounded to ``DEAD_MAXLEN`` entries), acknowledged or skipped, and the entries behind it flow on.
Where a bad entry still names a job, that job's user is answered ``BAD_ENTRY_REASON`` rather than left waiting.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import BadImage, quoted
from pipeline.core.images import check_result_png
from pipeline.core.jobs import MAX_SEED, Done, ErrorKind, Failed, Progress, Started
from pipeline.core.safety import RATINGS

DEAD_MAXLEN = 1000
BAD_ENTRY_REASON = "Something went wrong passing your photo between claybot's parts; please send it again."
KEPT_CHARS = 2000  # of a bad entry's fields, in its dead letter
MAX_NAME = 256  # job ids and owner names longer than this are not names
# Every field claybot writes is short (names, numbers, a reason): one longer than this is refused before it is
# decoded or copied (a 100 MB style field once became a 400 MB log line and a 3.2 GB worker peak).
MAX_FIELD = 64 * 1024


class BadEntry(ValueError):
    """A Redis entry claybot cannot use; ``job_id``/``owner`` when it still names them, ``fatal`` when the job
    can no longer be answered any other way (a damaged progress report is not: the answer still comes)."""

    def __init__(self, reason: str, *, job_id: str | None = None, owner: str | None = None,
                 fatal: bool = True) -> None:
        super().__init__(reason)
        self.job_id, self.owner, self.fatal = job_id, owner, fatal


def decode_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A stream entry's fields as text; BadEntry when they are not UTF-8 or one is far longer than claybot writes."""
    for name, value in raw.items():
        if _size(name) > MAX_FIELD or _size(value) > MAX_FIELD:
            job_id, owner = identity(raw)
            unit = "bytes" if isinstance(value, bytes) else "characters"
            raise BadEntry(f"field {quoted(name)} is {len(value):,} {unit} long (at most {MAX_FIELD:,})",
                           job_id=job_id, owner=owner)
    try:
        return {_text(k): _text(v) for k, v in raw.items()}
    except UnicodeDecodeError as err:
        job_id, owner = identity(raw)
        raise BadEntry(f"fields are not UTF-8 text ({err})", job_id=job_id, owner=owner) from None


def identity(raw: Mapping[Any, Any]) -> tuple[str | None, str | None]:
    """The job id and owner a damaged entry still names, when it names them plausibly."""
    def name(field: str) -> str | None:
        value = raw.get(field, raw.get(field.encode()))
        if value is None or _size(value) > MAX_NAME:
            return None
        try:
            value = _text(value) if value is not None else None
        except UnicodeDecodeError:
            return None
        return value if value and len(value) <= MAX_NAME and value.isprintable() else None

    return name("id"), name("owner")


def dead_letter(source: str, entry_id: str, raw: Mapping[Any, Any], reason: str) -> dict[str, str]:
    """The fields of a bad entry's record in the dead-letter stream: where it was, why, and what it held."""
    # Each field cut before it is decoded: a 100 MB one must not be copied (twice) to keep 2000 characters of it.
    kept = {_text(_cut(k, MAX_NAME), errors="replace"): _text(_cut(v, KEPT_CHARS), errors="replace")
            for k, v in raw.items()}
    return {"source": source, "entry": entry_id, "reason": reason[:KEPT_CHARS], "at": f"{time.time():.3f}",
            "fields": json.dumps(kept, ensure_ascii=False)[:KEPT_CHARS]}


# -- jobs (the shared stream) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobEntry:
    """One job of the shared stream, checked."""

    entry_id: str
    id: str
    owner: str
    key: str
    style: str
    strength: float
    seed: int
    trigger_weight: float | None
    max_rating: str | None
    timeout: float
    submitted: float
    speed: str = "default"  # entries queued before speed presets existed have none
    structure_scale: float | None = None  # a sweep's guide scales; None: the style's
    identity_scale: float | None = None


def parse_job(entry_id: str, raw: Mapping[Any, Any], styles: Collection[str],
              speeds: Collection[str] = ("default",)) -> JobEntry:
    """A job entry as a worker with these ``styles`` can run it; BadEntry naming what is wrong."""
    fields = decode_fields(raw)
    job_id, owner = identity(fields)
    try:
        if job_id is None or owner is None:
            raise ValueError("no job id or owner")
        style = fields.get("style", "")
        if style not in styles:
            raise ValueError(f"style {quoted(style)} is not one of this worker's ({', '.join(sorted(styles))})")
        max_rating = fields.get("max_rating") or None
        if max_rating is not None and max_rating not in RATINGS:
            raise ValueError(f"max_rating {quoted(max_rating)} is not one of {', '.join(RATINGS)}")
        if not fields.get("key"):
            raise ValueError("no batch key")
        speed = fields.get("speed") or "default"
        if speed not in speeds:
            raise ValueError(f"speed preset {quoted(speed)} is not one of this worker's ({', '.join(speeds)})")
        weight = fields.get("trigger_weight")
        return JobEntry(
            entry_id=entry_id, id=job_id, owner=owner, key=fields["key"], style=style,
            strength=_number(fields, "strength", 0.0, 1.0), seed=int(_number(fields, "seed", 0, MAX_SEED, whole=True)),
            trigger_weight=_number(fields, "trigger_weight", 0.0, 4.0) if weight else None,
            max_rating=max_rating, timeout=_number(fields, "timeout", 1e-3, 3600.0),
            submitted=_number(fields, "submitted", 0.0, 1e11) if fields.get("submitted") else time.time(),
            speed=speed,
            structure_scale=_number(fields, "structure_scale", 0.0, 2.0) if fields.get("structure_scale") else None,
            identity_scale=_number(fields, "identity_scale", 0.0, 2.0) if fields.get("identity_scale") else None)
    except ValueError as err:
        raise BadEntry(f"bad job entry: {err}", job_id=job_id, owner=owner) from None


# -- events (an owner's stream) -----------------------------------------------------------------------------------


def parse_event(raw: Mapping[Any, Any]) -> tuple[str, Started | Progress | Failed | None]:
    """(job id, event) of an owner's event entry; ``None`` for "done" (the answer is in the result keys)."""
    fields = decode_fields(raw)
    job_id, _ = identity(fields)
    op = fields.get("op")
    if job_id is None:
        raise BadEntry(f"{quoted(op) if op else 'event'} naming no job")
    try:
        if op == "started":
            size = fields.get("batch_size")
            return job_id, Started(int(_number(fields, "batch_size", 1, 1024, whole=True)) if size else 1)
        if op == "progress":
            total = int(_number(fields, "total", 1, 100_000, whole=True))
            return job_id, Progress(int(_number(fields, "step", 0, total, whole=True)), total)
    except ValueError as err:
        raise BadEntry(f"bad {op} event: {err}", job_id=job_id, fatal=False) from None
    if op == "done":
        return job_id, None
    if op == "failed":
        reason, kind = fields.get("reason", ""), fields.get("kind", "")
        if not reason:
            raise BadEntry("failed event without a reason", job_id=job_id)
        if kind not in ErrorKind._value2member_map_:
            raise BadEntry(f"failed event of unknown kind {quoted(kind)}", job_id=job_id)
        return job_id, Failed(reason[:KEPT_CHARS], ErrorKind(kind))
    raise BadEntry(f"unknown event {quoted(op)}" if op else "event without an op", job_id=job_id)


# -- results ------------------------------------------------------------------------------------------------------

_RESULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "width": int, "height": int, "tags": list, "prompt": str, "seed": int, "style": str, "strength": (int, float),
    "ratings": dict, "timings": dict}


def parse_result(job_id: str, meta: bytes, image: bytes) -> Done:
    """A stored result as the Done its user gets; BadEntry when the description is damaged or the image is not
    what a worker makes (a PNG of a sane size, the size the description gives)."""
    try:
        described = json.loads(meta)
        if not isinstance(described, dict):
            raise ValueError("not a JSON object")
        for name, kind in _RESULT_TYPES.items():
            if name in described and not isinstance(described[name], kind):
                raise ValueError(f"{name} is not {getattr(kind, '__name__', 'a number')}")
        if not all(isinstance(tag, str) for tag in described.get("tags", [])):
            raise ValueError("tags are not text")
        size = check_result_png(image)
        if size != (described.get("width"), described.get("height")):
            raise ValueError(f"the image is {size[0]}×{size[1]}, its description says "
                             f"{quoted(described.get('width'), 20)}×{quoted(described.get('height'), 20)}")
        return Done(image=image, **described)
    except TypeError as err:  # missing or unknown fields, named in the message
        raise BadEntry(f"bad result: {quoted(str(err), 200)}", job_id=job_id) from None
    except (ValueError, BadImage) as err:
        raise BadEntry(f"bad result: {err}", job_id=job_id) from None


# -- heartbeats ---------------------------------------------------------------------------------------------------


def parse_heartbeat(raw: bytes) -> dict[str, Any]:
    """A worker's heartbeat (from the workers hash); BadEntry when it is not one."""
    try:
        beat = json.loads(raw)
        if not isinstance(beat, dict) or not isinstance(beat.get("seen"), int | float) or math.isnan(beat["seen"]):
            raise ValueError("no time seen")
        return beat
    except ValueError as err:
        raise BadEntry(f"bad heartbeat: {err}") from None


def _number(fields: Mapping[str, str], name: str, low: float, high: float, *, whole: bool = False) -> float:
    try:
        value = float(fields[name])
    except KeyError:
        raise ValueError(f"no {name}") from None
    except ValueError:
        raise ValueError(f"{name} {quoted(fields[name], 40)} is not a number") from None
    if not low <= value <= high or whole and not value.is_integer():
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{name} {quoted(fields[name], 40)} is not {kind} from {low:.10g} to {high:.10g}")
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, bytes | str) else 0


def _cut(value: Any, most: int) -> Any:
    return value[:most] if isinstance(value, bytes | str) else value


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)
