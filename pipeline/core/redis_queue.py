"""The scale-out queue backend: jobs live in Redis, any number of `claybot worker` processes serve them.

Layout (every key under ``queue.redis_prefix``, "claybot" by default):

- ``jobs`` — a stream read by the consumer group ``workers``: one entry per accepted job (its options, the
  owning chat process, the batch key). Workers acknowledge AND delete an entry once it is answered, so the
  stream holds only live jobs; an entry left pending by a worker that died is claimed by another after
  ``queue.claim_idle`` seconds (at-least-once delivery).
- ``image:<id>`` — the photo's bytes, expiring after ``queue.image_ttl``.
- ``events:<owner>`` — a stream per chat process ("owner"): started / progress / done / failed for its jobs
  only, trimmed to a bounded length and expiring when idle; ``cursor:<owner>`` remembers how far it was read.
- ``journal:<owner>`` — the owner's accepted, unanswered jobs and where to answer them (``reply_to``, which must
  be JSON); a restarted chat process recovers them from here.
- ``result:<id>`` / ``result:<id>:image`` — a finished job's answer, expiring after ``queue.result_ttl``;
  ``answered:<id>`` makes the answer visible once even if two workers finish the same job.
- ``workers`` — a hash of live workers' heartbeats (device, batch size, jobs done), for `claybot status`.

This module is the chat side (redis.asyncio, no torch); ``pipeline.gpu.redis_worker`` is the GPU side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

from pipeline.core.intake import take_in
from pipeline.core.jobs import (
    SHUTDOWN_REASON,
    Done,
    ErrorKind,
    Failed,
    JobHandle,
    Progress,
    QueueBusy,
    QueueClosed,
    Queued,
    Started,
    StyleRequest,
    busy_message,
    new_job_id,
)
from pipeline.core.settings import GpuSettings, QueueSettings

logger = logging.getLogger(__name__)

GROUP = "workers"
EVENTS_MAXLEN = 10_000
LOST_REASON = "Your photo was lost while claybot restarted; please send it again."


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = f"{prefix}:jobs"
        self.workers = f"{prefix}:workers"

    def image(self, job_id: str) -> str:
        return f"{self.prefix}:image:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def result_image(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}:image"

    def answered(self, job_id: str) -> str:
        return f"{self.prefix}:answered:{job_id}"

    def cancelled(self, job_id: str) -> str:
        return f"{self.prefix}:cancelled:{job_id}"

    def events(self, owner: str) -> str:
        return f"{self.prefix}:events:{owner}"

    @property
    def history(self) -> str:
        return f"{self.prefix}:history"

    def cursor(self, owner: str) -> str:
        return f"{self.prefix}:cursor:{owner}"

    def journal(self, owner: str) -> str:
        return f"{self.prefix}:journal:{owner}"


async def ensure_group(client, keys: Keys) -> None:
    """Create the jobs stream and its consumer group once (idempotent)."""
    from redis.exceptions import ResponseError

    try:
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    except ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


async def queue_depth(client, keys: Keys) -> tuple[int, int]:
    """(waiting, running): entries not yet delivered to a worker, and delivered but not yet answered."""
    try:
        groups = await client.xinfo_groups(keys.jobs)
    except Exception:  # no stream yet
        return 0, 0
    for group in groups:
        if text(group["name"]) == GROUP:
            return int(group.get("lag") or 0), int(group["pending"])
    return 0, 0


def text(value: Any) -> str:
    """Redis replies are bytes; names and ids are text."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def redis_status(settings: QueueSettings) -> dict[str, Any]:
    """`claybot status` for the Redis backend: the shared queue, live workers and the last hour's jobs."""
    import redis.asyncio as redis

    keys = Keys(settings.redis_prefix)
    client = redis.from_url(settings.redis_url)
    try:
        waiting, running = await queue_depth(client, keys)
        now = time.time()
        workers = []
        for name, raw in (await client.hgetall(keys.workers)).items():
            info = json.loads(raw)
            alive = now - info.get("seen", 0) < 3 * settings.heartbeat
            if alive or now - info.get("seen", 0) < 3600:
                workers.append({"name": text(name), "alive": alive, **info})
        history = [json.loads(m) for m in await client.zrangebyscore(keys.history, now - 3600, "+inf")]
    finally:
        await client.aclose()
    return {"backend": "redis", "waiting": waiting, "running": running, "workers": workers, "history": history}


