"""A raid of big photos: the queue's room and the photo budget are checked before any download, so the chat process
holds a bounded number of photo bytes, and every request is still answered (issue 23, item 1)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.budget import BUDGET_BUSY, PhotoBudget
from bot.flow import Ask, RequestFlow
from pipeline.core.jobs import Done, QueueBusy
from pipeline.core.local import LocalQueue
from tests.conftest import load_script, with_pipeline

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the module's queue and worker live on its loop

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "raid_telegram.py"
MB = 2**20


def noise_png(side: int) -> bytes:
    """A photo that cannot compress: its file is as big as its pixels (side² × 3 bytes)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG", compress_level=0)
    return out.getvalue()


class Answers:
    """A Reply that keeps what the user would see."""

    private = False

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.errors: list[str] = []
        self.done: Done | None = None

    async def status(self, text: str) -> None:
        self.statuses.append(text)

    async def result(self, done: Done, caption: str) -> None:
        self.done = done

    async def error(self, text: str, *, offer=()) -> None:
        self.errors.append(text)

    def placeholder(self) -> dict:
        return {}


class Downloads:
    """Photo downloads as a platform's client would make them, counted while they run."""

    def __init__(self, photo: bytes, pause: float = 0.05) -> None:
        self.photo, self.pause = photo, pause
        self.started = self.running = self.most_at_once = 0

    async def __call__(self) -> bytes:
        self.started += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.pause)  # the bytes arriving over the network
            return self.photo
        finally:
            self.running -= 1


@pytest.fixture(scope="module")
def queue_gpu(tiny_config):
    """Two denoising steps: the chat side is under test, not the 2 CPUs' diffusion speed."""
    return with_pipeline(tiny_config.gpu(), steps=2)


# -- the budget itself ---------------------------------------------------------------------------------------------


async def test_the_budget_lets_photos_in_first_come_first_served_and_never_holds_more_than_its_limit():
    budget = PhotoBudget(10 * MB, wait=5.0)
    first = await budget.reserve(6 * MB)
    order: list[str] = []

    async def ask(name: str, size: int) -> int:
        held = await budget.reserve(size)
        order.append(name)
        return held

    big = asyncio.create_task(ask("big", 8 * MB))
    await asyncio.sleep(0)
    small = asyncio.create_task(ask("small", 1 * MB))  # it would fit now, but the big one came first
    await asyncio.sleep(0.01)
    assert order == [] and budget.held == 6 * MB
    budget.release(first)
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert order == ["big", "small"]
    assert budget.held == 9 * MB and budget.high_water == 9 * MB
    budget.release(big.result())
    budget.release(small.result())
    assert budget.held == 0


async def test_a_request_that_waits_too_long_is_told_busy_and_one_that_is_cancelled_gives_its_room_back():
    budget = PhotoBudget(4 * MB, wait=0.05)
    held = await budget.reserve(4 * MB)
    with pytest.raises(QueueBusy, match="Lots of photos"):
        await budget.reserve(1 * MB)
    patient = PhotoBudget(4 * MB, wait=30.0)
    held = await patient.reserve(4 * MB)
    waiting = asyncio.create_task(patient.reserve(2 * MB))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    patient.release(held)
    assert patient.held == 0 and await patient.reserve(4 * MB) == 4 * MB  # nothing leaked to the cancelled one


async def test_the_budget_counts_the_bytes_that_arrived_not_only_those_announced():
    budget = PhotoBudget(10 * MB, wait=1.0)
    held = await budget.reserve(8 * MB)
    held = budget.resize(held, 2 * MB)  # the photo was smaller: room for others at once
    assert budget.held == 2 * MB
    assert await budget.reserve(8 * MB) == 8 * MB


# -- the flow: checked before the download --------------------------------------------------------------------------


async def test_a_full_queue_refuses_a_photo_before_downloading_it(tiny_config, tmp_path, monkeypatch):
    # A worker that never comes (nothing listens at the address): jobs stay waiting, the queue fills up.
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(
        update={"worker_address": str(tmp_path / "nobody.sock"), "max_queue": 2}))
    await queue.start()
    flow = RequestFlow(queue, tiny_config)
    downloads = Downloads(noise_png(64))
    try:
        replies = [Answers() for _ in range(5)]
        tasks = [asyncio.create_task(flow.handle(Ask("telegram", str(i), "-100", downloads, size=len(downloads.photo)),
                                                 reply)) for i, reply in enumerate(replies)]
        await asyncio.wait(tasks, timeout=0.5)  # the first two wait in the queue; the others are answered
        refused = [reply for reply in replies if reply.errors]
        assert len(refused) == 3
        assert all(reply.errors[0].startswith("I'm busy: 2 photos are already waiting") for reply in refused)
        assert downloads.started == 2  # only the photos that had room were fetched
    finally:
        await queue.close(grace=0)
        await asyncio.wait(tasks, timeout=5)


async def test_a_raid_downloads_only_as_many_photos_as_the_budget_holds_and_answers_every_one(tiny_config, queue):
    photo = noise_png(400)  # 469 KB: two fit in a budget of 1 MB
    config = tiny_config.model_copy(update={"bot": tiny_config.bot.model_copy(
        update={"max_photo_mb": 1.0, "photo_budget_mb": 1.0})})
    flow = RequestFlow(queue, config)
    downloads = Downloads(photo)
    replies = [Answers() for _ in range(8)]
    await asyncio.wait_for(asyncio.gather(*(
        flow.handle(Ask("telegram", str(i), "-100", downloads, size=len(photo)), reply)
        for i, reply in enumerate(replies))), 120)

    assert [reply.errors for reply in replies] == [[]] * 8 and all(reply.done for reply in replies)
    assert downloads.started == 8 and downloads.most_at_once <= 2
    assert flow.budget.high_water <= MB and flow.budget.held == 0
    assert all(reply.statuses[0] == "Got it; fetching your photo…" for reply in replies)  # heard at once


async def test_past_the_wait_a_request_is_told_busy_and_is_not_counted(tiny_config, queue):
    config = tiny_config.model_copy(update={"bot": tiny_config.bot.model_copy(
        update={"max_photo_mb": 1.0, "photo_budget_mb": 1.0, "photo_budget_wait": 0.0})})
    flow = RequestFlow(queue, config)
    downloads = Downloads(noise_png(500), pause=0.5)  # 733 KB: one at a time
    replies = [Answers(), Answers()]
    await asyncio.wait_for(asyncio.gather(*(
        flow.handle(Ask("telegram", str(i), "-100", downloads, size=len(downloads.photo)), reply)
        for i, reply in enumerate(replies))), 120)
    assert replies[0].done is not None
    assert replies[1].errors == [BUDGET_BUSY] and downloads.started == 1


# -- the benchmark's burst, smaller ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raid_telegram():
    """The raid benchmark script as a module."""
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


async def test_a_raid_of_big_photos_through_claybot_run_is_answered_within_the_budget(raid_telegram,
                                                                                     tiny_config_path, tmp_path,
                                                                                     capsys):
    # 8 photos of 1.5 MB at once into one group, limits off, a budget of 4 MB: two photos held at a time.
    report = await raid_telegram.run_raid(tiny_config_path, tmp_path, photos=8, mb=1.5, budget_mb=4.0,
                                          max_photo_mb=2.0, timeout=300)
    with capsys.disabled():
        print("\n" + "\n".join(report.lines()))
    assert not report.problems
    assert report.outcomes == {"image": 8}  # everyone got their picture, after a wait in line
    assert report.photos_held_mb is not None
    most, budget = report.photos_held_mb
    assert budget == 4.0 and most <= budget
