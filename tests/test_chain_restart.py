"""A chained request (a clip of a person's photo: the photo made clay first, then that picture animated) is journaled
as one: a chat process that dies between the two jobs leaves the first job AND what comes after it in the journal,
and the restarted process makes the picture, then the clip, and posts the clip where it was asked."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import av
import pytest

from bot.flow import Ask, RequestFlow
from bot.journal import Then
from bot.store import ClaybotDatabase
from pipeline.core.jobs import MP4, Done, Job, JobHandle
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import photo_bytes

CHAT = "7002"
PHOTO = photo_bytes((160, 120))


@pytest.fixture(scope="module")
def clip_config(tiny_config, tmp_path_factory):
    """The whole tiny config with clips on (the tiny Wan: 9 frames at 8 fps)."""
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = AnimateSettings(enabled=True, model=str(video.wan_folder), frames=9, fps=8, steps=2,
                              megapixels=0.0123, timeout=300)
    return tiny_config.model_copy(update={"animate": animate})


@pytest.fixture(scope="module")
def queue_gpu(clip_config):
    return clip_config.gpu()


class Chat:
    """A front end that keeps what it is asked to post (the platforms' own tests cover how it looks there)."""

    name = "telegram"

    def __init__(self) -> None:
        self.posted: list[tuple[str, Done | None, str, dict[str, Any]]] = []

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        self.posted.append((chat_id, done, text, answer_to))


class Silent:
    """The live request's Reply: the process dies before it answers anything worth keeping."""

    private = False

    async def status(self, text: str) -> None:
        pass

    async def result(self, done: Done, caption: str) -> None:
        raise AssertionError("the dying process answered")

    async def error(self, text: str) -> None:
        raise AssertionError(f"the dying process refused: {text}")

    def placeholder(self) -> dict[str, Any]:
        return {}


class DiesBeforeTheClip:
    """The old process's queue: it runs the picture; the clip's submit never returns (the process is killed
    there, between the two jobs)."""

    def __init__(self, queue) -> None:
        self.queue, self.gpu, self.between = queue, queue.gpu, asyncio.Event()

    async def check_room(self, coming: int = 0) -> None:
        await self.queue.check_room(coming)

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

    ask = Ask("telegram", "42", CHAT, photo, size=len(PHOTO), seed=23, kind="clip", options={"seconds": 2},
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
    assert chat_id == CHAT and answer_to == {"message_id": 9}
    assert isinstance(done, Done) and done.media == MP4 and done.seed == 23
    with av.open(io.BytesIO(done.image)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 17  # 2 s at 8 fps: the clip's own option kept
