"""Typed settings of the GPU side: pipeline, tagger and styles.

They are parsed from ``config.toml`` by ``bot.config`` and handed to the worker as plain picklable objects,
so this module imports nothing heavier than pydantic.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.core.jobs import MAX_GUIDE_SCALE, MAX_STRENGTH, MAX_WEIGHT, MIN_STRENGTH
from pipeline.core.kinds import ENGINES, load_plugins
from pipeline.core.kinds.clip import FRAME_STEP as FRAME_STEP  # re-exported: the animator reads it here

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class Settings(BaseModel):
    """Base of every config section: unknown keys and loose types are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UrlModel(Settings):
    """A model file fetched once from an https URL and checked against its sha256."""

    url: str
    sha256: str
    filename: str = ""

    @field_validator("url")
    @classmethod
    def _https_only(cls, url: str) -> str:
        loopback = url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
        if not (url.startswith("https://") or loopback):
            raise ValueError("must be an https:// URL (plain http only for a mirror on this machine)")
        return url

    @field_validator("sha256")
    @classmethod
    def _hex(cls, digest: str) -> str:
        if not _HEX64.match(digest):
            raise ValueError("must be the file's sha256 as 64 hexadecimal digits")
        return digest.lower()


# A model is a local path, a Hugging Face repo id ("owner/name", or "owner/name:file/in/repo.safetensors"),
# a Civitai model version ("civitai:<id>", "urn:air:sdxl:lora:civitai:<model>@<version>"), or an https URL with
# its sha256. See pipeline.core.models for how each is resolved.
ModelSpec = str | UrlModel

Strength = Annotated[float, Field(ge=MIN_STRENGTH, le=MAX_STRENGTH)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]  # a part of the denoising steps


class PipelineSettings(Settings):
    """How the SDXL img2img pipeline is loaded and run."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    base_model: ModelSpec = "stabilityai/stable-diffusion-xl-base-1.0"
    base_config: ModelSpec = "stabilityai/stable-diffusion-xl-base-1.0"
    vae: ModelSpec = ""
    steps: Annotated[int, Field(ge=1, le=150)] = 30
    guidance_scale: Annotated[float, Field(ge=0.0, le=30.0)] = 7.0
    megapixels: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    max_batch: Annotated[int, Field(ge=1, le=16)] = 4
    max_input_megapixels: Annotated[float, Field(gt=0.0, le=200.0)] = 40.0
    default_style: str = "clay"
    # modules that register kinds of job and engines of their own (pipeline/core/kind.py), imported by the chat
    # process and by every worker
    plugins: list[str] = Field(default_factory=list)
    cache_dir: str = "~/.cache/claybot"
    # Civitai: where its API is (a mirror or a test server may stand in), and the variable holding an API key
    civitai_url: str = "https://civitai.com"
    civitai_token_env: str = "CIVITAI_TOKEN"
    # download limits (Civitai and url + sha256 files): the largest file, the slowest transfer (averaged over a
    # minute), and the deadline of one Civitai API answer
    max_download_gb: Annotated[float, Field(gt=0.0, le=1024.0)] = 8.0
    min_download_kb_per_s: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 50.0
    civitai_api_deadline: Annotated[float, Field(gt=0.0, le=600.0)] = 30.0
    # speed switches (each measured by benchmarks/gpu_speed.py)
    attention: Literal["sdpa", "classic"] = "sdpa"
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    resolution_buckets: bool = False

    @field_validator("civitai_url")
    @classmethod
    def _civitai_url(cls, url: str) -> str:
        loopback = url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
        if not (url.startswith("https://") or loopback):
            raise ValueError("must be an https:// URL such as https://civitai.com (plain http only on this machine)")
        return url.rstrip("/")

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a photo of this size is stylized at, under these settings."""
        from pipeline.core.images import working_size

        return working_size(width, height, self.megapixels, buckets=self.resolution_buckets)


