"""Speed presets: a few-step distilled LoRA beside the style's, the sampler it needs, its guidance and step count.

``[speed.<name>]`` in config.toml (pipeline.core.settings.SpeedSettings). The built-in ``default`` preset is
claybot's behaviour without presets: pipeline.steps nominal steps, pipeline.guidance_scale and the base model's
own scheduler, and no speed LoRA acting.

Every preset's LoRA is loaded once as a PEFT adapter and stays one, never fused: requests choose their preset per
call, and a fused speed LoRA could not be taken out again for the ones that want the default. An adapter that is
not in the active list is not computed at all, so the default preset costs nothing extra and gives the same bytes
as a worker with no presets configured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelError
from pipeline.core.settings import DEFAULT_SPEED, GpuSettings, ModelSpec

logger = logging.getLogger(__name__)

# scheduler name → (diffusers class, config overrides). The model cards: LCM-LoRA → LCMScheduler;
# SDXL-Lightning → Euler with trailing timesteps; Hyper-SD N-step → DDIM with trailing timesteps (or TCD).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}


def build_scheduler(kind: str, base: Any) -> Any:
    """The scheduler a preset asks for, built from the base pipeline's scheduler config (``base`` itself for
    "base"), so betas and prediction type stay the model's."""
    if kind == "base":
        return base
    import diffusers

    class_name, overrides = SCHEDULERS[kind]
    return getattr(diffusers, class_name).from_config(base.config, **overrides)


def max_nominal_steps(scheduler: Any) -> int:
    """The longest schedule a scheduler accepts: LCM and TCD pick their steps from ``original_inference_steps``
    (50), the others from the training timesteps (1000)."""
    config = scheduler.config
    return int(config.get("original_inference_steps") or config.get("num_train_timesteps") or 1000)


def nominal_steps(steps: int, strength: float, limit: int = 1000) -> int:
    """The nominal step count at which img2img, which runs int(nominal × strength) steps, runs exactly ``steps``.

    4 steps at strength 0.5 → 8 nominal; 4 at 0.3 → 14 (int(14 × 0.3) = 4). Capped at ``limit`` (the scheduler's
    longest schedule): at a strength so low that even ``limit`` runs fewer than ``steps``, it runs what it can
    (possibly none). Strength 0 runs nothing whatever the count."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if strength <= 0.0:
        return min(steps, limit)
    if strength >= 1.0:
        return min(steps, limit)
    nominal = min(math.ceil(steps / strength), limit)
    # Floating point: ceil(4 / 0.7) × 0.7 may land a hair under 4. Step up until it runs enough, then down while a
    # smaller count still does, so the result is the smallest count that works.
    while nominal < limit and int(nominal * strength) < steps:
        nominal += 1
    while nominal > steps and int((nominal - 1) * strength) >= steps:
        nominal -= 1
    return nominal


def denoising_steps(steps: int, strength: float) -> int:
    """How many UNet steps img2img runs: diffusers skips the first ``(1 - strength)`` of the schedule."""
    return min(int(steps * strength), steps)


def set_active_adapters(pipe: Any, names: list[str], weights: list[float]) -> None:
    """Exactly these LoRA adapters act, at these weights; every other loaded adapter is not computed at all.

    diffusers' ``set_adapters`` refuses an empty list, which is what a fused style LoRA under the default preset
    needs: then every component's LoRA layers get an empty active list (PEFT then runs the base layer alone)."""
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
        return
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    for component in pipe._lora_loadable_modules:
        model = getattr(pipe, component, None)
        if model is not None:
            set_weights_and_activate_adapters(model, [], [])


def adapter_name(preset: str) -> str:
    """The PEFT adapter name of a preset's speed LoRA."""
    return f"speed_{preset}"


class SpeedPresets:
    """Every [speed.*] preset of the config, loaded into one pipeline: LoRAs as adapters, schedulers built.

    Only what was loaded is kept here (samplers, adapters and their weights); each call's steps and guidance are
    planned by the Stylizer from its own settings (``Stylizer.plan``)."""

    def __init__(self, pipe: Any, settings: GpuSettings, resolve_lora: Callable[[ModelSpec, str], Path]) -> None:
        self.base_scheduler = pipe.scheduler
        self.schedulers = {DEFAULT_SPEED: self.base_scheduler}
        self.adapters: dict[str, tuple[str, float]] = {}  # preset → (adapter name, weight), for presets with a LoRA
        for name, preset in settings.speed.items():
            self.schedulers[name] = build_scheduler(preset.scheduler, self.base_scheduler)
            if not preset.lora:
                continue
            key = f"speed.{name}.lora"
            adapter = adapter_name(name)
            if adapter in settings.styles:
                raise ModelError(f"{key}: its adapter name {adapter!r} is also a style's name; rename one of them")
            path = resolve_lora(preset.lora, key)
            try:
                pipe.load_lora_weights(str(path), adapter_name=adapter)
            except Exception as err:
                from pipeline.core import models

                raise ModelError(f"{key}: {models.describe(preset.lora)} is not an SDXL LoRA claybot can load "
                                 f"({err})") from None
            self.adapters[name] = (adapter, preset.lora_scale)
        if settings.speed:
            logger.info("speed presets: %s", ", ".join(
                f"{name} ({p.steps} steps, {p.scheduler}, guidance {p.guidance_scale:g}"
                + (f", LoRA at {p.lora_scale:g})" if p.lora else ")") for name, p in settings.speed.items()))

    @property
    def loaded(self) -> bool:
        """Whether any speed LoRA is in the pipeline (then adapters must be set on every call)."""
        return bool(self.adapters)

    def scheduler(self, preset: str) -> Any:
        """The sampler this preset runs with (the base model's own for the default)."""
        if preset not in self.schedulers:
            raise ValueError(f"no speed preset {preset!r} (have: {', '.join(self.schedulers)})")
        return self.schedulers[preset]

    def active(self, preset: str) -> list[tuple[str, float]]:
        """(adapter, weight) of the speed LoRA that acts under this preset: none for the default."""
        return [self.adapters[preset]] if preset in self.adapters else []
