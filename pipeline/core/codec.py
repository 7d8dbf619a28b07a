"""The one codec of claybot's protocol: jobs, events and the worker's messages (``pipeline.core.jobs``) to bytes
and back, for the local pipe, the worker link, Redis and the journal alike.

A message is its type's ``op`` and its fields, written as JSON; ``bytes`` fields (photos, results) are not in the
JSON but travel beside it as *blobs*, in the order their fields come. The frame (``encode``/``decode``) is::

    b"CLAY" · version (1 byte) · header length (4 bytes, big-endian) · header (UTF-8 JSON)
            · blob count (4 bytes) · for each blob: length (8 bytes) · the bytes

Redis keeps the parts apart (``dump``/``load``: the header as text, the blobs under their own keys) and its stream
entries as flat text fields (``text_fields``/``from_fields``). Reading is strict: anything that is not a message of
this protocol, with the declared type in every field, is a ``CodecError`` saying what is wrong, never another
exception; the types' own checks (``Job.__post_init__``) run too. No pickle: a peer's bytes never run code here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import types
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from pipeline.core.errors import ClaybotError
from pipeline.core.jobs import (
    Batch,
    Done,
    Failed,
    Fatal,
    Idle,
    Job,
    Message,
    Progress,
    Queued,
    Ready,
    Started,
    Stop,
    Task,
    Update,
)
from pipeline.core.kinds import DEFAULT_KIND, Spec, UnknownKind, flat_job, flat_job_kinds, kind_of

MAGIC = b"CLAY"
VERSION = 1
MAX_HEADER = 1 << 20  # bytes of JSON: a job's fields take a few hundred
MAX_BLOBS = 64  # a batch holds at most pipeline.max_batch (≤ 16) photos
MAX_FRAME = 256 << 20  # bytes in all, unless the caller allows less
KEPT = 40  # characters of a bad value quoted in an error

# Every type the protocol knows, by the name that travels ("op"); a new message type is one line here.
OPS: dict[str, type] = {
    "job": Job, "queued": Queued, "started": Started, "progress": Progress, "done": Done, "failed": Failed,
    "task": Task, "batch": Batch, "stop": Stop, "ready": Ready, "fatal": Fatal, "update": Update, "idle": Idle,
}
_NAMES = {kind: op for op, kind in OPS.items()}
_PREFIX = struct.Struct(">4sBI")
_COUNT = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")


class CodecError(ClaybotError, ValueError):
    """Bytes or fields that are not a message of this protocol; the message says what is wrong."""


# -- frames ---------------------------------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One message as a frame."""
    header, blobs = dump(message)
    parts = [_PREFIX.pack(MAGIC, VERSION, len(header)), header, _COUNT.pack(len(blobs))]
    for blob in blobs:
        parts += [_LENGTH.pack(len(blob)), blob]
    return b"".join(parts)


def decode(data: bytes, *, max_bytes: int = MAX_FRAME, expect: tuple[type, ...] | None = None) -> Message:
    """The message of one frame; CodecError when it is not one (or not one of ``expect``)."""
    if len(data) > max_bytes:
        raise CodecError(f"frame of {len(data)} bytes is over the limit of {max_bytes}")
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CodecError(f"truncated frame: {len(view)} bytes, not even a header")
    magic, version, header_length = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(f"not a claybot frame (it starts {bytes(view[:4])!r})")
    if version != VERSION:
        raise CodecError(f"frame version {version}; this claybot reads version {VERSION}")
    if header_length > MAX_HEADER:
        raise CodecError(f"header of {header_length} bytes is over the limit of {MAX_HEADER}")
    at = _PREFIX.size + header_length
    if len(view) < at + _COUNT.size:
        raise CodecError(f"truncated frame: the header needs {header_length} bytes")
    header = bytes(view[_PREFIX.size:at])
    (count,) = _COUNT.unpack_from(view, at)
    at += _COUNT.size
    if count > MAX_BLOBS:
        raise CodecError(f"{count} blobs is over the limit of {MAX_BLOBS}")
    blobs = []
    for index in range(count):
        if len(view) < at + _LENGTH.size:
            raise CodecError(f"truncated frame: blob {index} has no length")
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        if len(view) < at + length:
            raise CodecError(f"truncated frame: blob {index} needs {length} bytes, {len(view) - at} are left")
        blobs.append(bytes(view[at:at + length]))
        at += length
    if at != len(view):
        raise CodecError(f"{len(view) - at} bytes after the end of the frame")
    return load(header, blobs, expect=expect)


