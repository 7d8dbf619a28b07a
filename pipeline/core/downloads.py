"""Downloads that end, in bounded space: model files and API answers fetched over HTTP.

A file is capped at the size its source announced (plus slack), at the most its kind of model can be (a LoRA, a
tagger: far below a checkpoint) and at ``pipeline.max_download_gb``, checked against Content-Length and again while
it streams; the disk's free space is checked before a byte is written (a file of no announced size stops where the
disk's room ends); a
transfer slower than ``pipeline.min_download_kb_per_s`` (averaged over a window) is cut off; a ``.part`` whose
write failed, or whose size no real file could have, is deleted so that the next start does not resume into it.
An API answer is read whole only up to a small cap, within a total deadline. Names that come from a server are
bounded in UTF-8 bytes (the file system's limit) and escaped before they reach a log line or a message.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelError

logger = logging.getLogger(__name__)

MB = 1 << 20
GB = 1 << 30
CHUNK = 1 << 20
ANSWER_MAX = 1 * MB  # an API's JSON answer about one model version is a few KB
DISK_RESERVE = 256 * MB  # left free after a download: a full disk stalls the rest of the machine too
NAME_MAX_BYTES = 200  # file systems allow 255 bytes per name; ".part", ".tmp" and a digest prefix need room
# Characters that would break a log line or a terminal: C0/C1 controls (newline, ANSI escape), line and
# paragraph separators, bidirectional overrides, lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SAFE_NAME = re.compile(r"[\w][\w .()+,'-]*", re.IGNORECASE)

# The most a file of each kind of model may be, by config key (what it is, for messages; bytes): the largest such
# files, with room. A download of one stops there, announced or not, rather than at pipeline.max_download_gb (sized
# for an SDXL checkpoint) when that is higher.
KIND_CAPS: tuple[tuple[str, str, int], ...] = (
    ("styles.*.lora", "a LoRA", 2 * GB),  # SDXL LoRAs: ~10 MB to ~1.7 GB
    ("tagger.model", "an ONNX tagger", 2 * GB),  # one .onnx file: protobuf's 2 GB limit (WD14's: 0.4–1.3 GB)
    ("*.face_detector", "an ONNX face detector", 2 * GB),
    ("pipeline.vae", "a VAE", 1 * GB),  # SDXL's: 335 MB in fp32
)


def kind_cap(key: str) -> tuple[str, int] | None:
    """The kind of model at a config key and the most bytes its file may have; None: only max_download_gb."""
    for pattern, what, size in KIND_CAPS:
        if fnmatch.fnmatchcase(key, pattern):
            return what, size
    return None


@dataclass(frozen=True)
class DownloadLimits:
    """How far one download may go: its largest size, slowest rate, and the deadline of an API answer."""

    max_file_bytes: int = 8 * GB
    min_rate: float = 50 * 1024  # bytes per second, averaged over rate_window
    rate_window: float = 60.0  # seconds; also the longest silence a transfer may keep
    api_deadline: float = 30.0  # seconds for a whole API answer, redirects and body included
    connect_timeout: float = 5.0
    attempts: int = 4  # tries of one file; each after the first resumes where the last one was cut
    retry_wait: float = 1.0  # seconds before the second try; twice that before the third…

    def most(self, key: str = "") -> int:
        """The most bytes the file of the model at ``key`` may have, whatever is announced: its kind's cap or
        max_file_bytes, the lower."""
        kind = kind_cap(key)
        return min(self.max_file_bytes, kind[1]) if kind else self.max_file_bytes

    def cap(self, expected: int | None, key: str = "") -> int:
        """The most bytes a file announced at ``expected`` bytes (None: not announced) may have."""
        if expected is None:
            return self.most(key)
        return min(self.most(key), expected + max(MB, expected // 100))  # sizes in KB are rounded


@dataclass(frozen=True)
class Download:
    """One file to fetch into ``part``, and how messages name it."""

    url: str
    part: Path
    key: str  # the config key the model sits at
    what: str  # the file, for messages: "Civitai model version 5 (clay.safetensors)", or its URL
    source: str  # who serves it, for messages: "Civitai", "the server"
    later: str  # the way out, for messages: "download it yourself and set … to its local path"
    expected: int | None = None  # bytes, as the source's API announced them
    expected_from: str = ""  # who announced them: "Civitai's API"
    headers: dict[str, str] = field(default_factory=dict)


# -- names from a server ------------------------------------------------------------------------------------------


def printable(text: object, max_bytes: int = 200) -> str:
    """Text from a server, safe in one log line: control characters escaped as Python writes them, cut in bytes."""
    escaped = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    raw = escaped.encode("utf-8")
    if len(raw) <= max_bytes:
        return escaped
    return raw[:max_bytes].decode("utf-8", "ignore") + "…"


def safe_file_name(name: str, fallback: str, max_bytes: int = NAME_MAX_BYTES) -> str:
    """A server's file name fit to be a path in the cache: plain characters, at most ``max_bytes`` UTF-8 bytes.

    Anything odd (a folder, a control character, a leading dot) gives ``fallback``; a name that is only too long
    keeps its suffix and loses the end of its stem, cut at a character boundary.
    """
    if not _SAFE_NAME.fullmatch(name):
        return fallback
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix.encode("utf-8")) > 16:
        stem, suffix = name, ""
    tail = f".{suffix}" if suffix else ""
    room = max_bytes - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
    return f"{cut}{tail}" if cut else fallback


def human(size: float) -> str:
    """Bytes in words: "512 KB", "3.1 MB", "6.9 GB"."""
    for unit in ("bytes", "KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit == "MB" else f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# -- API answers --------------------------------------------------------------------------------------------------


class BadAnswer(Exception):
    """An API answer that is too large, too slow or not JSON; the message completes "the answer …"."""


def read_answer(resp: Any, deadline_at: float, limit: int = ANSWER_MAX) -> bytes:
    """A streamed answer's body, refused past ``limit`` bytes or past the monotonic ``deadline_at``."""
    import urllib3

    length = announced_length(resp)
    if length is not None and length > limit:
        raise BadAnswer(f"announces {human(length)}, far more than the API gives (at most {human(limit)})")
    body = bytearray()
    # Each read may wait only for what is left of the deadline (the socket is urllib3's public `connection.sock`;
    # without it a stalled read waits for the request's own read timeout, the whole deadline, at most).
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    try:
        while True:
            left = deadline_at - time.monotonic()
            if left <= 0:
                raise BadAnswer("did not arrive within its deadline")
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.raw.read1(64 * 1024, decode_content=True) if hasattr(resp.raw, "read1") else \
                resp.raw.read(64 * 1024, decode_content=True)
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise BadAnswer(f"goes on past {human(limit)}, far more than the API gives")
    except (urllib3.exceptions.HTTPError, OSError) as err:
        if time.monotonic() > deadline_at or "timed out" in str(err).lower():
            raise BadAnswer("did not arrive within its deadline") from None
        raise BadAnswer(f"was cut ({type(err).__name__})") from None
    return bytes(body)


