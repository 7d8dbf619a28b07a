"""The fast speed preset against the default one, on the tiny models, in one run on this CPU. Prints figures.

    .venv/bin/python benchmarks/fast_preset.py [--repeats 3] [--strength 0.5] [--json out/fast_preset.json]

Both presets run on the SAME loaded Stylizer (one worker, both LoRAs loaded), one photo per call, with
config.toml's own pipeline settings (30 nominal steps, guidance 7) except for the tiny models and a ~128×128
working size, and the tiny config's [speed.fast] (4 steps, Euler trailing, guidance 0, the tiny speed LoRA).

Reported per preset: UNet forward calls and UNet evaluations per picture (forward calls × latents per call: 2
while classifier-free guidance is on), the scheduler used, and the median seconds per picture (whole
Stylizer.run: tag, prompt, VAE encode, UNet loop, VAE decode); then the default ÷ fast ratios. The time ratio
stays under the evaluation ratio because tagging, prompt encoding and the VAE cost the same under both presets;
benchmarks/gpu_speed.py --preset fast measures it at full size on a GPU. The evaluation ratio is the same at any
size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS = ("default", "fast")


def build_config(folder: Path) -> Path:
    """Tiny models and a config: the repository's settings (steps 30 as shipped), the tiny models, [speed.fast]."""
    import tomlkit

    from bot.cli import ROOT_CONFIG, tiny_config_text
    from pipeline.gpu.tiny import write_tiny_models

    tiny = write_tiny_models(folder / "models")
    template = ROOT_CONFIG.read_text(encoding="utf-8")
    doc = tomlkit.parse(tiny_config_text(template, tiny))
    doc["pipeline"]["steps"] = tomlkit.parse(template)["pipeline"]["steps"]  # the shipped default, not tiny's 10
    doc["pipeline"]["device"] = "cpu"
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def measure(stylizer, photo, preset: str, strength: float, repeats: int) -> dict:
    """One untimed call, then ``repeats`` timed ones; UNet calls counted with a forward hook."""
    from pipeline.gpu.stylizer import Photo

    calls: list[int] = []
    schedulers: set[str] = set()

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        calls.append(int(sample.shape[0]))
        scheduler = stylizer.pipe.scheduler
        schedulers.add(f"{type(scheduler).__name__.removesuffix('Scheduler')} {scheduler.config.timestep_spacing}")

    handle = stylizer.pipe.unet.register_forward_hook(hook, with_kwargs=True)
    style = stylizer.settings.pipeline.default_style
    try:
        stylizer.run([Photo(photo, seed=0)], style=style, strength=strength, speed=preset)  # warm
        calls.clear()
        seconds = []
        for i in range(repeats):
            started = time.perf_counter()
            stylizer.run([Photo(photo, seed=i)], style=style, strength=strength, speed=preset)
            seconds.append(time.perf_counter() - started)
    finally:
        handle.remove()
    plan = stylizer.plan(style, strength, preset, stylizer.settings.pipeline.work_size(*photo.size))
    return {
        "preset": preset,
        "scheduler": sorted(schedulers),
        "nominal_steps": plan.nominal_steps,
        "steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
        "unet_calls_per_picture": len(calls) / repeats,
        "unet_evaluations_per_picture": sum(calls) / repeats,
        "seconds_per_picture": statistics.median(seconds),
        "all_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed pictures per preset (median reported)")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from bot.config import load_config
    from pipeline.gpu.stylizer import Stylizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="claybot-fast-preset-") as tmp:
        config = load_config(build_config(Path(tmp)))
        started = time.perf_counter()
        stylizer = Stylizer(config.gpu())
        load_s = time.perf_counter() - started
        photo = Image.open(ROOT / "examples" / "photo.jpg").convert("RGB")
        photo.thumbnail((512, 512))
        runs = {preset: measure(stylizer, photo, preset, args.strength, args.repeats) for preset in PRESETS}

    default, fast = runs["default"], runs["fast"]
    ratios = {
        "unet_evaluations": default["unet_evaluations_per_picture"] / fast["unet_evaluations_per_picture"],
        "unet_calls": default["unet_calls_per_picture"] / fast["unet_calls_per_picture"],
        "seconds_per_picture": default["seconds_per_picture"] / fast["seconds_per_picture"],
    }
    work = config.pipeline.work_size(*photo.size)
    print(f"fast vs default preset — tiny models on the CPU ({torch.get_num_threads()} thread(s)), photo "
          f"{photo.width}×{photo.height} → work {work[0]}×{work[1]}, strength {args.strength:g}, "
          f"{args.repeats} timed pictures each (median), models loaded in {load_s:.1f} s")
    print(f"{'':<28}{'default':>18}{'fast':>18}{'default ÷ fast':>18}")

    def row(label: str, key: str, fmt: str, ratio: str | None = None) -> None:
        cells = "".join(f"{format(runs[p][key], fmt):>18}" for p in PRESETS)
        print(f"{label:<28}{cells}{(f'{ratios[ratio]:.2f}×' if ratio else ''):>18}")

    print(f"{'scheduler':<28}" + "".join(f"{','.join(runs[p]['scheduler']):>18}" for p in PRESETS))
    row("nominal steps", "nominal_steps", "d")
    row("steps that run", "steps", "d")
    row("guidance scale", "guidance_scale", "g")
    row("UNet calls / picture", "unet_calls_per_picture", "g", "unet_calls")
    row("UNet evaluations / picture", "unet_evaluations_per_picture", "g", "unet_evaluations")
    row("seconds / picture", "seconds_per_picture", ".3f", "seconds_per_picture")
    print(f"\nthe fast preset needs {ratios['unet_evaluations']:.1f}× fewer UNet evaluations per picture and was "
          f"{ratios['seconds_per_picture']:.2f}× faster per picture here (the time also holds tagging, prompt "
          "encoding and the VAE, which no preset shortens; benchmarks/gpu_speed.py --preset fast measures full size)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "ratios": ratios, "strength": args.strength,
                                         "work_size": list(work), "load_s": load_s}, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
