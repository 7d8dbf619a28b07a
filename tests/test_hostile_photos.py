"""Hostile photos: thin, deep, palette-bombed and animated files are refused clearly or stylized, never take the
worker down, and never blow up the chat process (issue 13, parts 1 and 5)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline.core.errors import BadImage
from pipeline.core.images import AREA_SLACK, SDXL_BUCKETS, decode_photo, output_size, probe_photo, working_size
from pipeline.core.jobs import Batch, Done, ErrorKind, Failed, JobFailed, Progress, Task
from pipeline.core.local import LocalQueue
from pipeline.gpu.engine import ENCODE_REASON, TAG_REASON
from pipeline.gpu.stylizer import Stylizer
from pipeline.gpu.worker import INTERNAL_REASON, run_batch
from tests import hostile_photos
from tests.conftest import photo_bytes, settled_job, submit, workshop_of
from tests.redis_server import redis_config, start_worker, stop_worker

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 40_000_000
THIN_200000 = "This picture is 25000:1; send one no longer than 8:1."
THIN_30000 = "This picture is 750:1; send one no longer than 8:1."
CHUNK_FLOOD = hostile_photos.chunk_flood()  # 1.7 million empty chunks, 20 MB
CUT_UP = ("That PNG is cut into over 6,586 pieces, far more than a picture needs; please save it again as an "
          "ordinary PNG or JPEG and send that.")


# -- the chat side: the header alone -----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "message"), [((200000, 8), THIN_200000), ((30000, 40), THIN_30000),
                                               ((40, 30000), THIN_30000), ((900, 100), "9.0:1")])
def test_a_thin_photo_is_refused_from_its_header_with_its_ratio(size, message):
    data = hostile_photos.thin(*size)
    with pytest.raises(BadImage, match=message.replace(".", r"\.")):
        probe_photo(data, max_pixels=LIMIT)
    with pytest.raises(BadImage, match=message.replace(".", r"\.")):
        decode_photo(data, max_pixels=LIMIT)


def test_a_photo_exactly_at_the_bound_is_taken():
    assert decode_photo(hostile_photos.thin(800, 100), max_pixels=LIMIT).size == (800, 100)
    assert probe_photo(hostile_photos.thin(100, 800), max_pixels=LIMIT) == (100, 800)


def test_the_probe_finds_a_png_orientation_after_the_pixels_without_decoding_them():
    # The pixel data is garbage: decoding fails, so a probe that answers did not decode.
    good = hostile_photos.png(40, 30, after_idat=hostile_photos.exif_chunk(6))
    start = good.index(b"IDAT") - 4
    length = int.from_bytes(good[start:start + 4], "big")
    garbage = bytes(length)
    idat = length.to_bytes(4, "big") + b"IDAT" + garbage + zlib.crc32(b"IDAT" + garbage).to_bytes(4, "big")
    broken = good[:start] + idat + good[start + 12 + length:]
    assert probe_photo(broken, max_pixels=LIMIT) == (30, 40)  # orientation 6: upright it is portrait
    with pytest.raises(BadImage):
        decode_photo(broken, max_pixels=LIMIT)
    assert decode_photo(good, max_pixels=LIMIT).size == (30, 40)


def test_a_png_of_a_million_empty_chunks_is_refused_from_its_chunk_walk_alone():
    # Before: Pillow read all 1.7 million chunks in Python, 3 s of CPU and +195 MB for each probe or decode.
    for refuse in (probe_photo, decode_photo):
        tracemalloc.start()
        try:
            with pytest.raises(BadImage) as refused:
                refuse(CHUNK_FLOOD, max_pixels=LIMIT)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert str(refused.value) == CUT_UP
        assert peak < 1_000_000, (refuse.__name__, peak)  # nothing of the chunks is kept


def test_a_big_png_cut_into_libpngs_8_kb_pieces_is_taken():
    # 41 MB of noise in 5000 IDAT chunks of 8 KB: more chunks than MAX_PNG_CHUNKS, each a real piece of pixels.
    noise = Image.frombytes("RGB", (3800, 3600), os.urandom(3800 * 3600 * 3))
    data = hostile_photos.split_idat(_encode(noise, "PNG", compress_level=0), 8192)
    assert data.count(b"IDAT") > 5000
    assert probe_photo(data, max_pixels=LIMIT) == (3800, 3600)


# -- the working size ----------------------------------------------------------------------------------------------


SHAPES = [(200000, 8), (30000, 40), (8, 200000), (800, 100), (100, 800), (4032, 3024), (1, 1), (5000, 300),
          (1024, 1024), (640, 1536)]


@pytest.mark.parametrize("megapixels", [0.0164, 0.25, 1.0, 4.0])
@pytest.mark.parametrize("buckets", [False, True])
def test_the_working_size_never_exceeds_the_configured_area(megapixels, buckets):
    area = megapixels * 1e6
    for shape in SHAPES:
        w, h = working_size(*shape, megapixels, buckets=buckets)
        assert w % 64 == 0 and h % 64 == 0 and w >= 64 and h >= 64
        assert w * h <= area * (1 + AREA_SLACK), (shape, megapixels, (w, h))
        ow, oh = output_size(*shape, megapixels)
        assert ow * oh <= area, (shape, megapixels, (ow, oh))


def test_sdxl_keeps_its_own_bucket_sizes_at_one_megapixel():
    for bucket in SDXL_BUCKETS:
        assert working_size(*bucket, 1.0) == bucket
        assert working_size(*bucket, 1.0, buckets=True) == bucket


# -- the tagger ----------------------------------------------------------------------------------------------------


def test_the_tagger_input_of_a_thin_photo_is_built_without_the_big_square():
    # Under a 1.5 GB address-space limit: padding 200000×8 to a square first would need 120 GB.
    script = textwrap.dedent("""
        import resource, types
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
        from PIL import Image
        from pipeline.gpu.tagger import Tagger
        array = Tagger.preprocess(types.SimpleNamespace(input_size=448), Image.new("RGB", (200000, 8), (0, 0, 0)))
        print(array.shape, float(array[0, 0, 0]), int((array[:, 224, 0] < 128).sum()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    # White padding, and the photo as one dark row across the middle.
    assert out.stdout.split() == ["(448,", "448,", "3)", "255.0", "1"]


# -- the worker loop, in process, on the real tiny stylizer -------------------------------------------------------


@pytest.fixture(scope="module")
def stylizer(tiny_config) -> Stylizer:
    return Stylizer(tiny_config.gpu())


RED = (255, 0, 0)


class FailsOn:
    """The real tiny stylizer, whose tagger or PNG encoding breaks on pure red photos (as a library bug would)."""

    def __init__(self, stylizer: Stylizer, stage: str) -> None:
        self.stylizer, self.settings, self.stage = stylizer, stylizer.settings, stage

    def tagger(self, images):
        if self.stage == "tag" and any(image.getpixel((0, 0)) == RED for image in images):
            raise RuntimeError("onnxruntime: invalid input")
        return self.stylizer.tagger(images)

    def run(self, photos, **kwargs):
        results = self.stylizer.run(photos, **kwargs)
        for photo, result in zip(photos, results, strict=True):
            if self.stage == "encode" and photo.image.getpixel((0, 0)) == RED:
                result.image = result.image.convert("CMYK")  # Pillow cannot write CMYK as PNG
        return results


def _batch(stylizer, photos: dict[str, bytes]) -> Batch:
    return Batch(tuple(Task(name, settled_job(stylizer.settings, data, seed=1, strength=0.5))
                       for name, data in photos.items()), 60)


def _answers(sent: list) -> dict[str, tuple[str, str | None]]:
    return {m.ids[0]: ("done", None) if isinstance(m.event, Done) else ("failed", m.event.reason)
            for m in sent if isinstance(m.event, Done | Failed)}


@pytest.mark.parametrize(("stage", "reason"), [("tag", TAG_REASON), ("encode", ENCODE_REASON)])
def test_a_photo_that_breaks_a_stage_fails_alone_and_its_companion_is_served(stylizer, stage, reason):
    photos = {"red": photo_bytes((128, 96), color=RED, fmt="PNG"), "ok": photo_bytes((128, 96))}
    sent = []
    run_batch(workshop_of(FailsOn(stylizer, stage)), _batch(stylizer, photos), sent.append)
    assert _answers(sent) == {"red": ("failed", reason), "ok": ("done", None)}


def test_a_fault_outside_the_stages_fails_every_unanswered_job_and_returns(stylizer):
    batch = _batch(stylizer, {"a": photo_bytes(), "b": b"not an image"})
    batch = dataclasses.replace(batch, timeout=None)  # as a bug would: the loop cannot run the batch at all
    sent = []
    run_batch(workshop_of(stylizer), batch, sent.append)
    assert _answers(sent) == {"b": ("failed", "That file is not an image I can read."),
                              "a": ("failed", INTERNAL_REASON)}


def test_a_connection_lost_mid_batch_ends_the_batch_instead_of_failing_its_jobs(stylizer):
    # The queue went away: that is for the serving loop (it waits for the next queue), not a photo's failure.
    def send(message):
        if isinstance(message.event, Progress):
            raise BrokenPipeError("the queue hung up")

    with pytest.raises(BrokenPipeError):
        run_batch(workshop_of(stylizer), _batch(stylizer, {"a": photo_bytes()}), send)


def test_deep_and_palette_bombs_are_shrunk_while_decoding_in_the_worker():
    for data in (hostile_photos.deep_grey(), hostile_photos.palette_bomb()):
        image = decode_photo(data, max_pixels=LIMIT, keep_pixels=4_000_000)
        assert image.mode == "RGB" and 4_000_000 <= image.width * image.height < 16_000_000
        assert abs(image.width / image.height - 8000 / 5000) < 0.01
    grey = decode_photo(hostile_photos.deep_grey(80, 50), max_pixels=LIMIT, keep_pixels=100)
    assert grey.getpixel((0, 0)) == (0, 0, 0)
    red = decode_photo(hostile_photos.palette_bomb(80, 50), max_pixels=LIMIT, keep_pixels=100)
    assert red.getpixel((0, 0)) == RED  # palette index 0 is red: indices are never averaged


@pytest.mark.parametrize("mode", ["RGB", "P", "I;16", "RGBA"])
def test_a_rotated_photo_is_shrunk_while_decoding_and_still_upright(mode):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    image = Image.new("I;16", (3000, 2000), 30000) if mode == "I;16" else Image.new("RGB", (3000, 2000)).convert(mode)
    for fmt in ("PNG", "JPEG") if mode == "RGB" else ("PNG",):
        decoded = decode_photo(_encode(image, fmt, exif=exif), max_pixels=LIMIT, keep_pixels=100_000)
        assert decoded.height > decoded.width and decoded.width * decoded.height >= 100_000, (mode, fmt)
        assert decoded.width * decoded.height < 1_000_000


def test_heic_from_phones_is_held_to_the_same_bounds():
    # pillow-heif decodes a whole HEIC image at once; the aspect bound and the shrink apply to it as to the rest.
    with pytest.raises(BadImage, match=r"This picture is 40:1; send one no longer than 8:1\."):
        probe_photo(_encode(Image.new("RGB", (4000, 100)), "HEIF"), max_pixels=LIMIT)
    decoded = decode_photo(_encode(Image.new("RGB", (4000, 3000), (10, 200, 30)), "HEIF"), max_pixels=LIMIT,
                           keep_pixels=1_000_000)
    assert decoded.size == (1334, 1000) and decoded.mode == "RGB"


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# -- the real worker process ---------------------------------------------------------------------------------------


HOSTILE = {
    "thin 30000×40": (hostile_photos.thin(30000, 40), THIN_30000),
    "thin 200000×8": (hostile_photos.thin(200000, 8), THIN_200000),
    "16-bit 40 MP": (hostile_photos.deep_grey(), None),
    "1-bit palette 40 MP": (hostile_photos.palette_bomb(), None),
    "animated GIF": (hostile_photos.animated_gif(), None),
    "thin at the bound": (hostile_photos.thin(800, 100), None),
    "1.7 million empty chunks": (CHUNK_FLOOD, CUT_UP),
}


def _as_an_old_chat_process(monkeypatch):
    """The chat side's own checks off, as in a chat process from before the aspect bound: what the worker sees."""
    monkeypatch.setattr("pipeline.core.intake.probe_photo", lambda data, max_pixels: (128, 96))


async def _answer(handle, timeout: float = 180) -> Done | Failed:
    async def last():
        return [event async for event in handle.events() if isinstance(event, Done | Failed)][-1]
    return await asyncio.wait_for(last(), timeout)


async def test_hostile_photos_fail_clearly_or_succeed_and_the_same_worker_serves_the_next(tiny_config, monkeypatch):
    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"batch_window": 0.0}))
    await queue.start()
    try:
        pid = (await queue.wait_ready(timeout=120))["pid"]
        # The chat side refuses a thin photo from its header: it never reaches the worker.
        with pytest.raises(JobFailed) as refused:
            await submit(queue, hostile_photos.thin(30000, 40))
        assert refused.value.failed == Failed(THIN_30000, ErrorKind.BAD_IMAGE)
        _as_an_old_chat_process(monkeypatch)
        for name, (data, refusal) in HOSTILE.items():
            answer = await _answer(await submit(queue, data, seed=1))
            if refusal:
                assert answer == Failed(refusal, ErrorKind.BAD_IMAGE), name
            else:
                assert isinstance(answer, Done), (name, answer)
            assert queue.worker_info["pid"] == pid, name
        # Then an ordinary photo, from the same worker process.
        assert isinstance(await _answer(await submit(queue, photo_bytes(), seed=2)), Done)
        assert queue.worker_info["pid"] == pid and queue.stats.worker_starts == 1 and queue.stats.retried == 0
    finally:
        await queue.close(grace=5)


