"""A clip accepted before a restart (local backend) is answered after it: the journal kept the settled clip job and
its picture, and the restarted chat process runs it again through the queue and posts the MP4 where it was asked.

A chained request (a clip of a person's photo: the photo made clay first, then that picture animated) is journaled
as one: a chat process that dies between the two jobs leaves the first job AND what comes after it in the journal,
and the restarted process makes the picture, then the clip. The module's worker also serves the toy third kind of
tests/test_kinds.py (one worker for all: each start costs seconds)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import av
import pytest
from PIL import Image, ImageChops

import tests.echo_kind  # noqa: F401  (registers "echo" in this process, as [pipeline] plugins does)
from bot.ask import Ask
from bot.flow import RequestFlow
from bot.journal import Then
from bot.store import ClaybotDatabase
from pipeline.core.intake import take_in
from pipeline.core.jobs import MP4, Done, Job, JobHandle, QueueBusy
from pipeline.core.kinds import kind_of
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import follow_in_order, photo_bytes

CHAT = "7001"
CHAIN_CHAT = "7002"
PHOTO = photo_bytes((160, 120))


@pytest.fixture(scope="module")
def clip_config(tiny_config, tmp_path_factory):
    """The whole tiny config with clips on (the tiny Wan: 9 frames at 8 fps)."""
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = AnimateSettings(enabled=True, max_seconds=16.0, model=str(video.wan_folder), frames=9, fps=8, steps=2,
                              megapixels=0.0123, timeout=300)
    return tiny_config.model_copy(update={"animate": animate})


@pytest.fixture(scope="module")
def queue_gpu(clip_config):
    """The module's `queue` (tests/conftest.py) runs a worker with the tiny Wan loaded: the restarted process's."""
    gpu = clip_config.gpu()
    return gpu.model_copy(update={"pipeline": gpu.pipeline.model_copy(update={"plugins": ["tests.echo_kind"]})})


def _pixels(image: bytes) -> Image.Image:
    return Image.open(io.BytesIO(image)).convert("RGB")


class Chat:
    """A front end that keeps what it is asked to post (the platforms' own tests cover how it looks there)."""

    name = "telegram"

    def __init__(self) -> None:
        self.posted: list[tuple[str, Done | None, str, dict[str, Any]]] = []

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        self.posted.append((chat_id, done, text, answer_to))


@pytest.mark.asyncio(loop_scope="module")
async def test_a_clip_waiting_when_the_chat_process_died_is_made_and_posted_after_the_restart(queue, clip_config,
                                                                                           tmp_path):
    database = tmp_path / "claybot.sqlite3"
    job = await take_in(queue.gpu, photo_bytes((160, 120)), kind="clip", seed=11, options={"seconds": 2},
                        reply_to=("telegram", CHAT))
    # Before: accepted and queued (what RequestFlow.handle journals), then the process died with it waiting.
    async with ClaybotDatabase(database) as store:
        journal = RequestFlow(queue, clip_config, store=store).journal
        assert journal is not None
        ticket = await journal.admit("telegram", "42", CHAT, CHAT, {"message_id": 5})
        await journal.queued(ticket, "lost-with-the-old-process", job)

    # After: a new process on the same database answers what its journal holds.
    async with ClaybotDatabase(database) as store:
        flow = RequestFlow(queue, clip_config, store=store)
        entries = await flow.unanswered()
        assert [(entry.job.kind, entry.job.seed, entry.job.spec.frames) for entry in entries if entry.job] == [
            ("clip", 11, 17)]  # the same settled clip: 2 s at 8 fps
        chat = Chat()
        assert await flow.recover({"telegram": chat}, entries) == 1
        await asyncio.wait_for(asyncio.gather(*flow.recovering.tasks), 300)
        assert await flow.unanswered() == []  # answered in the journal too

    (chat_id, done, _, answer_to), = chat.posted
    assert chat_id == CHAT and answer_to == {"message_id": 5}  # a reply to the picture it was asked on
    assert isinstance(done, Done) and done.media == MP4 and done.seed == 11
    with av.open(io.BytesIO(done.image)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 17


class Silent:
    """The live request's Reply: the process dies before it answers anything worth keeping."""

    private = False

    async def status(self, text: str) -> None:
        pass

    async def result(self, done: Done, caption: str) -> None:
        raise AssertionError("the dying process answered")

    async def error(self, text: str, *, offer=()) -> None:
        raise AssertionError(f"the dying process refused: {text}")

    def placeholder(self) -> dict[str, Any]:
        return {}


class DiesBeforeTheClip:
    """The old process's queue: it runs the picture; the clip's submit never returns (the process is killed
    there, between the two jobs)."""

    def __init__(self, queue) -> None:
        self.queue, self.gpu, self.between = queue, queue.gpu, asyncio.Event()

    async def check_room(self, coming: int = 0, kinds: tuple[str, ...] = ()) -> None:
        await self.queue.check_room(coming, kinds)

    async def submit(self, job: Job) -> JobHandle:
        if job.kind == "clip":
            self.between.set()
            await asyncio.Event().wait()  # cancelled with the task: the kill
        return await self.queue.submit(job)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_restart_between_the_picture_and_the_clip_still_posts_the_clip(queue, clip_config, tmp_path):
    database = tmp_path / "claybot.sqlite3"

    async def photo() -> bytes:
        return PHOTO

    ask = Ask("telegram", "42", CHAIN_CHAT, photo, size=len(PHOTO), seed=23, kind="clip", options={"seconds": 2},
              first="picture", answer_to={"message_id": 9})
    async with ClaybotDatabase(database) as store:
        dying = DiesBeforeTheClip(queue)
        flow = RequestFlow(dying, clip_config, store=store)  # type: ignore[arg-type]
        live = asyncio.create_task(flow.handle(ask, Silent()))
        await asyncio.wait_for(dying.between.wait(), 300)  # the picture is made; the clip is about to be queued
        live.cancel()  # killed: nothing after this point of the old process runs
        with pytest.raises(asyncio.CancelledError):
            await live
        (entry,) = await flow.unanswered()
        assert entry.job is not None and entry.job.kind == "picture"  # the first job, as it was queued
        assert entry.then == Then("clip", {"seconds": 2})  # and what the person asked for after it

    async with ClaybotDatabase(database) as store:  # the restarted process, on the same database
        flow = RequestFlow(queue, clip_config, store=store)
        entries = await flow.unanswered()
        chat = Chat()
        assert await flow.recover({"telegram": chat}, entries) == 1
        await asyncio.wait_for(asyncio.gather(*flow.recovering.tasks), 300)
        assert await flow.unanswered() == []  # answered in the journal too

    (chat_id, done, _, answer_to), = chat.posted  # one answer: the clip, not the picture
    assert chat_id == CHAIN_CHAT and answer_to == {"message_id": 9}
    assert isinstance(done, Done) and done.media == MP4 and done.seed == 23
    with av.open(io.BytesIO(done.image)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 17  # 2 s at 8 fps: the clip's own option kept


class Kept:
    """A Reply that keeps what the person is shown."""

    private = False

    def __init__(self) -> None:
        self.results: list[tuple[Done, str]] = []
        self.errors: list[str] = []

    async def status(self, text: str) -> None:
        pass

    async def result(self, done: Done, caption: str) -> None:
        self.results.append((done, caption))

    async def error(self, text: str, *, offer=()) -> None:
        self.errors.append(text)

    def placeholder(self) -> dict[str, Any]:
        return {}


class NoClipMaker(DiesBeforeTheClip):
    """A queue whose clips cannot be queued any more once the picture is made (the clip worker went away)."""

    async def submit(self, job: Job) -> JobHandle:
        if job.kind == "clip":
            raise QueueBusy(kind_of("clip").no_worker_reason)
        return await self.queue.submit(job)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_clip_that_cannot_be_queued_after_its_picture_still_posts_the_picture(queue, clip_config, tmp_path):
    async def photo() -> bytes:
        return PHOTO

    ask = Ask("telegram", "43", CHAIN_CHAT, photo, size=len(PHOTO), seed=24, kind="clip", first="picture")
    kept = Kept()
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        flow = RequestFlow(NoClipMaker(queue), clip_config, store=store)  # type: ignore[arg-type]
        await asyncio.wait_for(flow.handle(ask, kept), 300)
        assert await flow.unanswered() == []
    assert kept.errors == []
    (done, caption), = kept.results  # the clay picture, not lost: with why no clip follows
    assert done.media == "image/png" and done.seed == 24
    assert caption.endswith(kind_of("clip").no_worker_reason)


async def test_redis_admission_asks_for_a_worker_of_every_kind_the_request_will_queue(server, tiny_config):
    from pipeline.core.redis_queue import RedisQueue

    settings = tiny_config.queue.model_copy(update={"backend": "redis", "redis_url": server.url,
                                                    "no_worker_timeout": 60.0})
    queue = RedisQueue(tiny_config.gpu(), settings, owner="admission")
    await queue.start()
    try:
        queue._worker_seen.update({"picture": time.time(), "clip": time.time() - 3600})  # a pictures-only worker
        await queue.check_room(0, ("picture",))
        with pytest.raises(QueueBusy, match="No clip maker is running"):
            await queue.check_room(0, ("picture", "clip"))  # a clip of a person's photo: refused before the picture
    finally:
        await queue.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_third_kind_runs_in_the_local_queue_in_its_rank_between_pictures_and_clips(queue):
    """The toy third kind of tests/test_kinds.py ("echo", a plugin) through this module's local queue and worker."""
    three_kinds = queue.gpu
    if True:  # the module's queue: started once, closed by its fixture
        assert queue.snapshot()["workers"][0]["kinds"] == ["picture", "echo", "clip"]  # what the worker serves
        jobs = {"clip": await take_in(three_kinds, PHOTO, kind="clip", seed=1),
                "echo": await take_in(three_kinds, PHOTO, kind="echo", seed=2, options={"steps": 3}),
                "picture": await take_in(three_kinds, PHOTO, seed=3)}
        # All three wait before the worker takes any: it takes them by rank, whatever the order they came in.
        handles = {name: await queue.submit(job) for name, job in jobs.items()}
        order: list = []
        events = await follow_in_order(handles, order)
    assert all(isinstance(e[-1], Done) for e in events.values()), events
    started = [name for name, event in order if event == "Started"]
    assert started == ["picture", "echo", "clip"], order
    echo = events["echo"][-1]
    assert isinstance(echo, Done) and echo.prompt == "echo" and echo.seed == 2
    assert [e.step for e in events["echo"] if type(e).__name__ == "Progress"] == [1, 2, 3]  # its own option
    # the photo itself came back, pixel for pixel (the JPEG decoded, then encoded as a PNG)
    assert ImageChops.difference(_pixels(echo.image), _pixels(PHOTO)).getbbox() is None
    assert events["clip"][-1].media == "video/mp4"
