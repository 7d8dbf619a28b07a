"""Bad Redis entries, absent workers and forgotten keys, with a real redis-server and real `claybot worker` processes.

One malformed entry must never stall the answers behind it, a job entry no worker can run must never be claimed
forever, a full queue must stay full whatever Redis reports, users must hear when no worker is alive, and keys of
processes that are gone must not pile up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import tracemalloc

import pytest
import redis.asyncio as redis

from bot.config import load_config
from pipeline.core import codec
from pipeline.core.errors import quoted
from pipeline.core.intake import take_in
from pipeline.core.jobs import Done, ErrorKind, Failed, Progress, QueueBusy
from pipeline.core.redis_entries import (
    BAD_ENTRY_REASON,
    DEAD_MAXLEN,
    BadEntry,
    dead_letter,
    job_fields,
    parse_event,
    parse_job,
)
from pipeline.core.redis_queue import GROUP, NO_WORKER_REASON, RedisQueue, redis_status
from pipeline.core.settings import GpuSettings
from pipeline.core.status import render
from tests.conftest import photo_bytes, submit
from tests.redis_server import redis_config, redis_queue, start_worker, stop_worker

PHOTO = photo_bytes((128, 96))
RESULT = {"width": 2, "height": 1, "tags": [], "prompt": "p", "seed": 1, "style": "clay", "strength": 0.5}
RESULT_PNG = photo_bytes((2, 1), fmt="PNG")  # what a worker stores for RESULT
HUGE = 100 * 2**20


async def _events(handle, timeout: float = 30.0) -> list:
    async def run():
        return [event async for event in handle.events()]
    return await asyncio.wait_for(run(), timeout)


async def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.2)
    raise TimeoutError(what)


async def _dead(queue: RedisQueue) -> list[tuple[str, dict[str, str]]]:
    return [(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
            for entry_id, fields in await queue.redis.xrange(queue.keys.dead)]


async def _recovered_job(queue: RedisQueue, job_id: str):
    """A job this chat process waits for, as after a restart: in its journal, with its photo stored."""
    header, _ = codec.dump(await take_in(queue.gpu, PHOTO, seed=1))  # as RedisQueue.submit journals a job
    await queue.redis.hset(queue.keys.journal(queue.owner), job_id, header)
    await queue.redis.set(queue.keys.image(job_id), PHOTO)
    [handle] = [h for h in await queue.recover() if h.id == job_id]
    return handle


async def test_a_malformed_event_is_dead_lettered_once_and_the_answers_behind_it_arrive(server, tiny_config_path,
                                                                                       tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.core.redis_queue")
    config = redis_config(tiny_config_path, tmp_path, server.url, no_worker_timeout=600.0)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        told_of_damage, delivered, bad_result, forged, huge_op = [
            await submit(queue, PHOTO, seed=s) for s in (1, 2, 3, 4, 5)]
        stream = queue.keys.events("chat-a")
        await queue.redis.set(queue.keys.result(delivered.id), json.dumps(RESULT))
        await queue.redis.set(queue.keys.result_image(delivered.id), RESULT_PNG)
        await queue.redis.set(queue.keys.result(bad_result.id), b"{not json")
        await queue.redis.set(queue.keys.result_image(bad_result.id), RESULT_PNG)
        await queue.redis.set(queue.keys.result(forged.id), json.dumps(RESULT | {"width": 1}))
        await queue.redis.set(queue.keys.result_image(forged.id), b"GIF89a not a PNG")  # past a content check
        bad = [await queue.redis.xadd(stream, fields) for fields in (
            {"op": "failed", "id": told_of_damage.id, "reason": "boom", "kind": "exploded"},  # a kind nobody knows
            {"op": "teleport", "id": "someone"},
            {"op": b"\xff\xfe", "id": b"\xc3\x28"},  # not text at all
            {"op": "progress", "id": delivered.id, "step": "many", "total": "?"},
            {"id": "nobody"},
            {"op": "\x1b[2J" + "x" * (30 * 2**20), "id": huge_op.id},  # 30 MB, starting with "clear the screen"
        )]
        await queue.redis.xadd(stream, {"op": "progress", "id": delivered.id, "step": 1, "total": 2})
        await queue.redis.xadd(stream, {"op": "done", "id": bad_result.id})
        await queue.redis.xadd(stream, {"op": "done", "id": forged.id})
        last = await queue.redis.xadd(stream, {"op": "done", "id": delivered.id})

        events = await _events(delivered)
        assert isinstance(events[-1], Done) and events[-1].image == RESULT_PNG
        assert [e for e in events if isinstance(e, Progress)] == [Progress(1, 2)]  # the damaged one is skipped
        for handle in (told_of_damage, bad_result, forged, huge_op):
            assert (await _events(handle))[-1] == Failed(BAD_ENTRY_REASON, ErrorKind.INTERNAL)

        await asyncio.sleep(2.5)  # more reads: nothing is read (or logged) twice
        dead = await _dead(queue)
        assert [fields["entry"] for _, fields in dead[:6]] == [entry.decode() for entry in bad]
        reasons = [fields["reason"] for _, fields in dead]
        assert "unknown kind 'exploded'" in reasons[0] and "unknown event 'teleport'" in reasons[1]
        assert "not UTF-8" in reasons[2] and "bad progress event" in reasons[3] and "without an op" in reasons[4]
        assert "field b'op' is 31,457,284 bytes long" in reasons[5]
        assert dead[6][1]["source"] == queue.keys.result(bad_result.id) and "bad result" in reasons[6]
        assert dead[7][1]["source"] == queue.keys.result(forged.id) and "it is not a PNG" in reasons[7]
        assert len(dead) == 8
        for entry in bad:
            assert sum(entry.decode() in record.getMessage() for record in caplog.records) == 1, entry
        assert max(len(record.getMessage()) for record in caplog.records) < 1000
        assert max(len(fields["fields"]) for _, fields in dead) < 3000
        assert not any("\x1b" in record.getMessage() for record in caplog.records)  # escaped, never raw
        assert await queue.redis.get(queue.keys.cursor("chat-a")) == last
        assert not await queue.redis.hgetall(queue.keys.journal("chat-a"))  # every job answered
    finally:
        await queue.close()


async def test_a_malformed_job_is_acknowledged_once_and_the_worker_keeps_serving(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url, claim_idle=1.0, heartbeat=0.5, batch_window=0.0)
    worker = start_worker(config, "w0")
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        await _until(queue.workers, 120, "the worker did not come up")
        unknown_style = await _recovered_job(queue, "0123456789ab")  # e.g. written by a differently configured chat
        huge_style = await _recovered_job(queue, "0123456789cd")
        good = job_fields("-", "chat-a", await take_in(queue.gpu, PHOTO, seed=1), 60.0, time.time())
        bad = [await queue.redis.xadd(queue.keys.jobs, fields) for fields in (
            {"garbage": "yes"},
            good | {"id": unknown_style.id, "style": "watercolor"},
            good | {"id": "feedfacecafe", "spec": json.dumps({**json.loads(good["spec"]), "strength": "lots"})},
            good | {"id": b"\xff\xfe", "seed": b"\x80"},
            good | {"id": huge_style.id, "style": b"\x1b[2J\n" + bytes(HUGE)},  # 100 MB, a newline, ANSI codes
        )]
        after = await submit(queue, PHOTO, seed=7)
        assert (await after.result(timeout=180)).seed == 7  # served past the bad entries
        for handle in (unknown_style, huge_style):
            assert (await _events(handle))[-1] == Failed(BAD_ENTRY_REASON, ErrorKind.INTERNAL)

        await asyncio.sleep(3.0)  # several claim_idle periods: nothing is claimed again
        assert await queue.redis.xlen(queue.keys.jobs) == 0
        assert (await queue.redis.xpending(queue.keys.jobs, GROUP))["pending"] == 0
        assert not await queue.redis.exists(queue.keys.image(unknown_style.id))
        dead = await _dead(queue)
        assert [fields["entry"] for _, fields in dead] == [entry.decode() for entry in bad]
        assert {fields["source"] for _, fields in dead} == {queue.keys.jobs}
        assert "style 'watercolor' is not one of this worker's" in dead[1][1]["reason"]
        assert "strength 'lots' is not a number" in dead[2][1]["reason"]
        assert "field b'style' is 104,857,605 bytes long" in dead[4][1]["reason"]
        assert worker.poll() is None
    finally:
        await queue.close()
        stop_worker(worker)
    log = (tmp_path / "w0.log").read_text(encoding="utf-8")
    for entry in bad:
        assert log.count(f"dropping bad job entry {entry.decode()}") == 1, log[-5000:]
    assert max(len(line) for line in log.splitlines()) < 1000 and "\x1b" not in log


def test_a_huge_field_is_refused_without_being_copied_and_named_shortly():
    # Before: the 100 MB style became a 400 MB log line, and the worker peaked at 3.2 GB.
    job = {b"id": b"feedfacecafe", b"owner": b"chat-a", b"key": b"k", b"strength": b"0.5", b"seed": b"1",
           b"timeout": b"60", b"style": "\x1b[31m\u00e9".encode() * (HUGE // 7)}
    event = {b"op": b"\n" * HUGE, b"id": b"feedfacecafe"}
    gpu = GpuSettings()  # its style "clay", its speed "default"
    tracemalloc.start()
    try:
        with pytest.raises(BadEntry) as bad_job:
            parse_job("1-0", job, gpu)
        with pytest.raises(BadEntry) as bad_event:
            parse_event(event)
        letters = [dead_letter("claybot:jobs", "1-0", job, str(bad_job.value)),
                   dead_letter("claybot:events:chat-a", "1-1", event, str(bad_event.value))]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # the fields were never decoded or copied whole
    assert bad_job.value.job_id == "feedfacecafe" and bad_job.value.owner == "chat-a"  # its user is still told
    for err in (bad_job.value, bad_event.value):
        assert len(str(err)) < 200 and "\n" not in str(err) and "\x1b" not in str(err)
    assert all(sum(map(len, letter.values())) < 3000 for letter in letters)


@pytest.mark.parametrize(("value", "shown"), [
    ("watercolor", "'watercolor'"),
    ("\x1b[31mred\nforged line", "'\\x1b[31mred\\nforged line'"),
    ("y" * 100, "'" + "y" * 80 + "'… (100 characters)"),
    (b"\xff" * 1000, "b'" + "\\xff" * 80 + "'… (1,000 bytes)"),
])
def test_a_quoted_value_is_short_escaped_and_says_how_long_it_was(value, shown):
    assert quoted(value) == shown


async def test_max_queue_holds_when_redis_reports_no_lag(server, tiny_config_path, tmp_path, monkeypatch):
    config = redis_config(tiny_config_path, tmp_path, server.url, max_queue=3, no_worker_timeout=600.0)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        handles = [await submit(queue, PHOTO, seed=s) for s in range(3)]
        assert handles[1].cancel()  # deleted from the middle of the stream: Redis 7 stops reporting the lag
        assert (await _events(handles[1]))[-1].kind is ErrorKind.CANCELLED
        [group] = await queue.redis.xinfo_groups(queue.keys.jobs)
        assert group["lag"] is None
        await submit(queue, PHOTO, seed=3)
        with pytest.raises(QueueBusy, match="3 photos are already waiting"):
            await submit(queue, PHOTO, seed=4)

        # Redis 6 reports no lag at all.
        real = queue.redis.xinfo_groups

        async def redis6_xinfo_groups(name):
            return [{k: v for k, v in group.items() if k not in ("lag", "entries-read")} for group in await real(name)]

        monkeypatch.setattr(queue.redis, "xinfo_groups", redis6_xinfo_groups)
        with pytest.raises(QueueBusy, match="3 photos are already waiting"):
            await submit(queue, PHOTO, seed=5)
        assert handles[0].cancel()
        await _events(handles[0])
        await submit(queue, PHOTO, seed=6)  # a freed place is taken again
    finally:
        await queue.close()


async def test_with_no_worker_alive_waiting_users_are_told_and_a_returning_worker_serves(server, tiny_config_path,
                                                                                        tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url, max_queue=1, no_worker_timeout=4.0, heartbeat=0.5,
                          batch_window=0.0)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    worker = None
    try:
        first = await submit(queue, PHOTO, seed=1)
        assert (await _events(first, timeout=20))[-1] == Failed(NO_WORKER_REASON, ErrorKind.BUSY)
        assert await queue.redis.xlen(queue.keys.jobs) == 0 and not await queue.redis.exists(queue.keys.image(first.id))
        with pytest.raises(QueueBusy, match="No picture maker is running"):  # later ones hear it at once
            await submit(queue, PHOTO, seed=2)

        worker = start_worker(config, "w0")
        # The worker beats while it loads its models: a job sent then waits for it instead of being turned away,
        # and takes the place the first job freed (max_queue is 1).
        await _until(lambda: queue.redis.hlen(queue.keys.workers), 120, "the worker never beat")
        third = await _until(lambda: _submitted(queue, PHOTO, seed=3), 10, "still refused")
        assert (await third.result(timeout=180)).seed == 3
        pid = worker.pid
        stop_worker(worker)  # a clean stop: the worker leaves the hash and the consumer group
        assert not await queue.redis.hexists(queue.keys.workers, f"{os.uname().nodename}-{pid}")
        assert await queue.redis.xinfo_consumers(queue.keys.jobs, GROUP) == []
    finally:
        await queue.close()
        if worker is not None:
            stop_worker(worker)


async def test_keys_of_gone_chat_processes_and_dead_workers_do_not_pile_up(server, tiny_config_path, tmp_path,
                                                                          monkeypatch):
    # consumers idle for a second, not ten, count as gone: the sweep is under test, not the waiting
    monkeypatch.setattr("pipeline.core.redis_queue.IDLE_CONSUMER", 1.0)
    config = redis_config(tiny_config_path, tmp_path, server.url, heartbeat=0.5, no_worker_timeout=600.0)
    settings = load_config(config).queue
    horizon = max(settings.image_ttl, settings.result_ttl)
    gone = redis_queue(config, "chat-gone")
    await gone.start()
    job = await submit(gone, PHOTO, seed=1)
    await gone.redis.xadd(gone.keys.events("chat-gone"), {"op": "started", "id": job.id})
    await _until(lambda: gone.redis.exists(gone.keys.cursor("chat-gone")), 10, "no cursor written")
    await gone.close()  # and never comes back
    client = redis.from_url(server.url)
    try:
        for key in (gone.keys.journal("chat-gone"), gone.keys.cursor("chat-gone")):
            assert 0 < await client.ttl(key) <= horizon, key
        # Left by claybot before it set expiries; a dead worker, a garbled heartbeat, consumers of dead workers.
        await client.hset(gone.keys.journal("old"), "job", "{}")
        await client.set(gone.keys.cursor("old"), "0-0")
        now = time.time()
        await client.hset(gone.keys.workers, mapping={"ghost": json.dumps({"seen": now - 7200}),
                                                      "garbled": "not a heartbeat",
                                                      "recent": json.dumps({"seen": now - 60})})
        await client.xgroup_createconsumer(gone.keys.jobs, GROUP, "ghost")
        await client.xreadgroup(GROUP, "holder", {gone.keys.jobs: ">"}, count=1)  # holds a job: must stay

        live = redis_queue(config, "chat-b")
        await live.start()
        try:
            for key in (gone.keys.journal("old"), gone.keys.cursor("old")):
                assert 0 < await client.ttl(key) <= horizon, key
            await _until(lambda: _hash_is(client, gone.keys.workers, {b"recent"}), 10, "workers hash not swept")

            async def consumers():
                return {c["name"] for c in await client.xinfo_consumers(gone.keys.jobs, GROUP)}
            await _until(lambda: _is(consumers, {b"holder"}), 30, "idle consumer not removed")
        finally:
            await live.close()
    finally:
        await client.aclose()


async def _submitted(queue: RedisQueue, image: bytes, **options):
    try:
        return await submit(queue, image, **options)
    except QueueBusy as err:
        assert "No picture maker" in str(err)  # until the chat process has seen the worker beat twice
        return None


async def _hash_is(client, key: str, names: set[bytes]) -> bool:
    return set(await client.hkeys(key)) == names


async def _is(read, expected) -> bool:
    return await read() == expected


async def test_a_killed_worker_is_not_mistaken_for_a_live_one(server, tiny_config_path, tmp_path):
    # Its heartbeat stops: after no_worker_timeout waiting users are told, though its entry is still in the hash.
    config = redis_config(tiny_config_path, tmp_path, server.url, no_worker_timeout=3.0, heartbeat=0.5)
    worker = start_worker(config, "w0")
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        [info] = (await _until(queue.workers, 120, "the worker did not come up")).values()
        os.kill(info["pid"], signal.SIGKILL)
        worker.wait(timeout=30)
        handle = await submit(queue, PHOTO, seed=1)
        assert (await _events(handle, timeout=30))[-1] == Failed(NO_WORKER_REASON, ErrorKind.BUSY)
        assert await queue.redis.hlen(queue.keys.workers) == 1  # shown as NOT RUNNING by `claybot status` for an hour
    finally:
        await queue.close()
        stop_worker(worker)


@pytest.mark.parametrize("value", [0, -5.0, 100_000.0])
def test_a_bad_no_worker_timeout_names_the_key(tiny_config_path, tmp_path, value):
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match=r"queue\.no_worker_timeout:"):
        load_config(redis_config(tiny_config_path, tmp_path, "redis://127.0.0.1:1/0", no_worker_timeout=value))


async def test_a_worker_serves_again_after_redis_comes_back_empty(server, tiny_config_path, tmp_path):
    # Redis restarted without its data (or flushed): the stream comes back without the workers' consumer group.
    config = redis_config(tiny_config_path, tmp_path, server.url, heartbeat=0.5)
    worker = start_worker(config, "w0")
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        await _until(queue.workers, 120, "the worker did not come up")
        await queue.redis.flushall()
        handle = await submit(queue, PHOTO, seed=4)
        assert (await handle.result(timeout=180)).seed == 4
    finally:
        await queue.close()
        stop_worker(worker)


async def test_the_dead_letter_stream_stays_bounded(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url, no_worker_timeout=600.0)
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        handle = await submit(queue, PHOTO, seed=1)
        stream = queue.keys.events("chat-a")
        async with queue.redis.pipeline(transaction=False) as pipe:
            for n in range(DEAD_MAXLEN + 50):
                pipe.xadd(stream, {"op": "teleport", "id": f"nobody-{n}"})
            await pipe.execute()
        await queue.redis.set(queue.keys.result(handle.id), json.dumps(RESULT))
        await queue.redis.set(queue.keys.result_image(handle.id), RESULT_PNG)
        await queue.redis.xadd(stream, {"op": "done", "id": handle.id})
        assert isinstance((await _events(handle, timeout=60))[-1], Done)
        dead = await queue.redis.xrange(queue.keys.dead, "-", "+", count=1)
        assert await queue.redis.xlen(queue.keys.dead) == DEAD_MAXLEN
        assert b"nobody-50\"" in dead[0][1][b"fields"]  # the oldest ones made room
    finally:
        await queue.close()


async def test_claybot_status_survives_garbage_in_redis(server, tiny_config_path, tmp_path):
    config = redis_config(tiny_config_path, tmp_path, server.url)
    settings = load_config(config).queue
    client = redis.from_url(server.url)
    try:
        now = time.time()
        await client.hset("claybot:workers", mapping={
            "garbled": "{{{", "no-time": json.dumps({"device": "cuda"}),
            "starting": json.dumps({"seen": now, "loading": True, "pid": 7})})
        await client.zadd("claybot:history", {"not json": now, json.dumps([now, 1.5, "done", "j1"]): now,
                                              json.dumps(["x"]): now})
        status = await redis_status(settings)
    finally:
        await client.aclose()
    assert [w["name"] for w in status["workers"]] == ["starting"]
    shown = render(status)
    assert "starting loading its models" in shown and "last hour: 1 done" in shown


def test_stream_entry_ids_order_as_numbers_not_text():
    from pipeline.core.redis_queue import stream_order

    ids = ["1700000000000-9", "1700000000000-10", "1699999999999-99"]
    assert max(ids, key=stream_order) == "1700000000000-10"
    assert sorted(ids, key=stream_order) == ["1699999999999-99", "1700000000000-9", "1700000000000-10"]
