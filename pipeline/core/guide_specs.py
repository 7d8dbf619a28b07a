"""The models a config names, by config key: a style's guides' and every other (torch-free: the chat side checks
them at start-up, `claybot models` fetches them, a worker holds their licences to ``[models] commercial``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import models
from pipeline.core.settings import GpuSettings, ModelSpec, StyleSettings


def guide_specs(name: str, style: StyleSettings) -> dict[str, ModelSpec]:
    """Every model the style's enabled guides need, by its config key (empty specs left out)."""
    specs: dict[str, ModelSpec] = {}
    structure, identity = style.structure, style.identity
    if structure.enabled:
        specs[f"styles.{name}.structure.controlnet"] = structure.controlnet
        if structure.kind == "depth":
            specs[f"styles.{name}.structure.depth_model"] = structure.depth_model
    if identity.enabled:
        specs[f"styles.{name}.identity.adapter"] = identity.adapter
        specs[f"styles.{name}.identity.image_encoder"] = identity.image_encoder
        specs[f"styles.{name}.identity.face_detector"] = identity.face_detector
    return {key: spec for key, spec in specs.items() if spec}


def absolutize_guides(style: StyleSettings, base_dir: Path) -> StyleSettings:
    """The style with its guides' local model paths made absolute (relative to the config file's folder)."""
    structure = style.structure.model_copy(update={
        "controlnet": models.absolutize(style.structure.controlnet, base_dir),
        "depth_model": models.absolutize(style.structure.depth_model, base_dir),
    })
    identity = style.identity.model_copy(update={
        "adapter": models.absolutize(style.identity.adapter, base_dir),
        "image_encoder": models.absolutize(style.identity.image_encoder, base_dir),
        "face_detector": models.absolutize(style.identity.face_detector, base_dir),
    })
    return style.model_copy(update={"structure": structure, "identity": identity})


def model_specs(settings: GpuSettings) -> dict[str, ModelSpec]:
    """Every model the settings name, by its key (empty specs left out)."""
    specs = {
        "pipeline.base_model": settings.pipeline.base_model,
        "pipeline.vae": settings.pipeline.vae,
        "tagger.model": settings.tagger.model,
    }
    if single_file(settings.pipeline.base_model) or single_file(settings.pipeline.vae):  # configs come from here
        specs["pipeline.base_config"] = settings.pipeline.base_config
    for name, style in settings.styles.items():
        specs[f"styles.{name}.lora"] = style.lora
        specs.update(guide_specs(name, style))
        if style.engine == "edit":
            specs[f"styles.{name}.edit.model"] = style.edit.model
            if single_file(style.edit.model):  # the rest of its pipeline
                specs[f"styles.{name}.edit.config"] = style.edit.config
    for name, preset in settings.speed.items():
        specs[f"speed.{name}.lora"] = preset.lora
    if settings.animate.enabled:  # many GB more: fetched and checked only when clips are on
        specs["animate.model"] = settings.animate.model
    return {key: spec for key, spec in specs.items() if spec}


def single_file(spec: ModelSpec) -> bool:
    """Whether a model spec names one file (a single-file checkpoint or VAE) rather than a diffusers folder."""
    ref = models.parse(spec)
    if ref.kind == "local":
        return ref.value.lower().endswith(".safetensors")
    return ref.kind in ("url", "civitai") or (ref.kind == "repo" and bool(ref.filename))
