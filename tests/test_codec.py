"""The one codec: every job and event type survives the trip to bytes and back, and bytes that are not a message
give a CodecError saying what is wrong, never another exception."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from pipeline.core import codec
from pipeline.core.codec import CodecError
from pipeline.core.jobs import (
    MP4,
    Batch,
    Done,
    ErrorKind,
    Failed,
    Fatal,
    Idle,
    Job,
    Progress,
    Queued,
    Ready,
    Started,
    Stop,
    Task,
    Update,
)
from pipeline.core.kinds import ClipSpec, PictureSpec

JOB = Job(b"\x89PNG photo bytes \x00\xff", "clay", 123456789, (832, 640), PictureSpec(0.55, "fast", 2.0, 0.8, 0.6),
          max_rating="sensitive", reply_to=("telegram", "-100123"))
DONE = Done(b"result png", 832, 640, ["1girl", "smile", "clay \u00e9"], "(Clay:2), smile", 7, "clay", 0.55,
            {"general": 0.9, "sensitive": 0.1}, {"tag": 0.25, "denoise": 3.5}, "fast")
CLIP_JOB = Job(b"\x89PNG clay picture", "clay", 42, (128, 96), ClipSpec(frames=25, fps=12, hold=True, time_limit=600.0),
               reply_to=("discord", "987"))
CLIP_DONE = Done(b"\x00\x00\x00\x20ftypisom mp4 bytes", 128, 96, ["cat"], "claymation, cat", 42, "clay",
                 media=MP4)

EVERY_MESSAGE = [
    JOB,
    Job(b"", "clay", 0, (64, 64), PictureSpec(1.0, "default", 0.0, 0.0, 2.0)),  # no rating limit, reply_to, image
    Queued(3), Started(2), Progress(4, 10), DONE, Failed("That file is not an image I can read.", ErrorKind.BAD_IMAGE),
    Task("abc123", JOB),
    Batch((Task("a", JOB), Task("b", Job(b"other", "clay", 1, (64, 128), PictureSpec(0.3, "default", 1.5, 0.8, 0.6)))),
          120.0),
    Stop(), Ready("cuda:0", "float16", 4), Fatal("styles.clay.lora: no such file"), Idle(), Idle(1234.5),
    Update(("a", "b"), Started(2)), Update(("a",), Progress(1, 2)), Update(("a",), DONE),
    Update(("b",), Failed("Cancelled.", ErrorKind.CANCELLED)),
    CLIP_JOB, CLIP_DONE, Update(("c",), CLIP_DONE),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_survives_bytes_parts_and_text_fields(message):
    assert codec.decode(codec.encode(message)) == message
    header, blobs = codec.dump(message)
    assert codec.load(header, blobs) == message
    fields, blobs = codec.text_fields(message)
    assert all(isinstance(value, str) for value in fields.values())
    assert codec.from_fields(fields, blobs) == message


def test_a_job_keeps_its_kind_types_and_image_and_the_image_is_not_in_the_header():
    decoded = codec.decode(codec.encode(JOB))
    assert decoded.kind == "picture" and decoded.work_size == (832, 640) and decoded.reply_to == ("telegram",
                                                                                                    "-100123")
    header, blobs = codec.dump(JOB)
    assert blobs == [JOB.image] and b"photo bytes" not in header


def test_a_stored_result_without_an_op_reads_as_the_expected_type():
    meta = b'{"width": 1, "height": 1, "tags": [], "prompt": "p", "seed": 1, "style": "clay", "strength": 0.5}'
    done = codec.load(meta, [b"png"], expect=(Done,))
    assert done == Done(b"png", 1, 1, [], "p", 1, "clay", 0.5)


FRAME = codec.encode(Batch((Task("a", JOB),), 60.0))


@pytest.mark.parametrize(("data", "error"), [
    (b"", "truncated frame: 0 bytes"),
    (FRAME[:7], "truncated frame"),
    (FRAME[:-1], "truncated frame: blob 0 needs"),
    (FRAME + b"x", "1 bytes after the end of the frame"),
    (b"PK\x03\x04" + FRAME[4:], "not a claybot frame"),
    (FRAME[:4] + b"\x09" + FRAME[5:], "frame version 9"),
    (FRAME[:5] + (2**31).to_bytes(4, "big") + FRAME[9:], "header of 2147483648 bytes is over the limit"),
])
def test_a_damaged_frame_says_what_is_wrong(data, error):
    with pytest.raises(CodecError, match=error):
        codec.decode(data)


def test_an_oversized_frame_is_refused_before_it_is_read():
    with pytest.raises(CodecError, match=f"frame of {len(FRAME)} bytes is over the limit of 100"):
        codec.decode(FRAME, max_bytes=100)


def _frame(header: bytes, *blobs: bytes) -> bytes:
    parts = [b"CLAY\x01", len(header).to_bytes(4, "big"), header, len(blobs).to_bytes(4, "big")]
    for blob in blobs:
        parts += [len(blob).to_bytes(8, "big"), blob]
    return b"".join(parts)


# A job as claybot wrote it before kinds had specs (every option side by side): journals and lanes still hold them.
GOOD_JOB = ('"op":"job","style":"clay","strength":0.5,"speed":"default","seed":1,"work_size":[64,64],'
            '"trigger_weight":2,"structure_scale":0.8,"identity_scale":0.6')
# The same job as claybot writes it now: its kind's options in "spec", named by its kind.
GOOD_SPEC = ('"op":"picture","strength":0.5,"speed":"default","trigger_weight":2,"structure_scale":0.8,'
             '"identity_scale":0.6')
SPEC_JOB = '"op":"job","style":"clay","seed":1,"work_size":[64,64],"spec":{' + GOOD_SPEC + '}'


@pytest.mark.parametrize(("header", "blobs", "error"), [
    (b"{not json", [], "the header is not JSON"),
    (b"[1, 2]", [], "JSON list, not an object"),
    (b'{"op": "teleport"}', [], "unknown message 'teleport'"),
    (b'{"ids": []}', [], "message without an op"),
    (("{" + GOOD_JOB + "}").encode(), [], "job: no blob for image"),
    (("{" + GOOD_JOB + "}").encode(), [b"a", b"b"], "1 blob\\(s\\) more than a job message holds"),
    (("{" + GOOD_JOB.replace('"strength":0.5', '"strength":"lots"') + "}").encode(), [b""],
     "strength 'lots' is not a number"),
    (("{" + GOOD_JOB.replace('"strength":0.5', '"strength":7') + "}").encode(), [b""],
     "picture: Strength must be between 0.05 and 1, not 7"),
    (("{" + GOOD_JOB.replace('"seed":1', '"seed":1.5') + "}").encode(), [b""], "seed '1.5' is not a whole number"),
    (("{" + GOOD_JOB.replace('"seed":1', '"seed":NaN') + "}").encode(), [b""], "the header is not JSON"),
    (("{" + GOOD_JOB.replace('"seed":1', '"seed":true') + "}").encode(), [b""], "seed is bool, not a number"),
    (("{" + GOOD_JOB.replace('"work_size":[64,64]', '"work_size":[64]') + "}").encode(), [b""],
     "work_size has 1 items, not 2"),
    (("{" + GOOD_JOB + ',"kind":"opera"}').encode(), [b""], "unknown kind 'opera'"),
    (("{" + GOOD_JOB + ',"max_rating":"anything"}').encode(), [b""], "max_rating must be one of"),
    (("{" + GOOD_JOB + ',"sneaky":1}').encode(), [b""], "job: unknown field 'sneaky'"),
    (b'{"op":"job","strength":0.5}', [b""], "job: no style"),
    (("{" + SPEC_JOB + "}").encode(), [], "job: no blob for image"),
    (("{" + SPEC_JOB.replace('"strength":0.5', '"strength":7') + "}").encode(), [b""],
     "picture: Strength must be between 0.05 and 1, not 7"),
    (("{" + SPEC_JOB.replace('"op":"picture"', '"op":"opera"') + "}").encode(), [b""],
     "spec: claybot has no kind of job called 'opera'"),
    (("{" + SPEC_JOB.replace('"speed":"default"', '"speed":"default","sneaky":1') + "}").encode(), [b""],
     "picture: unknown field 'sneaky'"),
    (("{" + SPEC_JOB.replace("{" + GOOD_SPEC + "}", "3") + "}").encode(), [b""], "spec is int, not an object"),
    (b'{"op":"update","ids":["a"],"event":{"op":"batch","tasks":[],"timeout":1}}', [],
     "event: unknown message 'batch'"),
    (b'{"op":"failed","reason":"r","kind":"exploded"}', [], "unknown kind 'exploded'"),
    (b'{"op":"progress","step":"many","total":"?"}', [], "step 'many' is not a number"),
    (b'{"op":"done","width":1}', [b"png"], "done: no height"),
])
def test_a_malformed_message_says_what_is_wrong(header, blobs, error):
    with pytest.raises(CodecError, match=error):
        codec.decode(_frame(header, *blobs))


def test_a_message_of_another_kind_than_expected_is_refused():
    with pytest.raises(CodecError, match="unknown event 'batch'"):
        codec.load(codec.dump(Batch((), 1.0))[0], expect=(Started, Progress, Failed), what="event")


def test_damaged_bytes_only_ever_give_a_codec_error():
    # A peer's garbage, truncated and bit-flipped frames: decoding either works or says what is wrong.
    rng = random.Random(21)
    frames = [codec.encode(message) for message in EVERY_MESSAGE]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(rng.choice(frames))
        if rng.random() < 0.5:
            del data[rng.randrange(len(data) + 1):]
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            codec.decode(bytes(data))
            outcomes["decoded"] += 1
        except CodecError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000  # the damage was seen, not silently read as something else every time


def test_a_deeply_nested_header_is_refused_not_a_crash():
    with pytest.raises(CodecError):
        codec.decode(_frame(b"[" * 100_000 + b"]" * 100_000))


def test_a_clip_job_and_its_mp4_answer_keep_what_makes_them_a_clip():
    job = codec.decode(codec.encode(CLIP_JOB))
    spec = job.spec
    assert (job.kind, spec.frames, spec.fps, spec.hold, spec.time_limit) == ("clip", 25, 12, True, 600.0)
    assert job.batch_key != dataclasses.replace(job, spec=PictureSpec(0.5, "default", 2.0, 0.8, 0.6)).batch_key
    done = codec.decode(codec.encode(CLIP_DONE))
    assert done.media == MP4 and done.image == CLIP_DONE.image
    assert codec.decode(codec.encode(DONE)).media == "image/png"  # a picture's answer reads as it always did


@pytest.mark.parametrize("fields, error", [
    ({"media": "text/html"}, "media must be image/png or video/mp4"),
    ({"spec": {"op": "clip", "frames": 0, "fps": 8}}, "A clip needs 2 to 257 frames"),
])
def test_a_clip_message_with_impossible_options_is_refused(fields, error):
    message = DONE if "media" in fields else JOB
    header, blobs = codec.dump(message)
    with pytest.raises(CodecError, match=error):
        codec.load(json.dumps({**json.loads(header), **fields}), blobs)


def test_a_stored_clip_result_passes_the_redis_result_check_and_a_fake_one_does_not():
    import numpy as np

    from pipeline.core.clip import encode_mp4
    from pipeline.core.redis_entries import BadEntry, parse_result, result_parts

    frames = np.zeros((3, 32, 48, 3), np.uint8)
    mp4 = encode_mp4(frames, 8).data
    done = dataclasses.replace(CLIP_DONE, image=mp4, width=48, height=32)
    assert parse_result("c1", *result_parts(done)) == done
    for image in (b"<html>not a clip</html>", b"\x89PNG\r\n\x1a\n" + mp4):  # not an MP4; a PNG said to be one
        with pytest.raises(BadEntry, match="not an MP4"):
            parse_result("c1", *result_parts(dataclasses.replace(done, image=image)))
    with pytest.raises(BadEntry, match="not a PNG"):  # an MP4 said to be a picture is held to the PNG check
        parse_result("c1", *result_parts(dataclasses.replace(done, media="image/png")))
