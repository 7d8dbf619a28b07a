"""The GPU side of claybot: photo → WD14 tags → weighted prompt → SDXL img2img with the style's LoRA.

Loads every model once; ``Stylizer.run`` then serves a batch of photos that share a style, a strength, a speed
preset and a working size, under one ``Plan`` it makes per call. The Stylizer owns the worker's settings: the speed
presets and the guides keep only what they loaded, and read each call's values from its plan. Torch, diffusers and
onnxruntime are imported here and nowhere on the chat side.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# transformers warns at import about optional image processors claybot never uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.core import models  # noqa: E402
from pipeline.core.errors import ModelError  # noqa: E402
from pipeline.core.images import SDXL_BUCKETS, output_size  # noqa: E402
from pipeline.core.models import CONFIG_FILES, DIFFUSERS_FILES, LORA_FILES, TAGGER_FILES, VAE_FILES  # noqa: E402
from pipeline.core.settings import DEFAULT_SPEED, GpuSettings, ModelSpec, PipelineSettings  # noqa: E402
from pipeline.gpu.conditioning import Conditioning, PromptEncoder  # noqa: E402
from pipeline.gpu.guides import Guides  # noqa: E402
from pipeline.gpu.plan import Plan  # noqa: E402
from pipeline.gpu.prompt import build_prompt, prompt_tags  # noqa: E402
from pipeline.gpu.speed import (  # noqa: E402
    SpeedPresets,
    denoising_steps,
    max_nominal_steps,
    nominal_steps,
    set_active_adapters,
)
from pipeline.gpu.tagger import Tagger, Tags  # noqa: E402

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Photo:
    """One decoded photo to stylize, with the seed that makes its result reproducible. The picture engine fills each
    field from the job's PictureSpec field of the same name (settled values); None is for direct callers (tests,
    the warm-up, benchmarks) only."""

    image: Image.Image
    seed: int
    trigger_weight: float | None = None  # None: the style's; operators' sweeps vary it
    structure_scale: float | None = None  # None: the style's structure guide scale; sweeps vary it
    identity_scale: float | None = None  # None: the style's identity guide scale; sweeps vary it
    words: str = ""  # the person's own words, after the trigger and the tags


@dataclass
class Stylized:
    """One result and what was done to get it."""

    image: Image.Image
    tags: list[str]
    ratings: dict[str, float]
    prompt: str
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


def load_tagger(settings: GpuSettings, device: torch.device) -> Tagger:
    """The WD14 tagger ``tagger.model`` names, fetched when needed, on the worker's device."""
    folder = models.resolve(settings.tagger.model, "tagger.model", models.ModelStore.of(settings.pipeline),
                            allow_patterns=TAGGER_FILES)
    return Tagger(folder, settings.tagger, use_cuda=device.type == "cuda")


