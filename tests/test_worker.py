"""The worker loop itself: out-of-memory fallback and the foreground `claybot worker` over a local socket."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.images import decode_photo
from pipeline.core.jobs import Batch, Done, ErrorKind, Failed, Started, Task, Update
from pipeline.core.local import LocalQueue
from pipeline.gpu.stylizer import Stylizer
from pipeline.gpu.worker import run_batch
from tests.conftest import photo_bytes, settled_job, submit, workshop_of


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the worker recognises by name (no CUDA here)."""


class SmallGpu:
    """The real tiny stylizer behind a GPU that cannot hold more than one photo at a time."""

    def __init__(self, stylizer: Stylizer) -> None:
        self.stylizer, self.settings, self.batch_sizes = stylizer, stylizer.settings, []
        self.tagger = stylizer.tagger

    def run(self, photos, **kwargs):
        self.batch_sizes.append(len(photos))
        if len(photos) > 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.stylizer.run(photos, **kwargs)


@pytest.fixture(scope="module")
def stylizer(tiny_config) -> Stylizer:
    return Stylizer(tiny_config.gpu())


def _batch(stylizer, *seeds: int, image: bytes | None = None, max_rating: str | None = None, more=()) -> Batch:
    return Batch(tuple(Task(f"job{seed}", settled_job(stylizer.settings, image, seed=seed, strength=0.5,
                                                      max_rating=max_rating)) for seed in seeds) + tuple(more), 60)


RED = photo_bytes((64, 64), color=(255, 0, 0), fmt="PNG")  # the tiny tagger rates pure red "explicit"


class ExplicitResults:
    """The real tiny stylizer, whose results come out pure red: as if img2img had added what the photo lacked."""

    def __init__(self, stylizer: Stylizer) -> None:
        self.stylizer, self.settings, self.tagger = stylizer, stylizer.settings, stylizer.tagger

    def run(self, photos, **kwargs):
        results = self.stylizer.run(photos, **kwargs)
        for result in results:
            result.image = Image.new("RGB", result.image.size, (255, 0, 0))
        return results


class CountedCalls:
    """The real tiny stylizer, recording each pipeline call's batch size and working size."""

    def __init__(self, stylizer: Stylizer) -> None:
        self.stylizer, self.settings, self.tagger, self.calls = stylizer, stylizer.settings, stylizer.tagger, []

    def run(self, photos, **kwargs):
        self.calls.append((len(photos), kwargs.get("work_size")))
        return self.stylizer.run(photos, **kwargs)


def _answers(sent: list) -> dict[str, Done | Failed]:
    return {m.ids[0]: m.event for m in sent if isinstance(m, Update) and isinstance(m.event, Done | Failed)}


def _outcomes(sent: list) -> dict[str, str]:
    return {job_id: "done" if isinstance(e, Done) else e.kind.value for job_id, e in _answers(sent).items()}


def test_a_photo_over_the_chats_rating_is_refused_before_stylizing_and_its_companions_still_run(stylizer):
    from pipeline.core.safety import INPUT_REFUSED

    assert stylizer.tagger([Image.open(io.BytesIO(RED))])[0].rating == "explicit"
    red = Task("red", settled_job(stylizer.settings, RED, seed=2, strength=0.5, max_rating="sensitive"))
    batch = _batch(stylizer, 1, max_rating="sensitive", more=[red])
    sent = []
    run_batch(workshop_of(stylizer), batch, sent.append)
    assert _outcomes(sent) == {"job1": "done", "red": "not_allowed"}
    assert _answers(sent)["red"].reason == INPUT_REFUSED
    started = [m for m in sent if not isinstance(m.event, Done | Failed)]
    assert started and all("red" not in m.ids for m in started)  # never started: no GPU time spent on it


def test_a_chat_that_allows_everything_gets_the_explicit_photo_stylized(stylizer):
    sent = []
    run_batch(workshop_of(stylizer), _batch(stylizer, 3, image=RED, max_rating=None), sent.append)
    assert _outcomes(sent) == {"job3": "done"}
    sent = []
    run_batch(workshop_of(stylizer), _batch(stylizer, 3, image=RED, max_rating="explicit"), sent.append)
    assert _outcomes(sent) == {"job3": "done"}


def test_the_result_is_tagged_again_and_held_to_the_same_rating(stylizer):
    from pipeline.core.safety import OUTPUT_REFUSED

    sent = []
    run_batch(workshop_of(ExplicitResults(stylizer)), _batch(stylizer, 4, 5, max_rating="sensitive"), sent.append)
    assert _outcomes(sent) == {"job4": "not_allowed", "job5": "not_allowed"}
    assert {e.reason for e in _answers(sent).values()} == {OUTPUT_REFUSED}
    sent = []  # where the chat allows it, the same result is sent
    run_batch(workshop_of(ExplicitResults(stylizer)), _batch(stylizer, 4, max_rating=None), sent.append)
    assert _outcomes(sent) == {"job4": "done"}