def parse_json(data: bytes) -> object:
    """Strict JSON: NaN, Infinity and numbers beyond a float are refused, as is nesting Python cannot follow."""

    def no_constant(name: str) -> object:
        raise ValueError(f"{name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is beyond any real number")
        return value

    try:
        return json.loads(data, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "is nested too deeply" if isinstance(err, RecursionError) else "is not valid JSON"
        raise BadAnswer(reason) from None


# -- files --------------------------------------------------------------------------------------------------------


def check_space(folder: Path, need: int | None, key: str, what: str) -> int:
    """Refuse to start a download the disk has no room for (leaving DISK_RESERVE free); the bytes it may write.
    ``need`` None: the size is not known, so any room will do, and the download stops where it ends."""
    free = shutil.disk_usage(folder).free
    if (need or 1) + DISK_RESERVE > free:
        size = f"needs {human(need)}" if need is not None else "has no announced size"
        raise ModelError(f"{key}: {what} {size} and {folder} has {human(free)} free (claybot leaves "
                         f"{human(DISK_RESERVE)} free); free some space, or set pipeline.cache_dir to a folder on a "
                         "larger disk.")
    return free - DISK_RESERVE


def out_of_room(job: Download, room: int) -> ModelError:
    """The error for a file of no announced size that went on past the room on the disk."""
    return ModelError(f"{job.key}: the download of {job.what} went on past {human(room)}, all the room "
                      f"{job.part.parent} has (claybot leaves {human(DISK_RESERVE)} free); the part was deleted. "
                      "Free some space, or set pipeline.cache_dir to a folder on a larger disk.")


def too_large(job: Download, limits: DownloadLimits, sent: int | None = None) -> ModelError:
    """The error for a file beyond its cap (the API's size or pipeline.max_download_gb), naming what set the cap."""
    cap = limits.cap(job.expected, job.key)
    how = f"announces {human(sent)} (Content-Length)" if sent is not None else f"went on past {human(cap)}"
    if job.expected is not None and cap < limits.most(job.key):
        return ModelError(f"{job.key}: the download of {job.what} {how}, and {job.expected_from} gives its size as "
                          f"{human(job.expected)}; the part was deleted. {_cap(job.later)}.")
    kind = kind_cap(job.key)
    if kind and kind[1] < limits.max_file_bytes and (sent is None or sent <= limits.max_file_bytes):
        return ModelError(f"{job.key}: the download of {job.what} {how}, more than {kind[0]} can be "
                          f"({human(kind[1])}); the part was deleted. {_cap(job.later)}.")
    return ModelError(f"{job.key}: the download of {job.what} {how}, more than pipeline.max_download_gb = "
                      f"{limits.max_file_bytes / GB:g} allows; the part was deleted. Raise pipeline.max_download_gb "
                      f"if the file really is that large, or {job.later}.")


def check_announced(job: Download, limits: DownloadLimits) -> None:
    """Refuse, before any request, a file whose announced size is above pipeline.max_download_gb."""
    if job.expected is not None and job.expected > limits.max_file_bytes:
        raise ModelError(f"{job.key}: {job.what} is {human(job.expected)} ({job.expected_from}), more than "
                         f"pipeline.max_download_gb = {limits.max_file_bytes / GB:g} allows; raise it if you mean "
                         f"to fetch this file, or {job.later}.")
    kind = kind_cap(job.key)
    if job.expected is not None and kind and job.expected > kind[1]:
        raise ModelError(f"{job.key}: {job.what} is {human(job.expected)} ({job.expected_from}), more than "
                         f"{kind[0]} can be ({human(kind[1])}); is it the right file? If it is, {job.later}.")


def stream(session: Any, job: Download, limits: DownloadLimits,
           refuse: Callable[[Any], None] | None = None) -> str:
    """Download ``job.url`` into ``job.part`` with a progress bar, resuming after a cut; the sha256 of the file.

    ``refuse`` sees each response first and raises the source's own errors (a login page, say). Raises ModelError
    when the file is too large, too slow, cannot be written, or was cut ``limits.attempts`` times.
    """
    import requests
    import urllib3

    check_announced(job, limits)
    cap = limits.cap(job.expected, job.key)
    part = job.part
    got = _Received()
    if part.exists() and part.stat().st_size > cap:  # no file this download could give is that long
        logger.warning("%s: deleting %s, %d bytes, more than the file can have", job.key, part.name,
                       part.stat().st_size)
        part.unlink()
    if part.exists():  # an earlier run was cut: hash what it got, then ask for the rest
        with part.open("rb") as old:
            while chunk := old.read(CHUNK):
                got.add(chunk)
    check_space(part.parent, None if job.expected is None else max(0, job.expected - got.bytes), job.key, job.what)
    failure = ""
    for attempt in range(limits.attempts):
        if attempt:
            time.sleep(limits.retry_wait * attempt)
            logger.warning("%s: the download of %s was cut after %d bytes (%s); resuming", job.key, job.what,
                           got.bytes, failure)
        headers = {**job.headers, "Accept-Encoding": "identity"}  # the bytes on the wire are the file's
        if got.bytes:
            headers["Range"] = f"bytes={got.bytes}-"
        try:
            resp = session.get(job.url, headers=headers, stream=True,
                               timeout=(limits.connect_timeout, limits.rate_window))
        except requests.ConnectionError as err:
            if isinstance(err, requests.ConnectTimeout) or "refused" not in str(err).lower():
                failure = reason(err)
                continue
            # nothing listens there: no later try in the next seconds would find it
            raise ModelError(f"{job.key}: could not fetch {job.what} ({reason(err)}). {_cap(job.later)}.") from None
        except requests.RequestException as err:
            failure = reason(err)
            continue
        try:
            with resp:
                if refuse is not None:
                    refuse(resp)
                if resp.status_code == 416:  # the part on disk is not a prefix of this file: start again
                    part.unlink(missing_ok=True)
                    got = _Received()
                    failure = "HTTP 416"
                    continue
                if resp.status_code >= 400:
                    raise ModelError(f"{job.key}: could not fetch {job.what}: {job.source} answered HTTP "
                                     f"{resp.status_code}. {_cap(job.later)}.")
                resumed = bool(got.bytes) and resp.status_code == 206 and resp.headers.get(
                    "Content-Range", "").startswith(f"bytes {got.bytes}-")
                if not resumed:
                    got = _Received()
                length = announced_length(resp)
                if length is not None and got.bytes + length > cap:
                    part.unlink(missing_ok=True)
                    raise too_large(job, limits, sent=got.bytes + length)
                # no size announced: any room will do, and the bytes stop where it ends (not at the cap)
                room = check_space(part.parent, length if length is not None or job.expected is None else
                                   max(0, job.expected - got.bytes), job.key, job.what)
                total = got.bytes + length if length is not None else job.expected
                _write(resp, job, got, total, resumed, cap, limits, room)
            return got.hasher.hexdigest()
        except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
            failure = reason(err)
            if not part.exists():
                got = _Received()
    raise ModelError(f"{job.key}: the download of {job.what} failed {limits.attempts} times ({failure}); the part "
                     f"fetched so far is kept and resumed by the next try: {job.later}.")


def announced_length(resp: Any) -> int | None:
    """The Content-Length a response announces (None: none, or not a number); beyond any disk when absurdly long."""
    text = resp.headers.get("Content-Length", "").strip()
    if not re.fullmatch(r"[0-9]+", text):  # str.isdigit() takes "²" too, which int() refuses
        return None
    return int(text) if len(text) <= 18 else 10**18  # int() refuses more than 4300 digits


class _Received:
    """What is in the part so far: its length and running sha256 (kept by a cut, so the next try resumes)."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.bytes = 0

    def add(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.bytes += len(chunk)


def _write(resp: Any, job: Download, got: _Received, total: int | None, resumed: bool, cap: int,
           limits: DownloadLimits, room: int) -> None:
    """Append the body to the part, within the cap, the disk's ``room`` and the minimum rate."""
    from tqdm import tqdm

    part = job.part
    rate = RateCheck(limits)
    try:
        out = part.open("ab" if resumed else "wb")
    except OSError as err:
        raise _unwritable(job, part, err) from None
    written = 0
    with out, tqdm(total=total, initial=got.bytes, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                   desc=f"{job.key}: {part.name.removesuffix('.part')}", leave=False, disable=None) as bar:
        for chunk in _chunks(resp, CHUNK):
            # a server that never stops must not fill the disk
            if got.bytes + len(chunk) > cap or written + len(chunk) > room:
                out.close()
                part.unlink(missing_ok=True)
                raise too_large(job, limits) if got.bytes + len(chunk) > cap else out_of_room(job, room)
            try:
                out.write(chunk)
            except OSError as err:
                out.close()
                raise _unwritable(job, part, err) from None
            got.add(chunk)
            written += len(chunk)
            bar.update(len(chunk))
            slow = rate.add(len(chunk))
            if slow:
                raise ModelError(f"{job.key}: {job.source} sent {job.what} at {slow}, slower than "
                                 f"pipeline.min_download_kb_per_s = {limits.min_rate / 1024:g}; the part fetched "
                                 f"so far is kept and resumed by the next try: {job.later}.")


def _unwritable(job: Download, part: Path, err: OSError) -> ModelError:
    """A write that failed: the part is deleted (the next start must not resume a file of unknown content)."""
    part.unlink(missing_ok=True)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = "the disk is full" if err.errno != errno.EFBIG else "the file system refused a file that large"
        return ModelError(f"{job.key}: could not write {job.what} into {part.parent}: {why}; the part was deleted. "
                          "Free some space, or set pipeline.cache_dir to a folder on a larger disk.")
    return ModelError(f"{job.key}: could not write {job.what} into {part.parent} ({err.strerror or err}); the part "
                      "was deleted. Set pipeline.cache_dir to a writable folder.")


class RateCheck:
    """Whether a transfer keeps up ``min_rate`` over each window of ``rate_window`` seconds."""

    def __init__(self, limits: DownloadLimits) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.bytes = 0

    def add(self, count: int) -> str:
        """Count bytes received; the rate in words when a window ended below the minimum, else ""."""
        self.bytes += count
        elapsed = time.monotonic() - self.start
        if elapsed < self.limits.rate_window:
            return ""
        rate = self.bytes / elapsed
        if rate < self.limits.min_rate:
            return f"{rate / 1024:.2f} KB/s over {elapsed:.1f} s"
        self.start, self.bytes = time.monotonic(), 0
        return ""


def _chunks(resp: Any, size: int) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` hands over every byte received before a cut, so a resume loses none."""
    raw = resp.raw
    if not hasattr(raw, "read1"):  # urllib3 1.x
        yield from resp.iter_content(size)
        return
    while chunk := raw.read1(size, decode_content=True):
        yield chunk


def reason(err: Exception) -> str:
    """A short, token-free reason for a network failure (requests' messages can carry whole URLs)."""
    text = str(err)
    for known in ("Name or service not known", "Connection refused", "timed out", "Temporary failure in name "
                  "resolution", "Connection reset", "IncompleteRead", "Connection broken", "No route to host",
                  "Network is unreachable", "Exceeded 5 redirects"):
        if known.lower() in text.lower():
            return f"{type(err).__name__}: {known}"
    return type(err).__name__


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
