"""The pipeline worker loop: load the tagger and the engines once, warm up, then serve batches over a connection.

The same loop runs as the local queue's spawned child and as ``claybot worker`` in the foreground. Torch and
the models are imported inside the functions, so importing this module (as the parent must, to name the child's
entry point) stays light. What it reads and sends are the messages of ``pipeline.core.jobs`` (``Batch``, ``Stop``;
``Ready``, ``Fatal``, ``Update``, ``Idle``), as ``pipeline.core.codec`` frames. For each batch it decodes the photos,
tags and rates them once, then hands each group to its engine (``pipeline.gpu.engine``): it names no kind of job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core import codec
from pipeline.core.errors import BadImage, ClaybotError, TooLarge
from pipeline.core.jobs import Batch, Done, ErrorKind, Failed, Fatal, Idle, Message, Ready, Stop, Update
from pipeline.core.kinds import JobKind, kind_of, load_plugins, worker_kinds
from pipeline.core.safety import INPUT_REFUSED, over_limit
from pipeline.core.settings import GpuSettings
from pipeline.gpu.engine import (
    TAG_REASON,
    DecodedJob,
    Engine,
    LinkDown,
    Run,
    Send,
    check_models,
    gpu_memory_mb,
    load_engines,
    tag_images,
)

logger = logging.getLogger(__name__)

INTERNAL_REASON = "Something went wrong while making your clay picture; please try again."
DECODE_REASON = "I could not read that picture; please send it as an ordinary JPEG or PNG photo."
MEMORY_REASON = "That picture needs more memory than I can give it; please send a smaller one."


@dataclass
class Workshop:
    """What a worker loaded once: its settings, the tagger every kind shares, and its engines by name."""

    settings: GpuSettings
    tagger: Any  # pipeline.gpu.tagger.Tagger
    engines: dict[str, Engine]
    device: str = "cpu"
    dtype: str = "float32"

    def warm_up(self) -> None:
        """Each engine's throw-away run, so no first job is slow."""
        for engine in self.engines.values():
            engine.warm_up()


def open_workshop(settings: GpuSettings, kinds: Iterable[JobKind]) -> Workshop:
    """Load the tagger and the engines of ``kinds`` (ClaybotError naming the key of a model that cannot load)."""
    from pipeline.gpu.stylizer import load_tagger, pick_device, pick_dtype

    device = pick_device(settings.pipeline.device)
    dtype = pick_dtype(settings.pipeline.dtype, device)
    names: set[str] = set()
    for kind in kinds:
        names |= kind.engines(settings)
    check_models(settings, names, device)  # licences and memory, before anything loads
    tagger = load_tagger(settings, device)
    return Workshop(settings, tagger, load_engines(names, settings, tagger), str(device),
                    str(dtype).removeprefix("torch."))


def no_engine_reason(kind: JobKind) -> str:
    """What a job hears when it reaches a worker that loaded nothing to make its kind."""
    return f"This claybot's worker makes no {kind.noun}s (nothing loaded makes them); ask its operator."


def serve(settings: GpuSettings, connections: Iterable, *, warm_up: bool = True,
          max_message: int | None = None) -> None:
    """Load the models once, then for each connection: announce readiness and answer batches until it closes.
    A message longer than ``max_message`` bytes closes its connection unread (None: the spawned child's pipe)."""
    from pipeline.core.link import BadMessage, FrameTooLarge, receive

    connections = iter(connections)
    try:
        load_plugins(settings.pipeline.plugins)  # a spawned worker did not read the config: its kinds come here
        workshop = open_workshop(settings, worker_kinds(settings, []))
        if warm_up:
            started = time.perf_counter()
            workshop.warm_up()
            logger.info("warm-up done in %.2fs", time.perf_counter() - started)
    except ClaybotError as err:
        logger.error("%s", err)
        conn = next(connections, None)
        if conn is not None:
            conn.send_bytes(codec.encode(Fatal(str(err))))
        raise
    ready = codec.encode(Ready(workshop.device, workshop.dtype, settings.pipeline.max_batch))
    for conn in connections:
        def send(message: Message, conn: Any = conn) -> None:
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
                    run_batch(workshop, message, send)
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


