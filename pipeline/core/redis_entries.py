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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core import codec
from pipeline.core.clip import check_result_mp4
from pipeline.core.errors import BadImage, quoted
from pipeline.core.images import check_result_png
from pipeline.core.jobs import MP4, Done, Failed, Job, Progress, Started
from pipeline.core.kinds import kind_of
from pipeline.core.settings import GpuSettings

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
    """One job of the shared stream, checked: the job (its photo is under ``image:<id>``, not here) and what the
    stream adds to track it in flight."""

    entry_id: str
    id: str
    owner: str
    key: str  # the job's batch key, read raw by workers looking for companions
    timeout: float
    submitted: float
    job: Job
    stream: str = ""  # the lane (stream) it was read from, where it is acknowledged


TRACKING = ("id", "owner", "key", "timeout", "submitted")  # a job entry's fields besides the job's own


def job_fields(job_id: str, owner: str, job: Job, timeout: float, submitted: float) -> dict[str, str]:
    """A job's entry on the shared stream: the job's fields (``codec.text_fields``, no photo) and the tracking."""
    fields, _ = codec.text_fields(job)
    return fields | {"id": job_id, "owner": owner, "key": job.batch_key, "timeout": repr(timeout),
                     "submitted": repr(submitted)}


def parse_job(entry_id: str, raw: Mapping[Any, Any], gpu: GpuSettings, *, stream: str = "") -> JobEntry:
    """A job entry (of lane ``stream``) as a worker with these settings can run it; BadEntry naming what is
    wrong."""
    fields = decode_fields(raw)
    job_id, owner = identity(fields)
    try:
        if job_id is None or owner is None:
            raise ValueError("no job id or owner")
        if not fields.get("key"):
            raise ValueError("no batch key")
        job = codec.from_fields({k: v for k, v in fields.items() if k not in TRACKING}, [b""], expect=(Job,),
                                what="job")
        assert isinstance(job, Job)
        # The chat process that wrote it may have another config: these are this worker's, not intake's, checks.
        if job.style not in gpu.styles:
            raise ValueError(f"style {quoted(job.style)} is not one of this worker's "
                             f"({', '.join(sorted(gpu.styles))})")
        if (why := kind_of(job.kind).unrunnable(job.spec, gpu)) is not None:
            raise ValueError(why)
        return JobEntry(entry_id=entry_id, id=job_id, owner=owner, key=fields["key"], job=job, stream=stream,
                        timeout=_number(fields, "timeout", 1e-3, 7200.0),
                        submitted=_number(fields, "submitted", 0.0, 1e11))
    except ValueError as err:  # CodecError is a ValueError
        raise BadEntry(f"bad job entry: {err}", job_id=job_id, owner=owner) from None


# -- events (an owner's stream) -----------------------------------------------------------------------------------

EVENTS = (Started, Progress, Failed)  # "done" carries no fields: the answer is in the result keys


def event_fields(job_id: str, event: Started | Progress | Failed | None) -> dict[str, str]:
    """An owner's event entry (``None``: "done", its result stored)."""
    fields = codec.text_fields(event)[0] if event is not None else {"op": "done"}
    return fields | {"id": job_id}


def parse_event(raw: Mapping[Any, Any]) -> tuple[str, Started | Progress | Failed | None]:
    """(job id, event) of an owner's event entry; ``None`` for "done" (the answer is in the result keys)."""
    fields = decode_fields(raw)
    job_id, _ = identity(fields)
    op = fields.get("op")
    if job_id is None:
        raise BadEntry(f"{quoted(op) if op else 'event'} naming no job")
    if op == "done":
        return job_id, None
    try:
        event = codec.from_fields({k: v for k, v in fields.items() if k != "id"}, expect=EVENTS, what="event")
    except codec.CodecError as err:
        if op in ("started", "progress"):  # a damaged progress report: the answer still comes
            raise BadEntry(f"bad {op} event: {err}", job_id=job_id, fatal=False) from None
        raise BadEntry(f"bad {op} event: {err}" if op == "failed" else str(err), job_id=job_id) from None
    if isinstance(event, Failed):
        if not event.reason:
            raise BadEntry("failed event without a reason", job_id=job_id)
        event = Failed(event.reason[:KEPT_CHARS], event.kind)
    assert isinstance(event, Started | Progress | Failed)
    return job_id, event


# -- results ------------------------------------------------------------------------------------------------------


def result_parts(done: Done) -> tuple[bytes, bytes]:
    """A result as stored: its description (``result:<id>``) and its picture (``result:<id>:image``)."""
    header, (image,) = codec.dump(done)
    return header, image


def parse_result(job_id: str, meta: bytes, image: bytes) -> Done:
    """A stored result as the Done its user gets; BadEntry when the description is damaged or the image is not
    what a worker makes (a PNG of a sane size, the size the description gives; a clip: an MP4)."""
    try:
        done = codec.load(meta, [image], expect=(Done,), what="result")
        assert isinstance(done, Done)
        if done.media == MP4:
            check_result_mp4(image)
            return done
        size = check_result_png(image)
        if size != (done.width, done.height):
            raise ValueError(f"the image is {size[0]}×{size[1]}, its description says {done.width}×{done.height}")
    except (ValueError, BadImage) as err:  # CodecError is a ValueError
        raise BadEntry(f"bad result: {err}", job_id=job_id) from None
    assert isinstance(done, Done)
    return done


# -- heartbeats ---------------------------------------------------------------------------------------------------


def parse_heartbeat(raw: bytes | str) -> dict[str, Any]:
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
