"""The SFW gate holds for clips: frames spread over a clip are rated like a picture, and a clip with a frame over the
chat's limit is not sent. The real tiny stylizer (its tagger) and tiny Wan animator, in this process."""

from __future__ import annotations

import asyncio
import io
import itertools

import pytest
from PIL import Image

from pipeline.core.intake import take_in
from pipeline.core.jobs import MP4, Batch, Done, ErrorKind, Failed, Progress, Task, Update
from pipeline.core.safety import CLIP_REFUSED, INPUT_REFUSED, RATINGS, over_limit, rated_frames, severity, worst
from pipeline.core.settings import AnimateSettings
from pipeline.gpu.animate import Animator
from pipeline.gpu.stylizer import Stylizer
from pipeline.gpu.tiny_video import write_tiny_video_models
from pipeline.gpu.worker import run_batch
from tests.conftest import photo_bytes, workshop_of

SQUARE = photo_bytes((128, 128))  # square frames: the tagger pads nothing, so a red frame rates as red does
RED = photo_bytes((128, 128), color=(255, 0, 0), fmt="PNG")  # the tiny tagger rates pure red "explicit"


@pytest.fixture(scope="module")
def clip_gpu(tiny_config, tmp_path_factory):
    video = write_tiny_video_models(tmp_path_factory.mktemp("tiny-video"))
    animate = AnimateSettings(enabled=True, max_seconds=16.0, model=str(video.wan_folder), frames=9, fps=8, steps=2,
                              megapixels=0.0123, timeout=300)
    return tiny_config.gpu().model_copy(update={"animate": animate})


@pytest.fixture(scope="module")
def stylizer(clip_gpu) -> Stylizer:
    return Stylizer(clip_gpu)


@pytest.fixture(scope="module")
def animator(clip_gpu) -> Animator:
    return Animator(clip_gpu)


class RedFrames:
    """The real tiny animator, whose clip has some frames painted pure red: as if the model had made what the
    picture did not show."""

    def __init__(self, animator: Animator, frames: list[int]) -> None:
        self.animator, self.settings, self.frames, self.made = animator, animator.settings, frames, 0

    def run(self, picture, **kwargs):
        clip = self.animator.run(picture, **kwargs)
        self.made = len(clip.frames)
        for index in self.frames:
            clip.frames[index] = (255, 0, 0)
        return clip


def clip_batch(gpu, max_rating: str | None, image: bytes = SQUARE) -> Batch:
    job = asyncio.run(take_in(gpu, image, kind="clip", seed=3, max_rating=max_rating))
    return Batch((Task("clip", job),), 300)


def answer(sent: list) -> Done | Failed:
    (final,) = [m.event for m in sent if isinstance(m, Update) and isinstance(m.event, Done | Failed)]
    return final


def test_the_tiny_tagger_rates_a_red_frame_over_a_sensitive_chats_limit(stylizer, animator):
    assert stylizer.tagger([Image.open(io.BytesIO(RED))])[0].rating == "explicit"
    ordinary = stylizer.tagger([Image.open(io.BytesIO(SQUARE))])[0]
    assert not over_limit(ordinary.ratings, "sensitive")  # the picture itself passes the gate


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_clip_with_a_frame_over_the_chats_rating_is_refused(stylizer, animator, clip_gpu, where):
    index = {"first": 0, "middle": 4, "last": -1}[where]  # of the 9 frames
    red = RedFrames(animator, [index])
    sent: list = []
    run_batch(workshop_of(stylizer, red), clip_batch(clip_gpu, "sensitive"), sent.append)

    assert red.made == 9
    failed = answer(sent)
    assert isinstance(failed, Failed) and failed.kind is ErrorKind.NOT_ALLOWED
    assert failed.reason == CLIP_REFUSED and "clip" in failed.reason
    assert any(isinstance(m.event, Progress) for m in sent)  # it was made, then held back: the gate is on frames


