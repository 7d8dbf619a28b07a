"""The models a style's guides name, by config key (torch-free: the chat side checks them at start-up)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import models
from pipeline.core.settings import ModelSpec, StyleSettings


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
