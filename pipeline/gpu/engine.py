"""The engine seam: what makes one kind of job (or one picture engine a style names), behind one protocol.

The worker loop (``pipeline.gpu.worker``) decodes a batch's photos, tags and rates them once with the worker's
tagger, then hands each group to the engine its kind (and style) names: ``Engine.run(group, run)``. An engine
answers every job of its group through ``run`` (Started, Progress per step, then Done or Failed), with settled
values only (the job's spec). Engines are registered by name in ``pipeline.core.kind`` ("module:Class") and built
here with ``(settings, tagger)``, so a new engine is one module plus one ``register_engine`` line, and no engine
imports the worker loop.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.core import licences, models
from pipeline.core.errors import ModelError
from pipeline.core.guide_specs import model_specs
from pipeline.core.images import encode_png
from pipeline.core.jobs import Done, ErrorKind, Failed, Job, Message, Task, Update
from pipeline.core.kinds import ENGINES
from pipeline.core.safety import OUTPUT_REFUSED, over_limit
from pipeline.core.settings import GpuSettings

logger = logging.getLogger(__name__)

Send = Callable[[Message], None]
TAG_REASON = "I could not look at that picture; please try another one."
INTERNAL_REASON = "Something went wrong while making your clay picture; please try again."
OOM_REASON = "The GPU ran out of memory on this photo; please try a smaller one."
ENCODE_REASON = "Your clay picture was made but could not be saved; please try again."
# A made picture's answer, given its PNG and the seconds its check and encoding took ({"check": …, "encode": …}).
MakeDone = Callable[[bytes, dict[str, float]], Done]


class LinkDown(Exception):
    """Sending an answer failed: the connection is gone, which ends the batch (not a fault of any photo)."""


class JobTimeout(Exception):
    """Raised from a step callback when a group runs past its time limit."""


@dataclass
class DecodedJob:
    """One job of a batch with its photo decoded (and, once tagged, its tags)."""

    task: Task
    image: Any  # a PIL image
    timings: dict[str, float] = field(default_factory=dict)
    tags: Any = None  # pipeline.gpu.tagger.Tags

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def job(self) -> Job:
        return self.task.job


@dataclass
class Run:
    """What an engine is given with a group: where answers go, the time limit, and the worker's tagger."""

    send: Send
    timeout: float  # the batch's time limit, in seconds
    deadline: float  # time.monotonic() past which a step stops the group
    tagger: Any  # the worker's pipeline.gpu.tagger.Tagger: rates what an engine made

    def fail(self, job_id: str, reason: str, kind: ErrorKind) -> None:
        """Answer one job with a failure."""
        self.send(Update((job_id,), Failed(reason, kind)))

    def tag(self, images: list, ids: list[str]) -> list:
        """The tagger's answer per image; None for an image it fails on (retried one at a time, so one bad image
        never costs its companions their tags)."""
        return tag_images(self.tagger, images, ids)

    def limit_text(self) -> str:
        """The batch's time limit as users read it."""
        return limit_text(self.timeout)


class Engine(Protocol):
    """Makes the jobs of one kind (or of the styles that name it): loaded once per worker."""

    def warm_up(self) -> None:
        """A throw-away run so the first job is not slow (may do nothing)."""

    def run(self, group: list[DecodedJob], run: Run) -> None:
        """Make and answer every job of ``group`` (decoded, tagged, allowed; one batch key) through ``run``."""


def load_engines(names: Iterable[str], settings: GpuSettings, tagger: Any) -> dict[str, Engine]:
    """Build the named engines (each registered as "module:Class", constructed with ``(settings, tagger)``)."""
    engines: dict[str, Engine] = {}
    for name in sorted(names):
        target = ENGINES.get(name)
        if target is None:
            raise ModelError(f"no engine called {name!r} is registered (have: {', '.join(sorted(ENGINES))})")
        module, _, attribute = target.partition(":")
        engine_class = getattr(importlib.import_module(module), attribute)
        started = time.perf_counter()
        engines[name] = engine_class(settings, tagger)
        logger.info("engine %s loaded in %.1f s", name, time.perf_counter() - started)
    return engines


def engine_of_key(key: str) -> str | None:
    """The engine that loads the model at a config key (None: the worker's own tagger)."""
    if key == "tagger.model":
        return None
    if key == "animate.model":
        return "animate"
    return "edit" if key.startswith("styles.") and key.endswith((".edit.model", ".edit.config")) else "sdxl"


