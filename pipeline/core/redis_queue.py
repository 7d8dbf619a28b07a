"""The scale-out queue backend: jobs live in Redis, any number of `claybot worker` processes serve them.

Layout (every key under ``queue.redis_prefix``, "claybot" by default):

- ``jobs`` — a stream read by the consumer group ``workers``: one entry per accepted picture job (the job's fields
  as ``pipeline.core.codec`` writes them, the owning chat process, the batch key). Workers acknowledge AND delete
  an entry once it is answered, so the stream holds only live jobs; an entry left pending by a worker that died
  is claimed by another after ``queue.claim_idle`` seconds (at-least-once delivery).
- ``jobs:clip`` — the same for clips: a lane per kind, so a worker takes the pictures waiting before any clip (a
  picture waits behind at most the clip already running), and reads only the lanes of the kinds it serves
  (``queue.worker_kinds``: clips may have GPUs of their own).
- ``image:<id>`` — the photo's bytes, expiring after ``queue.image_ttl``.
- ``events:<owner>`` — a stream per chat process ("owner"): started / progress / done / failed for its jobs
  only, trimmed to a bounded length and expiring when idle; ``cursor:<owner>`` remembers how far it was read.
- ``journal:<owner>`` — the owner's accepted, unanswered jobs (each job's codec header, ``reply_to`` included, no
  photo); a restarted chat process recovers them from here.
- ``result:<id>`` / ``result:<id>:image`` — a finished job's answer, expiring after ``queue.result_ttl``;
  ``answered:<id>`` makes the answer visible once even if two workers finish the same job.
- ``workers`` — a hash of workers' heartbeats (device, batch size, kinds served, jobs done), for `claybot status`; a
  worker not heard of for an hour is dropped from it.
- ``dead`` — the dead-letter stream: entries no process could use (see ``pipeline.core.redis_entries``), with why.

A chat process keeps its own keys (journal, cursor) expiring ``max(image_ttl, result_ttl)`` after it was last
alive: by then nothing they hold could still be answered. Waiting jobs of a chat process that has seen no worker
serving their kind alive for ``queue.no_worker_timeout`` seconds are answered ``NO_WORKER_REASON`` (a clip:
its kind's own words) and leave the stream.

This module is the chat side (redis.asyncio, no torch); ``pipeline.gpu.redis_worker`` is the GPU side.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from typing import Any

from pipeline.core import codec
from pipeline.core.errors import quoted
from pipeline.core.jobs import (
    SHUTDOWN_REASON,
    Done,
    ErrorKind,
    Failed,
    Job,
    JobHandle,
    Progress,
    QueueBusy,
    QueueClosed,
    Queued,
    Started,
    busy_message,
    new_job_id,
)
from pipeline.core.kinds import KINDS, kind_of
from pipeline.core.redis_entries import (
    BAD_ENTRY_REASON,
    DEAD_MAXLEN,
    KEPT_CHARS,
    BadEntry,
    dead_letter,
    identity,
    job_fields,
    parse_event,
    parse_heartbeat,
    parse_result,
)
from pipeline.core.redis_lanes import (
    GROUP,
    WORKER_FORGET,
    Keys,
    ensure_group,
    kinds_served,
    lane_depth,
    queue_depth,
    stream_order,
    text,
)
from pipeline.core.redis_lanes import redis_status as redis_status  # `claybot status` reads it from here
from pipeline.core.settings import GpuSettings, QueueSettings

logger = logging.getLogger(__name__)

EVENTS_MAXLEN = 10_000
LOST_REASON = "Your photo was lost while claybot restarted; please send it again."
NO_WORKER_REASON = ("No picture maker is running right now, so I can't make your picture; "
                    "please send it again later.")
IDLE_CONSUMER = 10.0  # seconds: a live worker touches its consumer every second or so when it holds no job


def no_worker_reason(kind: str) -> str:
    """What the user of a job hears when no worker serving its kind is alive (its kind's words)."""
    return kind_of(kind).no_worker_reason


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
        self._entry_ids: dict[str, str] = {}  # job id → stream entry id, until answered
        self._lanes: dict[str, str] = {}  # job id → the lane (stream) its entry is in, until answered
        self._since: dict[str, float] = {}  # job id → when this process took it (submit or recover)
        # Per kind of job: when the heartbeat of a worker serving it last changed, on this machine's clock (immune
        # to other machines' clocks); a worker loading its models beats too.
        self._worker_seen = dict.fromkeys(KINDS, time.time())
        self._beats: dict[str, float] | None = None  # the heartbeats read last round
        self._key_ttl = int(max(settings.image_ttl, settings.result_ttl))
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Connect, make sure the stream exists, and start reading this owner's events."""
        await ensure_group(self.redis, self.keys)
        self._worker_seen = dict.fromkeys(KINDS, time.time())
        try:
            await self._expire_forgotten_owners()
        except Exception as err:  # tidiness only (SCAN may be forbidden to this user); never block the start
            logger.warning("could not set expiries on old claybot keys: %s", err)
        self._tasks = [asyncio.create_task(self._read_events(), name="claybot-redis-events"),
                       asyncio.create_task(self._announce_positions(), name="claybot-redis-positions"),
                       asyncio.create_task(self._keep_house(), name="claybot-redis-housekeeping")]

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

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        """QueueBusy when the shared queue's waiting jobs and this process's ``coming`` ones fill it, or no worker
        (serving each of ``kinds``) has been seen lately; QueueClosed when closing. One round trip to Redis."""
        if self._closing:
            raise QueueClosed(SHUTDOWN_REASON)
        now = time.time()
        if now - max(self._worker_seen.values()) >= self.settings.no_worker_timeout:
            raise QueueBusy(NO_WORKER_REASON)
        for kind in kinds:
            if now - self._worker_seen.setdefault(kind, now) >= self.settings.no_worker_timeout:
                raise QueueBusy(no_worker_reason(kind))
        waiting, _ = await queue_depth(self.redis, self.keys, limit=self.settings.max_queue)
        if waiting + coming >= self.settings.max_queue:
            raise QueueBusy(busy_message(waiting + coming, self.settings.max_queue))

    async def submit(self, job: Job) -> JobHandle:
        """Store the photo and add the job to the stream; QueueBusy when the shared queue is full."""
        if self._closing:
            raise QueueClosed(SHUTDOWN_REASON)
        handle = JobHandle(new_job_id(), job, canceller=self._cancel)
        seen = self._worker_seen.setdefault(kind_of(job.kind).name, time.time())  # UnknownKind for a stranger
        if time.time() - seen >= self.settings.no_worker_timeout:
            raise QueueBusy(no_worker_reason(job.kind))  # say so at once rather than after another no_worker_timeout
        depths = {kind: await lane_depth(self.redis, self.keys.lane(kind), limit=self.settings.max_queue)
                  for kind in KINDS}
        waiting = sum(lane_waiting for lane_waiting, _ in depths.values())
        if waiting >= self.settings.max_queue:
            raise QueueBusy(busy_message(waiting, self.settings.max_queue))
        # Ahead of it: every job of its own lane and the lanes taken before it, and the running ones of the others.
        rank = kind_of(job.kind).rank
        position = 1 + sum(lane_waiting + lane_running if KINDS[kind].rank <= rank else lane_running
                           for kind, (lane_waiting, lane_running) in depths.items())
        job_id = handle.id
        self._handles[job_id] = handle
        journal, _ = codec.dump(job)
        time_limit = kind_of(job.kind).time_limit(job.spec) or self.settings.job_timeout
        entry = job_fields(job_id, self.owner, job, time_limit, time.time())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.image(job_id), job.image, ex=int(self.settings.image_ttl))
            pipe.hset(self.keys.journal(self.owner), job_id, journal)
            pipe.expire(self.keys.journal(self.owner), self._key_ttl)
            # redis-py types an entry's fields as an invariant dict, not a Mapping: dict[str, str] is refused
            pipe.xadd(self.keys.lane(job.kind), entry)  # type: ignore[arg-type]
            *_, entry_id = await pipe.execute()
        self._entries[job_id] = self._entry_ids[job_id] = text(entry_id)
        self._lanes[job_id] = self.keys.lane(job.kind)
        self._since[job_id] = time.time()
        handle.push(Queued(position))
        logger.info("job %s (%s) queued in redis at #%d (style %s, seed %d)", job_id, job.kind, position,
                    job.style, job.seed)
        return handle

    async def status(self) -> dict[str, Any]:
        """The shared queue, live workers and the last hour's jobs (as `claybot status`)."""
        return await redis_status(self.settings)

    async def recover(self) -> list[JobHandle]:
        """Handles for this owner's accepted, unanswered jobs (after a restart); their answers arrive as usual."""
        journal = await self.redis.hgetall(self.keys.journal(self.owner))
        handles = []
        for raw_id, raw in journal.items():
            try:
                job_id = text(raw_id)
                job = codec.load(raw, [b""], expect=(Job,), what="job")  # the photo is under image:<id>
            except (ValueError, TypeError, KeyError) as err:  # the front end's own journal still has the job
                source = self.keys.journal(self.owner)
                logger.error("dropping bad journal entry %s of %s: %s (kept in %s)", quoted(raw_id), source,
                             quoted(repr(err), 200), self.keys.dead)
                dead = dead_letter(source, text(raw_id, errors="replace"), {"journal": raw},
                                   f"bad journal entry: {quoted(repr(err), 200)}")
                # redis-py types an entry's fields as an invariant dict, not a Mapping: dict[str, str] is refused
                await self.redis.xadd(self.keys.dead, dead, maxlen=DEAD_MAXLEN, approximate=False)  # type: ignore[arg-type]
                await self.redis.hdel(source, raw_id)
                continue
            assert isinstance(job, Job)
            handle = self._handles.get(job_id) or JobHandle(job_id, job)
            self._handles[job_id] = handle
            self._since.setdefault(job_id, time.time())
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
        await self.redis.xdel(self._lanes.get(job_id, self.keys.jobs), entry_id)
        await self._finish(job_id, Failed("Cancelled.", ErrorKind.CANCELLED))

    async def workers(self) -> dict[str, dict[str, Any]]:
        """Live workers' heartbeats (those serving; not those still loading their models)."""
        now = time.time()
        found = {}
        for name, raw in (await self.redis.hgetall(self.keys.workers)).items():
            try:
                info = parse_heartbeat(raw)
            except BadEntry:
                continue
            if now - info["seen"] < 3 * self.settings.heartbeat and not info.get("loading"):
                found[text(name, errors="replace")] = info
        return found

    # -- events ----------------------------------------------------------------------------------------------------

    async def _read_events(self) -> None:
        stream = self.keys.events(self.owner)
        cursor = None
        while not self._closing:
            try:
                if cursor is None:
                    cursor = text(await self.redis.get(self.keys.cursor(self.owner)) or b"0")
                reply = await self.redis.xread({stream: cursor}, count=200, block=1000)
                assert isinstance(reply, list)  # RESP2, the client's protocol: [[stream, [(id, fields), ...]], ...]
                for _, entries in reply:
                    for entry_id, fields in entries:
                        await self._take_event(stream, text(entry_id), fields)
                        cursor = text(entry_id)
                    await self.redis.set(self.keys.cursor(self.owner), cursor, ex=self._key_ttl)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis restarting: keep trying, the jobs are safe in it
                logger.warning("reading events from redis failed (%s); retrying", err)
                await asyncio.sleep(1.0)

    async def _take_event(self, stream: str, entry_id: str, fields: dict) -> None:
        """Act on one event; one that cannot be used is dead-lettered, so the events behind it still arrive."""
        from redis.exceptions import RedisError

        try:
            job_id, event = parse_event(fields)
            await self._on_event(job_id, event)
        except (RedisError, OSError):
            raise  # Redis away: this event is read again
        except BadEntry as err:
            await self._bad_entry(stream, entry_id, fields, err)
        except Exception as err:  # a bug of ours must not hold up every answer behind this event either
            logger.exception("event %s on %s could not be handled", entry_id, stream)
            await self._bad_entry(stream, entry_id, fields,
                                  BadEntry(quoted(repr(err), 200), job_id=identity(fields)[0]))

    async def _bad_entry(self, source: str, entry_id: str, fields: dict, err: BadEntry) -> None:
        """Log it once, keep it in the dead-letter stream, and answer the job it names if nothing else will."""
        logger.error("skipping bad entry %s of %s: %s (kept in %s)", entry_id, source, err, self.keys.dead)
        dead = dead_letter(source, entry_id, fields, str(err))
        # redis-py types an entry's fields as an invariant dict, not a Mapping: dict[str, str] is refused
        await self.redis.xadd(self.keys.dead, dead, maxlen=DEAD_MAXLEN, approximate=False)  # type: ignore[arg-type]
        if err.fatal and err.job_id in self._handles:
            await self._finish(err.job_id, Failed(BAD_ENTRY_REASON, ErrorKind.INTERNAL))

    async def _on_event(self, job_id: str, event: Started | Progress | Failed | None) -> None:
        handle = self._handles.get(job_id)
        if handle is None or handle.finished:
            return
        if isinstance(event, Started):
            self._entries.pop(job_id, None)
            handle.push(event)
        elif isinstance(event, Progress):
            handle.push(event)
        elif isinstance(event, Failed):
            await self._finish(job_id, event)
        else:
            await self._deliver_result(job_id)

    async def _deliver_result(self, job_id: str) -> None:
        meta, image = await self.redis.mget(self.keys.result(job_id), self.keys.result_image(job_id))
        if meta is None or image is None:
            await self._finish(job_id, Failed(LOST_REASON, ErrorKind.INTERNAL))
            return
        assert isinstance(meta, bytes) and isinstance(image, bytes)  # the client never decodes (decode_responses)
        try:
            done = parse_result(job_id, meta, image)
        except BadEntry as err:
            await self._bad_entry(self.keys.result(job_id), "-", {"result": meta[:KEPT_CHARS]}, err)
            await self._finish(job_id, Failed(BAD_ENTRY_REASON, ErrorKind.INTERNAL))  # recover() has no handle yet
            return
        await self._finish(job_id, done)

    async def _finish(self, job_id: str, event: Done | Failed) -> None:
        """Answer once: a job completed twice (a claimed retry) is delivered the first time only."""
        first = await self.redis.set(self.keys.answered(job_id), self.owner, nx=True,
                                     ex=int(self.settings.result_ttl))
        await self.redis.hdel(self.keys.journal(self.owner), job_id)
        self._entries.pop(job_id, None)
        self._entry_ids.pop(job_id, None)
        self._lanes.pop(job_id, None)
        self._since.pop(job_id, None)
        handle = self._handles.pop(job_id, None)
        if handle is not None and (first or isinstance(event, Failed) and event.kind is ErrorKind.CANCELLED):
            handle.push(event)

    # -- housekeeping ----------------------------------------------------------------------------------------------

    async def _keep_house(self) -> None:
        """Every heartbeat: keep this owner's keys alive, forget dead workers, answer jobs no worker will take."""
        next_sweep = 0.0
        failing: set[str] = set()  # the steps that failed last round: a lasting failure is logged once
        while not self._closing:
            failed: set[str] = set()
            beats = await self._step("reading heartbeats", self._refresh_and_read_heartbeats(), failing, failed)
            if beats is not None and "reading heartbeats" in failing:
                self._worker_seen = dict.fromkeys(KINDS, time.time())  # Redis was away: workers get a full timeout
            if beats is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + IDLE_CONSUMER
                await self._step("forgetting dead workers", self._forget_dead_workers(beats), failing, failed)
            await self._step("answering jobs no worker takes", self._answer_unserved(), failing, failed)
            failing = failed
            await asyncio.sleep(self.settings.heartbeat)

    @staticmethod
    async def _step(what: str, step: Awaitable[Any], failing: set[str], failed: set[str]) -> Any:
        try:
            return await step
        except asyncio.CancelledError:
            raise
        except Exception as err:  # Redis away (the event reader says so too): try again next round
            failed.add(what)
            if what not in failing:
                logger.warning("redis housekeeping: %s failed (%s); retrying", what, err)
            return None

    async def _refresh_and_read_heartbeats(self) -> dict[str, float]:
        """Push this owner's keys' expiry back; the workers' last heartbeats (name → time seen)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(self.keys.journal(self.owner), self._key_ttl)
            pipe.expire(self.keys.cursor(self.owner), self._key_ttl)
            pipe.hgetall(self.keys.workers)
            *_, raw = await pipe.execute()
        beats: dict[str, float] = {}
        served: dict[str, set[str]] = {}
        garbage = []
        for name, value in raw.items():
            try:
                beat = parse_heartbeat(value)
                beats[text(name)], served[text(name)] = beat["seen"], kinds_served(beat)
            except (BadEntry, UnicodeDecodeError) as err:
                logger.error("removing bad heartbeat %s from %s: %s", quoted(name), self.keys.workers,
                             quoted(str(err), 200))
                garbage.append(name)
        if garbage:
            await self.redis.hdel(self.keys.workers, *garbage)
        if self._beats is not None:
            now = time.time()
            for name, seen in beats.items():
                if self._beats.get(name) != seen:
                    self._worker_seen.update(dict.fromkeys(served[name], now))
        self._beats = beats
        return beats

    async def _forget_dead_workers(self, beats: dict[str, float]) -> None:
        """Workers silent for WORKER_FORGET leave the hash; consumers of dead workers holding no job leave the
        group (a worker that comes back is added again by its next read)."""
        now = time.time()
        if gone := [name for name, seen in beats.items() if now - seen > WORKER_FORGET]:
            logger.info("forgetting %d worker(s) silent for over an hour: %s", len(gone),
                        ", ".join(quoted(name) for name in gone[:10]))
            await self.redis.hdel(self.keys.workers, *gone)
        alive = {name for name, seen in beats.items() if now - seen < 3 * self.settings.heartbeat}
        for lane in self.keys.lanes:
            for consumer in await self.redis.xinfo_consumers(lane, GROUP):
                name = text(consumer["name"], errors="replace")
                if not consumer["pending"] and name not in alive and consumer["idle"] >= IDLE_CONSUMER * 1000:
                    await self.redis.xgroup_delconsumer(lane, GROUP, consumer["name"])

    async def _answer_unserved(self) -> None:
        """Jobs that waited ``no_worker_timeout`` with no worker serving their kind alive are told so, and leave
        the stream."""
        now = time.time()
        timeout = self.settings.no_worker_timeout
        unserved = {job_id: handle.job.kind for job_id, handle in self._handles.items() if not handle.finished
                    and now - max(self._worker_seen.get(handle.job.kind, now), self._since.get(job_id, now)) >= timeout}
        if not unserved:
            return
        for kind in set(unserved.values()):
            logger.warning("no worker serving %ss alive for %.0f s: answering %d such job(s) of %s that cannot be "
                           "served", kind, now - self._worker_seen.get(kind, now), list(unserved.values()).count(kind),
                           self.owner)
        entries = {job_id: (self._lanes.get(job_id, self.keys.jobs), self._entry_ids[job_id])
                   for job_id in unserved if job_id in self._entry_ids}
        if len(entries) < len(unserved):  # recovered jobs: find their entries
            entries |= await self._find_entries(set(unserved) - entries.keys())
        for job_id, kind in unserved.items():
            async with self.redis.pipeline(transaction=True) as pipe:
                # a worker that comes back and finds the entry pending skips it (the mark) and acknowledges it
                pipe.set(self.keys.cancelled(job_id), 1, ex=int(self.settings.image_ttl))
                if job_id in entries:
                    lane, entry_id = entries[job_id]
                    pipe.xack(lane, GROUP, entry_id)
                    pipe.xdel(lane, entry_id)
                pipe.delete(self.keys.image(job_id))
                await pipe.execute()
            await self._finish(job_id, Failed(no_worker_reason(kind), ErrorKind.BUSY))

    async def _find_entries(self, job_ids: set[str]) -> dict[str, tuple[str, str]]:
        """The lanes and stream entries of these jobs of ours (the lanes hold only live jobs, so this is short)."""
        found: dict[str, tuple[str, str]] = {}
        for lane in self.keys.lanes:
            start = "-"
            while len(found) < len(job_ids):
                page = await self.redis.xrange(lane, start, "+", count=1000) or []  # XRANGE never answers nil
                for entry_id, fields in page:
                    fields = fields or {}  # None only where XREADGROUP meets a deleted entry, never in XRANGE
                    job_id = text(fields.get(b"id", b""), "replace")
                    if job_id in job_ids and text(fields.get(b"owner", b""), "replace") == self.owner:
                        found[job_id] = (lane, text(entry_id))
                if len(page) < 1000:
                    break
                start = f"({text(page[-1][0])}"
        return found

    async def _expire_forgotten_owners(self) -> None:
        """Give journals and cursors left without an expiry (by claybot before it set one) the same expiry."""
        for pattern in (self.keys.journal("*"), self.keys.cursor("*")):
            async for key in self.redis.scan_iter(match=pattern, count=500):
                if await self.redis.ttl(key) == -1:
                    await self.redis.expire(key, self._key_ttl)

    async def _announce_positions(self) -> None:
        """Every few seconds, tell waiting jobs their place."""
        shown: dict[str, int] = {}
        while not self._closing:
            await asyncio.sleep(self.settings.position_interval)
            if not self._entries:
                continue
            try:
                for job_id, position in (await self._positions()).items():
                    handle = self._handles.get(job_id)
                    if handle and shown.get(job_id) != position:
                        shown[job_id] = position
                        handle.push(Queued(position))
            except Exception as err:  # positions are a courtesy; never let them break the queue
                logger.debug("position update skipped: %s", err)

    async def _positions(self) -> dict[str, int]:
        """Our waiting jobs' places, as workers take them: lane by lane, pictures first. Answered entries are
        deleted from the lanes, so the entries of a lane up to a job's own are exactly the running and waiting jobs
        of its kind ahead of it, plus itself; every job of a lane taken before it is ahead too, and of a lane
        taken after it only the running ones."""
        waiting = {job_id: (self._lanes.get(job_id, self.keys.jobs), entry_id)
                   for job_id, entry_id in list(self._entries.items())}
        order: dict[str, dict[str, int]] = {}  # lane → entry id → place in it
        for lane in {lane for lane, _ in waiting.values()}:
            last = max((entry_id for own, entry_id in waiting.values() if own == lane), key=stream_order)
            ahead = await self.redis.xrange(lane, "-", last) or []  # XRANGE never answers nil
            order[lane] = {text(entry_id): index for index, (entry_id, _) in enumerate(ahead, start=1)}
        totals = {lane: await self.redis.xlen(lane) for lane in self.keys.lanes}
        running = {lane: int((await self.redis.xpending(lane, GROUP))["pending"]) for lane in self.keys.lanes}
        positions = {}
        for job_id, (lane, entry_id) in waiting.items():
            place = order[lane].get(entry_id)
            if place is None or lane not in self.keys.lanes:
                continue
            rank = self.keys.lanes.index(lane)
            positions[job_id] = place + sum(totals[other] if index < rank else running[other]
                                            for index, other in enumerate(self.keys.lanes) if other != lane)
        return positions
