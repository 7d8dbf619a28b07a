"""The Redis backend's lanes: key names, the streams jobs wait in (one per kind) and their consumer group, their
depth, and what `claybot status` reads from Redis. Shared by the chat side (``pipeline.core.redis_queue``) and the
workers (``pipeline.gpu.redis_worker``); redis.asyncio only, no torch."""

from __future__ import annotations

import json
import time
from typing import Any

from pipeline.core.kinds import by_rank, kind_of
from pipeline.core.redis_entries import BadEntry, parse_heartbeat
from pipeline.core.settings import QueueSettings

GROUP = "workers"
WORKER_FORGET = 3600.0  # seconds after which a silent worker leaves the workers hash (and `claybot status`)


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = f"{prefix}:jobs"  # the first lane's (the pictures': the name it had before clips came)
        self.workers = f"{prefix}:workers"
        self.dead = f"{prefix}:dead"
        self.lanes = tuple(self.lane(kind.name) for kind in by_rank())  # in the order workers take them

    def lane(self, kind: str) -> str:
        """The stream a kind of job waits in (its kind says which)."""
        suffix = kind_of(kind).lane_name()
        return f"{self.jobs}:{suffix}" if suffix else self.jobs

    def kind_of_lane(self, lane: str) -> str | None:
        """The kind whose jobs wait in ``lane``; None for a stream that is no lane."""
        return next((kind.name for kind in by_rank() if self.lane(kind.name) == lane), None)

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


async def ensure_group(client: Any, keys: Keys) -> None:
    """Create each lane's stream and its consumer group once (idempotent)."""
    from redis.exceptions import ResponseError

    for lane in keys.lanes:
        try:
            await client.xgroup_create(lane, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise


async def queue_depth(client: Any, keys: Keys, *, limit: int) -> tuple[int, int]:
    """(waiting, running) over every lane: entries not yet delivered to a worker (counted exactly up to
    ``limit``), and delivered but not yet answered."""
    waiting = running = 0
    for lane in keys.lanes:
        lane_waiting, lane_running = await lane_depth(client, lane, limit=limit)
        waiting, running = waiting + lane_waiting, running + lane_running
    return waiting, running


async def lane_depth(client: Any, stream: str, *, limit: int) -> tuple[int, int]:
    """(waiting, running) of one lane."""
    from redis.exceptions import ResponseError

    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return 0, 0
    for group in groups:
        if text(group["name"]) == GROUP:
            lag = group.get("lag")
            if lag is None:
                # Redis 6 has no lag, and Redis 7 reports none once an entry behind the group's cursor was
                # deleted (a cancel): count what lies past the last delivered entry instead.
                last = text(group["last-delivered-id"])
                lag = len(await client.xrange(stream, f"({last}", "+", count=limit))
            return int(lag), int(group["pending"])
    return 0, 0


def kinds_served(beat: dict[str, Any]) -> set[str]:
    """The kinds of job a worker's heartbeat says it serves (a worker from before kinds: the first lane's)."""
    named = beat.get("kinds")
    if not isinstance(named, list):
        return {by_rank()[0].name}
    return {kind.name for kind in by_rank() if kind.name in named}


def text(value: Any, errors: str = "strict") -> str:
    """Redis replies are bytes; names and ids are text."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def stream_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("<ms>-<seq>") as numbers: as text, "5-10" would sort before "5-9"."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def redis_status(settings: QueueSettings) -> dict[str, Any]:
    """`claybot status` for the Redis backend: the shared queue, live workers and the last hour's jobs."""
    import redis.asyncio as redis

    keys = Keys(settings.redis_prefix)
    client = redis.from_url(settings.redis_url)
    try:
        waiting, running = await queue_depth(client, keys, limit=settings.max_queue)
        now = time.time()
        workers = []
        for name, raw in (await client.hgetall(keys.workers)).items():
            try:
                info = parse_heartbeat(raw)
            except BadEntry:
                continue
            alive = now - info["seen"] < 3 * settings.heartbeat
            if alive or now - info["seen"] < WORKER_FORGET:
                workers.append({"name": text(name), "alive": alive, **info})
        history = []
        for line in await client.zrangebyscore(keys.history, now - 3600, "+inf"):
            try:
                # Members only (no withscores), though redis-py's type adds the (member, score) pairs
                record = json.loads(line)  # type: ignore[arg-type]
                history.append([float(record[0]), float(record[1]), str(record[2]), *record[3:]])
            except (ValueError, TypeError, IndexError):
                continue
    finally:
        await client.aclose()
    return {"backend": "redis", "waiting": waiting, "running": running, "workers": workers, "history": history}