def run_batch(workshop: Workshop, batch: Batch, send: Send) -> None:
    """Decode, tag, rate and make (each group by its engine) every job of one batch; a bad photo fails alone,
    never its companions.

    Nothing one photo does may end the worker: whatever escapes the stages below fails the jobs of this batch
    that have no answer yet (each with a reason), and the worker goes on to the next batch."""
    answered: set[str] = set()

    def tracked(message: Message) -> None:
        try:
            send(message)
        except Exception as err:
            raise LinkDown from err
        if isinstance(message, Update) and isinstance(message.event, Done | Failed):
            answered.update(message.ids)

    try:
        _run_batch(workshop, batch, tracked)
    except LinkDown as down:
        lost = down.__cause__
        assert lost is not None  # tracked() raises it from the send's own error
        raise lost from None
    except Exception:
        logger.exception("batch %s failed outside its stages", [task.id for task in batch.tasks])
        for task in batch.tasks:
            if task.id not in answered:
                _fail(send, task.id, INTERNAL_REASON, ErrorKind.INTERNAL)


def _run_batch(workshop: Workshop, batch: Batch, send: Send) -> None:
    from pipeline.core.images import decode_photo

    p = workshop.settings.pipeline
    max_pixels = int(p.max_input_megapixels * 1e6)
    # The worker never needs more than a few times its working area (the tagger needs far less).
    keep_pixels = int(4 * p.megapixels * 1e6)
    groups: dict[str, list[DecodedJob]] = {}  # engine name → its jobs, in the batch's order
    for task in batch.tasks:
        job, started = task.job, time.perf_counter()
        kind = kind_of(job.kind)  # the codec read only registered kinds
        engine = kind.engine_for(job, workshop.settings)
        if engine not in workshop.engines:
            _fail(send, task.id, no_engine_reason(kind), ErrorKind.INTERNAL)
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
        groups.setdefault(engine, []).append(DecodedJob(task, image, {"decode": time.perf_counter() - started}))
    deadline = time.monotonic() + batch.timeout
    # The queue grouped the batch by its batch key (settled at intake, from the photos' headers): it is one engine
    # call, never regrouped here (only the guides may split it, by what only they see: a face or none).
    run = Run(send, batch.timeout, deadline, workshop.tagger)
    for engine, group in groups.items():
        allowed = _allowed(workshop, group, send)  # every photo (a clip's picture too) is rated as a photo is
        if allowed:
            workshop.engines[engine].run(allowed, run)


def _fail(send: Send, job_id: str, reason: str, kind: ErrorKind) -> None:
    send(Update((job_id,), Failed(reason, kind)))


def _allowed(workshop: Workshop, group: list[DecodedJob], send: Send) -> list[DecodedJob]:
    """Tag the photos once (the prompt uses the same tags) and refuse those over their chat's rating limit."""
    started = time.perf_counter()
    tags = tag_images(workshop.tagger, [job.image for job in group], [job.id for job in group])
    seconds = (time.perf_counter() - started) / len(group)
    allowed = []
    for job, job_tags in zip(group, tags, strict=True):
        if job_tags is None:
            _fail(send, job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        job.tags, job.timings["tag"] = job_tags, seconds
        max_rating = job.job.max_rating
        if over_limit(job_tags.ratings, max_rating):
            logger.info("job %s refused: rated %s, the chat allows up to %s", job.id, job_tags.rating, max_rating)
            _fail(send, job.id, INPUT_REFUSED, ErrorKind.NOT_ALLOWED)
        else:
            allowed.append(job)
    return allowed


def child_main(settings: GpuSettings, conn: Any, log_level: int = logging.INFO) -> None:
    """Entry point of the spawned worker process."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    try:
        serve(settings, [conn])
    except (KeyboardInterrupt, ClaybotError):  # the parent handles Ctrl-C; a fatal error was already sent
        pass
    finally:
        conn.close()
