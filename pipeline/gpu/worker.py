"""The pipeline worker loop: load every model once, warm up, then serve batches of jobs over a connection.

The same loop runs as the local queue's spawned child and as ``claybot worker`` in the foreground. Torch and
the models are imported inside the functions, so importing this module (as the parent must, to name the child's
entry point) stays light.

Messages are dicts. In: ``{"op": "batch", "jobs": [{"id", "image", "seed", "trigger_weight", "max_rating"}], "style",
"strength", "speed", "timeout"}`` and ``{"op": "stop"}``. Out: ``ready`` (device, dtype, max_batch), ``fatal``
(message), then per batch ``started``, ``progress`` (step, total), ``done`` (result) or ``failed`` (reason, kind) for
every job, and ``idle`` when the batch is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import BadImage, ClaybotError, TooLarge
from pipeline.core.jobs import ErrorKind
from pipeline.core.safety import INPUT_REFUSED, OUTPUT_REFUSED, over_limit
from pipeline.core.settings import DEFAULT_SPEED, GpuSettings

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]

INTERNAL_REASON = "Something went wrong while making your clay picture; please try again."
OOM_REASON = "The GPU ran out of memory on this photo; please try a smaller one."
DECODE_REASON = "I could not read that picture; please send it as an ordinary JPEG or PNG photo."
MEMORY_REASON = "That picture needs more memory than I can give it; please send a smaller one."
TAG_REASON = "I could not look at that picture; please try another one."
ENCODE_REASON = "Your clay picture was made but could not be saved; please try again."


class _LinkDown(Exception):
    """Sending an answer failed: the connection is gone, which ends the batch (not a fault of any photo)."""


class JobTimeout(Exception):
    """Raised from the step callback when a batch runs past its time limit."""


def serve(settings: GpuSettings, connections: Iterable, *, warm_up: bool = True,
          max_message: int | None = None) -> None:
    """Load the models once, then for each connection: announce readiness and answer batches until it closes.
    A message longer than ``max_message`` bytes closes its connection unread (None: the spawned child's pipe)."""
    from pipeline.core.link import BadMessage, FrameTooLarge, receive
    from pipeline.core.status import gpu_memory_mb
    from pipeline.gpu.stylizer import Stylizer

    connections = iter(connections)
    try:
        stylizer = Stylizer(settings)
        if warm_up:
            started = time.perf_counter()
            stylizer.warm_up()
            logger.info("warm-up done in %.2fs", time.perf_counter() - started)
    except ClaybotError as err:
        logger.error("%s", err)
        conn = next(connections, None)
        if conn is not None:
            conn.send({"op": "fatal", "message": str(err)})
        raise
    ready = {"op": "ready", "device": str(stylizer.device), "dtype": str(stylizer.dtype).removeprefix("torch."),
             "max_batch": settings.pipeline.max_batch}
    for conn in connections:
        try:
            conn.send(ready)
            while True:
                message = receive(conn, max_message)
                if message.get("op") == "stop":
                    return
                if message.get("op") == "batch":
                    run_batch(stylizer, message, conn.send)
                    conn.send({"op": "idle", "gpu_memory_mb": gpu_memory_mb()})
        except BadMessage as err:
            bound = " (bot.max_photo_mb × pipeline.max_batch)" if isinstance(err, FrameTooLarge) else ""
            logger.warning("closing a queue connection: %s%s", err, bound)
        except (EOFError, OSError):
            logger.info("queue connection closed")
        finally:
            conn.close()


def listen(address: str, authkey: bytes) -> Iterator:
    """Connections from queues to a foreground worker (``claybot worker``), one after another, each authenticated
    under a deadline off the accept loop (see pipeline.core.link)."""
    from pipeline.core.link import listen as listen_on

    return listen_on(address, authkey)


def run_batch(stylizer, message: dict[str, Any], send: Send) -> None:
    """Decode, stylize and answer every job of one batch; a bad photo fails alone, never its companions.

    Nothing one photo does may end the worker: whatever escapes the stages below fails the jobs of this batch
    that have no answer yet (each with a reason), and the worker goes on to the next batch."""
    answered: set[str] = set()

    def tracked(answer: dict[str, Any]) -> None:
        try:
            send(answer)
        except Exception as err:
            raise _LinkDown from err
        if answer.get("op") in ("done", "failed"):
            answered.add(answer["id"])

    try:
        _run_batch(stylizer, message, tracked)
    except _LinkDown as down:
        raise down.__cause__ from None
    except Exception:
        jobs = message.get("jobs") if isinstance(message.get("jobs"), list) else []
        logger.exception("batch %s failed outside its stages", [job.get("id") for job in jobs])
        for job in jobs:
            if job.get("id") is not None and job["id"] not in answered:
                send({"op": "failed", "id": job["id"], "reason": INTERNAL_REASON, "kind": ErrorKind.INTERNAL.value})


def _run_batch(stylizer, message: dict[str, Any], send: Send) -> None:
    from pipeline.core.images import decode_photo
    from pipeline.gpu.stylizer import Photo

    p = stylizer.settings.pipeline
    max_pixels = int(p.max_input_megapixels * 1e6)
    # The worker never needs more than a few times its working area (the tagger needs far less).
    keep_pixels = int(4 * p.megapixels * 1e6)
    decoded: list[DecodedJob] = []
    for job in message["jobs"]:
        started = time.perf_counter()
        try:
            image = decode_photo(job["image"], max_pixels=max_pixels, keep_pixels=keep_pixels)
        except TooLarge as err:
            _fail(send, job["id"], str(err), ErrorKind.TOO_LARGE)
            continue
        except BadImage as err:
            _fail(send, job["id"], str(err), ErrorKind.BAD_IMAGE)
            continue
        except MemoryError:
            logger.warning("job %s: out of memory while decoding", job["id"])
            _fail(send, job["id"], MEMORY_REASON, ErrorKind.TOO_LARGE)
            continue
        except Exception:  # a decoder bug or a file Pillow chokes on in a way it does not name
            logger.exception("job %s: the photo could not be decoded", job["id"])
            _fail(send, job["id"], DECODE_REASON, ErrorKind.BAD_IMAGE)
            continue
        photo = Photo(image, job["seed"], job.get("trigger_weight"), job.get("structure_scale"),
                      job.get("identity_scale"))
        timings = {"decode": time.perf_counter() - started}
        decoded.append(DecodedJob(job["id"], photo, job.get("max_rating"), timings))
    deadline = time.monotonic() + message["timeout"]
    # The queue grouped the batch by style, strength, speed and working size: it is one pipeline call, never
    # regrouped here (only the guides may split it, by what only they see: a face or none).
    group = _allowed(stylizer, decoded, send)
    if group:
        _run_group(stylizer, group, message, _settled_size(stylizer, message, group[0].id), deadline, send)


def _settled_size(stylizer, message: dict[str, Any], job_id: str) -> tuple[int, int]:
    """The batch's working size as intake settled it: from a photo's header, not from the decoded photo (shrunk
    while decoding, it may round to another size)."""
    from pipeline.core.images import probe_photo

    p = stylizer.settings.pipeline
    data = next(job["image"] for job in message["jobs"] if job["id"] == job_id)
    return p.work_size(*probe_photo(data, max_pixels=int(p.max_input_megapixels * 1e6)))


def _fail(send: Send, job_id: str, reason: str, kind: ErrorKind) -> None:
    send({"op": "failed", "id": job_id, "reason": reason, "kind": kind.value})


@dataclass
class DecodedJob:
    """One decoded job of a batch."""

    id: str
    photo: Any  # pipeline.gpu.stylizer.Photo
    max_rating: str | None
    timings: dict[str, float]
    tags: Any = None  # pipeline.gpu.tagger.Tags, once tagged


def _allowed(stylizer, group: list[DecodedJob], send: Send) -> list[DecodedJob]:
    """Tag the photos once (the prompt uses the same tags) and refuse those over their chat's rating limit."""
    started = time.perf_counter()
    tags = _tag(stylizer, [job.photo.image for job in group], [job.id for job in group])
    seconds = (time.perf_counter() - started) / len(group)
    allowed = []
    for job, job_tags in zip(group, tags, strict=True):
        if job_tags is None:
            _fail(send, job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        job.tags, job.timings["tag"] = job_tags, seconds
        if over_limit(job_tags.ratings, job.max_rating):
            logger.info("job %s refused: rated %s, the chat allows up to %s", job.id, job_tags.rating, job.max_rating)
            send({"op": "failed", "id": job.id, "reason": INPUT_REFUSED, "kind": ErrorKind.NOT_ALLOWED.value})
        else:
            allowed.append(job)
    return allowed


def _tag(stylizer, images: list, ids: list[str]) -> list:
    """The tagger's answer per image; None for an image it fails on (the batch is retried one image at a time,
    so one bad image never costs its companions their tags)."""
    try:
        return list(stylizer.tagger(images))
    except Exception:
        if len(images) == 1:
            logger.exception("job %s: the tagger failed", ids[0])
            return [None]
    return [_tag(stylizer, [image], [job_id])[0] for image, job_id in zip(images, ids, strict=True)]


def _run_group(stylizer, group: list[DecodedJob], message: dict[str, Any], size: tuple[int, int], deadline: float,
               send: Send) -> None:
    from pipeline.core.images import encode_png

    ids = [job.id for job in group]
    send({"op": "started", "ids": ids})

    def on_step(step: int, total: int) -> None:
        send({"op": "progress", "ids": ids, "step": step, "total": total})
        if time.monotonic() > deadline:
            raise JobTimeout

    def fail_all(reason: str, kind: ErrorKind) -> None:
        for job_id in ids:
            send({"op": "failed", "id": job_id, "reason": reason, "kind": kind.value})

    try:
        results = stylizer.run([job.photo for job in group], style=message["style"], strength=message["strength"],
                               on_step=on_step, tags=[job.tags for job in group],
                               speed=message.get("speed", DEFAULT_SPEED), size=size)
    except _LinkDown:  # a progress message could not be sent: the connection is gone, no photo's fault
        raise
    except JobTimeout:
        minutes = message["timeout"] / 60
        limit = f"{message['timeout']:g} seconds" if message["timeout"] < 120 else f"{minutes:g} minutes"
        fail_all(f"This took longer than the {limit} limit and was stopped; please try again later.",
                 ErrorKind.TIMEOUT)
        return
    except Exception as err:
        if not _is_out_of_memory(err):
            logger.exception("batch %s failed", ids)
            fail_all(INTERNAL_REASON, ErrorKind.INTERNAL)
            return
        _free_gpu_memory()
        if len(group) == 1:
            logger.warning("job %s ran out of GPU memory alone", ids[0])
            fail_all(OOM_REASON, ErrorKind.TOO_LARGE)
            return
        logger.warning("batch of %d ran out of GPU memory; retrying one job at a time", len(group))
        for job in group:
            _run_group(stylizer, [job], message, size, deadline, send)
        return

    # The result is held to the same rating limit as the photo: img2img can add what the photo did not have.
    started = time.perf_counter()
    checked = [job.max_rating is not None for job in group]
    to_check = [(result.image, job.id) for job, result, check in zip(group, results, checked, strict=True) if check]
    output_tags = iter(_tag(stylizer, [image for image, _ in to_check], [i for _, i in to_check]) if to_check else [])
    check_s = (time.perf_counter() - started) / len(group)
    for job, result, check in zip(group, results, checked, strict=True):
        job_tags = next(output_tags) if check else None
        if check and job_tags is None:  # a result that cannot be checked is not sent: the chat asked for the check
            _fail(send, job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        if check and over_limit(job_tags.ratings, job.max_rating):
            logger.info("job %s: the result was over the chat's rating limit %s; not sent", job.id, job.max_rating)
            send({"op": "failed", "id": job.id, "reason": OUTPUT_REFUSED, "kind": ErrorKind.NOT_ALLOWED.value})
            continue
        started = time.perf_counter()
        try:
            png = encode_png(result.image)
        except Exception:
            logger.exception("job %s: the result could not be encoded", job.id)
            _fail(send, job.id, ENCODE_REASON, ErrorKind.INTERNAL)
            continue
        timings = {**job.timings, **result.timings, "check": check_s, "encode": time.perf_counter() - started}
        send({"op": "done", "id": job.id, "result": {
            "image": png, "width": result.image.width, "height": result.image.height, "tags": result.tags,
            "prompt": result.prompt, "seed": result.seed, "style": message["style"],
            "strength": message["strength"], "ratings": result.ratings, "timings": timings,
            "speed": message.get("speed", DEFAULT_SPEED),
        }})


def _is_out_of_memory(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def child_main(settings: GpuSettings, conn, log_level: int = logging.INFO) -> None:
    """Entry point of the spawned worker process."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    try:
        serve(settings, [conn])
    except (KeyboardInterrupt, ClaybotError):  # the parent handles Ctrl-C; a fatal error was already sent
        pass
    finally:
        conn.close()