def pick_device(setting: str) -> torch.device:
    """``auto`` → CUDA when a GPU is visible, else the CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("pipeline.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device, *, key: str = "pipeline.dtype",
               cuda: torch.dtype = torch.float16) -> torch.dtype:
    """``auto`` → ``cuda`` on CUDA, float32 on the CPU (half precision on the CPU is slow or unsupported); ``key``
    names the setting in the error."""
    if setting == "auto":
        return cuda if device.type == "cuda" else torch.float32
    if setting == "float16" and device.type != "cuda":
        raise ModelError(f"{key} = 'float16' needs a CUDA device; use 'float32' or 'bfloat16' on the CPU.")
    return getattr(torch, setting)


class Stylizer:
    """Every model loaded once: the tagger, SDXL img2img, the styles' LoRAs and the prompt encoder."""

    def __init__(self, settings: GpuSettings, *, tagger: Tagger | None = None) -> None:
        """Load every model (``tagger``: the worker's own, shared with its other engines; None: load one)."""
        _quiet_libraries()
        self.settings = settings
        self.device = pick_device(settings.pipeline.device)
        self.dtype = pick_dtype(settings.pipeline.dtype, self.device)
        logger.info("loading models on %s (%s)", self.device, str(self.dtype).removeprefix("torch."))
        self.tagger = tagger if tagger is not None else load_tagger(settings, self.device)
        self.pipe = self._load_pipeline()
        self._style_adapters: list[str] = []  # styles whose LoRA stays a switchable adapter
        self._fused_all = self._load_loras()
        self.speed = SpeedPresets(self.pipe, settings, self._resolve_lora)  # after the style LoRA is fused
        self.guides = Guides(self.pipe, settings, self.device, self.dtype)  # before _speed_up compiles the UNet
        self._speed_up()
        # One encoder per style (and per speed preset with a LoRA): compel caches the empty prompt's embedding on
        # first use, and a LoRA that trains the text encoders changes it, so an encoder must only ever see its own
        # LoRAs.
        self._encoders: dict[object, PromptEncoder] = {name: PromptEncoder(self.pipe, self.device)
                                                       for name in settings.styles}

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_pipeline(self) -> Any:
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

        p = self.settings.pipeline
        cache = models.ModelStore.of(p)
        kwargs: dict = {"dtype": self.dtype, "use_safetensors": True}
        base = models.resolve(p.base_model, "pipeline.base_model", cache, allow_patterns=DIFFUSERS_FILES)
        config_dir: Path | None = None
        if base.is_file():
            config_dir = models.resolve(p.base_config, "pipeline.base_config", cache, allow_patterns=CONFIG_FILES)
        if p.vae:
            vae_path = models.resolve(p.vae, "pipeline.vae", cache, allow_patterns=VAE_FILES)
            try:
                if vae_path.is_file():
                    if config_dir is None:
                        config_dir = models.resolve(p.base_config, "pipeline.base_config", cache,
                                                    allow_patterns=CONFIG_FILES)
                    vae = AutoencoderKL.from_single_file(str(vae_path), config=str(config_dir), subfolder="vae",
                                                         local_files_only=True, dtype=self.dtype)
                else:
                    vae = AutoencoderKL.from_pretrained(vae_path, dtype=self.dtype, use_safetensors=True)
            except Exception as err:
                raise ModelError(f"pipeline.vae: cannot load {models.describe(p.vae)} as an SDXL VAE ({err})") from None
            kwargs["vae"] = vae
        try:
            if base.is_file():
                if base.suffix.lower() != ".safetensors":
                    raise ModelError(f"pipeline.base_model: {base.name} is not a .safetensors checkpoint")
                pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(
                    str(base), config=str(config_dir), local_files_only=True, **kwargs
                )
            else:
                pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(base, **kwargs)
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(
                f"pipeline.base_model: cannot load {models.describe(p.base_model)} as an SDXL model ({err})"
            ) from None
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _resolve_lora(self, spec: ModelSpec, key: str) -> Path:
        """A LoRA's one .safetensors file, fetched (Hub, Civitai, URL) into the configured cache when needed."""
        path = models.resolve(spec, key, models.ModelStore.of(self.settings.pipeline), allow_patterns=LORA_FILES)
        return _single_safetensors(path, key)

    def _load_loras(self) -> bool:
        """Load each style's LoRA; with a single LoRA it is fused into the weights once (no per-step cost)."""
        loaded: list[str] = []
        for name, style in self.settings.styles.items():
            if not style.lora:
                continue
            key = f"styles.{name}.lora"
            path = self._resolve_lora(style.lora, key)
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=name)
            except Exception as err:
                raise ModelError(
                    f"{key}: {models.describe(style.lora)} is not an SDXL LoRA claybot can load ({err})"
                ) from None
            loaded.append(name)
        if len(loaded) == 1 and len(self.settings.styles) == 1:
            name = loaded[0]
            self.pipe.fuse_lora(lora_scale=self.settings.styles[name].lora_scale, adapter_names=[name])
            self.pipe.unload_lora_weights()
            logger.info("LoRA of style %r fused at scale %s", name, self.settings.styles[name].lora_scale)
            return True
        self._style_adapters = loaded
        if loaded:
            logger.info("LoRAs of styles %s kept as switchable adapters", ", ".join(loaded))
        return not loaded

    def _speed_up(self) -> None:
        """The optimisations a fast SDXL service uses, each behind its config switch (after the LoRA is fused)."""
        p, pipe = self.settings.pipeline, self.pipe
        if p.attention == "classic":
            from diffusers.models.attention_processor import AttnProcessor

            pipe.unet.set_attn_processor(AttnProcessor())
            pipe.vae.set_attn_processor(AttnProcessor())
        if p.fuse_qkv and self.speed.loaded:
            # The fused to_qkv projection bypasses the LoRA layers of to_q/to_k/to_v: a speed adapter would only
            # half act. Seen on the tiny models: fast-preset output changed with fuse_qkv on.
            logger.warning("pipeline.fuse_qkv is skipped: speed presets keep their LoRAs as adapters, which a fused "
                           "QKV projection would bypass")
        elif p.fuse_qkv:
            pipe.fuse_qkv_projections()
        if p.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if p.compile:
            mode = "max-autotune" if self.device.type == "cuda" else "default"
            pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True)
        enabled = [name for name in ("fuse_qkv", "channels_last", "compile", "resolution_buckets") if getattr(p, name)]
        logger.info("attention %s; speed switches on: %s", p.attention, ", ".join(enabled) or "none")

    def _adapters(self, style: str, speed: str) -> tuple[tuple[str, float], ...] | None:
        """The LoRA adapters that act under this style and speed preset, with their weights; None when the
        pipeline has none to switch (the only style LoRA fused, no speed LoRA)."""
        if self._fused_all and not self.speed.loaded:
            return None
        # Weights rather than enable/disable_lora: PEFT's disable flag did not reliably reach the text encoders'
        # LoRA layers after a switch, and a zero weight is exactly "no LoRA".
        styles = self.settings.styles
        active = [(name, styles[name].lora_scale if name == style else 0.0) for name in self._style_adapters]
        # A speed LoRA acts only under its own preset; left out of the active list it is not computed at all.
        return (*active, *self.speed.active(speed))

    def _set_adapters(self, adapters: tuple[tuple[str, float], ...] | None) -> None:
        """Make exactly these adapters act on the next text encoding and denoising."""
        if adapters is not None:
            set_active_adapters(self.pipe, [name for name, _ in adapters], [weight for _, weight in adapters])

    def _encoder(self, style: str, speed: str) -> PromptEncoder:
        """The prompt encoder that only ever sees this style's (and this preset's) LoRAs."""
        key = (style, speed) if self.speed.active(speed) else style
        if key not in self._encoders:
            self._encoders[key] = PromptEncoder(self.pipe, self.device)
        return self._encoders[key]

    # -- planning ------------------------------------------------------------------------------------------------

    def set_steps(self, steps: int) -> None:
        """Change pipeline.steps (the default preset's nominal steps) of this loaded worker: every later call
        plans with it, no model reloaded. Benchmarks sweep step counts this way. ValueError for a count the config
        would refuse."""
        pipeline = PipelineSettings.model_validate({**self.settings.pipeline.model_dump(), "steps": steps})
        self.settings = self.settings.model_copy(update={"pipeline": pipeline})

    def plan(self, style: str, strength: float, speed: str, size: tuple[int, int],
             guide_scales: Sequence[tuple[float | None, float | None]] = ()) -> Plan:
        """How one call runs: the preset's sampler and guidance, the steps that run, the LoRA adapters that act and
        each photo's guide scales (``guide_scales``: per photo, a (structure, identity) override or None)."""
        scheduler = self.speed.scheduler(speed)
        if speed == DEFAULT_SPEED:
            # pipeline.steps is a nominal schedule, of which img2img runs the last `strength`
            nominal, guidance = self.settings.pipeline.steps, self.settings.pipeline.guidance_scale
        else:
            # a preset's steps are the ones that run, at any strength
            preset = self.settings.speed[speed]
            nominal = nominal_steps(preset.steps, strength, max_nominal_steps(scheduler))
            guidance = preset.guidance_scale
        return Plan(style, strength, speed, size, scheduler, nominal, denoising_steps(nominal, strength), guidance,
                    self._adapters(style, speed), self.guides.scales(style, guide_scales))

    # -- running -------------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Throw-away runs, so the first user does not pay for lazy initialisation (or, compiled, for compiling:
        then every resolution bucket is run once, at every batch size up to max_batch)."""
        p = self.settings.pipeline
        style = p.default_style if p.default_style in self.settings.styles else next(iter(self.settings.styles))
        if p.compile and p.resolution_buckets:
            shapes = [p.work_size(w, h) for w, h in SDXL_BUCKETS]
            batch_sizes = list(range(1, p.max_batch + 1))
        else:
            shapes, batch_sizes = [p.work_size(1, 1)], [1]
        for shape in shapes:
            for n in batch_sizes:
                photos = [Photo(Image.new("RGB", shape, (128, 128, 128)), seed=i) for i in range(n)]
                for speed in self.settings.speed_names():  # each preset's sampler and adapter set, once
                    self.run(photos, style=style, strength=self.settings.styles[style].default_strength, speed=speed)

    def encode(self, prompts: list[str], negative_prompt: str, *, style: str, speed: str = DEFAULT_SPEED
               ) -> Conditioning:
        """SDXL conditioning for prompts, with the style's (and the speed preset's) LoRA on the text encoders."""
        self._set_adapters(self._adapters(style, speed))
        return self._encoder(style, speed)(prompts, negative_prompt)

    @torch.inference_mode()
    def run(
        self,
        photos: list[Photo],
        *,
        style: str,
        strength: float,
        on_step: StepCallback | None = None,
        tags: list[Tags] | None = None,
        speed: str = DEFAULT_SPEED,
        work_size: tuple[int, int] | None = None,
    ) -> list[Stylized]:
        """Stylize a batch of photos that share style, strength, speed preset and working size; one result each.

        The worker passes what its jobs settled at intake (``pipeline.core.jobs.Job``): nothing is decided here.
        ``tags``: the photos' tags when the caller already has them (the worker tags first, for the SFW gate).
        ``speed``: a [speed.*] preset, or "default" (pipeline.steps, guidance_scale, the base scheduler).
        ``work_size``: the jobs' working size; None only for direct callers (tests, warm-up) of one photo size."""
        settings = self.settings
        style_settings = settings.styles[style]
        timings: dict[str, float] = {}

        # 1. plan: one working size, sampler, steps, adapters and guide scales for the whole batch
        if work_size is None:
            sizes = {settings.pipeline.work_size(*photo.image.size) for photo in photos}
            if len(sizes) != 1:
                raise ValueError(f"a batch must share one working size, got {sorted(sizes)}")
            work_size = sizes.pop()
        plan = self.plan(style, strength, speed, work_size,
                         [(photo.structure_scale, photo.identity_scale) for photo in photos])

        # 2. tag
        if tags is None:
            started = time.perf_counter()
            tags = self.tagger([photo.image for photo in photos])
            timings["tag"] = time.perf_counter() - started

        # 3. prompt (the plan's adapters set once: they act on the text encoders and the UNet alike)
        started = time.perf_counter()
        tag_lists = [prompt_tags(t, settings.tagger, style_settings) for t in tags]
        prompts = [build_prompt(style_settings, tl, trigger_weight=photo.trigger_weight, words=photo.words)
                   for tl, photo in zip(tag_lists, photos, strict=True)]
        conditioning: Conditioning | None = None
        if plan.steps:
            self._set_adapters(plan.adapters)
            self.pipe.scheduler = plan.scheduler  # every call sets its preset's sampler (the default's: the base)
            conditioning = self._encoder(style, speed)(prompts, style_settings.negative_prompt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the text encoders' GPU work counts as "prompt", not "denoise"
        timings["prompt"] = time.perf_counter() - started

        # 4. denoise (VAE encode → noise to `strength` → plan.steps UNet steps → VAE decode)
        started = time.perf_counter()
        inputs = [photo.image.resize(plan.size, Image.Resampling.LANCZOS) for photo in photos]
        if conditioning is None:
            # Strength so low that no step runs: the answer is the photo itself (diffusers would crash decoding
            # an empty latent batch).
            images = [photo.image for photo in photos]
        else:
            generators = [torch.Generator(device="cpu").manual_seed(photo.seed) for photo in photos]
            call = dict(
                strength=plan.strength,
                num_inference_steps=plan.nominal_steps,
                guidance_scale=plan.guidance_scale,
                generator=generators,
                prompt_embeds=conditioning.prompt_embeds.to(self.dtype),
                pooled_prompt_embeds=conditioning.pooled_prompt_embeds.to(self.dtype),
                negative_prompt_embeds=conditioning.negative_prompt_embeds.to(self.dtype),
                negative_pooled_prompt_embeds=conditioning.negative_pooled_prompt_embeds.to(self.dtype),
                output_type="pil",
            )
            # the style's structure/identity guides, if any, pick the pipeline (a batch may split by guide scale)
            images = self.guides.denoise(plan, inputs, call, on_step=on_step)
        timings["denoise"] = time.perf_counter() - started

        # 5. back to the photo's exact aspect ratio (beside the photo itself, if the style says so)
        results = []
        for photo, image, tl, t, prompt in zip(photos, images, tag_lists, tags, prompts, strict=True):
            size = output_size(*photo.image.size, settings.pipeline.megapixels)
            image = image.resize(size, Image.Resampling.LANCZOS)
            if style_settings.before_after:
                image = side_by_side(photo.image.resize(size, Image.Resampling.LANCZOS), image)
            results.append(Stylized(image, tl, t.ratings, prompt, photo.seed, dict(timings)))
        return results


def side_by_side(before: Image.Image, after: Image.Image) -> Image.Image:
    """Before | after, one image."""
    sheet = Image.new("RGB", (before.width + after.width, max(before.height, after.height)), (255, 255, 255))
    sheet.paste(before, (0, 0))
    sheet.paste(after, (before.width, 0))
    return sheet


def _quiet_libraries() -> None:
    """Per-component progress bars and dtype notices of diffusers/transformers are noise in a service log."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _single_safetensors(path: Path, key: str) -> Path:
    """A LoRA given as a folder (e.g. a downloaded repo) must hold exactly one .safetensors file."""
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelError(f"{key}: {path.name} is not a .safetensors file")
        return path
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise ModelError(f"{key}: {path} holds {len(files)} .safetensors files; name one (repo:file or a path)")
    return files[0]
