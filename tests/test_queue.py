"""The local queue and its pipeline worker child process, with the tiny models running for real."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from pipeline.core.jobs import (
    CRASH_REASON,
    Done,
    ErrorKind,
    Failed,
    Idle,
    JobFailed,
    Progress,
    QueueBusy,
    QueueClosed,
    Queued,
    Started,
)
from pipeline.core.local import LocalQueue
from tests.conftest import photo_bytes, submit, with_pipeline

PHOTO = photo_bytes((128, 96))


@contextlib.asynccontextmanager
async def running_queue(tiny_config, *, wait=True, pipeline=None, **queue_changes):
    gpu = tiny_config.gpu()
    if pipeline:
        gpu = with_pipeline(gpu, **pipeline)
    queue = LocalQueue(gpu, tiny_config.queue.model_copy(update=queue_changes))
    await queue.start()
    try:
        if wait:
            await queue.wait_ready(timeout=120)
        yield queue
    finally:
        await queue.close(grace=5)


async def collect(handle, timeout=120.0) -> list:
    async def run():
        return [event async for event in handle.events()]
    return await asyncio.wait_for(run(), timeout)


def pixels(done: Done) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(done.image)), dtype=np.float64)


def test_the_chat_side_never_imports_torch(tiny_config_path):
    # A fresh interpreter: submit a job through the queue and await it; the GPU libraries stay in the child.
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        from bot.config import load_config
        from pipeline.core.local import LocalQueue
        from tests.conftest import photo_bytes, submit

        async def main():
            config = load_config({str(tiny_config_path)!r})
            queue = LocalQueue(config.gpu(), config.queue)
            await queue.start()
            handle = await submit(queue, photo_bytes(), seed=1)
            done = await handle.result(timeout=120)
            await queue.close()
            return len(done.image)

        size = asyncio.run(main())
        print(json.dumps({{"size": size, "loaded": [m for m in ("torch", "diffusers", "onnxruntime", "compel")
                                                      if m in sys.modules]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["size"] > 0
    assert report["loaded"] == []


async def test_events_arrive_in_order_with_positions_and_step_progress(tiny_config):
    async with running_queue(tiny_config, batch_window=0.0) as queue:
        # Different strengths never share a batch, so the second waits behind the first.
        first = await submit(queue, PHOTO, strength=0.5, seed=1)
        second = await submit(queue, PHOTO, strength=0.6, seed=2)
        first_events, second_events = await asyncio.gather(collect(first), collect(second))

    assert first_events[0] == Queued(1)
    assert second_events[0] == Queued(2)
    assert Queued(1) in second_events  # moved up when the first started
    for events, strength in ((first_events, 0.5), (second_events, 0.6)):
        kinds = [type(e) for e in events]
        assert kinds.index(Started) > max(i for i, k in enumerate(kinds) if k is Queued)
        steps = [e for e in events if isinstance(e, Progress)]
        total = int(tiny_config.pipeline.steps * strength)
        assert steps == [Progress(i, total) for i in range(1, total + 1)]
        assert kinds.index(Progress) > kinds.index(Started)
        assert isinstance(events[-1], Done) and kinds.count(Done) == 1
        done = events[-1]
        assert done.strength == strength and done.tags and done.prompt.startswith("(Clay Animation, Clay:2)")
        assert set(done.timings) == {"decode", "tag", "prompt", "denoise", "check", "encode"}


async def test_compatible_jobs_share_one_batch_and_match_their_solo_images(tiny_config):
    async with running_queue(tiny_config, batch_window=1.0) as queue:
        together = [await submit(queue, PHOTO, seed=s) for s in (11, 12)]
        together_events = await asyncio.gather(*(collect(h) for h in together))
        alone = []
        for seed in (11, 12):
            alone.append(await (await submit(queue, PHOTO, seed=seed)).result(timeout=120))
        assert queue.stats.batches == [2, 1, 1]

    for events, solo in zip(together_events, alone, strict=True):
        assert Started(batch_size=2) in events
        batched = events[-1]
        assert isinstance(batched, Done) and batched.seed == solo.seed
        # Same seed, same image, batched or not (up to float rounding in batched matrix products).
        assert np.abs(pixels(batched) - pixels(solo)).mean() < 0.5
    assert np.abs(pixels(together_events[0][-1]) - pixels(together_events[1][-1])).mean() > 1.0


async def test_a_worker_killed_mid_job_is_restarted_and_the_job_answered(tiny_config):
    async with running_queue(tiny_config, pipeline={"steps": 100}) as queue:
        handle = await submit(queue, PHOTO, strength=1.0, seed=5)
        pid = queue.worker_info["pid"]
        events = []
        async for event in handle.events():
            events.append(event)
            if isinstance(event, Progress) and event.step == 2 and pid == queue.worker_info["pid"]:
                os.kill(pid, signal.SIGKILL)
            if isinstance(event, Done | Failed):
                break
        assert isinstance(events[-1], Done)
        assert queue.stats.worker_starts == 2 and queue.stats.retried == 1
        assert queue.worker_info["pid"] != pid
        # The restarted worker serves new jobs as usual.
        assert (await (await submit(queue, PHOTO, seed=6)).result(timeout=120)).image


async def test_a_job_whose_worker_dies_twice_fails_with_a_reason(tiny_config):
    async with running_queue(tiny_config, max_retries=0, pipeline={"steps": 100}) as queue:
        handle = await submit(queue, PHOTO, strength=1.0, seed=5)
        async for event in handle.events():
            if isinstance(event, Progress):
                os.kill(queue.worker_info["pid"], signal.SIGKILL)
                break
        with pytest.raises(JobFailed) as failed:
            await handle.result(timeout=60)
        assert failed.value.kind is ErrorKind.INTERNAL and str(failed.value) == CRASH_REASON


async def test_a_full_queue_answers_busy_at_once(tiny_config):
    async with running_queue(tiny_config, wait=False, max_queue=2) as queue:
        first = await submit(queue, PHOTO, seed=1)
        await submit(queue, PHOTO, seed=2)
        with pytest.raises(QueueBusy, match=r"2 photos are already waiting \(the limit is 2\)"):
            await asyncio.wait_for(submit(queue, PHOTO, seed=3), 1.0)
        assert first.cancel()  # not started yet: cancelled, and its place is freed
        assert (await collect(first))[-1] == Failed("Cancelled.", ErrorKind.CANCELLED)
        await submit(queue, PHOTO, seed=4)


async def test_a_job_over_its_time_limit_fails_with_its_reason(tiny_config):
    async with running_queue(tiny_config, job_timeout=0.3, pipeline={"steps": 150}) as queue:
        handle = await submit(queue, PHOTO, strength=1.0, seed=1)
        events = await collect(handle)
        assert isinstance(events[-1], Failed)
        assert events[-1].kind is ErrorKind.TIMEOUT
        assert "longer than the 0.3 seconds limit" in events[-1].reason
        # The worker was not killed for it and serves the next job.
        assert queue.stats.worker_starts == 1


async def test_shutdown_answers_waiting_jobs_with_shutting_down(tiny_config):
    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"batch_window": 0.0}))
    await queue.start()
    await queue.wait_ready(timeout=120)
    running = await submit(queue, PHOTO, strength=0.5, seed=1)
    waiting = [await submit(queue, PHOTO, strength=0.7 + i / 10, seed=i) for i in range(2)]
    async for event in running.events():
        if isinstance(event, Started):
            break
    await queue.close(grace=60)
    assert isinstance(await running.result(timeout=1), Done)  # the running job finished within the grace
    for handle in waiting:
        events = await collect(handle, timeout=1)
        assert events[-1].kind is ErrorKind.SHUTTING_DOWN and "restarting" in events[-1].reason
    with pytest.raises(QueueClosed):
        await submit(queue, PHOTO)


async def test_a_bad_photo_fails_alone_with_its_own_message(tiny_config):
    async with running_queue(tiny_config) as queue:
        with pytest.raises(JobFailed) as bad:  # refused at intake, from its header: it never takes a place
            await submit(queue, b"GIF89a this is no image", seed=1)
        good = await submit(queue, PHOTO, seed=1)
        assert bad.value.failed == Failed("That file is not an image I can read.", ErrorKind.BAD_IMAGE)
        assert isinstance((await collect(good))[-1], Done)


async def test_a_job_submitted_before_the_worker_says_idle_waits_for_it_instead_of_failing(tiny_config):
    # Under load the reader thread can pass on the worker's "idle" well after the "done" before it: a job
    # submitted in between must wait for the worker, not be sent while it still finishes the last batch (that
    # job was then failed as "crashed" when the late "idle" arrived: test_sweep's flake under load).
    async with running_queue(tiny_config, batch_window=0.0) as queue:
        loop = asyncio.get_running_loop()
        on_message = queue._on_message

        def late_idle(generation, message):
            if isinstance(message, Idle):
                loop.call_later(1.0, on_message, generation, message)
            else:
                on_message(generation, message)

        queue._on_message = late_idle
        first = await (await submit(queue, PHOTO, strength=0.5, seed=1)).result(timeout=120)
        second = await (await submit(queue, PHOTO, strength=0.6, seed=2)).result(timeout=120)
    assert first.seed == 1 and second.seed == 2