# -- parts: a JSON header and the blobs -----------------------------------------------------------------------------


def dump(message: Message) -> tuple[bytes, list[bytes]]:
    """A message as its JSON header and its blobs (Redis and the journal keep them apart)."""
    blobs: list[bytes] = []
    fields = _pack(message, blobs)
    return json.dumps(fields, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(), blobs


def load(header: bytes | str, blobs: Sequence[bytes] = (), *, expect: tuple[type, ...] | None = None,
         what: str = "message") -> Message:
    """The message of a JSON header and its blobs; a header without an "op" is read as ``expect``'s only type."""
    if len(header) > MAX_HEADER:
        raise CodecError(f"header of {len(header)} characters is over the limit of {MAX_HEADER}")
    try:
        fields = json.loads(header, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise CodecError(f"the header is not JSON ({str(err)[:80]})") from None
    if not isinstance(fields, dict):
        raise CodecError(f"the header is JSON {type(fields).__name__}, not an object")
    return from_fields(fields, blobs, expect=expect, what=what)


def text_fields(message: Message) -> tuple[dict[str, str], list[bytes]]:
    """A message as flat text fields (a Redis stream entry or hash) and its blobs; numbers as text, None as "",
    lists and nested messages as JSON."""
    blobs: list[bytes] = []
    fields = _pack(message, blobs)
    return {name: _as_text(value) for name, value in fields.items()}, blobs


def from_fields(fields: Mapping[str, Any], blobs: Sequence[bytes] = (), *, expect: tuple[type, ...] | None = None,
                what: str = "message") -> Message:
    """The message of a mapping of fields (JSON values, or the text ``text_fields`` writes) and its blobs."""
    op = fields.get("op")
    if op is None and expect is not None and len(expect) == 1:
        op = _NAMES[expect[0]]
    if not op:
        raise CodecError(f"{what} without an op")
    kind = OPS.get(op) if isinstance(op, str) else None
    if kind is None or expect is not None and kind not in expect:
        raise CodecError(f"unknown {what} {str(op)[:KEPT]!r}")
    queue = list(blobs)
    if kind is Job and "spec" not in fields:  # as claybot wrote jobs before kinds had specs (journals, lanes)
        kind_name = fields.get("kind") or DEFAULT_KIND
        if not flat_job_kinds().get(str(kind_name)):  # no other kind was ever written flat
            raise CodecError(f"job: unknown kind {str(kind_name)[:KEPT]!r}")
        fields = flat_job(fields)
    message = _unpack(kind, {name: value for name, value in fields.items() if name != "op"}, queue)
    if queue:
        raise CodecError(f"{len(queue)} blob(s) more than a {op} message holds")
    return message


# -- the types ------------------------------------------------------------------------------------------------------


def _op(kind: type) -> str:
    """The name a type travels under: a message's op, or a kind's options' kind (a job's ``spec``)."""
    return kind.KIND if issubclass(kind, Spec) else _NAMES[kind]


def _pack(message: Any, blobs: list[bytes]) -> dict[str, Any]:
    fields: dict[str, Any] = {"op": _op(type(message))}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, bytes):
            blobs.append(value)
        else:
            fields[field.name] = _pack_value(value, blobs)
    return fields


def _pack_value(value: Any, blobs: list[bytes]) -> Any:
    if type(value) in _NAMES or isinstance(value, Spec):
        return _pack(value, blobs)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_pack_value(item, blobs) for item in value]
    if isinstance(value, dict):
        return {key: _pack_value(item, blobs) for key, item in value.items()}
    return value


