"""The pipeline worker loop: load every model once, warm up, then serve batches of jobs over a connection.

The same loop runs as the local queue's spawned child and as ``claybot worker`` in the foreground. Torch and
the models are imported inside the functions, so importing this module (as the parent must, to name the child's
entry point) stays light. What it reads and sends are the messages of ``pipeline.core.jobs`` (``Batch``, ``Stop``;
``Ready``, ``Fatal``, ``Update``, ``Idle``), as ``pipeline.core.codec`` frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.core import codec
from pipeline.core.errors import BadImage, ClaybotError, TooLarge
from pipeline.core.jobs import (
    Batch,
    Done,
    ErrorKind,
    Failed,
    Fatal,
    Idle,
    Kind,
    Message,
    Progress,
    Ready,
    Started,
    Stop,
    Task,
    Update,
)
from pipeline.core.safety import INPUT_REFUSED, OUTPUT_REFUSED, over_limit
from pipeline.core.settings import GpuSettings

logger = logging.getLogger(__name__)

Send = Callable[[Message], None]

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
    from pipeline.gpu.stylizer import Stylizer

    connections = iter(connections)
    animator = None
    try:
        stylizer = Stylizer(settings)
        if settings.animate.enabled:  # the video model is many GB more: loaded only when clips are on
            from pipeline.gpu.animate import Animator

            animator = Animator(settings)
        if warm_up:
            started = time.perf_counter()
            stylizer.warm_up()
            logger.info("warm-up done in %.2fs", time.perf_counter() - started)
    except ClaybotError as err:
        logger.error("%s", err)
        conn = next(connections, None)
        if conn is not None:
            conn.send_bytes(codec.encode(Fatal(str(err))))
        raise
    ready = codec.encode(Ready(str(stylizer.device), str(stylizer.dtype).removeprefix("torch."),
                               settings.pipeline.max_batch))
    for conn in connections:
        def send(message: Message, conn=conn) -> None:
            conn.send_bytes(codec.encode(message))

        try:
            conn.send_bytes(ready)
            while True:
                try:
                    message = codec.decode(receive(conn, max_message))
                except codec.CodecError as err:  # a queue of another version: its jobs fail as "crashed"
                    logger.error("the queue sent what is not a message (%s)", err)
                    send(Idle(gpu_memory_mb()))
                    continue
                if isinstance(message, Stop):
                    return
                if isinstance(message, Batch):
                    run_batch(stylizer, message, send, animator=animator)
                    send(Idle(gpu_memory_mb()))
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


def run_batch(stylizer, batch: Batch, send: Send, *, animator=None) -> None:
    """Decode, stylize (or, for a clip, animate with ``animator``) and answer every job of one batch; a bad photo
    fails alone, never its companions.

    Nothing one photo does may end the worker: whatever escapes the stages below fails the jobs of this batch
    that have no answer yet (each with a reason), and the worker goes on to the next batch."""
    answered: set[str] = set()

    def tracked(message: Message) -> None:
        try:
            send(message)
        except Exception as err:
            raise _LinkDown from err
        if isinstance(message, Update) and isinstance(message.event, Done | Failed):
            answered.update(message.ids)

    try:
        _run_batch(stylizer, batch, tracked, animator)
    except _LinkDown as down:
        lost = down.__cause__
        assert lost is not None  # tracked() raises it from the send's own error
        raise lost from None
    except Exception:
        logger.exception("batch %s failed outside its stages", [task.id for task in batch.tasks])
        for task in batch.tasks:
            if task.id not in answered:
                _fail(send, task.id, INTERNAL_REASON, ErrorKind.INTERNAL)


@dataclass
class DecodedJob:
    """One job of a batch with its photo decoded (and, once tagged, its tags)."""

    task: Task
    photo: Any  # pipeline.gpu.stylizer.Photo
    timings: dict[str, float] = field(default_factory=dict)
    tags: Any = None  # pipeline.gpu.tagger.Tags

    @property
    def id(self) -> str:
        return self.task.id


def _run_batch(stylizer, batch: Batch, send: Send, animator) -> None:
    from pipeline.core.images import decode_photo
    from pipeline.gpu.clips import NO_ANIMATOR_REASON, run_clip
    from pipeline.gpu.stylizer import Photo

    p = stylizer.settings.pipeline
    max_pixels = int(p.max_input_megapixels * 1e6)
    # The worker never needs more than a few times its working area (the tagger needs far less).
    keep_pixels = int(4 * p.megapixels * 1e6)
    group: list[DecodedJob] = []
    for task in batch.tasks:
        job, started = task.job, time.perf_counter()
        if job.kind is Kind.CLIP and animator is None:
            _fail(send, task.id, NO_ANIMATOR_REASON, ErrorKind.INTERNAL)
            continue
        try:
            image = decode_photo(job.image, max_pixels=max_pixels, keep_pixels=keep_pixels)
        except TooLarge as err:
            _fail(send, task.id, str(err), ErrorKind.TOO_LARGE)
            continue
        except BadImage as err:
            _fail(send, task.id, str(err), ErrorKind.BAD_IMAGE)
            continue
        except MemoryError:
            logger.warning("job %s: out of memory while decoding", task.id)
            _fail(send, task.id, MEMORY_REASON, ErrorKind.TOO_LARGE)
            continue
        except Exception:  # a decoder bug or a file Pillow chokes on in a way it does not name
            logger.exception("job %s: the photo could not be decoded", task.id)
            _fail(send, task.id, DECODE_REASON, ErrorKind.BAD_IMAGE)
            continue
        photo = Photo.of(image, job)
        group.append(DecodedJob(task, photo, {"decode": time.perf_counter() - started}))
    deadline = time.monotonic() + batch.timeout
    # The queue grouped the batch by style, strength, speed and working size (settled at intake, from the photos'
    # headers): it is one pipeline call, never regrouped here (only the guides may split it, by what only they
    # see: a face or none).
    group = _allowed(stylizer, group, send)  # a clip's picture is rated as a photo is
    pictures = [job for job in group if job.task.job.kind is Kind.PICTURE]
    if pictures:
        _run_group(stylizer, pictures, batch.timeout, deadline, send)
    for clip in (job for job in group if job.task.job.kind is Kind.CLIP):  # one at a time, each a GPU's worth
        run_clip(stylizer, animator, clip, batch.timeout, deadline, send)


def _fail(send: Send, job_id: str, reason: str, kind: ErrorKind) -> None:
    send(Update((job_id,), Failed(reason, kind)))


def _allowed(stylizer, group: list[DecodedJob], send: Send) -> list[DecodedJob]:
    """Tag the photos once (the prompt uses the same tags) and refuse those over their chat's rating limit."""
    if not group:
        return []
    started = time.perf_counter()
    tags = _tag(stylizer, [job.photo.image for job in group], [job.id for job in group])
    seconds = (time.perf_counter() - started) / len(group)
    allowed = []
    for job, job_tags in zip(group, tags, strict=True):
        if job_tags is None:
            _fail(send, job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        job.tags, job.timings["tag"] = job_tags, seconds
        max_rating = job.task.job.max_rating
        if over_limit(job_tags.ratings, max_rating):
            logger.info("job %s refused: rated %s, the chat allows up to %s", job.id, job_tags.rating, max_rating)
            _fail(send, job.id, INPUT_REFUSED, ErrorKind.NOT_ALLOWED)
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


def _run_group(stylizer, group: list[DecodedJob], timeout: float, deadline: float, send: Send) -> None:
    from pipeline.core.images import encode_png

    ids = tuple(job.id for job in group)
    first = group[0].task.job  # the batch's shared style, strength, speed and working size
    send(Update(ids, Started(len(ids))))

    def on_step(step: int, total: int) -> None:
        send(Update(ids, Progress(step, total)))
        if time.monotonic() > deadline:
            raise JobTimeout

    def fail_all(reason: str, kind: ErrorKind) -> None:
        for job_id in ids:
            _fail(send, job_id, reason, kind)

    try:
        results = stylizer.run([job.photo for job in group], style=first.style, strength=first.strength,
                               speed=first.speed, work_size=first.work_size, on_step=on_step,
                               tags=[job.tags for job in group])
    except _LinkDown:  # a progress message could not be sent: the connection is gone, no photo's fault
        raise
    except JobTimeout:
        fail_all(f"This took longer than the {limit_text(timeout)} limit and was stopped; please try again later.",
                 ErrorKind.TIMEOUT)
        return
    except Exception as err:
        if not _is_out_of_memory(err):
            logger.exception("batch %s failed", list(ids))
            fail_all(INTERNAL_REASON, ErrorKind.INTERNAL)
            return
        _free_gpu_memory()
        if len(group) == 1:
            logger.warning("job %s ran out of GPU memory alone", ids[0])
            fail_all(OOM_REASON, ErrorKind.TOO_LARGE)
            return
        logger.warning("batch of %d ran out of GPU memory; retrying one job at a time", len(group))
        for job in group:
            _run_group(stylizer, [job], timeout, deadline, send)
        return

    # The result is held to the same rating limit as the photo: img2img can add what the photo did not have.
    started = time.perf_counter()
    checked = [job.task.job.max_rating is not None for job in group]
    to_check = [(result.image, job.id) for job, result, check in zip(group, results, checked, strict=True) if check]
    output_tags = iter(_tag(stylizer, [image for image, _ in to_check], [i for _, i in to_check]) if to_check else [])
    check_s = (time.perf_counter() - started) / len(group)
    for job, result, check in zip(group, results, checked, strict=True):
        max_rating = job.task.job.max_rating
        job_tags = next(output_tags) if check else None
        if check and job_tags is None:  # a result that cannot be checked is not sent: the chat asked for the check
            _fail(send, job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        if job_tags is not None and over_limit(job_tags.ratings, max_rating):  # not None: checked
            logger.info("job %s: the result was over the chat's rating limit %s; not sent", job.id, max_rating)
            _fail(send, job.id, OUTPUT_REFUSED, ErrorKind.NOT_ALLOWED)
            continue
        started = time.perf_counter()
        try:
            png = encode_png(result.image)
        except Exception:
            logger.exception("job %s: the result could not be encoded", job.id)
            _fail(send, job.id, ENCODE_REASON, ErrorKind.INTERNAL)
            continue
        timings = {**job.timings, **result.timings, "check": check_s, "encode": time.perf_counter() - started}
        send(Update((job.id,), Done(
            image=png, width=result.image.width, height=result.image.height, tags=result.tags, prompt=result.prompt,
            seed=result.seed, style=first.style, strength=first.strength, ratings=result.ratings, timings=timings,
            speed=first.speed)))


def limit_text(timeout: float) -> str:
    """A time limit as users read it: "90 seconds", "10 minutes"."""
    return f"{timeout:g} seconds" if timeout < 120 else f"{timeout / 60:g} minutes"


def _is_out_of_memory(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def gpu_memory_mb() -> float | None:
    """Memory the worker's tensors hold on the GPU, when there is one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated() / 2**20


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