async def test_the_redis_worker_answers_thin_photos_and_serves_the_next(tiny_config_path, tmp_path, monkeypatch):
    from pipeline.core.redis_queue import RedisQueue
    from tests.redis_server import RedisServer

    _as_an_old_chat_process(monkeypatch)
    server = RedisServer(tmp_path).start()
    config_path = redis_config(tiny_config_path, tmp_path, server.url, batch_window=0.0)
    worker = start_worker(config_path, "hostile")
    from bot.config import load_config

    config = load_config(config_path)
    queue = RedisQueue(config.gpu(), config.queue, owner="chat-hostile")
    await queue.start()
    try:
        for _ in range(600):
            if await queue.workers():
                break
            await asyncio.sleep(0.2)
        (name, info), = (await queue.workers()).items()
        for data, refusal in (HOSTILE["thin 30000×40"][:2], HOSTILE["thin 200000×8"][:2]):
            answer = await _answer(await submit(queue, data, seed=1))
            assert answer == Failed(refusal, ErrorKind.BAD_IMAGE)
        assert isinstance(await _answer(await submit(queue, photo_bytes(), seed=2)), Done)
        assert worker.poll() is None
        assert (await queue.workers())[name]["pid"] == info["pid"]
    finally:
        await queue.close()
        stop_worker(worker)
        server.stop()