class TaggerSettings(Settings):
    """The WD14 tagger and how its scores become prompt tags."""

    model: ModelSpec = "SmilingWolf/wd-vit-tagger-v3"
    general_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.35
    character_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    max_tags: Annotated[int, Field(ge=0, le=200)] = 30
    drop_tags: list[str] = Field(default_factory=list)


DEFAULT_SPEED = "default"
# Samplers a speed preset may ask for, each built from the base model's scheduler config (see pipeline.gpu.speed).
SpeedScheduler = Literal["base", "lcm", "tcd", "euler_trailing", "ddim_trailing"]


class SpeedSettings(Settings):
    """A few-step preset: a distilled speed LoRA beside the style's, the sampler it needs, its guidance and steps.

    ``steps`` are the denoising steps that actually RUN at any strength (img2img runs int(nominal × strength) of a
    nominal schedule; pipeline.gpu.speed.nominal_steps picks the nominal count that makes them ``steps``)."""

    lora: ModelSpec = ""
    lora_scale: Annotated[float, Field(ge=0.0, le=4.0)] = 1.0
    scheduler: SpeedScheduler = "euler_trailing"
    guidance_scale: Annotated[float, Field(ge=0.0, le=1.5)] = 0.0
    steps: Annotated[int, Field(ge=1, le=50)] = 4


class StructureGuide(Settings):
    """A ControlNet that keeps the photo's layout: fed the photo's depth map or its edges ("" controlnet = off)."""

    controlnet: ModelSpec = ""
    kind: Literal["depth", "canny"] = "depth"
    depth_model: ModelSpec = "depth-anything/Depth-Anything-V2-Small-hf"  # only for kind = "depth"
    scale: Annotated[float, Field(ge=0.0, le=MAX_GUIDE_SCALE)] = 0.8
    start: Fraction = 0.0
    end: Fraction = 1.0
    canny_low: Annotated[int, Field(ge=0, le=255)] = 100
    canny_high: Annotated[int, Field(ge=0, le=255)] = 200

    @field_validator("end")
    @classmethod
    def _after_start(cls, end: float, info: ValidationInfo) -> float:
        start = info.data.get("start", 0.0)
        if end <= start:
            raise ValueError(f"must be above start ({start}): start and end are the part of the steps it acts on")
        return end

    @field_validator("canny_high")
    @classmethod
    def _above_low(cls, high: int, info: ValidationInfo) -> int:
        low = info.data.get("canny_low", 0)
        if high < low:
            raise ValueError(f"must not be below canny_low ({low})")
        return high

    @property
    def enabled(self) -> bool:
        return bool(self.controlnet)


class IdentityGuide(Settings):
    """An IP-Adapter fed the photo's face, so the person stays recognisable ("" adapter = off)."""

    adapter: ModelSpec = ""
    image_encoder: ModelSpec = "h94/IP-Adapter:models/image_encoder"
    face_detector: ModelSpec = ""  # "" = no detector: the whole photo, centre-cropped by the image encoder
    scale: Annotated[float, Field(ge=0.0, le=MAX_GUIDE_SCALE)] = 0.6
    face_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.7
    face_margin: Annotated[float, Field(ge=0.0, le=2.0)] = 0.4

    @property
    def enabled(self) -> bool:
        return bool(self.adapter)


class StyleAnimate(Settings):
    """How a style's pictures move: the motion prompt a clip's tags are added to, and what to steer away from."""

    prompt: str = "claymation stop-motion animation, subtle natural movement"
    negative_prompt: str = ("blurry, distorted, deformed, morphing, flickering, jittery, static, still frame, "
                            "low quality, text, watermark")
# A clay style's defaults, declared once: a [styles.X] table that leaves a key out gets these (an empty value in
# the table turns one off). Without them the tagger's "photo (medium), realistic" would go into a clay prompt.
CLAY_NEGATIVE_PROMPT = ("photo, photorealistic, realistic, blurry, lowres, jpeg artifacts, deformed, bad anatomy, "
                        "watermark, text")
