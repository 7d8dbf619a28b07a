"""`claybot worker` on the Redis backend: take compatible jobs from the shared stream, stylize, answer the owner.

The same batch loop (``pipeline.gpu.worker.run_batch``) as the local worker; only where jobs come from and where the
answers go differ. A job is acknowledged and deleted only once its answer is stored, so a worker that dies
mid-job leaves it pending for another worker to claim after ``queue.claim_idle`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from pipeline.core.jobs import CRASH_REASON, ErrorKind, batch_message, job_message
from pipeline.core.redis_queue import EVENTS_MAXLEN, GROUP, Keys, text
from pipeline.core.settings import GpuSettings, QueueSettings
from pipeline.core.status import gpu_memory_mb
from pipeline.gpu.worker import run_batch

logger = logging.getLogger(__name__)

EXPIRED_REASON = "Your photo waited too long and expired; please send it again."


def connect(url: str):
    """A Redis client that rides out a Redis restart (retries with backoff) instead of losing the batch."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), 30),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class _Job:
    """One stream entry, parsed."""

    def __init__(self, entry_id: str, fields: dict[str, str]) -> None:
        self.entry_id = entry_id
        self.id = fields["id"]
        self.owner = fields["owner"]
        self.key = fields["key"]
        self.style = fields["style"]
        self.strength = float(fields["strength"])
        self.seed = int(fields["seed"])
        self.trigger_weight = float(fields["trigger_weight"]) if fields.get("trigger_weight") else None
        self.max_rating = fields.get("max_rating") or None
        self.structure_scale = float(fields["structure_scale"]) if fields.get("structure_scale") else None
        self.identity_scale = float(fields["identity_scale"]) if fields.get("identity_scale") else None
        self.timeout = float(fields["timeout"])
        self.submitted = float(fields.get("submitted") or time.time())


