"""How one pipeline call runs (``Plan``): the stylizer makes it per call, and the prompt encoding, the speed preset's
sampler and the guides read it. A module of its own, so the guides read it without importing the stylizer that
imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    """How one pipeline call runs, decided once per call from the job's settled values and the worker's settings;
    the prompt encoding, the speed preset's sampler and the guides all read it."""

    style: str
    strength: float
    preset: str  # the speed preset
    size: tuple[int, int]  # the working size every photo of the call is resized to
    scheduler: Any  # a diffusers scheduler
    nominal_steps: int  # num_inference_steps passed to diffusers
    steps: int  # UNet steps that run: denoising_steps(nominal_steps, strength); 0: the photo is the answer
    guidance_scale: float
    adapters: tuple[tuple[str, float], ...] | None  # LoRA adapters that act, with weights; None: none to switch
    guide_scales: tuple[tuple[float, float], ...]  # each photo's (structure, identity) scale; 0: that guide is off
