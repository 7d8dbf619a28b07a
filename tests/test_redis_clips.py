"""Clips on the Redis backend, with a real redis-server and real `claybot worker` processes (tiny SDXL, tiny Wan):
pictures go first, a worker serves the kinds ``queue.worker_kinds`` names and says so, and a clip nobody serves is
answered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import tomlkit

from bot.config import load_config
from pipeline.core.intake import take_in
from pipeline.core.jobs import Done, ErrorKind, Failed, QueueBusy, Queued, Started
from pipeline.core.kinds import kind_of
from pipeline.core.redis_queue import redis_status
from pipeline.core.status import render
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import follow_in_order, photo_bytes
from tests.redis_server import RedisServer, redis_config, redis_queue, start_worker, stop_worker

PHOTO = photo_bytes((128, 96))
LONG = 12  # seconds of a clip long enough to be still running while the test queues more (97 frames)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    """One redis-server for the module; each test keeps to its own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))


def clip_config(tiny_config_path: Path, folder: Path, url: str, video, kinds: list[str] | None = None,
                **queue) -> Path:
    """The tiny config on Redis with clips on (the tiny Wan: 9 frames at 8 fps, 2 steps), for a worker serving
    ``kinds`` (None: the default)."""
    path = redis_config(tiny_config_path, folder, url, heartbeat=0.5, batch_window=0.0, position_interval=0.5,
                        **queue)
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    if kinds is not None:
        doc["queue"]["worker_kinds"] = kinds
    doc["animate"].update({"enabled": True, "model": str(video.wan_folder), "frames": 9, "fps": 8, "steps": 2,
                           "max_seconds": 16.0,
                           "megapixels": 0.0123})
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def _serving(queue, kinds: set[str], count: int = 1) -> None:
    """Wait until ``count`` workers serving exactly ``kinds`` have loaded their models."""
    async def ready():
        found = [info for info in (await queue.workers()).values() if set(info.get("kinds", ())) == kinds]
        return len(found) >= count
    await _until(ready, 180, f"no worker serving {kinds} came up")


async def test_a_picture_sent_while_a_clip_runs_starts_before_the_clip_waiting_ahead_of_it(redis, video,
                                                                                           tiny_config_path, tmp_path):
    config = clip_config(tiny_config_path, tmp_path, redis.url, video, redis_prefix="one")  # serves both kinds
    worker = start_worker(config, "both")
    queue = redis_queue(config, "chat-a")
    await queue.start()
    try:
        await _serving(queue, {"picture", "clip"})
        gpu = queue.gpu
        a, b = [await take_in(gpu, PHOTO, kind="clip", seed=seed, options={"seconds": LONG}) for seed in (1, 2)]
        clip_a = await queue.submit(a)
        async for event in clip_a.events():  # A is running
            if isinstance(event, Started):
                break
        clip_b = await queue.submit(b)
        picture = await queue.submit(await take_in(gpu, PHOTO, seed=3))
        # Places as the worker takes them: P behind the running clip only, B behind A and P.
        assert await queue._positions() == {clip_b.id: 3, picture.id: 2}, "clip A ended early: nothing proved"
        order: list = []
        events = await follow_in_order({"A": clip_a, "B": clip_b, "P": picture}, order)

        assert all(isinstance(e[-1], Done) for e in events.values()), events
        assert order.index(("P", "Done")) < order.index(("B", "Started")), order
        assert events["P"][0] == Queued(2) and events["B"][0] == Queued(2)  # at submit: A running, B not yet behind P
    finally:
        await queue.close()
        stop_worker(worker)


@pytest.fixture(scope="module")
def pictures_worker(redis, video, tiny_config_path, tmp_path_factory):
    """A worker serving pictures only, on prefix "split" (its config has clips on: the key alone decides)."""
    folder = tmp_path_factory.mktemp("split")
    config = clip_config(tiny_config_path, folder, redis.url, video, kinds=["picture"], redis_prefix="split",
                         no_worker_timeout=3.0)
    worker = start_worker(config, "pictures")
    yield config
    stop_worker(worker)


async def test_a_clip_no_worker_serves_is_answered_and_pictures_go_on(pictures_worker):
    queue = redis_queue(pictures_worker, "chat-b")
    await queue.start()
    await _serving(queue, {"picture"})
    await queue.close()
    queue = redis_queue(pictures_worker, "chat-b")  # a chat process starting while a pictures-only worker runs
    await queue.start()
    try:
        # Sent at once: a chat process gives workers no_worker_timeout (3 s) from its start to show up.
        clip = await queue.submit(await take_in(queue.gpu, PHOTO, kind="clip", seed=4))
        picture = await queue.submit(await take_in(queue.gpu, PHOTO, seed=5))
        assert isinstance(await picture.result(timeout=120), Done)
        with pytest.raises(Exception) as refused:
            await clip.result(timeout=30)  # after no_worker_timeout (3 s) with no clip worker alive
        assert refused.value.failed == Failed(kind_of("clip").no_worker_reason, ErrorKind.BUSY)
        with pytest.raises(QueueBusy, match="No clip maker is running"):  # later clips hear it at once
            await queue.submit(await take_in(queue.gpu, PHOTO, kind="clip", seed=6))
        assert await queue.redis.xlen(queue.keys.lane("clip")) == 0  # the clip left its lane
        assert isinstance(await (await queue.submit(await take_in(queue.gpu, PHOTO, seed=7))).result(120), Done)
    finally:
        await queue.close()


