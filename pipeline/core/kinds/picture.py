"""The picture: a photo made clay by a picture engine: SDXL img2img with the style's LoRA (``engine = "sdxl"``, the
default) or an instruction-following edit model (``engine = "edit"``, FLUX.2 [klein]).

Its options: the strength (img2img's denoise), the speed preset, the trigger weight and the two guides' scales (SDXL
only), and the person's own words (both engines); intake settles each from the style when the request leaves it
out, and refuses one the style's engine does not act on. Pictures run first, up to the engine's batch size sharing
one call (``pipeline.max_batch`` for SDXL; one for the edit engine, which reads its photo as a reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.core.errors import BadRequest
from pipeline.core.jobs import MAX_GUIDE_SCALE, MAX_WEIGHT, check_strength
from pipeline.core.kind import ONE_JOB_ENGINES, PNG, JobKind, Spec, engine_takes, register, register_engine
from pipeline.core.words import clean_words


@dataclass(frozen=True)
class PictureSpec(Spec):
    """A picture's own options, settled."""

    KIND: ClassVar[str] = "picture"

    strength: float
    speed: str  # a [speed.*] preset, or "default"
    trigger_weight: float  # the style's, unless an operator's sweep varies it
    structure_scale: float  # the style's structure guide scale (unused when it has none)
    identity_scale: float  # the style's identity guide scale (unused when it has none)
    words: str = ""  # the person's own words ("as a knight"), checked by pipeline.core.words

    def __post_init__(self) -> None:
        check_strength(self.strength)
        if self.words != clean_words(self.words):
            raise BadRequest("words must be tidy, printable text of at most 200 characters.")
        if not 0.0 <= self.trigger_weight <= MAX_WEIGHT:
            raise BadRequest(f"trigger_weight must be from 0 to {MAX_WEIGHT:g}, not {self.trigger_weight:g}.")
        for name in ("structure_scale", "identity_scale"):
            if not 0.0 <= getattr(self, name) <= MAX_GUIDE_SCALE:
                raise BadRequest(f"{name} must be from 0 to {MAX_GUIDE_SCALE:g}, not {getattr(self, name):g}.")


class PictureKind(JobKind):
    """Declared once: how a picture is settled, batched, ranked and made."""

    name = "picture"
    spec = PictureSpec
    rank = 0
    lane = ""  # the first lane, "<prefix>:jobs", the name it had before clips came
    engine = "sdxl"
    media = PNG
    noun = "picture"
    doing = "Sculpting…"
    cost = 1
    no_worker_reason = ("No picture maker is running right now, so I can't make your picture; "
                        "please send it again later.")
    flat_fields = ("strength", "speed", "trigger_weight", "structure_scale", "identity_scale")
    OPTIONS = frozenset({"strength", "speed", "trigger_weight", "structure_scale", "identity_scale", "words"})

    def settle(self, gpu: Any, style: str, options: Mapping[str, Any]) -> PictureSpec:
        unknown = sorted(set(options) - self.OPTIONS)
        if unknown:
            raise BadRequest(f"A picture has no option {unknown[0][:40]!r}.")
        settings = gpu.styles[style]
        ignored = sorted(name for name, value in options.items()
                         if value is not None and not engine_takes(settings.engine, name))
        if ignored:  # e.g. a strength for a style whose engine keeps the photo by instruction, not by denoise
            raise BadRequest(f"The {style} style works by instruction and has no {ignored[0].replace('_', ' ')}: "
                             f"leave it out (/clay {style} as a knight).")

        def given(name: str, default: Any) -> Any:
            value = options.get(name)
            return default if value is None else value

        speed = given("speed", settings.speed)
        if speed not in gpu.speed_names():
            raise BadRequest(f"There is no speed preset called {str(speed)[:40]!r}; "
                             f"try: {', '.join(gpu.speed_names())}.")
        return PictureSpec(strength=round(float(given("strength", settings.default_strength)), 4), speed=speed,
                           trigger_weight=float(given("trigger_weight", settings.trigger_weight)),
                           structure_scale=float(given("structure_scale", settings.structure.scale)),
                           identity_scale=float(given("identity_scale", settings.identity.scale)),
                           words=clean_words(given("words", "")))

    def unrunnable(self, spec: Spec, gpu: Any) -> str | None:
        assert isinstance(spec, PictureSpec)
        if spec.speed not in gpu.speed_names():
            return f"speed preset {spec.speed[:40]!r} is not one of this worker's ({', '.join(gpu.speed_names())})"
        return None

    def batch_key(self, job: Any) -> str:
        spec, (width, height) = job.spec, job.work_size
        return f"{self.name}|{job.style}|{spec.strength:g}|{width}x{height}|{spec.speed}"

    def max_batch(self, gpu: Any, job: Any = None) -> int:
        style = gpu.styles.get(job.style) if job is not None else None
        return 1 if style is not None and style.engine in ONE_JOB_ENGINES else int(gpu.pipeline.max_batch)

    def engine_for(self, job: Any, gpu: Any) -> str:
        return str(gpu.styles[job.style].engine)

    def engines(self, gpu: Any) -> set[str]:
        return {style.engine for style in gpu.styles.values()}


register(PictureKind())
register_engine("sdxl", "pipeline.gpu.pictures:PictureEngine", options=PictureKind.OPTIONS)
# FLUX.2 [klein] by instruction: it keeps the photo by design, so no strength, speed preset, trigger or guide acts on
# it; one job per call (a call's reference images go to every prompt of it)
register_engine("edit", "pipeline.gpu.edit:EditEngine", options={"words"}, batches=False)
