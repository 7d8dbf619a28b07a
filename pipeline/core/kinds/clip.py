"""The clip: a short stop-motion clip of a clay picture (``[animate]``), answered as an MP4.

Its options: frames, frame rate, "on twos", its own time limit and the most bytes its file may have (the chat's
attachment limit); intake settles them from ``[animate]`` and the seconds a person asked for. A clip costs tens of
pictures: it runs alone, after every picture waiting, under limits of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.core.errors import BadRequest
from pipeline.core.kind import MP4, JobKind, KindLimits, Spec, register, register_engine

# Image-to-video families: each VAE divides the frame count by this (so clips have k·step + 1 frames).
FRAME_STEP = {"wan": 4, "ltx": 8}
MAX_CLIP_FRAMES = 257  # as [animate] frames allows
ANIMATE_OFF = "Clips are not switched on here: the operator has not set [animate] enabled = true."


@dataclass(frozen=True)
class ClipSpec(Spec):
    """A clip's own options, settled."""

    KIND: ClassVar[str] = "clip"

    frames: int  # frames the model makes
    fps: int
    hold: bool = False  # each frame shown twice ("on twos")
    time_limit: float | None = None  # seconds the worker may take; None: the queue's job_timeout
    max_bytes: int = 0  # its file must fit in this: the chat's attachment limit or [animate] max_mb, the smaller
    #                     (settled at intake; 0 only in jobs written before it was)

    def __post_init__(self) -> None:
        if not (2 <= self.frames <= MAX_CLIP_FRAMES and 1 <= self.fps <= 60):
            raise BadRequest(f"A clip needs 2 to {MAX_CLIP_FRAMES} frames at 1 to 60 fps, not {self.frames} frames "
                             f"at {self.fps} fps.")
        if not 0 <= self.max_bytes <= 2**40:
            raise BadRequest(f"max_bytes must be from 0 to 2**40, not {self.max_bytes}.")
        if self.time_limit is not None and not 0 < self.time_limit <= 7200:
            raise BadRequest(f"time_limit must be from 0 to 7200 seconds, not {self.time_limit:g}.")


class ClipKind(JobKind):
    """Declared once: how a clip is settled, ranked, limited and made."""

    name = "clip"
    spec = ClipSpec
    rank = 10  # after every picture: a picture waits behind at most the clip already running
    engine = "animate"
    media = MP4
    noun = "clip"
    doing = "Animating…"
    cost = 8
    no_worker_reason = "No clip maker is running right now, so I can't make your clip; please ask again later."
    flat_fields = ("frames", "fps", "hold", "time_limit", "max_bytes")
    OPTIONS = frozenset({"seconds", "max_bytes"})

    def enabled(self, gpu: Any) -> str | None:
        return None if gpu.animate.enabled else ANIMATE_OFF

    def settle(self, gpu: Any, style: str, options: Mapping[str, Any]) -> ClipSpec:
        unknown = sorted(set(options) - self.OPTIONS)
        if unknown:
            raise BadRequest(f"A clip has no option {unknown[0][:40]!r}.")
        animate = gpu.animate
        return ClipSpec(frames=clip_frames(animate, options.get("seconds")), fps=animate.fps, hold=animate.hold,
                        time_limit=animate.timeout,
                        max_bytes=min(animate.max_bytes, int(options.get("max_bytes") or animate.max_bytes)))

    def batch_key(self, job: Any) -> str:
        width, height = job.work_size
        return f"{self.name}|{job.style}|{width}x{height}|{job.spec.frames}"

    def time_limit(self, spec: Spec) -> float | None:
        assert isinstance(spec, ClipSpec)
        return spec.time_limit

    def limits(self, limits: Any) -> KindLimits:
        user, chat = limits.clip_user_per_hour, limits.clip_chat_per_hour
        return KindLimits(user=((user, 3600.0),) if user else (), chat=((chat, 3600.0),) if chat else (),
                          waiting=limits.clips_waiting)


def clip_frames(animate: Any, seconds: float | None) -> int:
    """The frame count of a clip of about ``seconds`` ([animate] frames when None): the nearest the model makes
    (k·step + 1; with ``family = "auto"``, 8k + 1, which both families make); BadRequest past the longest the model
    makes or ``[animate] max_seconds`` allows."""
    if seconds is None:
        return int(animate.frames)
    step = FRAME_STEP.get(animate.family, max(FRAME_STEP.values()))
    most = (MAX_CLIP_FRAMES - 1) // step * step + 1
    longest = min(most / animate.fps, animate.longest)  # what the model can make, and what the operator allows
    if not 0 < seconds <= longest + 1e-9:  # also refuses NaN
        raise BadRequest(f"A clip can be up to {longest:.1f} seconds long here, not {seconds:g}.")
    return min(most, max(1, round(seconds * animate.fps / step)) * step + 1)


register(ClipKind())
register_engine("animate", "pipeline.gpu.clips:ClipEngine")