def _unpack(kind: type, fields: Mapping[str, Any], blobs: list[bytes]) -> Any:
    op = _op(kind)
    hints = _hints(kind)
    names = {field.name for field in dataclasses.fields(kind)}
    if unknown := sorted(set(fields) - names):
        raise CodecError(f"{op}: unknown field {unknown[0][:KEPT]!r}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(kind):
        hint = hints[field.name]
        if hint is bytes:
            if not blobs:
                raise CodecError(f"{op}: no blob for {field.name}")
            values[field.name] = blobs.pop(0)
        elif field.name in fields:
            values[field.name] = _value(hint, fields[field.name], field.name, blobs)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise CodecError(f"{op}: no {field.name}")
    try:
        return kind(**values)
    except (ClaybotError, ValueError, TypeError) as err:  # the type's own checks (Job.__post_init__)
        raise CodecError(f"{op}: {err}") from None


def _value(hint: Any, value: Any, name: str, blobs: list[bytes]) -> Any:
    """``value`` as the type ``hint`` declares; accepts JSON values and the text ``text_fields`` writes."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and value in (None, ""):
            return None
        options = [arg for arg in args if arg is not type(None)]
        if all(arg in _NAMES for arg in options):  # one of several messages (Update.event): its op says which
            return _nested(value, name, tuple(options), blobs)
        (hint,) = options
        return _value(hint, value, name, blobs)
    if hint in _NAMES:
        return _nested(value, name, (hint,), blobs)
    if hint is Spec:  # a job's options: the kind they name says how to read them (a kind unknown here: refused)
        fields = _json(value, name, dict)
        try:
            spec = kind_of(fields.get("op") if isinstance(fields.get("op"), str) else "").spec
        except UnknownKind as err:
            raise CodecError(f"{name}: {err}") from None
        return _unpack(spec, {key: item for key, item in fields.items() if key != "op"}, blobs)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise CodecError(f"unknown {name} {str(value)[:KEPT]!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise CodecError(f"{name} is {type(value).__name__}, not text")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if value in ("1", "0", "true", "false"):
            return value in ("1", "true")
        raise CodecError(f"{name} {str(value)[:KEPT]!r} is not true or false")
    if hint in (int, float):
        return _number(value, name, whole=hint is int)
    if origin in (tuple, list):
        items = _json(value, name, list)
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            if len(items) != len(args):
                raise CodecError(f"{name} has {len(items)} items, not {len(args)}")
            return tuple(_value(arg, item, name, blobs) for arg, item in zip(args, items, strict=True))
        made = [_value(args[0], item, name, blobs) for item in items]
        return tuple(made) if origin is tuple else made
    if origin is dict:
        items = _json(value, name, dict)
        return {_value(args[0], key, name, blobs): _value(args[1], item, name, blobs) for key, item in items.items()}
    raise CodecError(f"{name}: no reader for {hint!r}")  # a type the protocol gained without teaching the codec


def _nested(value: Any, name: str, kinds: tuple[type, ...], blobs: list[bytes]) -> Any:
    fields = _json(value, name, dict)
    op = fields.get("op")
    kind = OPS.get(op) if isinstance(op, str) else None
    if kind is None or kind not in kinds:
        raise CodecError(f"{name}: unknown message {str(op)[:KEPT]!r}")
    return _unpack(kind, {key: item for key, item in fields.items() if key != "op"}, blobs)


def _number(value: Any, name: str, *, whole: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CodecError(f"{name} is {type(value).__name__}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise CodecError(f"{name} {str(value)[:KEPT]!r} is not a number") from None
    if not math.isfinite(number):
        raise CodecError(f"{name} {str(value)[:KEPT]!r} is not a finite number")
    if whole:
        if not number.is_integer():
            raise CodecError(f"{name} {str(value)[:KEPT]!r} is not a whole number")
        return int(value) if isinstance(value, int) else int(number)
    return number


def _json(value: Any, name: str, kind: type) -> Any:
    if isinstance(value, str):  # a flat text field holds lists and nested messages as JSON
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise CodecError(f"{name} {value[:KEPT]!r} is not JSON") from None
    if not isinstance(value, kind):
        raise CodecError(f"{name} is {type(value).__name__}, not {'a list' if kind is list else 'an object'}")
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(kind: type) -> dict[str, Any]:
    if kind not in _HINTS:
        import pipeline.core.jobs as jobs

        # the protocol's types are read in jobs' names; a kind's options in their own module's
        names = None if issubclass(kind, Spec) else vars(jobs)
        _HINTS[kind] = typing.get_type_hints(kind, names)
    return _HINTS[kind]