class RedisWorker:
    """One worker process serving the shared stream."""

    def __init__(self, gpu: GpuSettings, settings: QueueSettings, *, name: str | None = None) -> None:
        self.gpu, self.settings = gpu, settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = Keys(settings.redis_prefix)
        self.redis = connect(settings.redis_url)
        self.stop = threading.Event()
        self.stats: dict[str, Any] = {"done": 0, "failed": 0, "batches": 0, "busy": False}
        self.in_hand: set[str] = set()  # stream entries this worker is working on
        self.info: dict[str, Any] = {}
        self.stylizer = None

    def ensure_group(self) -> None:
        """Create the stream and consumer group if this worker is the first."""
        import redis

        try:
            self.redis.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def serve(self, *, warm_up: bool = True) -> None:
        """Load the models, then take and answer jobs until ``stop`` is set."""
        from pipeline.gpu.stylizer import Stylizer

        self.ensure_group()
        self.stylizer = Stylizer(self.gpu)
        if warm_up:
            self.stylizer.warm_up()
        self.info = {"device": str(self.stylizer.device), "dtype": str(self.stylizer.dtype).removeprefix("torch."),
                     "max_batch": self.gpu.pipeline.max_batch, "pid": os.getpid(), "since": time.time()}
        threading.Thread(target=self._heartbeat, name="claybot-heartbeat", daemon=True).start()
        logger.info("worker %s serving %s on %s", self.name, self.keys.jobs, self.info["device"])
        while not self.stop.is_set():
            try:
                jobs = self._claim_stale() or self._take()
            except Exception as err:  # Redis away for longer than the retries: wait and go on
                logger.warning("cannot read jobs from redis (%s); retrying", err)
                time.sleep(1.0)
                continue
            if jobs:
                self._serve(jobs)
        self.redis.hdel(self.keys.workers, self.name)

    # -- taking jobs -----------------------------------------------------------------------------------------------

    def _take(self) -> list[_Job]:
        """One job, plus the compatible ones right behind it (waiting up to batch_window for them)."""
        reply = self.redis.xreadgroup(GROUP, self.name, {self.keys.jobs: ">"}, count=1, block=1000)
        jobs = [_Job(text(i), _fields(f)) for _, entries in reply for i, f in entries]
        if not jobs:
            return []
        deadline = time.monotonic() + self.settings.batch_window
        while len(jobs) < self.gpu.pipeline.max_batch:
            behind = self._undelivered(self.gpu.pipeline.max_batch - len(jobs))
            same = 0
            for fields in behind:
                if fields["key"] != jobs[0].key:
                    break
                same += 1
            if same:
                reply = self.redis.xreadgroup(GROUP, self.name, {self.keys.jobs: ">"}, count=same)
                jobs += [_Job(text(i), _fields(f)) for _, entries in reply for i, f in entries]
            elif behind or time.monotonic() >= deadline:
                break  # an incompatible job is next, or the window is over: run what we have
            else:
                time.sleep(0.02)
        return jobs

    def _undelivered(self, count: int) -> list[dict[str, str]]:
        for group in self.redis.xinfo_groups(self.keys.jobs):
            if text(group["name"]) == GROUP:
                last = text(group["last-delivered-id"])
                return [_fields(f) for _, f in self.redis.xrange(self.keys.jobs, f"({last}", "+", count=count)]
        return []

    def _claim_stale(self) -> list[_Job]:
        """Jobs left pending by a worker that died: claim them, or fail those that already crashed a worker."""
        idle_ms = int(self.settings.claim_idle * 1000)
        stale = self.redis.xpending_range(self.keys.jobs, GROUP, min="-", max="+",
                                          count=self.gpu.pipeline.max_batch, idle=idle_ms)
        if not stale:
            return []
        claimed = self.redis.xclaim(self.keys.jobs, GROUP, self.name, min_idle_time=idle_ms,
                                    message_ids=[p["message_id"] for p in stale])
        deliveries = {text(p["message_id"]): p["times_delivered"] for p in stale}
        jobs = []
        for entry_id, fields in claimed:
            if not fields:  # deleted meanwhile
                continue
            job = _Job(text(entry_id), _fields(fields))
            if deliveries.get(job.entry_id, 1) > self.settings.max_retries:
                logger.error("job %s crashed %d worker(s): giving up", job.id, deliveries[job.entry_id])
                self._answer_failed(job, CRASH_REASON, ErrorKind.INTERNAL)
            else:
                logger.warning("claimed job %s from a worker that went away", job.id)
                jobs.append(job)
        return jobs

    # -- serving ---------------------------------------------------------------------------------------------------

    def _serve(self, jobs: list[_Job]) -> None:
        self.in_hand = {job.entry_id for job in jobs}
        try:
            self._serve_groups(jobs)
        finally:
            self.in_hand = set()

    def _serve_groups(self, jobs: list[_Job]) -> None:
        groups: dict[str, list[tuple[_Job, bytes]]] = {}
        for job in jobs:
            if self.redis.exists(self.keys.cancelled(job.id)):
                self._ack(job)
                continue
            image = self.redis.get(self.keys.image(job.id))
            if image is None:
                self._answer_failed(job, EXPIRED_REASON, ErrorKind.INTERNAL)
                continue
            groups.setdefault(job.key, []).append((job, image))
        for group in groups.values():
            by_id = {job.id: job for job, _ in group}
            first = group[0][0]
            message = batch_message(first, [job_message(job.id, image, job) for job, image in group], first.timeout)
            self.stats["busy"] = True
            self.stats["batches"] += 1
            try:
                run_batch(self.stylizer, message, lambda m, by_id=by_id: self._relay(m, by_id))
            finally:
                self.stats["busy"] = False

    def _relay(self, message: dict[str, Any], jobs: dict[str, _Job]) -> None:
        """The worker loop's messages → the owners' event streams (and the result store)."""
        op = message["op"]
        if op in ("started", "progress"):
            for job_id in message["ids"]:
                fields = {"op": op, "id": job_id}
                fields |= ({"batch_size": len(message["ids"])} if op == "started"
                           else {"step": message["step"], "total": message["total"]})
                self._event(jobs[job_id].owner, fields)
        elif op == "done":
            job = jobs[message["id"]]
            result = dict(message["result"])
            image = result.pop("image")
            ttl = int(self.settings.result_ttl)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.result(job.id), json.dumps(result), ex=ttl)
                pipe.set(self.keys.result_image(job.id), image, ex=ttl)
                pipe.execute()
            self._event(job.owner, {"op": "done", "id": job.id})
            self._ack(job, "done")
            self.stats["done"] += 1
        elif op == "failed":
            job = jobs[message["id"]]
            self._answer_failed(job, message["reason"], ErrorKind(message["kind"]))

    def _answer_failed(self, job: _Job, reason: str, kind: ErrorKind) -> None:
        self._event(job.owner, {"op": "failed", "id": job.id, "reason": reason, "kind": kind.value})
        self._ack(job, kind.value)
        self.stats["failed"] += 1

    def _event(self, owner: str, fields: dict[str, Any]) -> None:
        stream = self.keys.events(owner)
        self.redis.xadd(stream, {k: str(v) for k, v in fields.items()}, maxlen=EVENTS_MAXLEN, approximate=True)
        self.redis.expire(stream, int(self.settings.result_ttl))

    def _ack(self, job: _Job, outcome: str | None = None) -> None:
        """Answered: the entry leaves the stream, the photo leaves Redis, the outcome joins the last hour's."""
        now = time.time()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.jobs, GROUP, job.entry_id)
            pipe.xdel(self.keys.jobs, job.entry_id)
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
                if in_hand := list(self.in_hand):
                    self.redis.xclaim(self.keys.jobs, GROUP, self.name, min_idle_time=0, message_ids=in_hand,
                                      justid=True)
                beat = self.info | {"seen": time.time(), "done": self.stats["done"], "failed": self.stats["failed"],
                                    "batches": self.stats["batches"], "busy": self.stats["busy"],
                                    "gpu_memory_mb": gpu_memory_mb()}
                self.redis.hset(self.keys.workers, self.name, json.dumps(beat))
            except Exception as err:
                logger.debug("heartbeat failed: %s", err)
            self.stop.wait(self.settings.heartbeat)


def _fields(fields: dict) -> dict[str, str]:
    return {text(k): text(v) for k, v in fields.items()}
