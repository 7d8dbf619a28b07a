"""Shared fixtures: tiny random-weight models of the real architectures, built once per test session."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import sys
from pathlib import Path

# One math thread per process: the tests start worker processes beside the test process, and torch's default
# of one busy thread per core slows everything 10–20× as soon as two of them share these 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import pytest_asyncio
from PIL import Image

from bot.cli import ROOT_CONFIG, tiny_config_text


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny SDXL (folder and single file), clay LoRA (kohya and diffusers formats) and WD14 tagger on disk."""
    from pipeline.gpu.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_config_path(tiny_models) -> Path:
    """config.toml equal to the repository's, with every model pointed at the tiny ones (as `claybot tiny-models`)."""
    path = tiny_models.sdxl_folder.parent / "config.toml"
    path.write_text(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny_models), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_config_path):
    """The tiny config, loaded."""
    from bot.config import load_config

    return load_config(tiny_config_path)


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    """What the module's `queue` worker runs: the tiny config (a module that needs slower jobs overrides this)."""
    return tiny_config.gpu()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def queue(tiny_config, queue_gpu):
    """One real local queue and pipeline worker for a module's front-end tests: a worker start costs seconds."""
    from pipeline.core.local import LocalQueue

    queue = LocalQueue(queue_gpu, tiny_config.queue.model_copy(update={"batch_window": 0.0}))
    await queue.start()
    try:
        await queue.wait_ready(timeout=120)
        yield queue
    finally:
        await queue.close(grace=5)


@pytest.fixture
def server(tmp_path):
    """A fresh redis-server on 127.0.0.1 for one test (the Redis backend's tests), stopped after it."""
    from tests.redis_server import RedisServer

    redis = RedisServer(tmp_path).start()
    yield redis
    redis.stop()


def with_pipeline(gpu, **changes):
    """Worker settings with some [pipeline] values changed. More ``steps`` make jobs long enough (tenths of a second
    on the tiny models) for a status line to show progress, or for a test to act while a job runs."""
    return gpu.model_copy(update={"pipeline": gpu.pipeline.model_copy(update=changes)})


def photo_bytes(size=(128, 96), color=(200, 120, 40), fmt="JPEG", **save_kwargs) -> bytes:
    """A small synthetic photo: a colour field with a darker square, so orientation and crops are visible."""
    image = Image.new("RGB", size, color)
    w, h = size
    image.paste((30, 60, 160), (w // 8, h // 8, w // 2, h // 2))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def load_script(path: Path):
    """A benchmark script as a module (it lives outside the packages); a fixture yields it and then drops it."""
    spec = importlib.util.spec_from_file_location(f"claybot_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


async def stop_cleanly(process: asyncio.subprocess.Process, timeout: float = 90) -> int:
    """SIGTERM, as an operator stops `claybot run`; its exit status."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout)


async def kill_if_running(process: asyncio.subprocess.Process | None) -> None:
    """After a failed test: no process left behind."""
    if process is not None and process.returncode is None:
        process.kill()
        await process.wait()


INTAKE_KEYWORDS = frozenset({"kind", "style", "seed", "max_rating", "reply_to"})  # what every kind of job takes


def intake(**options) -> dict:
    """``take_in``'s keywords from a test's flat ones: those every kind takes as they are, the kind's own (a
    picture's strength=, a clip's seconds=) in ``options``."""
    common = {name: value for name, value in options.items() if name in INTAKE_KEYWORDS}
    own = {name: value for name, value in options.items() if name not in INTAKE_KEYWORDS}
    return {**common, "options": own} if own else common


async def submit(queue, image: bytes, **options):
    """Settle a job as the request flow does (``take_in``, under the queue's config), then queue it; ``options``
    as ``intake`` reads them."""
    from pipeline.core.intake import take_in

    return await queue.submit(await take_in(queue.gpu, image, **intake(**options)))


def settled_job(gpu, image: bytes | None = None, **options):
    """A job as intake settles it for an ordinary photo, carrying ``image`` whatever it is: what a worker gets
    from a chat process that did not (or could not) look at the photo first (``options`` as ``intake`` reads
    them)."""
    import dataclasses

    from pipeline.core.intake import take_in

    job = asyncio.run(take_in(gpu, photo_bytes(), **intake(**options)))
    return job if image is None else dataclasses.replace(job, image=image)


def with_spec(job, **changes):
    """``job`` with some of its kind's own options changed (``dataclasses.replace`` of its spec)."""
    import dataclasses

    return dataclasses.replace(job, spec=dataclasses.replace(job.spec, **changes))


def workshop_of(stylizer, animator=None):
    """The worker's workshop around a stylizer (or a test's wrapper of one, which intercepts its ``run`` or
    ``tagger``): the picture engine over it, the clip engine over ``animator`` when given, and the wrapper's
    ``tagger`` as the worker's."""
    from pipeline.gpu.clips import ClipEngine
    from pipeline.gpu.pictures import PictureEngine
    from pipeline.gpu.worker import Workshop

    settings, tagger = stylizer.settings, stylizer.tagger
    engines = {"sdxl": PictureEngine(settings, tagger, stylizer=stylizer)}
    if animator is not None:
        engines["animate"] = ClipEngine(settings, tagger, animator=animator)
    return Workshop(settings, tagger, engines)


async def follow_in_order(handles: dict[str, object], order: list) -> dict[str, list]:
    """Every event of each handle; ``order`` gets (name, event type) of each Started and Done/Failed as it comes."""
    from pipeline.core.jobs import Done, Failed, Started

    async def follow(name, handle):
        events = []
        async for event in handle.events():
            events.append(event)
            if isinstance(event, Started | Done | Failed):
                order.append((name, type(event).__name__))
        return events
    results = await asyncio.wait_for(asyncio.gather(*(follow(n, h) for n, h in handles.items())), 300)
    return dict(zip(handles, results, strict=True))