def check_models(settings: GpuSettings, engines: set[str], device: Any) -> None:
    """Before anything loads: hold the models these engines will load to ``[models] commercial`` (ModelError, one
    line naming the key, for a non-commercial licence; a warning for an unknown one), and log their GPU memory (the
    weights on disk), saying clearly when the card cannot hold them all."""
    store = models.ModelStore.of(settings.pipeline)
    memory: dict[str, float] = {}
    unknown: set[str] = set()
    for key, spec in model_specs(settings).items():
        engine = engine_of_key(key)
        if engine is not None and engine not in engines:
            continue
        found = models.on_disk(spec, key, store)  # no network: the engines fetch what is missing
        if settings.models.commercial:  # the card must be read: fetched now if it is not here
            found = found or models.resolve(spec, key, store, allow_patterns=models.allow_patterns(key))
            warning = licences.check(key, models.describe(spec), found, commercial=True)
            if warning:
                logger.warning("%s", warning)
        if found is None:  # not fetched yet (or a Civitai file: its size is not known here)
            if models.parse(spec).kind != "civitai":
                unknown.add(engine or "tagger")
            continue
        name = engine or "tagger"
        memory[name] = memory.get(name, 0.0) + weights_gb(found)
    line = memory_line(dict(sorted(memory.items())), total=False)
    if unknown:
        line += f" (not fetched yet: {', '.join(sorted(unknown))})"
    total = sum(memory.values())
    card = _card_gb(device)
    if card is None:
        logger.info("model weights: %s; on %s", line or "none on disk yet", getattr(device, "type", device))
    elif total > 0.9 * card:
        logger.warning("model weights: %s = %.1f GB, but the GPU holds %.1f GB: it cannot hold them all. An edit "
                       "model loads on its first job and will run out of memory; set its enable_model_cpu_offload "
                       "= true, or serve its style from a worker on another GPU", line, total, card)
    else:
        logger.info("model weights: %s = %.1f GB of the GPU's %.1f GB (activations need more on top)", line,
                    total, card)


def memory_line(engines: dict[str, float], *, total: bool = True) -> str:
    """"sdxl ≈ 6.9 GB + edit ≈ 15.6 GB" from each engine's weights in GB (with ``total``, " = 22.5 GB" after two)."""
    parts = " + ".join(f"{name} ≈ {gb:.1f} GB" for name, gb in engines.items())
    return f"{parts} = {sum(engines.values()):.1f} GB" if total and len(engines) > 1 else parts


def _card_gb(device: Any) -> float | None:
    """The GPU's memory in GB (None on the CPU)."""
    import torch

    if getattr(device, "type", device) != "cuda" or not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(device).total_memory) / 1e9


def weights_gb(path: Path) -> float:
    """Gigabytes of weights at a path (a file, or a folder's .safetensors and .onnx files, read through the Hub
    cache's links): about what they take on a GPU in the precision they were saved in."""
    files = [path] if path.is_file() else [*path.rglob("*.safetensors"), *path.rglob("*.onnx")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e9


def deliver(run: Run, made: list[tuple[DecodedJob, Any, MakeDone]]) -> None:
    """Answer made pictures: each held to its chat's rating limit (an engine can add what the photo did not have;
    a picture that cannot be checked is not sent), encoded as PNG and sent. ``made``: (job, PIL image, its Done)."""
    started = time.perf_counter()
    checked = [job.job.max_rating is not None for job, _, _ in made]
    to_check = [(image, job.id) for (job, image, _), check in zip(made, checked, strict=True) if check]
    output_tags = iter(run.tag([image for image, _ in to_check], [i for _, i in to_check]) if to_check else [])
    check_s = (time.perf_counter() - started) / max(1, len(made))
    for (job, image, done), check in zip(made, checked, strict=True):
        max_rating = job.job.max_rating
        job_tags = next(output_tags) if check else None
        if check and job_tags is None:
            run.fail(job.id, TAG_REASON, ErrorKind.INTERNAL)
            continue
        if job_tags is not None and over_limit(job_tags.ratings, max_rating):  # not None: checked
            logger.info("job %s: the result was over the chat's rating limit %s; not sent", job.id, max_rating)
            run.fail(job.id, OUTPUT_REFUSED, ErrorKind.NOT_ALLOWED)
            continue
        started = time.perf_counter()
        try:
            png = encode_png(image)
        except Exception:
            logger.exception("job %s: the result could not be encoded", job.id)
            run.fail(job.id, ENCODE_REASON, ErrorKind.INTERNAL)
            continue
        run.send(Update((job.id,), done(png, {"check": check_s, "encode": time.perf_counter() - started})))


def tag_images(tagger: Any, images: list, ids: list[str]) -> list:
    """``tagger``'s answer per image; None for an image it fails on."""
    try:
        return list(tagger(images))
    except Exception:
        if len(images) == 1:
            logger.exception("job %s: the tagger failed", ids[0])
            return [None]
    return [tag_images(tagger, [image], [job_id])[0] for image, job_id in zip(images, ids, strict=True)]


def limit_text(timeout: float) -> str:
    """A time limit as users read it: "90 seconds", "10 minutes"."""
    return f"{timeout:g} seconds" if timeout < 120 else f"{timeout / 60:g} minutes"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is the GPU running out of memory."""
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def free_gpu_memory() -> None:
    """Give cached GPU memory back after an out-of-memory error."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory_mb() -> float | None:
    """Memory the worker's tensors hold on the GPU, when there is one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated() / 2**20