def test_the_same_clip_is_sent_where_the_chat_allows_it_and_carries_its_worst_rating(stylizer, animator, clip_gpu):
    for max_rating in (None, "explicit"):
        sent: list = []
        run_batch(workshop_of(stylizer, RedFrames(animator, [4])), clip_batch(clip_gpu, max_rating), sent.append)
        done = answer(sent)
        assert isinstance(done, Done) and done.media == MP4
        assert max(done.ratings, key=done.ratings.__getitem__) == "explicit"  # the red frame's, not the picture's
        assert "check" in done.timings


def test_a_clip_within_the_limit_is_sent_with_the_pictures_rating(stylizer, animator, clip_gpu):
    sent: list = []
    run_batch(workshop_of(stylizer, animator), clip_batch(clip_gpu, "sensitive"), sent.append)
    done = answer(sent)
    assert isinstance(done, Done) and done.media == MP4
    assert not over_limit(done.ratings, "sensitive") and set(done.ratings) == set(RATINGS)


def test_a_picture_over_the_limit_is_refused_before_any_frame_is_made(stylizer, animator, clip_gpu):
    red = RedFrames(animator, [])
    sent: list = []
    run_batch(workshop_of(stylizer, red), clip_batch(clip_gpu, "sensitive", image=RED), sent.append)
    failed = answer(sent)
    assert isinstance(failed, Failed) and failed.reason == INPUT_REFUSED and red.made == 0


@pytest.mark.parametrize(("count", "fps", "picked"), [
    (9, 8, [0, 2, 4, 6, 8]), (73, 24, [0, 12, 24, 36, 48, 60, 72]), (2, 24, [0, 1]), (3, 24, [0, 1, 2]),
    (1, 24, [0]), (5, 1, [0, 1, 2, 3, 4])])
def test_the_rated_frames_are_the_first_last_and_evenly_between_at_least_five(count, fps, picked):
    assert rated_frames(count, fps) == picked


@pytest.mark.parametrize(("count", "fps"), [(73, 24), (121, 24), (241, 24), (257, 16), (257, 60), (49, 2)])
def test_a_longer_clip_has_more_frames_rated_none_more_than_half_a_second_apart(count, fps):
    # issue 31, item 5: five frames whatever the length left 2.7 s unseen between two rated frames of a 10 s clip
    picks = rated_frames(count, fps)
    assert picks[0] == 0 and picks[-1] == count - 1 and picks == sorted(set(picks))
    assert max(b - a for a, b in itertools.pairwise(picks)) <= max(1, fps // 2)  # frames in 0.5 s


def test_worst_is_the_scores_leaning_furthest_up_the_ratings():
    calm = {"general": 0.9, "sensitive": 0.1, "questionable": 0.0, "explicit": 0.0}
    torn = {"general": 0.5, "sensitive": 0.0, "questionable": 0.0, "explicit": 0.5}
    assert worst([calm, torn]) == worst([torn, calm]) == torn
    assert severity({}) == 0.0 and worst([]) == {}


class BlindAfterThePicture:
    """The real tiny stylizer whose tagger fails on everything after the picture: the clip's frames go unrated."""

    def __init__(self, stylizer: Stylizer) -> None:
        self.stylizer, self.settings, self.calls = stylizer, stylizer.settings, 0

    def tagger(self, images):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("onnxruntime fell over")
        return self.stylizer.tagger(images)


def test_a_clip_whose_frames_cannot_be_rated_is_not_sent_where_the_chat_asked_for_the_check(stylizer, animator,
                                                                                             clip_gpu):
    from pipeline.gpu.engine import TAG_REASON

    sent: list = []
    run_batch(workshop_of(BlindAfterThePicture(stylizer), animator), clip_batch(clip_gpu, "sensitive"), sent.append)
    assert answer(sent) == Failed(TAG_REASON, ErrorKind.INTERNAL)
    sent = []  # a chat that allows anything asked for no check: the clip is sent, rated as its picture
    run_batch(workshop_of(BlindAfterThePicture(stylizer), animator), clip_batch(clip_gpu, None), sent.append)
    done = answer(sent)
    assert isinstance(done, Done) and done.media == MP4 and set(done.ratings) == set(RATINGS)
