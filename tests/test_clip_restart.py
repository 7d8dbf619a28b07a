"""A clip accepted before a restart (local backend) is answered after it: the journal kept the settled clip job and
its picture, and the restarted chat process runs it again through the queue and posts the MP4 where it was asked."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import av
import pytest

from bot.flow import RequestFlow
from bot.store import ClaybotDatabase
from pipeline.core.intake import take_in
from pipeline.core.jobs import MP4, Done
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import photo_bytes

CHAT = "7001"


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
    return clip_config.gpu()


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
