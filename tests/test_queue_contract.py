"""The JobQueue contract, passed by both backends: the local one and Redis (real redis-server + `claybot worker`)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bot.config import load_config
from pipeline.core.jobs import Done, ErrorKind, Failed, JobFailed, Progress, QueueBusy, Queued, Started
from pipeline.core.local import LocalQueue
from pipeline.core.redis_queue import RedisQueue
from tests.conftest import photo_bytes, submit
from tests.redis_server import RedisServer, redis_config, start_worker, stop_worker

PHOTO = photo_bytes((128, 96))


@pytest.fixture(scope="module")
def redis_worker(tiny_config_path, tmp_path_factory):
    """One redis-server and one worker for the module; each test gets its own key prefix."""
    folder = tmp_path_factory.mktemp("redis-contract")
    server = RedisServer(folder).start()
    config = redis_config(tiny_config_path, folder, server.url, batch_window=1.0, redis_prefix="contract")
    worker = start_worker(config, "w0")
    yield config
    stop_worker(worker)
    server.stop()


@contextlib.asynccontextmanager
async def open_backend(name: str, request, **queue_changes):
    if name == "local":
        config = load_config(request.getfixturevalue("tiny_config_path"))
        queue = LocalQueue(config.gpu(), config.queue.model_copy(update=queue_changes))
    else:
        config = load_config(request.getfixturevalue("redis_worker"))
        queue = RedisQueue(config.gpu(), config.queue.model_copy(update=queue_changes), owner=request.node.name)
    await queue.start()
    try:
        if name == "local":
            await queue.wait_ready(timeout=120)
        else:
            deadline = asyncio.get_running_loop().time() + 120
            while not await queue.workers():
                assert asyncio.get_running_loop().time() < deadline, "the worker did not come up"
                await asyncio.sleep(0.2)
        yield queue
    finally:
        await queue.close(grace=5)


async def _events(handle, timeout=120.0) -> list:
    async def run():
        return [event async for event in handle.events()]
    return await asyncio.wait_for(run(), timeout)


BACKENDS = ["local", "redis"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_events_come_in_order_and_end_with_the_image(backend, request):
    async with open_backend(backend, request, batch_window=0.0) as queue:
        events = await _events(await submit(queue, PHOTO, strength=0.5, seed=3))
    kinds = [type(e) for e in events]
    assert kinds[0] is Queued and kinds[-1] is Done and kinds.count(Done) == 1
    assert kinds.index(Started) < kinds.index(Progress)
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == list(range(1, len(steps) + 1)) and steps
    done = events[-1]
    assert done.seed == 3 and done.image.startswith(b"\x89PNG") and done.prompt.startswith("(Clay Animation, Clay:2)")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_compatible_jobs_run_as_one_batch(backend, request):
    async with open_backend(backend, request, batch_window=1.0) as queue:
        handles = [await submit(queue, PHOTO, seed=s) for s in (1, 2)]
        results = await asyncio.gather(*(_events(h) for h in handles))
    for events, seed in zip(results, (1, 2), strict=True):
        assert Started(batch_size=2) in events
        assert isinstance(events[-1], Done) and events[-1].seed == seed


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_bad_photo_fails_alone(backend, request):
    async with open_backend(backend, request) as queue:
        with pytest.raises(JobFailed) as bad:  # refused at intake, from its header: it never takes a place
            await submit(queue, b"not an image at all", seed=1)
        good = await submit(queue, PHOTO, seed=1)
        assert bad.value.failed == Failed("That file is not an image I can read.", ErrorKind.BAD_IMAGE)
        assert isinstance((await _events(good))[-1], Done)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_past_the_bound_submits_are_refused_and_every_accepted_job_is_answered(backend, request):
    async with open_backend(backend, request, max_queue=2, batch_window=0.0) as queue:
        accepted, refused = [], 0
        for seed in range(6):
            try:
                accepted.append(await submit(queue, PHOTO, strength=0.3 + seed / 20, seed=seed))
            except QueueBusy as err:
                refused += 1
                assert "the limit is 2" in str(err)
        assert refused >= 1
        finals = [(await _events(h))[-1] for h in accepted]
        assert all(isinstance(f, Done) for f in finals)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_waiting_job_can_be_cancelled(backend, request):
    async with open_backend(backend, request, batch_window=0.0) as queue:
        running = await submit(queue, PHOTO, strength=0.9, seed=1)
        waiting = await submit(queue, PHOTO, strength=0.8, seed=2)
        assert waiting.cancel()
        assert (await _events(waiting, timeout=10))[-1] == Failed("Cancelled.", ErrorKind.CANCELLED)
        assert isinstance((await _events(running))[-1], Done)