CLAY_CLASHING_TAGS = ("realistic", "photorealistic", "photo (medium)", "photo background", "blurry", "film grain")


# The edit engine's instruction (engine = "edit"): the style comes from these words alone (no clay LoRA exists for
# FLUX.2 klein). {tags}: the photo's tags; {words}: what the person added (/clay likeness as a knight), or nothing.
EDIT_INSTRUCTION = ("Turn this photo into a claymation stop-motion scene: every person, animal and object sculpted "
                    "from smooth plasticine with visible fingerprints and soft studio lighting, like a frame of a "
                    "clay animation film. Keep the person's face, expression, pose, hair and clothes, and the "
                    "layout of the scene. The scene: {tags}. {words}")
EDIT_FIELDS = frozenset({"tags", "words"})


class EditSettings(Settings):
    """The instruction-following edit model of a style with ``engine = "edit"`` (pipeline/gpu/edit.py): FLUX.2
    [klein] 4B by default, given the photo as its reference and the instruction, in a few distilled steps."""

    # a diffusers folder (Hub repo id or local); or one .safetensors file of the transformer in BFL's release layout
    # (local, URL + sha256, "owner/name:file", Civitai), the rest of the pipeline then from ``config``
    model: ModelSpec = "black-forest-labs/FLUX.2-klein-4B"
    config: ModelSpec = "black-forest-labs/FLUX.2-klein-4B"  # only for a single-file model: text encoder, VAE, …
    instruction: Annotated[str, Field(min_length=1, max_length=4000)] = EDIT_INSTRUCTION
    steps: Annotated[int, Field(ge=1, le=50)] = 4
    # klein 4B is step-distilled: guidance is ignored (diffusers warns above 1); an undistilled model uses it
    guidance_scale: Annotated[float, Field(ge=0.0, le=20.0)] = 1.0
    megapixels: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0  # the picture's size: 1.0 ≈ 1024×1024
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU
    max_sequence_length: Annotated[int, Field(ge=16, le=512)] = 512  # instruction tokens the text encoder reads
    enable_model_cpu_offload: bool = False  # each part on the GPU only while it runs: fits beside SDXL, slower

    @field_validator("instruction")
    @classmethod
    def _known_fields(cls, instruction: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(instruction) if name is not None}
        except ValueError as err:
            raise ValueError(f"is not a template claybot can fill ({err}); write {{{{ and }}}} for braces") from None
        unknown = sorted(fields - EDIT_FIELDS)
        if unknown:
            raise ValueError(f"names {{{unknown[0]}}}, which claybot does not fill (it fills {{tags}} and {{words}})")
        return instruction


class StyleSettings(Settings):
    """One style: a LoRA, its trigger words and weight, and how it treats the photo's tags (clay's by default)."""


    lora: ModelSpec = ""
    lora_scale: Annotated[float, Field(ge=0.0, le=4.0)] = 1.0
    trigger_words: str = ""
    trigger_weight: Annotated[float, Field(ge=0.0, le=MAX_WEIGHT)] = 2.0
    default_strength: Strength = 0.5
    negative_prompt: str = CLAY_NEGATIVE_PROMPT
    clashing_tags: list[str] = Field(default_factory=lambda: list(CLAY_CLASHING_TAGS))
    before_after: bool = False
    speed: str = DEFAULT_SPEED  # a [speed.*] preset, or "default": pipeline.steps, guidance_scale and scheduler
    engine: str = "sdxl"  # the picture engine that makes its pictures (pipeline/core/kind.py register_engine)
    edit: EditSettings = Field(default_factory=EditSettings)  # engine = "edit" only
    # true: offered; false: not; "auto": offered once its model is on this machine (an edit style's model, fetched
    # by `claybot models` or named as a local folder)
    enabled: bool | Literal["auto"] = True
    structure: StructureGuide = Field(default_factory=StructureGuide)
    identity: IdentityGuide = Field(default_factory=IdentityGuide)
    animate: StyleAnimate = Field(default_factory=StyleAnimate)


