"""The GPU side of clips: a clay picture + a motion prompt → the frames of a short clip (image-to-video).

``Animator`` loads the image-to-video pipeline named by ``[animate] model`` once, through the same model resolution
as every model (a local diffusers folder or a Hugging Face repo id), and makes one clip per call: the picture is its
first frame. Two families are supported, told apart by the folder's model_index.json (or ``[animate] family``):
Wan (``WanImageToVideoPipeline``; Wan 2.2 TI2V-5B is the default) and LTX-Video (``LTXConditionPipeline`` for the
0.9.5+ checkpoints, ``LTXImageToVideoPipeline`` for older ones). Encoding the frames is pipeline.core.clip's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.core import models  # noqa: E402
from pipeline.core.clip import clip_size  # noqa: E402
from pipeline.core.errors import ClaybotError, ModelError  # noqa: E402
from pipeline.core.models import VIDEO_FILES  # noqa: E402
from pipeline.core.settings import AnimateSettings, GpuSettings, StyleSettings, check_frames  # noqa: E402
from pipeline.gpu.stylizer import pick_device, pick_dtype  # noqa: E402

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
# What each pipeline's own checks demand of the sides, beyond what its VAE and patches divide by.
_PIPELINE_MULTIPLE = {"wan": 16, "ltx": 32}


class ClipTimeout(ClaybotError):
    """A clip ran past its time limit and was stopped between two denoising steps."""


class ClipLengthError(ClaybotError):
    """A clip asked for a frame count the loaded model cannot make (the message says which it can)."""


@dataclass(frozen=True)
class Clip:
    """The frames of one clip and what made them."""

    frames: np.ndarray  # frames × height × width × 3, uint8 RGB; frames[0] is the picture
    fps: int
    hold: int  # times each frame is shown (2: "on twos")
    seed: int
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)


def family_of(class_name: str) -> str | None:
    """The family of a diffusers pipeline class name ("WanImageToVideoPipeline" → "wan"), None if unsupported."""
    if class_name.startswith("Wan"):
        return "wan"
    if class_name.startswith("LTX") and not class_name.startswith("LTX2"):  # LTX-2 is another architecture
        return "ltx"
    return None


def motion_prompt(style: StyleSettings, tags: Sequence[str]) -> str:
    """The style's motion prompt, then the picture's tags (what is in it, so the model knows what may move)."""
    parts = [style.animate.prompt.strip(), *(tag.strip() for tag in tags)]
    return ", ".join(part for part in parts if part)


def _model_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"animate.model: {folder} has no model_index.json; name a diffusers image-to-video pipeline "
                         "(a folder, or a Hugging Face repo such as Wan-AI/Wan2.2-TI2V-5B-Diffusers).") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"animate.model: {path} cannot be read ({err}).") from None


class Animator:
    """The image-to-video pipeline, loaded once; ``run`` makes one clip from a picture."""

    def __init__(self, settings: GpuSettings, *, pipe: Any = None) -> None:
        """Load ``animate.model``; or, given ``pipe`` (a pipeline built in memory, as the benchmark's full-size
        random models are), use that as if it had been loaded."""
        from pipeline.gpu.stylizer import _quiet_libraries

        _quiet_libraries()
        self.settings: AnimateSettings = settings.animate
        self.device = pick_device(settings.pipeline.device)
        # bfloat16 on CUDA: what Wan and LTX are released in
        self.dtype = pick_dtype(self.settings.dtype, self.device, key="animate.dtype", cuda=torch.bfloat16)
        started = time.perf_counter()
        folder: Path | None = None
        if pipe is None:
            folder = models.resolve(self.settings.model, "animate.model", models.ModelStore.of(settings.pipeline),
                                    allow_patterns=VIDEO_FILES)
            class_name = str(_model_index(folder).get("_class_name", ""))
        else:
            class_name = type(pipe).__name__
        detected = family_of(class_name)
        if detected is None:
            raise ModelError(f"animate.model: {folder or 'the model'} holds a {class_name or 'nameless'} pipeline; "
                             "claybot animates with Wan (WanImageToVideoPipeline) or LTX-Video "
                             "(LTXConditionPipeline) models.")
        if self.settings.family not in ("auto", detected):
            raise ModelError(f"animate.family = {self.settings.family!r}, but animate.model is a {detected} model "
                             f"({class_name}); set family = \"{detected}\" or \"auto\".")
        self.family = detected
        if folder is not None:
            pipe = self._load(folder, class_name)
        else:
            pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        try:
            check_frames(self.family, self.settings.frames, step=self._frame_step())
        except ValueError as err:
            raise ModelError(f"animate.frames: {err}") from None
        logger.info("loaded the %s image-to-video model %s on %s (%s) in %.1f s", self.family,
                    models.describe(self.settings.model), self.device, str(self.dtype).removeprefix("torch."),
                    time.perf_counter() - started)

    def _load(self, folder: Path, class_name: str) -> Any:
        import diffusers

        if self.family == "wan":
            cls = diffusers.WanImageToVideoPipeline
        elif class_name == "LTXConditionPipeline":
            cls = diffusers.LTXConditionPipeline
        else:
            cls = diffusers.LTXImageToVideoPipeline  # also loads an LTXPipeline folder: the same components
        kwargs: dict = {"dtype": self.dtype, "use_safetensors": True}
        if self.family == "wan" and self.dtype != torch.float32:
            # Wan's VAE is run in float32 (as Wan's own code does): in half precision its decode loses colour.
            kwargs["vae"] = diffusers.AutoencoderKLWan.from_pretrained(folder / "vae", dtype=torch.float32,
                                                                       use_safetensors=True)
        try:
            pipe = cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, TypeError) as err:
            raise ModelError(f"animate.model: {folder} cannot be loaded as {cls.__name__} "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from None
        if self.settings.enable_model_cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)  # each part on the GPU only while it runs
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _frame_step(self) -> int:
        """How many frames the loaded VAE packs into one latent frame (clips have k·step + 1 frames)."""
        if self.family == "wan":
            return int(self.pipe.vae_scale_factor_temporal)
        return int(self.pipe.vae_temporal_compression_ratio)

    def multiple(self) -> int:
        """What the clip's sides must be multiples of: the VAE's downscale × the transformer's patch, and the
        pipeline's own check."""
        if self.family == "wan":
            vae_patch = int(self.pipe.vae_scale_factor_spatial) * int(self.pipe.transformer.config.patch_size[1])
        else:
            vae_patch = int(self.pipe.vae_spatial_compression_ratio) * int(self.pipe.transformer_spatial_patch_size)
        return int(np.lcm(vae_patch, _PIPELINE_MULTIPLE[self.family]))

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The size a clip of a width×height picture is made at."""
        return clip_size(width, height, self.settings.megapixels, self.multiple())

    def run(self, picture: Image.Image, *, prompt: str, seed: int, negative_prompt: str = "",
            on_step: StepCallback | None = None, time_limit: float | None = None, frames: int | None = None,
            fps: int | None = None, hold: bool | None = None) -> Clip:
        """One clip whose first frame is ``picture``; ``on_step(done, total)`` after each denoising step. Past
        ``time_limit`` seconds the clip is stopped between two steps with ClipTimeout. ``frames``, ``fps`` and
        ``hold`` are a job's own (settled at intake); None: [animate]'s."""
        s = self.settings
        frames = s.frames if frames is None else frames
        fps = s.fps if fps is None else fps
        hold = s.hold if hold is None else hold
        try:
            check_frames(self.family, frames, step=self._frame_step())
        except ValueError as err:
            raise ClipLengthError(f"This clip cannot be made: {err}.") from None
        started = time.perf_counter()
        deadline = None if time_limit is None else time.monotonic() + time_limit
        width, height = self.size_for(*picture.size)
        image = picture.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)

        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, s.steps)
            if deadline is not None and time.monotonic() > deadline:
                raise ClipTimeout(f"This clip took longer than the {_seconds(time_limit or 0)} limit and was "
                                  "stopped; please try again later.")
            return callback_kwargs

        kwargs: dict = {
            "image": image, "prompt": prompt, "negative_prompt": negative_prompt or None,
            "height": height, "width": width, "num_frames": frames, "num_inference_steps": s.steps,
            "guidance_scale": s.guidance_scale, "generator": torch.Generator("cpu").manual_seed(seed),
            "output_type": "np", "callback_on_step_end": step_end,
        }
        if self.family == "ltx":
            # LTX is told the frame rate (its positions are in seconds); its timestep-aware VAE decodes best from
            # a little noise (the values LTX-Video's own inference uses).
            kwargs.update(frame_rate=fps, decode_timestep=0.05, decode_noise_scale=0.025)
            if isinstance(self.pipe, _condition_pipeline()):
                kwargs["image_cond_noise_scale"] = 0.025
        frames = self.pipe(**kwargs).frames[0]
        video = (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        seconds = time.perf_counter() - started
        logger.info("clip of %d frames at %d×%d, %d steps, seed %d: %.1f s", len(video), width, height, s.steps,
                    seed, seconds)
        return Clip(frames=video, fps=fps, hold=2 if hold else 1, seed=seed, prompt=prompt,
                    timings={"animate": seconds})


def _condition_pipeline() -> type:
    from diffusers import LTXConditionPipeline

    return LTXConditionPipeline


def _seconds(limit: float) -> str:
    return f"{limit:g}-second" if limit < 120 else f"{limit / 60:g}-minute"
