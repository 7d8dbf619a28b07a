"""`claybot worker` on the Redis backend: take compatible jobs from the shared lanes, run them, answer the owner.

The same batch loop (``pipeline.gpu.worker.run_batch``) as the local worker; only where jobs come from and where the
answers go differ. A worker reads the lanes of the kinds it serves (``queue.worker_kinds``), the pictures' first, so
a picture waits behind at most the clip already running; it says which kinds in its heartbeat. A job is acknowledged
and deleted only once its answer is stored, so a worker that dies mid-job leaves it pending for another worker to
claim after ``queue.claim_idle`` seconds. An entry that is not a job this worker can run
(``pipeline.core.redis_entries``) is dead-lettered and acknowledged at once, and its owner told, so it is never
claimed again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from pipeline.core.jobs import (
    CRASH_REASON,
    Batch,
    Done,
    ErrorKind,
    Failed,
    Message,
    Progress,
    Started,
    Task,
    Update,
)
from pipeline.core.kinds import kind_of, load_plugins, worker_kinds
from pipeline.core.redis_entries import (
    BAD_ENTRY_REASON,
    DEAD_MAXLEN,
    BadEntry,
    JobEntry,
    dead_letter,
    event_fields,
    parse_job,
    result_parts,
)
from pipeline.core.redis_lanes import GROUP, Keys, text
from pipeline.core.redis_queue import EVENTS_MAXLEN
from pipeline.core.settings import GpuSettings, QueueSettings
from pipeline.gpu.engine import gpu_memory_mb
from pipeline.gpu.worker import Workshop, open_workshop, run_batch

logger = logging.getLogger(__name__)

EXPIRED_REASON = "Your photo waited too long and expired; please send it again."


def connect(url: str) -> Any:
    """A Redis client that rides out a Redis restart (retries with backoff) instead of losing the batch."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), 30),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class RedisWorker:
    """One worker process serving the shared lanes of the kinds it serves."""

    def __init__(self, gpu: GpuSettings, settings: QueueSettings, *, name: str | None = None) -> None:
        self.gpu, self.settings = gpu, settings
        load_plugins(gpu.pipeline.plugins)
        self.kinds = worker_kinds(gpu, settings.worker_kinds)  # ClaybotError naming queue.worker_kinds
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = Keys(settings.redis_prefix)
        self.lanes = [self.keys.lane(kind.name) for kind in self.kinds]  # read in this order: pictures first
        self.redis = connect(settings.redis_url)
        self.stop = threading.Event()
        self.stats: dict[str, Any] = {"done": 0, "failed": 0, "batches": 0, "busy": False}
        self.in_hand: dict[str, list[str]] = {}  # lane → its entries this worker is working on
        self.info: dict[str, Any] = {}
        self.workshop: Workshop | None = None  # loaded by serve(): the tagger and the engines of its kinds

    def ensure_group(self) -> None:
        """Create the lanes and their consumer group if this worker is the first."""
        import redis

        for lane in self.keys.lanes:
            try:
                self.redis.xgroup_create(lane, GROUP, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    def serve(self, *, warm_up: bool = True) -> None:
        """Load the models, then take and answer jobs until ``stop`` is set."""
        self.ensure_group()
        kinds = [kind.name for kind in self.kinds]
        # Beat while the models load too: chat processes then know a worker is coming and keep their jobs waiting.
        self.info = {"loading": True, "kinds": kinds, "pid": os.getpid(), "since": time.time()}
        threading.Thread(target=self._heartbeat, name="claybot-heartbeat", daemon=True).start()
        # the engines of its kinds only: a clips-only worker loads the tagger and the video model, not SDXL
        workshop = self.workshop = open_workshop(self.gpu, self.kinds)
        if warm_up:
            workshop.warm_up()
        self.info = {"device": workshop.device, "dtype": workshop.dtype,
                     "max_batch": self.gpu.pipeline.max_batch, "kinds": kinds, "pid": os.getpid(),
                     "since": time.time()}
        logger.info("worker %s serving %s (%s) on %s", self.name, " and ".join(f"{kind}s" for kind in kinds),
                    ", ".join(self.lanes), self.info["device"])
        while not self.stop.is_set():
            try:
                jobs = self._claim_stale() or self._take()
            except Exception as err:  # Redis away for longer than the retries: wait and go on
                logger.warning("cannot read jobs from redis (%s); retrying", err)
                time.sleep(1.0)
                if "NOGROUP" in str(err):  # Redis came back empty (or was flushed): the stream needs its group
                    try:
                        self.ensure_group()
                    except Exception as again:
                        logger.debug("cannot create the consumer group yet: %s", again)
                continue
            if not jobs:
                continue
            try:
                self._serve(jobs)
            except Exception:  # each photo's own failures are answered inside run_batch; this is Redis or a bug
                logger.exception("batch %s stopped; its unanswered jobs stay pending for another try",
                                 [job.id for job in jobs])
        self.redis.hdel(self.keys.workers, self.name)
        self._leave_group()

    def _leave_group(self) -> None:
        """A worker that stops holding no job removes its consumer, so restarts do not pile names up."""
        try:
            for lane in self.lanes:
                if not self.redis.xpending_range(lane, GROUP, min="-", max="+", count=1, consumername=self.name):
                    self.redis.xgroup_delconsumer(lane, GROUP, self.name)
        except Exception as err:  # only tidiness; chat processes sweep idle consumers too
            logger.debug("could not leave the consumer group: %s", err)

    # -- taking jobs -----------------------------------------------------------------------------------------------

    def _take(self) -> list[JobEntry]:
        """The first job of this worker's lanes (a picture waiting goes before any clip), plus the compatible ones
        right behind it (waiting up to batch_window for them)."""
        jobs: list[JobEntry] = []
        for lane in self.lanes if len(self.lanes) > 1 else ():
            jobs = self._parse(self.redis.xreadgroup(GROUP, self.name, {lane: ">"}, count=1))
            if jobs:
                break
        if not jobs:  # nothing waiting: wait for the first job of any lane (one of each may come)
            jobs = self._parse(self.redis.xreadgroup(GROUP, self.name, dict.fromkeys(self.lanes, ">"), count=1,
                                                     block=1000))
        if not jobs:
            return []
        first, *others = sorted(jobs, key=lambda job: kind_of(job.job.kind).rank)
        jobs = [first]
        most = kind_of(first.job.kind).max_batch(self.gpu, first.job)  # a clip fills the GPU alone
        deadline = time.monotonic() + self.settings.batch_window
        while len(jobs) < most:
            behind = self._undelivered(first.stream, most - len(jobs))
            same = 0
            for fields in behind:
                if fields.get(b"key") != first.key.encode():
                    break
                same += 1
            if same:
                reply = self.redis.xreadgroup(GROUP, self.name, {first.stream: ">"}, count=same)
                jobs += self._parse(reply)
            elif behind or time.monotonic() >= deadline:
                break  # an incompatible job is next, or the window is over: run what we have
            else:
                time.sleep(0.02)
        return jobs + others

    def _undelivered(self, lane: str, count: int) -> list[dict[bytes, bytes]]:
        for group in self.redis.xinfo_groups(lane):
            if text(group["name"]) == GROUP:
                last = text(group["last-delivered-id"])
                return [f for _, f in self.redis.xrange(lane, f"({last}", "+", count=count)]
        return []

    def _parse(self, reply: Any) -> list[JobEntry]:
        """The jobs of an XREADGROUP reply; entries that are not jobs this worker can run are dropped."""
        jobs = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                try:
                    jobs.append(parse_job(text(entry_id), fields, self.gpu, stream=text(stream)))
                except BadEntry as err:
                    self._drop_bad(text(stream), text(entry_id), fields, err)
        return jobs

    def _drop_bad(self, lane: str, entry_id: str, fields: dict, err: BadEntry) -> None:
        """Log it once, keep it in the dead-letter stream, acknowledge it (it is never claimed again), and tell
        the job's owner when the entry still names one."""
        logger.error("dropping bad job entry %s: %s (kept in %s)", entry_id, err, self.keys.dead)
        now = time.time()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, dead_letter(lane, entry_id, fields, str(err)), maxlen=DEAD_MAXLEN,
                      approximate=False)
            pipe.xack(lane, GROUP, entry_id)
            pipe.xdel(lane, entry_id)
            if err.job_id:
                pipe.delete(self.keys.image(err.job_id))
                pipe.zadd(self.keys.history, {json.dumps([now, 0.0, "bad_entry", err.job_id]): now})
            pipe.execute()
        if err.job_id and err.owner:
            self._event(err.owner, event_fields(err.job_id, Failed(BAD_ENTRY_REASON, ErrorKind.INTERNAL)))
        self.stats["failed"] += 1

    def _claim_stale(self) -> list[JobEntry]:
        """Jobs left pending by a worker that died (of the first of this worker's lanes that has any): claim them,
        or fail those that already crashed a worker."""
        for lane in self.lanes:
            if jobs := self._claim_stale_in(lane):
                return jobs
        return []

    def _claim_stale_in(self, lane: str) -> list[JobEntry]:
        idle_ms = int(self.settings.claim_idle * 1000)
        kind = self.keys.kind_of_lane(lane)
        most = kind_of(kind).max_batch(self.gpu) if kind is not None else 1
        stale = self.redis.xpending_range(lane, GROUP, min="-", max="+", count=most, idle=idle_ms)
        if not stale:
            return []
        claimed = self.redis.xclaim(lane, GROUP, self.name, min_idle_time=idle_ms,
                                    message_ids=[p["message_id"] for p in stale])
        deliveries = {text(p["message_id"]): p["times_delivered"] for p in stale}
        jobs = []
        for entry_id, fields in claimed:
            if not fields:  # deleted meanwhile (Redis 6 keeps such ids pending; 7 drops them itself)
                self.redis.xack(lane, GROUP, entry_id)
                continue
            try:
                job = parse_job(text(entry_id), fields, self.gpu, stream=lane)
            except BadEntry as err:
                self._drop_bad(lane, text(entry_id), fields, err)
                continue
            if deliveries.get(job.entry_id, 1) > self.settings.max_retries:
                logger.error("job %s crashed %d worker(s): giving up", job.id, deliveries[job.entry_id])
                self._answer_failed(job, CRASH_REASON, ErrorKind.INTERNAL)
            else:
                logger.warning("claimed job %s from a worker that went away", job.id)
                jobs.append(job)
        return jobs

    # -- serving ---------------------------------------------------------------------------------------------------

    def _serve(self, jobs: list[JobEntry]) -> None:
        in_hand: dict[str, list[str]] = {}
        for job in jobs:
            in_hand.setdefault(job.stream, []).append(job.entry_id)
        self.in_hand = in_hand
        try:
            self._serve_groups(jobs)
        finally:
            self.in_hand = {}

    def _serve_groups(self, jobs: list[JobEntry]) -> None:
        # Entries of one batch key read together are one batch, up to their kind's batch size: the key says they may
        # share an engine call (a clip is a batch of its own: its time limit is its own). Lower ranks go first.
        groups: list[list[Task]] = []
        filling: dict[str, list[Task]] = {}  # batch key → the group its next entry joins
        by_id: dict[str, JobEntry] = {}
        for entry in jobs:
            if self.redis.exists(self.keys.cancelled(entry.id)):
                self._ack(entry)
                continue
            image = self.redis.get(self.keys.image(entry.id))
            if image is None:
                self._answer_failed(entry, EXPIRED_REASON, ErrorKind.INTERNAL)
                continue
            by_id[entry.id] = entry
            group = filling.get(entry.key)
            if group is None or len(group) >= kind_of(entry.job.kind).max_batch(self.gpu, entry.job):
                group = filling[entry.key] = []
                groups.append(group)
            group.append(Task(entry.id, dataclasses.replace(entry.job, image=image)))
        assert self.workshop is not None  # serve() loads it before taking any job
        for tasks in sorted(groups, key=lambda tasks: kind_of(tasks[0].job.kind).rank):
            self.stats["busy"] = True
            self.stats["batches"] += 1
            try:
                run_batch(self.workshop, Batch(tuple(tasks), by_id[tasks[0].id].timeout),
                          lambda message: self._relay(message, by_id))
            finally:
                self.stats["busy"] = False

    def _relay(self, message: Message, jobs: dict[str, JobEntry]) -> None:
        """The worker loop's messages → the owners' event streams (and the result store)."""
        if not isinstance(message, Update):
            return
        event = message.event
        if isinstance(event, Done):
            job = jobs[message.ids[0]]
            meta, image = result_parts(event)
            ttl = int(self.settings.result_ttl)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.result(job.id), meta, ex=ttl)
                pipe.set(self.keys.result_image(job.id), image, ex=ttl)
                pipe.execute()
            self._event(job.owner, event_fields(job.id, None))
            self._ack(job, "done")
            self.stats["done"] += 1
        elif isinstance(event, Failed):
            for job_id in message.ids:
                self._answer_failed(jobs[job_id], event.reason, event.kind)
        elif isinstance(event, Started | Progress):
            for job_id in message.ids:
                self._event(jobs[job_id].owner, event_fields(job_id, event))

    def _answer_failed(self, job: JobEntry, reason: str, kind: ErrorKind) -> None:
        self._event(job.owner, event_fields(job.id, Failed(reason, kind)))
        self._ack(job, kind.value)
        self.stats["failed"] += 1

    def _event(self, owner: str, fields: dict[str, str]) -> None:
        stream = self.keys.events(owner)
        self.redis.xadd(stream, fields, maxlen=EVENTS_MAXLEN, approximate=True)
        self.redis.expire(stream, int(self.settings.result_ttl))

    def _ack(self, job: JobEntry, outcome: str | None = None) -> None:
        """Answered: the entry leaves the stream, the photo leaves Redis, the outcome joins the last hour's."""
        now = time.time()
        lane = job.stream or self.keys.lane(job.job.kind)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(lane, GROUP, job.entry_id)
            pipe.xdel(lane, job.entry_id)
            pipe.delete(self.keys.image(job.id))
            if outcome is not None:
                record = json.dumps([now, now - job.submitted, outcome, job.id])
                pipe.zadd(self.keys.history, {record: now})
                pipe.zremrangebyscore(self.keys.history, "-inf", now - 3600)
            pipe.execute()

    def _heartbeat(self) -> None:
        """Tell status readers we live, and keep our jobs' idle time low so nobody claims them while we work."""
        while not self.stop.is_set():
            try:
                for lane, in_hand in list(self.in_hand.items()):
                    self.redis.xclaim(lane, GROUP, self.name, min_idle_time=0, message_ids=in_hand, justid=True)
                beat = self.info | {"seen": time.time(), "done": self.stats["done"], "failed": self.stats["failed"],
                                    "batches": self.stats["batches"], "busy": self.stats["busy"],
                                    "gpu_memory_mb": gpu_memory_mb()}
                self.redis.hset(self.keys.workers, self.name, json.dumps(beat))
            except Exception as err:
                logger.debug("heartbeat failed: %s", err)
            self.stop.wait(self.settings.heartbeat)

