"""A clip is a second kind of job: settled at intake from [animate], queued apart from pictures, animated by the
worker (tiny random-weight Wan) and answered with an MP4, through the real LocalQueue and worker process."""

from __future__ import annotations

import asyncio
import io

import av
import pytest

from pipeline.core.intake import take_in
from pipeline.core.jobs import MP4, PNG, BadRequest, Done, ErrorKind, Failed, Progress, Queued, Started
from pipeline.core.kinds.clip import ANIMATE_OFF
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.tiny_video import write_tiny_video_models
from tests.conftest import follow_in_order, photo_bytes, with_spec

STEPS = 2


@pytest.fixture(scope="module")
def clip_gpu(tiny_config, tmp_path_factory):
    """The tiny config with clips on, made by the tiny Wan model (9 frames at 8 fps: what `tiny-models` writes)."""
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = AnimateSettings(enabled=True, max_seconds=16.0, model=str(video.wan_folder), frames=9, fps=8, steps=STEPS,
                              megapixels=0.0123, timeout=300)
    return tiny_config.gpu().model_copy(update={"animate": animate})


@pytest.fixture(scope="module")
def queue_gpu(clip_gpu):
    """The module's `queue` (tests/conftest.py) runs a worker that has the tiny Wan loaded."""
    return clip_gpu


def decoded(data: bytes) -> tuple[str, int, float, int, tuple[int, int]]:
    """An MP4's video codec, frame count, frame rate, audio tracks and size, as a player reads them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, frames, float(stream.average_rate), len(container.streams.audio), (
            stream.width, stream.height)


async def test_intake_refuses_a_clip_when_animate_is_off(tiny_config):
    gpu = tiny_config.gpu()
    assert not gpu.animate.enabled
    with pytest.raises(BadRequest) as refused:
        await take_in(gpu, photo_bytes(), kind="clip")
    assert str(refused.value) == ANIMATE_OFF and "[animate] enabled = true" in ANIMATE_OFF
    assert (await take_in(gpu, photo_bytes())).kind == "picture"  # pictures go on as before


async def test_intake_settles_a_clips_frames_from_its_seconds_and_refuses_a_length_it_cannot_make(clip_gpu):
    default = await take_in(clip_gpu, photo_bytes(), kind="clip")
    spec = default.spec
    assert (spec.frames, spec.fps, spec.hold, spec.time_limit) == (9, 8, False, 300)
    three = await take_in(clip_gpu, photo_bytes(), kind="clip", options={"seconds": 3})
    assert three.spec.frames == 25  # 3 s at 8 fps, as 8k + 1 (what both families make, with family = "auto")
    for seconds in (0, -1, float("nan"), 33):
        with pytest.raises(BadRequest, match="A clip can be up to 16.0 seconds long here"):
            await take_in(clip_gpu, photo_bytes(), kind="clip", options={"seconds": seconds})


@pytest.mark.asyncio(loop_scope="module")
async def test_a_clip_job_goes_through_the_queue_with_progress_and_comes_back_as_an_mp4(queue):
    clip_job = await take_in(queue.gpu, photo_bytes((160, 120)), kind="clip", seed=4, options={"seconds": 2})
    picture_job = await take_in(queue.gpu, photo_bytes((160, 120)), seed=4)
    clip, picture = await queue.submit(clip_job), await queue.submit(picture_job)
    events = [event async for event in clip.events()]
    done = events[-1]

    assert isinstance(done, Done), events
    assert [e for e in events if isinstance(e, Started | Progress)] == [
        Started(1), *(Progress(step, STEPS) for step in range(1, STEPS + 1))]
    assert done.media == MP4 and done.seed == 4
    assert done.prompt.startswith("claymation stop-motion animation")  # the style's motion prompt, then tags
    codec_name, frames, fps, audio, size = decoded(done.image)
    assert (codec_name, frames, fps, audio) == ("h264", 17, 8.0, 0)  # 2 s at 8 fps (8k + 1), no sound
    assert size == (done.width, done.height) and done.width > done.height  # the picture's 4:3, landscape
    # the picture submitted beside it ran in a batch of its own and is a picture as ever
    still = await asyncio.wait_for(picture.result(), 120)
    assert still.media == PNG and still.image.startswith(b"\x89PNG")
    assert queue.stats.batches[-2:] == [1, 1]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_clip_past_its_own_time_limit_is_stopped_between_steps_and_the_worker_serves_on(queue):
    job = await take_in(queue.gpu, photo_bytes(), kind="clip", seed=1)
    late = await queue.submit(with_spec(job, time_limit=0.001))  # spent before the first step ends
    events = [event async for event in late.events()]

    assert [e for e in events if isinstance(e, Progress)] == [Progress(1, STEPS)]  # no step began after the limit
    assert isinstance(events[-1], Failed) and events[-1].kind is ErrorKind.TIMEOUT
    assert "took longer than the 0.001 seconds limit" in events[-1].reason  # the job's own, not the rest of it
    again = await asyncio.wait_for((await queue.submit(job)).result(), 120)
    assert again.media == MP4


@pytest.mark.asyncio(loop_scope="module")
async def test_a_picture_sent_while_a_clip_runs_starts_before_the_clip_waiting_ahead_of_it(queue):
    a, b = [await take_in(queue.gpu, photo_bytes(), kind="clip", seed=seed, options={"seconds": 4}) for seed in (1, 2)]
    p = await take_in(queue.gpu, photo_bytes(), seed=3)
    clip_a = await queue.submit(a)
    async for event in clip_a.events():  # A is running
        if isinstance(event, Started):
            break
    clip_b, picture = await queue.submit(b), await queue.submit(p)  # one turn of the loop: A still runs
    assert clip_a.id in queue._in_flight, "clip A ended before B and P were queued: the test proves nothing"
    order: list[tuple[str, str]] = []
    events = await follow_in_order({"A": clip_a, "B": clip_b, "P": picture}, order)
    a_events, b_events, p_events = events["A"], events["B"], events["P"]

    assert [type(e) for e in (a_events[-1], b_events[-1], p_events[-1])] == [Done, Done, Done]
    assert order.index(("P", "Done")) < order.index(("B", "Started")), order  # P waited behind A only
    # The positions said so: P is second (behind A, running); B, second when queued, became third.
    assert p_events[0] == Queued(2)
    assert [e.position for e in b_events if isinstance(e, Queued)][:2] == [2, 3]
