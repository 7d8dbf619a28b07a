"""The edit engine (``engine = "edit"``): a photo made clay by instruction with FLUX.2 [klein] (Flux2KleinPipeline).

An edit model is given the photo as its reference image and an instruction ("Turn this photo into a claymation
stop-motion scene … keep the person's face, pose and clothes. The scene: {tags}. {words}") and keeps the layout and
the identity by design: no denoise to trade the clay look against the likeness, no LoRA, no guide. klein 4B is
step-distilled (4 steps, guidance ignored) and Apache-2.0.

It lives in the worker beside the SDXL engine: its model is resolved (fetched) and its licence checked when the
worker starts, but loaded only when its first job comes (most workers serve clay pictures all day), and the worker
logs both engines' memory before anything loads (``engine.check_models``). One job per call: every reference image of a
call goes to every prompt of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.core import models
from pipeline.core.clip import clip_size
from pipeline.core.errors import ModelError
from pipeline.core.images import output_size
from pipeline.core.jobs import Done, ErrorKind, Progress, Started, Update
from pipeline.core.kinds import PictureSpec
from pipeline.core.models import EDIT_BASE_FILES, EDIT_FILES
from pipeline.core.settings import EditSettings, GpuSettings
from pipeline.gpu.engine import (
    INTERNAL_REASON,
    OOM_REASON,
    DecodedJob,
    JobTimeout,
    LinkDown,
    Run,
    deliver,
    free_gpu_memory,
    is_out_of_memory,
    memory_line,
    weights_gb,
)
from pipeline.gpu.prompt import prompt_tags
from pipeline.gpu.stylizer import pick_device, pick_dtype

logger = logging.getLogger(__name__)

LOAD_REASON = ("The {style} style's model could not be loaded on this worker's GPU; please try another style, and "
               "tell the operator if it keeps happening.")
MULTIPLE = 16  # the pipeline's sides are multiples of the VAE's factor × its 2×2 patches (8 × 2 for klein)
MIN_REFERENCE = 64  # Flux2KleinPipeline refuses a reference image with a side below this
BEAT_S = 10.0  # seconds between the Started a job gets while its model loads (the watchdog allows kill_after, 30)


@dataclass(frozen=True)
class EditModel:
    """One edit model a style names, resolved on disk (loaded later, on its first job)."""

    key: str  # its config key, "styles.<name>.edit.model"
    folder: Path  # the diffusers folder (for a single-file model: the rest of its pipeline, edit.config)
    settings: EditSettings
    transformer: Path | None = None  # a single-file model: its transformer, in BFL's release layout


def text_layers(num_hidden_layers: int, count: int) -> tuple[int, ...]:
    """The text encoder's hidden states the transformer reads, evenly spaced: (9, 18, 27) of Qwen3-4B's 36 layers
    (the pipeline's default), and the same spacing for a smaller encoder."""
    return tuple(num_hidden_layers * i // (count + 1) for i in range(1, count + 1))


def instruction(template: str, tags: list[str], words: str) -> str:
    """The style's instruction with the photo's tags and the person's words filled in (spaces tidied where one is
    empty)."""
    text = template.format(tags=", ".join(tags) or "a photo", words=words)
    return " ".join(text.split())


def reference_size(size: tuple[int, int]) -> tuple[int, int]:
    """The reference image's size for a picture of ``size``: the same, or scaled up until its short side is the
    pipeline's least (a thin photo at a small size would be refused as a reference)."""
    scale = max(1.0, MIN_REFERENCE / min(size))
    return round(size[0] * scale), round(size[1] * scale)


class EditEngine:
    """FLUX.2 [klein] edits for the styles that say ``engine = "edit"``; each model loaded on its first job."""

    def __init__(self, settings: GpuSettings, tagger: Any, *, built: Mapping[str, Any] | None = None) -> None:
        """Resolve (fetch) each edit style's model; load none. ``built``: style → a pipeline already in memory
        (benchmarks' random-weight full-size models), used as loaded."""
        self.settings = settings
        self.tagger = tagger  # the worker's (tags and rates; the engine reads the tags the worker gives each job)
        self.device = pick_device(settings.pipeline.device)
        store = models.ModelStore.of(settings.pipeline)
        self.models: dict[str, EditModel] = {}
        self._pipes: dict[tuple[Path, str], Any] = {}  # (folder, dtype) → its loaded pipeline
        for name, style in settings.styles.items():
            if style.engine != "edit":
                continue
            key = f"styles.{name}.edit.model"
            if built is not None and name in built:
                folder = Path(f"<built:{name}>")
                self.models[name] = EditModel(key, folder, style.edit)
                self._pipes[(folder, str(self._dtype(self.models[name])))] = built[name]
                continue
            path = models.resolve(style.edit.model, key, store, allow_patterns=EDIT_FILES)
            transformer = None
            if path.is_file():  # one transformer file; the rest of the pipeline from edit.config
                if path.suffix.lower() != ".safetensors":
                    raise ModelError(f"{key}: {path.name} is not a .safetensors file")
                transformer, config_key = path, f"styles.{name}.edit.config"
                path = models.resolve(style.edit.config, config_key, store, allow_patterns=EDIT_BASE_FILES)
                key = config_key if not (path / "model_index.json").is_file() else key
            if not (path / "model_index.json").is_file():
                raise ModelError(f"{key}: {path} is not a diffusers folder (no model_index.json): name the model's "
                                 "Hugging Face repo or a local copy of it")
            self.models[name] = EditModel(f"styles.{name}.edit.model", path, style.edit, transformer)

    def _dtype(self, model: EditModel) -> torch.dtype:
        return pick_dtype(model.settings.dtype, self.device, key=f"{model.key.removesuffix('.model')}.dtype",
                          cuda=torch.bfloat16)

    def memory_gb(self) -> float:
        """Its models' weights, about what they take on the GPU once loaded."""
        paths = {path for model in self.models.values() for path in (model.folder, model.transformer) if path}
        return sum(weights_gb(path) for path in paths if path.exists())

    def warm_up(self) -> None:
        """Nothing: the model loads on its first job (a warm-up would load it at start)."""

    def load_all(self) -> None:
        """Load every edit model now (`claybot check`: a model that cannot load is found before a person's job)."""
        for model in self.models.values():
            self._pipe(model)

    def run(self, group: list[DecodedJob], run: Run) -> None:
        for job in group:  # one per call (PictureKind.max_batch); a group of more still runs, one by one
            self._make(job, run)

    def _make(self, job: DecodedJob, run: Run) -> None:
        style = job.job.style
        spec = job.job.spec
        assert isinstance(spec, PictureSpec)
        model = self.models[style]
        begun = Update((job.id,), Started(1))
        try:
            pipe = self._loaded(model, lambda: run.send(begun))
        except LinkDown:
            raise
        except Exception as err:
            logger.exception("%s: loading %s failed", model.key, model.folder)
            if is_out_of_memory(err):
                free_gpu_memory()
                logger.error("%s: the GPU cannot hold this edit model beside the models already loaded (%s); set "
                             "%s.enable_model_cpu_offload = true, or serve it from a worker on another GPU",
                             model.key, memory_line({"edit": self.memory_gb()}), model.key.removesuffix(".model"))
            run.fail(job.id, LOAD_REASON.format(style=style), ErrorKind.INTERNAL)
            return
        run.send(begun)  # (again, after a load: the watchdog's clock restarts here)
        deadline = max(run.deadline, time.monotonic() + run.timeout)  # loading the model is not the job's time
        steps = model.settings.steps

        def on_step(_pipe: Any, step: int, _timestep: Any, tensors: dict) -> dict:
            run.send(Update((job.id,), Progress(step + 1, steps)))
            if time.monotonic() > deadline:
                raise JobTimeout
            return tensors

        tags = prompt_tags(job.tags, self.settings.tagger, self.settings.styles[style]) if job.tags else []
        text = instruction(model.settings.instruction, tags, spec.words)
        photo_width, photo_height = job.image.size
        width, height = clip_size(photo_width, photo_height, model.settings.megapixels, MULTIPLE)
        reference = job.image.convert("RGB").resize(reference_size((width, height)), Image.Resampling.LANCZOS)
        _warn_if_cut(pipe, text, model, job.id)
        encoder, transformer = pipe.text_encoder.config, pipe.transformer.config
        layers = text_layers(encoder.num_hidden_layers, transformer.joint_attention_dim // encoder.hidden_size)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                image = pipe(image=reference, prompt=text, width=width, height=height, num_inference_steps=steps,
                             guidance_scale=model.settings.guidance_scale,
                             generator=torch.Generator(device="cpu").manual_seed(job.job.seed),
                             max_sequence_length=model.settings.max_sequence_length, text_encoder_out_layers=layers,
                             callback_on_step_end=on_step).images[0]
        except LinkDown:  # a progress message could not be sent: the connection is gone, no photo's fault
            raise
        except JobTimeout:
            run.fail(job.id, f"This took longer than the {run.limit_text()} limit and was stopped; please try again "
                     "later.", ErrorKind.TIMEOUT)
            return
        except Exception as err:
            if is_out_of_memory(err):
                free_gpu_memory()
                logger.warning("job %s ran out of GPU memory", job.id)
                run.fail(job.id, OOM_REASON, ErrorKind.TOO_LARGE)
            else:
                logger.exception("job %s failed", job.id)
                run.fail(job.id, INTERNAL_REASON, ErrorKind.INTERNAL)
            return
        timings = {**job.timings, "denoise": time.perf_counter() - started}
        size = output_size(photo_width, photo_height, model.settings.megapixels)
        image = image.resize(size, Image.Resampling.LANCZOS)
        ratings = dict(job.tags.ratings) if job.tags else {}
        deliver(run, [(job, image, lambda png, extra: Done(
            image=png, width=image.width, height=image.height, tags=tags, prompt=text, seed=job.job.seed,
            style=style, strength=0.0, ratings=ratings, timings={**timings, **extra}, words=spec.words))])

    def _loaded(self, model: EditModel, beat: Callable[[], None]) -> Any:
        """The model's pipeline; on its first job loaded in a thread while this one calls ``beat`` at once and every
        ``BEAT_S`` seconds (the job's Started: the person sees their picture begun, and the local queue's watchdog,
        which restarts its clock on each, does not take a long load for a stuck worker)."""
        if (model.transformer or model.folder, str(self._dtype(model))) in self._pipes:
            return self._pipe(model)
        outcome: dict[str, Any] = {}

        def load() -> None:
            try:
                outcome["pipe"] = self._pipe(model)
            except BaseException as err:  # handed to the job's thread, which reports it
                outcome["error"] = err

        loader = threading.Thread(target=load, name="claybot-edit-load", daemon=True)
        loader.start()
        beat()
        while loader.is_alive():
            loader.join(BEAT_S)
            if loader.is_alive():
                beat()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["pipe"]

    def _pipe(self, model: EditModel) -> Any:
        """The model's pipeline, loaded on first use (ModelError naming the key when it cannot load)."""
        dtype = self._dtype(model)
        loaded = self._pipes.get((model.transformer or model.folder, str(dtype)))
        if loaded is not None:
            return loaded
        from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel

        started = time.perf_counter()
        try:
            parts: dict[str, Any] = {}
            if model.transformer is not None:  # BFL's single file, converted by diffusers; its config the folder's
                parts["transformer"] = Flux2Transformer2DModel.from_single_file(
                    str(model.transformer), config=str(model.folder), subfolder="transformer", local_files_only=True,
                    dtype=dtype)
            pipe = Flux2KleinPipeline.from_pretrained(model.folder, dtype=dtype, use_safetensors=True, **parts)
        except Exception as err:
            what = model.transformer or model.folder
            raise ModelError(f"{model.key}: cannot load {what} as a FLUX.2 [klein] edit model ({err})") from None
        if model.settings.enable_model_cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        logger.info("%s: loaded %s in %.1f s (on its first job)", model.key, model.folder,
                    time.perf_counter() - started)
        self._pipes[(model.transformer or model.folder, str(dtype))] = pipe
        return pipe


def _warn_if_cut(pipe: Any, text: str, model: EditModel, job_id: str) -> None:
    """Log when the instruction is longer than the text encoder reads (its end, the person's words, would be lost)."""
    chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)
    tokens = len(pipe.tokenizer(chat)["input_ids"])
    if tokens > model.settings.max_sequence_length:
        logger.warning("job %s: the instruction is %d tokens, and %s.max_sequence_length = %d: its end is cut; "
                       "shorten the instruction or raise the bound (up to 512)", job_id, tokens,
                       model.key.removesuffix(".model"), model.settings.max_sequence_length)
