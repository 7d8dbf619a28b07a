"""The Redis backend with a real redis-server and real `claybot worker` processes on the tiny models."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from bot.config import load_config
from pipeline.core.jobs import Done, ErrorKind, Failed, Progress, Queued, Started
from pipeline.core.redis_queue import RedisQueue, redis_status
from pipeline.core.status import render
from tests.conftest import photo_bytes, submit
from tests.redis_server import redis_config, redis_queue, start_worker, stop_worker

PHOTO = photo_bytes((128, 96))


async def _wait_for_workers(queue: RedisQueue, count: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = await queue.workers()
        if len(workers) >= count:
            return workers
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{count} worker(s) did not come up")


async def _events(handle, timeout=180.0) -> list:
    async def run():
        return [event async for event in handle.events()]
    return await asyncio.wait_for(run(), timeout)


async def test_two_workers_share_a_burst_of_eight_jobs(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url, batch_window=0.0)
    workers = [start_worker(config, f"w{i}") for i in range(2)]
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        await _wait_for_workers(queue, 2)
        handles = [await submit(queue, PHOTO, strength=0.3 + i / 20, seed=i) for i in range(8)]
        results = await asyncio.gather(*(_events(h) for h in handles))
        for i, events in enumerate(results):
            finals = [e for e in events if isinstance(e, Done | Failed)]
            assert len(finals) == 1 and isinstance(finals[0], Done), events
            assert finals[0].seed == i and isinstance(events[0], Queued)
            assert any(isinstance(e, Started) for e in events) and any(isinstance(e, Progress) for e in events)
        await asyncio.sleep(2.5)  # one heartbeat
        done_by = {name: info["done"] for name, info in (await queue.workers()).items()}
        assert sum(done_by.values()) == 8
        assert all(count > 0 for count in done_by.values()), done_by
        # `claybot status` for this backend: both workers alive, the 8 jobs of the last hour, their times.
        shown = render(await redis_status(load_config(config).queue))
        assert "queue:    0 waiting, 0 running" in shown and shown.count(" alive on cpu") == 2
        assert "last hour: 8 done" in shown and "job time: p50 " in shown
        # Nothing grows: answered jobs leave the stream and their photos leave Redis.
        assert await queue.redis.xlen(queue.keys.jobs) == 0
        assert not await queue.redis.keys(f"{queue.keys.prefix}:image:*")
    finally:
        await queue.close()
        for worker in workers:
            stop_worker(worker)


async def test_a_worker_killed_mid_job_leaves_it_to_the_other(server, tiny_config_path, tmp_path):
    # 100 steps (about 1.5 s): the job is still running when a heartbeat shows its worker busy
    config = redis_config(tiny_config_path, tmp_path, server.url, steps=100, claim_idle=2.0, heartbeat=0.5)
    workers = [start_worker(config, f"w{i}") for i in range(2)]
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        await _wait_for_workers(queue, 2)
        settings = load_config(config)
        handle = await submit(queue, PHOTO, strength=1.0, seed=9)
        killed, after_kill = None, []
        async for event in handle.events():
            if killed is not None:
                after_kill.append(event)
            elif isinstance(event, Progress):
                busy = [info["pid"] for info in (await queue.workers()).values() if info["busy"]]
                if busy:
                    killed = busy[0]
                    os.kill(killed, signal.SIGKILL)
            if isinstance(event, Done | Failed):
                break
        assert killed is not None, "no worker was seen busy"
        assert isinstance(event, Done) and event.seed == 9
        # the surviving worker ran the job from its first step to its last
        steps = settings.pipeline.steps  # strength 1.0: every step of the schedule
        assert Progress(1, steps) in after_kill and Progress(steps, steps) in after_kill
        survivors = [w for w in workers if w.pid != killed]
        assert len(survivors) == 1 and survivors[0].poll() is None
    finally:
        await queue.close()
        for worker in workers:
            stop_worker(worker)


async def test_jobs_waiting_survive_a_redis_restart(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        handles = [await submit(queue, PHOTO, seed=s) for s in range(3)]
        server.kill()  # no worker yet: the jobs are only in Redis's append-only file
        server.start()
        worker = start_worker(config, "w0")
        try:
            results = await asyncio.gather(*(handle.result(timeout=180) for handle in handles))
            assert sorted(done.seed for done in results) == [0, 1, 2]
        finally:
            stop_worker(worker)
    finally:
        await queue.close()


async def test_a_restarted_chat_process_answers_its_jobs(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url)
    before = redis_queue(config, "chat-a")
    await before.start()
    replies = [("telegram", str(7 + s)) for s in range(2)]  # (platform, chat): where to answer
    for seed, reply_to in enumerate(replies):
        await submit(before, PHOTO, seed=seed, reply_to=reply_to)
    await before.close()  # the chat process goes away with its jobs accepted but unanswered

    worker = start_worker(config, "w0")
    after = redis_queue(config, "chat-a")
    await after.start()
    try:
        recovered = await after.recover()
        assert sorted(h.job.reply_to[1] for h in recovered) == ["7", "8"]
        assert sorted(h.job.seed for h in recovered) == [0, 1]  # the same settled jobs, from the journal
        results = await asyncio.gather(*(h.result(timeout=180) for h in recovered))
        assert sorted(done.seed for done in results) == [0, 1]
        assert await after.recover() == []  # answered: nothing left to recover
    finally:
        await after.close()
        stop_worker(worker)


async def test_a_second_chat_process_never_receives_the_first_ones_results(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url)
    worker = start_worker(config, "w0")
    first, second = redis_queue(config, "chat-a"), redis_queue(config, "chat-b")
    await first.start()
    await second.start()
    try:
        a = await submit(first, PHOTO, seed=1)
        b = await submit(second, PHOTO, seed=2)
        assert (await a.result(timeout=180)).seed == 1
        assert (await b.result(timeout=180)).seed == 2
        for queue, own, other in ((first, a, b), (second, b, a)):
            entries = await queue.redis.xrange(queue.keys.events(queue.owner))
            ids = {fields[b"id"].decode() for _, fields in entries}
            assert own.id in ids and other.id not in ids
    finally:
        await first.close()
        await second.close()
        stop_worker(worker)


async def test_a_job_completed_twice_is_answered_once(server, tiny_config_path, tmp_path):
    # As after a claim: two "done" events for one job reach its owner; the user sees one answer.
    config = redis_config(tiny_config_path, tmp_path, server.url)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        handle = await submit(queue, PHOTO, seed=1)
        meta = {"width": 1, "height": 1, "tags": [], "prompt": "p", "seed": 1, "style": "clay", "strength": 0.5,
                "ratings": {}, "timings": {}}
        await queue.redis.set(queue.keys.result(handle.id), json.dumps(meta))
        await queue.redis.set(queue.keys.result_image(handle.id), photo_bytes((1, 1), fmt="PNG"))
        for _ in range(2):
            await queue.redis.xadd(queue.keys.events("chat-a"), {"op": "done", "id": handle.id})
        events = await _events(handle, timeout=30)
        assert [type(e) for e in events].count(Done) == 1
        assert not await queue.redis.hgetall(queue.keys.journal("chat-a"))
    finally:
        await queue.close()


async def test_a_full_shared_queue_answers_busy(server, tiny_config_path, tmp_path):
    from pipeline.core.jobs import QueueBusy

    config = redis_config(tiny_config_path, tmp_path, server.url, max_queue=2)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        first = await submit(queue, PHOTO, seed=1)
        await submit(queue, PHOTO, seed=2)
        with pytest.raises(QueueBusy, match="the limit is 2"):
            await submit(queue, PHOTO, seed=3)
        assert first.cancel()
        assert (await _events(first, timeout=10))[-1] == Failed("Cancelled.", ErrorKind.CANCELLED)
    finally:
        await queue.close()