# -- the chat process's memory -------------------------------------------------------------------------------------


CHAT_BURST = textwrap.dedent("""
    import asyncio, json, sys
    from tests import hostile_photos

    def high_water_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    from bot.discord_photos import source_copy
    from pipeline.core.images import probe_photo

    photos = [hostile_photos.deep_grey() for _ in range(4)] + [hostile_photos.palette_bomb() for _ in range(4)]
    before = high_water_mb()

    async def one(data):
        size = await asyncio.to_thread(probe_photo, data, max_pixels=40_000_000)
        copy = await asyncio.to_thread(source_copy, data, 2_500_000, max_input_pixels=40_000_000)
        return size, copy is not None and copy[:2] == b"\\xff\\xd8"

    async def main():
        return await asyncio.gather(*(one(data) for data in photos))

    results = asyncio.run(main())
    print(json.dumps({"before": before, "after": high_water_mb(), "results": results}))
""")


def test_the_chat_process_stays_small_with_a_burst_of_deep_photos():
    # 8 photos of 40 MP (16-bit grey and 1-bit palette, 5–80 KB each) at once, as eight users might send them:
    # each is probed (header only) and copied for its Discord result (a bounded decode, one at a time).
    out = subprocess.run([sys.executable, "-c", CHAT_BURST], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["results"] == [[[8000, 5000], True]] * 8  # every photo probed, every copy made
    # One bounded decode at a time (80 MB of 16-bit pixels here, 170 MB growth seen in all); before, ONE such
    # photo took 1.1 GB.
    assert report["after"] - report["before"] < 300, report


def test_a_photo_too_big_for_the_chat_side_budget_goes_without_its_copy():
    from bot.discord_photos import source_copy

    # RGBA at 72 MP: 288 MB to decode, over the 256 MB budget; refused before decoding.
    rgba = hostile_photos.png(9000, 8000, color_type=6)
    assert source_copy(rgba, 2_500_000, max_input_pixels=100_000_000) is None
    assert source_copy(photo_bytes(fmt="PNG"), 2_500_000, max_input_pixels=LIMIT)[:2] == b"\xff\xd8"


def test_the_thin_burst_benchmark_runs_and_the_worker_survives_it(tiny_config_path, capsys):
    # Its smoke run (one round, past the chat side's header check): figures printed, only the outcomes asserted.
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "thin_burst.py"), "--config", str(tiny_config_path),
                          "--copies", "1", "--past-the-header"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("thin burst:")]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert "'thin 200000x8: bad_image': 1" in lines[0] and "'16-bit 40MP: done': 1" in lines[0]
    assert "worker pid unchanged: True; worker starts: 1" in lines[1]