async def test_pictures_and_clips_each_served_by_their_own_worker(pictures_worker):
    clips = pictures_worker.with_name("clips.toml")
    doc = tomlkit.parse(pictures_worker.read_text(encoding="utf-8"))
    doc["queue"]["worker_kinds"] = ["clip"]
    clips.write_text(tomlkit.dumps(doc), encoding="utf-8")
    worker = start_worker(clips, "clips")
    queue = redis_queue(pictures_worker, "chat-c")
    await queue.start()
    try:
        await _serving(queue, {"clip"})
        clip = await queue.submit(await take_in(queue.gpu, PHOTO, kind="clip", seed=8, options={"seconds": LONG}))
        async for event in clip.events():
            if isinstance(event, Started):
                break
        picture = await queue.submit(await take_in(queue.gpu, PHOTO, seed=9))
        order: list = []
        events = await follow_in_order({"clip": clip, "picture": picture}, order)
        assert all(isinstance(e[-1], Done) for e in events.values()), events
        assert events["picture"][0] == Queued(2)  # it counts the clip running (on another GPU)
        assert order.index(("picture", "Done")) < order.index(("clip", "Done")), order  # not behind the clip

        async def done_by() -> dict[str, int] | None:
            done = {tuple(info["kinds"]): info["done"] for info in (await queue.workers()).values()}
            return done if done.get(("clip",)) == 1 and done.get(("picture",), 0) >= 1 else None
        await _until(done_by, 30, "the heartbeats never counted the jobs")
        shown = render(await redis_status(load_config(pictures_worker).queue))
        assert shown.count("serving pictures\n") + shown.endswith("serving pictures") == 1
        assert "serving clips" in shown and "serving pictures and clips" not in shown
        log = (clips.parent / "clips.log").read_text(encoding="utf-8")
        assert "engine animate loaded" in log and "engine sdxl loaded" not in log  # its GPU is spared SDXL
    finally:
        await queue.close()
        stop_worker(worker)


def test_worker_kinds_is_checked_against_animate(tiny_config_path, tmp_path):
    from pipeline.core.errors import ClaybotError
    from pipeline.core.kinds import worker_kinds
    from pipeline.core.settings import AnimateSettings, GpuSettings

    on, off = GpuSettings(animate=AnimateSettings(enabled=True)), GpuSettings()
    picture, clip = kind_of("picture"), kind_of("clip")
    assert worker_kinds(on, []) == (picture, clip)
    assert worker_kinds(off, []) == (picture,)
    assert worker_kinds(on, ["clip", "picture", "clip"]) == (picture, clip)
    with pytest.raises(ClaybotError, match=r"queue.worker_kinds names 'clip', but this config does not make it: "
                                           r".*\[animate\] enabled = true"):
        worker_kinds(off, ["clip"])
    doc = tomlkit.parse(tiny_config_path.read_text(encoding="utf-8"))
    doc["queue"]["worker_kinds"] = ["pictures"]
    bad = tmp_path / "bad.toml"
    bad.write_text(tomlkit.dumps(doc), encoding="utf-8")
    config = load_config(bad)  # kinds may come from plug-ins: a name is checked when the worker starts
    with pytest.raises(ClaybotError, match=r"queue\.worker_kinds names 'pictures', which is no kind of job"):
        worker_kinds(config.gpu(), config.queue.worker_kinds)


def test_status_shows_only_the_kinds_claybot_knows_from_a_heartbeat():
    worker = {"name": "gpu2", "alive": True, "device": "cuda", "max_batch": 4, "pid": 7,
              "kinds": ["clip", "\x1b[31m" + "x" * 10_000]}
    shown = render({"backend": "redis", "waiting": 0, "running": 0, "workers": [worker]})
    assert shown.splitlines()[2] == "worker:   gpu2 alive on cuda (batch up to 4, pid 7), serving clips"
    assert "x" * 100 not in shown and "\x1b" not in shown
    assert "serving" not in render({"backend": "redis", "waiting": 0, "running": 0,
                                    "workers": [worker | {"kinds": "picture"}]})  # not a list: an old worker


def test_a_heartbeat_says_which_kinds_its_worker_serves_and_an_old_one_means_pictures():
    from pipeline.core.redis_lanes import kinds_served

    assert kinds_served({"seen": 1.0, "kinds": ["clip"]}) == {"clip"}
    assert kinds_served({"seen": 1.0, "kinds": ["picture", "clip", "sound", 5]}) == {"picture", "clip"}
    assert kinds_served({"seen": 1.0}) == {"picture"}  # a worker from before clips
    assert kinds_served({"seen": 1.0, "kinds": "clip"}) == {"picture"}  # not a list: as an old worker
    assert kinds_served({"seen": 1.0, "kinds": []}) == set()