def test_a_batch_runs_as_one_pipeline_call_at_the_working_size_intake_settled(stylizer):
    # By their headers, 502×783 and 128×96 both work at 128×128, so the queue batches them. Decoded, the tall photo
    # is shrunk to 251×392, whose own working size is 64×128: the worker must not split the batch again over that.
    p = stylizer.settings.pipeline
    tall = photo_bytes((502, 783), fmt="PNG")
    assert p.work_size(502, 783) == p.work_size(128, 96) == (128, 128)
    shrunk = decode_photo(tall, max_pixels=40_000_000, keep_pixels=int(4 * p.megapixels * 1e6))
    assert p.work_size(*shrunk.size) == (64, 128)
    batch = _batch(stylizer, 1, 2)
    batch = Batch((Task("job1", dataclasses.replace(batch.tasks[0].job, image=tall)),) + batch.tasks[1:], 60)
    assert {task.job.work_size for task in batch.tasks} == {(128, 128)}
    gpu, sent = CountedCalls(stylizer), []
    run_batch(workshop_of(gpu), batch, sent.append)
    assert gpu.calls == [(2, (128, 128))]
    assert [m.ids for m in sent if isinstance(m, Update) and isinstance(m.event, Started)] == [("job1", "job2")]
    done = _answers(sent)
    assert sorted(done) == ["job1", "job2"]
    assert all(isinstance(event, Done) for event in done.values())
    assert done["job1"].width / done["job1"].height == pytest.approx(502 / 783, rel=0.02)  # its own shape


def test_out_of_memory_on_a_batch_retries_one_job_at_a_time(stylizer):
    gpu, sent = SmallGpu(stylizer), []
    run_batch(workshop_of(gpu), _batch(stylizer, 1, 2, 3), sent.append)
    assert gpu.batch_sizes == [3, 1, 1, 1]
    done = _answers(sent)
    assert sorted(done) == ["job1", "job2", "job3"]
    assert all(isinstance(event, Done) for event in done.values())
    # Each answer is the one its seed gives when run alone.
    alone = []
    run_batch(workshop_of(stylizer), _batch(stylizer, 2), alone.append)
    solo = _answers(alone)["job2"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(done["job2"].image))),
                          np.asarray(Image.open(io.BytesIO(solo.image))))


def test_out_of_memory_on_a_single_job_fails_it_as_too_large(stylizer):
    class NoGpu(SmallGpu):
        def run(self, photos, **kwargs):
            raise OutOfMemoryError("CUDA out of memory")

    sent = []
    run_batch(workshop_of(NoGpu(stylizer)), _batch(stylizer, 1), sent.append)
    failed = [m for m in sent if isinstance(m.event, Failed)]
    assert failed == [Update(("job1",), Failed("The GPU ran out of memory on this photo; please try a smaller one.",
                                               ErrorKind.TOO_LARGE))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_queue_uses_a_foreground_worker_over_a_local_socket(tiny_config, tiny_config_path, monkeypatch):
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "CLAYBOT_WORKER_KEY": "test-secret"}
    claybot = Path(sys.executable).parent / "claybot"
    worker = subprocess.Popen([claybot, "worker", "--config", tiny_config_path, "--listen", address], env=env,
                              stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
        settings = tiny_config.queue.model_copy(update={"worker_address": address})
        for _ in range(2):  # a second queue (a restarted chat process) reuses the loaded worker
            queue = LocalQueue(tiny_config.gpu(), settings)
            await queue.start()
            try:
                info = await queue.wait_ready(timeout=120)
                assert info["device"] == "cpu"
                done = await (await submit(queue, photo_bytes(), seed=3)).result(timeout=120)
                assert isinstance(done, Done) and done.seed == 3
            finally:
                await queue.close(grace=5)
        assert worker.poll() is None  # the worker outlives its queues
    finally:
        worker.terminate()
        worker.wait(timeout=30)


async def test_a_queue_with_the_wrong_key_is_refused(tiny_config, tiny_config_path, monkeypatch, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    claybot = Path(sys.executable).parent / "claybot"
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen([claybot, "worker", "--config", tiny_config_path, "--listen", address],
                                  env={**os.environ, "CLAYBOT_WORKER_KEY": "right"}, stdout=log, stderr=log)
    try:
        for _ in range(600):  # the worker loads its models first
            if "worker listening" in log_path.read_text():
                break
            await asyncio.sleep(0.2)
        monkeypatch.setenv("CLAYBOT_WORKER_KEY", "wrong")
        queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"worker_address": address}))
        await queue.start()
        try:
            for _ in range(150):  # the worker refuses the handshake (it says so in its log) ...
                if "refused a connection" in log_path.read_text():
                    break
                await asyncio.sleep(0.2)
            assert "refused a connection" in log_path.read_text()
            with pytest.raises(TimeoutError):  # ... and the queue, refused, never becomes ready
                await queue.wait_ready(timeout=0.5)
        finally:
            await queue.close(grace=1)
        assert worker.poll() is None  # a wrong key does not bring the worker down
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_worker_without_animate_answers_a_clip_with_a_clear_failure_and_its_pictures_still_run(stylizer):
    from pipeline.core.kinds import kind_of
    from pipeline.gpu.worker import no_engine_reason

    # settled where clips are on (another chat process's config); this worker's [animate] is off
    animate_on = stylizer.settings.model_copy(
        update={"animate": stylizer.settings.animate.model_copy(update={"enabled": True})})
    clip = Task("clip", settled_job(animate_on, kind="clip", seed=3))
    sent = []
    run_batch(workshop_of(stylizer), _batch(stylizer, 1, more=[clip]), sent.append)
    assert _outcomes(sent) == {"job1": "done", "clip": "internal"}
    assert _answers(sent)["clip"].reason == no_engine_reason(kind_of("clip"))