class RedisQueue:
    """JobQueue over Redis streams; the chat process that submits a job is the only one that hears of it."""

    def __init__(self, gpu: GpuSettings, settings: QueueSettings, *, owner: str | None = None) -> None:
        import redis.asyncio as redis

        self.gpu = gpu
        self.settings = settings
        self.owner = owner or settings.instance or socket.gethostname()
        self.keys = Keys(settings.redis_prefix)
        self.redis = redis.from_url(settings.redis_url)
        self._handles: dict[str, JobHandle] = {}
        self._entries: dict[str, str] = {}  # job id → stream entry id, while waiting
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Connect, make sure the stream exists, and start reading this owner's events."""
        await ensure_group(self.redis, self.keys)
        self._tasks = [asyncio.create_task(self._read_events(), name="claybot-redis-events"),
                       asyncio.create_task(self._announce_positions(), name="claybot-redis-positions")]

    async def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Redis answers; workers come and go on their own."""
        await asyncio.wait_for(self.redis.ping(), timeout)
        return {"device": "redis", "workers": len(await self.workers())}

    async def close(self, grace: float | None = None) -> None:
        """Stop taking and reading; accepted jobs stay in Redis and are answered after a restart."""
        self._closing = True
        # The loops notice within one blocking read (1 s). Cancelling a redis.asyncio command mid-read can leave
        # it waiting forever, so cancellation is only the fallback.
        _, late = await asyncio.wait(self._tasks, timeout=3.0)
        for task in late:
            task.cancel()
        await self.redis.aclose()

    @property
    def depth(self) -> int:
        """Jobs this process is waiting on."""
        return len(self._handles)

    async def submit(self, request: StyleRequest) -> JobHandle:
        """Store the photo and add the job to the stream; QueueBusy when the shared queue is full."""
        if self._closing:
            raise QueueClosed(SHUTDOWN_REASON)
        handle = JobHandle(new_job_id(), request, canceller=self._cancel)
        intake = await take_in(self.gpu, request)
        if isinstance(intake, Failed):
            handle.push(intake)
            return handle
        waiting, running = await queue_depth(self.redis, self.keys)
        if waiting >= self.settings.max_queue:
            raise QueueBusy(busy_message(waiting, self.settings.max_queue))
        job_id = handle.id
        self._handles[job_id] = handle
        journal = {"reply_to": request.reply_to, "style": intake.style, "strength": intake.strength,
                   "seed": intake.seed, "submitted": time.time()}
        entry = {"id": job_id, "owner": self.owner, "submitted": time.time(), "key": intake.batch_key,
                 "style": intake.style,
                 "strength": intake.strength, "seed": intake.seed,
                 "trigger_weight": "" if intake.trigger_weight is None else intake.trigger_weight,
                 "max_rating": intake.max_rating or "",
                 "structure_scale": "" if intake.structure_scale is None else intake.structure_scale,
                 "identity_scale": "" if intake.identity_scale is None else intake.identity_scale,
                 "timeout": self.settings.job_timeout}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.image(job_id), request.image, ex=int(self.settings.image_ttl))
            pipe.hset(self.keys.journal(self.owner), job_id, json.dumps(journal))
            pipe.xadd(self.keys.jobs, {k: str(v) for k, v in entry.items()})
            *_, entry_id = await pipe.execute()
        self._entries[job_id] = text(entry_id)
        handle.push(Queued(waiting + running + 1))
        logger.info("job %s queued in redis at #%d (style %s, strength %g, seed %d)", job_id, waiting + running + 1,
                    intake.style, intake.strength, intake.seed)
        return handle

    async def recover(self) -> list[JobHandle]:
        """Handles for this owner's accepted, unanswered jobs (after a restart); their answers arrive as usual."""
        journal = await self.redis.hgetall(self.keys.journal(self.owner))
        handles = []
        for raw_id, raw in journal.items():
            job_id, meta = text(raw_id), json.loads(raw)
            request = StyleRequest(b"", style=meta["style"], strength=meta["strength"], seed=meta["seed"],
                                   reply_to=meta["reply_to"])
            handle = self._handles.get(job_id) or JobHandle(job_id, request)
            self._handles[job_id] = handle
            handles.append(handle)
            if await self.redis.exists(self.keys.result(job_id)):
                await self._deliver_result(job_id)
            elif not await self.redis.exists(self.keys.image(job_id)):
                await self._finish(job_id, Failed(LOST_REASON, ErrorKind.INTERNAL))
        return handles

    def _cancel(self, handle: JobHandle) -> bool:
        entry_id = self._entries.get(handle.id)
        if entry_id is None:
            return False
        self._entries.pop(handle.id, None)
        asyncio.get_running_loop().create_task(self._cancel_in_redis(handle.id, entry_id))
        return True

    async def _cancel_in_redis(self, job_id: str, entry_id: str) -> None:
        # A worker that already took it sees the mark and skips it.
        await self.redis.set(self.keys.cancelled(job_id), 1, ex=int(self.settings.image_ttl))
        await self.redis.xdel(self.keys.jobs, entry_id)
        await self._finish(job_id, Failed("Cancelled.", ErrorKind.CANCELLED))

    async def workers(self) -> dict[str, dict[str, Any]]:
        """Live workers' heartbeats."""
        now = time.time()
        found = {}
        for name, raw in (await self.redis.hgetall(self.keys.workers)).items():
            info = json.loads(raw)
            if now - info.get("seen", 0) < 3 * self.settings.heartbeat:
                found[text(name)] = info
        return found

    # -- events ----------------------------------------------------------------------------------------------------

    async def _read_events(self) -> None:
        stream = self.keys.events(self.owner)
        cursor = text(await self.redis.get(self.keys.cursor(self.owner)) or b"0")
        while not self._closing:
            try:
                reply = await self.redis.xread({stream: cursor}, count=200, block=1000)
                for _, entries in reply:
                    for entry_id, fields in entries:
                        await self._on_event({text(k): text(v) for k, v in fields.items()})
                        cursor = text(entry_id)
                    await self.redis.set(self.keys.cursor(self.owner), cursor)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis restarting: keep trying, the jobs are safe in it
                logger.warning("reading events from redis failed (%s); retrying", err)
                await asyncio.sleep(1.0)

    async def _on_event(self, event: dict[str, str]) -> None:
        job_id, op = event["id"], event["op"]
        handle = self._handles.get(job_id)
        if handle is None or handle.finished:
            return
        if op == "started":
            self._entries.pop(job_id, None)
            handle.push(Started(int(event.get("batch_size", 1))))
        elif op == "progress":
            handle.push(Progress(int(event["step"]), int(event["total"])))
        elif op == "done":
            await self._deliver_result(job_id)
        elif op == "failed":
            await self._finish(job_id, Failed(event["reason"], ErrorKind(event["kind"])))

    async def _deliver_result(self, job_id: str) -> None:
        meta, image = await self.redis.mget(self.keys.result(job_id), self.keys.result_image(job_id))
        if meta is None or image is None:
            await self._finish(job_id, Failed(LOST_REASON, ErrorKind.INTERNAL))
            return
        await self._finish(job_id, Done(image=image, **json.loads(meta)))

    async def _finish(self, job_id: str, event: Done | Failed) -> None:
        """Answer once: a job completed twice (a claimed retry) is delivered the first time only."""
        first = await self.redis.set(self.keys.answered(job_id), self.owner, nx=True,
                                     ex=int(self.settings.result_ttl))
        await self.redis.hdel(self.keys.journal(self.owner), job_id)
        self._entries.pop(job_id, None)
        handle = self._handles.pop(job_id, None)
        if handle is not None and (first or isinstance(event, Failed) and event.kind is ErrorKind.CANCELLED):
            handle.push(event)

    async def _announce_positions(self) -> None:
        """Every few seconds, tell waiting jobs their place. Answered entries are deleted from the stream, so
        the entries up to a job's own are exactly the running and waiting jobs ahead of it, plus itself."""
        shown: dict[str, int] = {}
        while not self._closing:
            await asyncio.sleep(self.settings.position_interval)
            if not self._entries:
                continue
            try:
                ahead = await self.redis.xrange(self.keys.jobs, "-", max(self._entries.values()))
                order = {text(entry_id): index for index, (entry_id, _) in enumerate(ahead, start=1)}
                for job_id, entry_id in list(self._entries.items()):
                    position = order.get(entry_id)
                    handle = self._handles.get(job_id)
                    if position and handle and shown.get(job_id) != position:
                        shown[job_id] = position
                        handle.push(Queued(position))
            except Exception as err:  # positions are a courtesy; never let them break the queue
                logger.debug("position update skipped: %s", err)