VideoFamily = Literal["wan", "ltx"]


def check_frames(family: str, frames: int, step: int | None = None) -> None:
    """Refuse a frame count the family's VAE cannot make (Wan: 4k+1, LTX: 8k+1; ``step``: a loaded model's own),
    naming the nearest good ones."""
    step = step or FRAME_STEP[family]
    if frames % step == 1 and frames > 1:
        return
    below = max(step + 1, (frames - 1) // step * step + 1)
    above = below if below > frames else below + step
    choices = f"{below}" if below == above else f"{below} or {above}"
    raise ValueError(f"{family} makes {step}k+1 frames (its VAE packs {step} frames into one) and {frames} is not "
                     f"one; claybot does not round it: set {choices}")


class AnimateSettings(Settings):
    """The image-to-video model that turns a clay picture into a short clip, and how clips are made and encoded."""

    enabled: bool = False
    model: ModelSpec = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    family: Literal["auto", "wan", "ltx"] = "auto"  # auto: from the model's model_index.json
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU
    frames: Annotated[int, Field(ge=2, le=257)] = 73
    fps: Annotated[int, Field(ge=1, le=60)] = 24
    hold: bool = False  # "on twos": each frame shown twice, the file at 2 × fps
    steps: Annotated[int, Field(ge=1, le=100)] = 30
    guidance_scale: Annotated[float, Field(ge=0.0, le=20.0)] = 5.0
    megapixels: Annotated[float, Field(gt=0.0, le=4.0)] = 0.4
    enable_model_cpu_offload: bool = False
    # at most 50: the largest file a chat takes from a bot (Telegram's upload limit), under the worker link's frames
    max_mb: Annotated[float, Field(gt=0.0, le=50.0)] = 10.0
    timeout: Annotated[float, Field(gt=0.0, le=7200.0)] = 600.0
    # the longest clip a person may ask for (/animate 5): a clip's cost grows with its frames; None: frames / fps
    max_seconds: Annotated[float, Field(gt=0.0, le=60.0)] | None = None

    @property
    def longest(self) -> float:
        """The longest clip a person may ask for, in seconds."""
        return self.max_seconds if self.max_seconds is not None else self.seconds

    @field_validator("frames")
    @classmethod
    def _frames_fit_family(cls, frames: int, info: ValidationInfo) -> int:
        family = info.data.get("family", "auto")
        if family != "auto":  # else checked once the model is loaded and its family known (pipeline.gpu.animate)
            check_frames(family, frames)
        return frames

    @property
    def max_bytes(self) -> int:
        """The size a clip file must fit in (max_mb in MiB, as Discord counts its attachment limit)."""
        return int(self.max_mb * 1024 * 1024)

    @property
    def seconds(self) -> float:
        """How long a clip plays once."""
        return self.frames / self.fps


class QueueSettings(Settings):
    """The job queue between the chat side and the pipeline worker."""

    backend: Literal["local", "redis"] = "local"
    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 100
    batch_window: Annotated[float, Field(ge=0.0, le=10.0)] = 0.25
    job_timeout: Annotated[float, Field(gt=0.0, le=3600.0)] = 120.0
    kill_after: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    max_retries: Annotated[int, Field(ge=0, le=5)] = 1
    shutdown_grace: Annotated[float, Field(ge=0.0, le=600.0)] = 30.0
    worker_address: str = ""
    worker_key_env: str = "CLAYBOT_WORKER_KEY"
    # the Redis backend
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "claybot"
    instance: str = ""
    claim_idle: Annotated[float, Field(gt=0.0, le=3600.0)] = 15.0
    image_ttl: Annotated[float, Field(ge=60.0, le=604800.0)] = 3600.0
    result_ttl: Annotated[float, Field(ge=60.0, le=604800.0)] = 3600.0
    heartbeat: Annotated[float, Field(gt=0.0, le=60.0)] = 2.0
    position_interval: Annotated[float, Field(gt=0.0, le=60.0)] = 3.0
    no_worker_timeout: Annotated[float, Field(gt=0.0, le=86400.0)] = 60.0
    # `claybot worker` on the Redis backend: the kinds of job it takes ([]: every kind the config makes: pictures,
    # and clips when [animate] is on); checked against the kinds' registry when the worker starts
    worker_kinds: list[str] = Field(default_factory=list)


class ModelsSettings(Settings):
    """What the operator may use models for."""

    # true: this claybot charges (credits) or is run commercially: a model whose card states a non-commercial licence
    # stops start-up, one whose licence is unknown is warned about (pipeline/core/licences.py)
    commercial: bool = False


class GpuSettings(Settings):
    """Everything the pipeline worker needs, and nothing of the chat side."""

    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    tagger: TaggerSettings = Field(default_factory=TaggerSettings)
    styles: dict[str, StyleSettings] = Field(default_factory=lambda: {"clay": StyleSettings()})
    speed: dict[str, SpeedSettings] = Field(default_factory=dict)
    animate: AnimateSettings = Field(default_factory=AnimateSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)

    @model_validator(mode="after")
    def _default_style_exists(self) -> GpuSettings:
        if not self.styles:
            raise ValueError("styles: at least one style table is needed, e.g. [styles.clay]")
        if self.pipeline.default_style not in self.styles:
            names = ", ".join(sorted(self.styles))
            raise ValueError(f"pipeline.default_style = {self.pipeline.default_style!r} names no style (have: {names})")
        if DEFAULT_SPEED in self.speed:
            raise ValueError(f"speed.{DEFAULT_SPEED}: the name is taken by the built-in preset (pipeline.steps, "
                             "guidance_scale and the base scheduler); give yours another name, e.g. [speed.fast]")
        for name in self.speed:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
                raise ValueError(f"speed.{name}: a preset name is a lowercase letter then up to 31 letters, digits, "
                                 "- or _ (users type it after a strength, e.g. /clay 0.6 fast)")
        load_plugins(self.pipeline.plugins)  # before the engines' names are checked: a plugin may add one
        for name, style in self.styles.items():
            if style.engine not in ENGINES:
                raise ValueError(f"styles.{name}.engine = {style.engine!r} names no engine (have: "
                                 f"{', '.join(sorted(ENGINES))})")
            if style.speed not in self.speed_names():
                raise ValueError(f"styles.{name}.speed = {style.speed!r} names no speed preset "
                                 f"(have: {', '.join(self.speed_names())})")
            if style.engine == "edit":  # an instruction engine: no SDXL LoRA, guide or speed preset acts on it
                sdxl_only = [key for key, on in (("lora", bool(style.lora)), ("structure", style.structure.enabled),
                                                 ("identity", style.identity.enabled),
                                                 ("speed", style.speed != DEFAULT_SPEED)) if on]
                if sdxl_only:
                    raise ValueError(f"styles.{name}.{sdxl_only[0]}: the edit engine (engine = \"edit\") makes the "
                                     "picture from its instruction alone; take it out, or use engine = \"sdxl\"")
        adapters = {(s.identity.adapter, s.identity.image_encoder) for s in self.styles.values() if s.identity.enabled}
        if len(adapters) > 1:
            raise ValueError("styles.*.identity: every style with an identity guide must name the same adapter and "
                             "image_encoder (the worker loads one IP-Adapter into the shared UNet)")
        if adapters and self.pipeline.fuse_qkv:
            raise ValueError("pipeline.fuse_qkv cannot be combined with an identity guide: the IP-Adapter's attention "
                             "replaces the fused one; set fuse_qkv = false")
        return self

    def speed_names(self) -> list[str]:
        """Every preset a request may name: "default" first, then the [speed.*] tables."""
        return [DEFAULT_SPEED, *self.speed]
