"""claybot's speed on the GPU: full-size SDXL photo → tags → prompt → img2img, next to a bare diffusers call.

    # on a CUDA machine (full size is the default there); first run builds ~7.5 GB of models into --models-dir
    .venv/bin/python benchmarks/gpu_speed.py --json out/gpu_speed.json
    .venv/bin/python benchmarks/gpu_speed.py --switch compile --json out/compile.json   # baseline + one switch
    .venv/bin/python benchmarks/gpu_speed.py --all-switches                            # baseline, each, all
    .venv/bin/python benchmarks/gpu_speed.py --preset fast --json out/fast.json        # baseline + [speed.fast]
    # anywhere, on 2 CPU cores: the same code path on pipeline.gpu.tiny's models
    .venv/bin/python benchmarks/gpu_speed.py --smoke --json /tmp/smoke.json
    # every GPU figure in one budgeted run on a device machine: benchmarks/device/run.sh (README: "GPU run kit")
    # anywhere, in seconds: the hard-coded full-size configs built on the meta device (parameter counts, FLOPs)
    .venv/bin/python benchmarks/gpu_speed.py --meta

Real weights cannot be downloaded, and speed does not depend on weight values, so full-size mode BUILDS the published
SDXL base architecture (UNet, VAE, CLIP ViT-L and OpenCLIP bigG text encoders; pipeline.gpu.architectures) and a
WD14 ViT-B/16 448 px tagger (10,861 tags, exported to ONNX) with random weights, plus a rank-32 LoRA on the UNet's
attention projections, and runs claybot's REAL Stylizer on them through a generated config.toml: 1024×1024 photo,
30 steps × strength 0.5 = 15 UNet steps with classifier-free guidance (UNet batch 2), LoRA fused, float16.

With --preset fast (or --switch fast) a run "fast" adds the [speed.fast] preset on top of the baseline: a random
rank-64 speed LoRA on the UNet (as SDXL-Lightning's 4-step LoRA, rank 64) kept as an adapter beside the fused style
LoRA, Euler with trailing timesteps, guidance 0, 4 steps that run at strength 0.5 (8 nominal): 4 UNet evaluations
per image instead of the baseline's 30.

Reported, per configuration of the speed switches (baseline = all off; all = fuse_qkv + channels_last + compile +
resolution_buckets) and for a bare, default diffusers StableDiffusionXLImg2ImgPipeline on the same model folder in
the same process: per-stage times, UNet steps/s, peak GPU memory, throughput at batch 1, 2, 4, the speed-up ratio
to the bare call, and the UNet's FLOP bound (FLOPs of one UNet forward × steps ÷ the device's peak dense fp16/bf16
tensor throughput, --peak-tflops). Every figure also goes to --json, rewritten after each configuration ("complete":
false until the last), so a run stopped early keeps what it measured. The models are benchmarks/bench_models.py's.

Timing: every figure is the median of --repeats calls after one untimed first call per batch size (its time is
reported as first_call_s: lazy initialisation, cuDNN autotuning and, with compile, compiling). Stages inside the
diffusers call are cut at the VAE encode and decode calls (CUDA events on a GPU, so nothing is synchronised extra).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_models import (  # noqa: E402
    FAST_PRESET,
    SWITCHES,
    BenchModels,
    bench_config_text,
    bench_photo,
    free_memory,
    meta_param_counts,
    quiet_libraries,
    write_full_models,
    write_smoke_models,
)

from pipeline.gpu.architectures import SDXL_BASE  # noqa: E402

H100_SXM_PEAK_TFLOPS = 989.0  # dense fp16/bf16 tensor-core throughput, H100 SXM5 (H200: the same)
KNOWN_PEAKS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "all": {name: True for name in SWITCHES},
    **{name: {name: True} for name in SWITCHES},
    "classic_attention": {"attention": "classic"},
    "fast": {"speed": "fast"},  # the [speed.fast] preset (not a switch: a config table and the style's speed)
}


_FLOPS: dict[str, int] = {}  # the report is rewritten after each run: count each shape once


def unet_forward_flops(unet_config: dict, *, batch: int, latent_hw: tuple[int, int], tokens: int) -> int:
    """FLOPs of one UNet forward, counted by torch's FlopCounterMode on a meta-device copy (no memory, no time).

    A matrix product m×k · k×n counts 2·m·k·n; attention counts its two batched products (QKᵀ and ·V): on the
    meta device SDPA runs as its math decomposition, whose products are counted (a real CPU forward's fused SDPA
    kernel is not, and would undercount). On CUDA the fused kernels are counted with the same formula.
    """
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(unet_config)
    key = json.dumps([config, batch, latent_hw, tokens], sort_keys=True, default=str)
    if key in _FLOPS:
        return _FLOPS[key]
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).eval()
        sample = torch.zeros(batch, config["in_channels"], *latent_hw)
        hidden = torch.zeros(batch, tokens, config["cross_attention_dim"])
        cond = {"text_embeds": torch.zeros(batch, pooled), "time_ids": torch.zeros(batch, 6)}
        timestep = torch.full((batch,), 500.0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=hidden, added_cond_kwargs=cond)
    _FLOPS[key] = int(counter.get_total_flops())
    return _FLOPS[key]


class Clock:
    """Time marks: CUDA events on a GPU (no extra synchronisation), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class VaeStages:
    """Wraps a pipeline's vae.encode / vae.decode to cut one diffusers call into encode, UNet loop and decode."""

    def __init__(self, vae, clock: Clock) -> None:
        self.clock = clock
        self.encodes: list[tuple[Any, Any]] = []
        self.decodes: list[tuple[Any, Any]] = []
        vae.encode = self._timed(vae.encode, self.encodes)
        vae.decode = self._timed(vae.decode, self.decodes)

    def _timed(self, function: Callable, marks: list) -> Callable:
        def timed(*args, **kwargs):
            start = self.clock.mark()
            out = function(*args, **kwargs)
            marks.append((start, self.clock.mark()))
            return out

        return timed

    def reset(self) -> None:
        self.encodes.clear()
        self.decodes.clear()

    def split(self) -> dict[str, float]:
        """Seconds of VAE encode, UNet loop (encode end → decode start) and VAE decode in the last call."""
        if not self.encodes or not self.decodes:
            return {}
        seconds = self.clock.seconds
        return {
            "vae_encode": sum(seconds(a, b) for a, b in self.encodes),
            "unet": seconds(self.encodes[-1][1], self.decodes[0][0]),
            "vae_decode": sum(seconds(a, b) for a, b in self.decodes),
        }


def _peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = runs[0].keys()
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def _measure_batches(call: Callable[[int], dict[str, float]], batches: list[int], repeats: int, n_steps: int,
                     device: torch.device) -> dict[str, dict[str, Any]]:
    """For each batch size: one untimed first call, then `repeats` timed ones → medians, throughput, peak memory."""
    out = {}
    for n in batches:
        _reset_peak(device)
        started = time.perf_counter()
        call(n)
        first = time.perf_counter() - started
        runs = [call(n) for _ in range(repeats)]
        stages = _median_stages(runs)
        total = stages["total"]
        out[str(n)] = {
            "first_call_s": first,
            "seconds": total,
            "images_per_s": n / total,
            "unet_steps_per_s": n_steps / stages["unet"] if stages.get("unet") else None,
            "peak_gpu_mem_bytes": _peak_memory(device),
            "stages": stages,
            "all_totals": [run["total"] for run in runs],
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# The measurements
# ----------------------------------------------------------------------------------------------------------------


def measure_claybot(name: str, config_path: Path, photo, batches: list[int], repeats: int, *,
                    worker_warm_up: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """claybot's real Stylizer under one config: load, (worker warm-up), per-batch figures. → (figures, facts)."""
    from bot.config import load_config
    from pipeline.gpu.stylizer import Photo, Stylizer

    settings = load_config(config_path).gpu()
    style = settings.pipeline.default_style
    strength = settings.styles[style].default_strength
    started = time.perf_counter()
    stylizer = Stylizer(settings)
    load_s = time.perf_counter() - started
    # the style's preset: what run() uses
    plan = stylizer.plan(style, strength, settings.styles[style].speed, settings.pipeline.work_size(*photo.size))
    n_steps = plan.steps
    preset = {"name": plan.preset, "nominal_steps": plan.nominal_steps, "unet_steps": n_steps,
              "guidance_scale": plan.guidance_scale, "scheduler": type(plan.scheduler).__name__,
              "timestep_spacing": plan.scheduler.config.timestep_spacing,
              "unet_batch_per_image": 2 if plan.guidance_scale > 1 else 1}
    preset["unet_evaluations_per_image"] = preset["unet_steps"] * preset["unet_batch_per_image"]
    device = stylizer.device
    clock = Clock(device)
    stages = VaeStages(stylizer.pipe.vae, clock)
    figures: dict[str, Any] = {"kind": "claybot Stylizer", "switches": CONFIGS[name], "load_s": load_s,
                               "preset": preset}
    if worker_warm_up:
        started = time.perf_counter()
        stylizer.warm_up()
        figures["worker_warm_up_s"] = time.perf_counter() - started
    facts: dict[str, Any] = {}

    def call(n: int) -> dict[str, float]:
        photos = [Photo(photo, seed=i) for i in range(n)]
        stages.reset()
        begun = time.perf_counter()
        results = stylizer.run(photos, style=style, strength=strength)
        total = time.perf_counter() - begun
        facts.setdefault("prompt", results[0].prompt)
        facts.setdefault("n_tags", len(results[0].tags))
        facts.setdefault("output_size", list(results[0].image.size))
        timings = results[0].timings
        split = stages.split()
        return {"tag": timings["tag"], "prompt": timings["prompt"], "denoise": timings["denoise"], **split,
                "other": total - timings["tag"] - timings["prompt"] - sum(split.values()), "total": total}

    figures["batches"] = _measure_batches(call, batches, repeats, n_steps, device)
    conditioning = stylizer.encode([facts["prompt"]], settings.styles[style].negative_prompt, style=style)
    facts.update(
        prompt_tokens=int(conditioning.prompt_embeds.shape[1]),
        work_size=list(settings.pipeline.work_size(*photo.size)),
        n_steps=n_steps, strength=strength, steps=settings.pipeline.steps,
        guidance_scale=settings.pipeline.guidance_scale, dtype=str(stylizer.dtype).removeprefix("torch."),
        negative_prompt=settings.styles[style].negative_prompt,
        tagger_input_size=stylizer.tagger.input_size, tagger_tags=len(stylizer.tagger.names),
        tagger_providers=stylizer.tagger.session.get_providers(), tagger_io_binding=stylizer.tagger.io_binding,
        unet_config=dict(stylizer.pipe.unet.config), vae_scale_factor=stylizer.pipe.vae_scale_factor,
        device=str(device),
    )
    return figures, facts  # the models are freed when the caller calls free_memory()


def measure_bare(models: BenchModels, *, prompt: str, negative_prompt: str, image, steps: int, strength: float,
                 guidance_scale: float, dtype: torch.dtype, device: torch.device, batches: list[int],
                 repeats: int, n_steps: int) -> dict[str, Any]:
    """A bare, default diffusers StableDiffusionXLImg2ImgPipeline on the same model folder, the LoRA fused."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    started = time.perf_counter()
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(models.sdxl_folder), dtype=dtype).to(device)
    pipe.load_lora_weights(str(models.lora))  # as benchmarks/queue_overhead.py's bare call: loaded and fused
    pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started
    stages = VaeStages(pipe.vae, Clock(device))

    def call(n: int) -> dict[str, float]:
        stages.reset()
        begun = time.perf_counter()
        pipe(prompt=[prompt] * n, negative_prompt=[negative_prompt] * n, image=[image] * n, strength=strength,
             num_inference_steps=steps, guidance_scale=guidance_scale)
        total = time.perf_counter() - begun
        split = stages.split()
        return {**split, "other": total - sum(split.values()), "total": total}

    figures = {"kind": "bare diffusers StableDiffusionXLImg2ImgPipeline", "load_s": load_s,
               "vae_force_upcast": bool(pipe.vae.config.force_upcast),
               "batches": _measure_batches(call, batches, repeats, n_steps, device)}
    return figures


def detect_device() -> dict[str, Any]:
    """What this run ran on."""
    import diffusers
    import onnxruntime
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
        "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(type="cuda", name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    total_memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count)
    else:
        info.update(type="cpu", name=platform.processor() or platform.machine())
    return info


def known_peak(device_name: str) -> float | None:
    """The dense fp16/bf16 peak of a known GPU, by name (most specific first)."""
    for key, peak in KNOWN_PEAKS.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def flop_bound(unet_config: dict, facts: dict, runs: dict, peak_tflops: float) -> dict[str, Any]:
    """FLOPs of one CFG UNet forward at the working latent shape × steps ÷ peak → the bound; measured ÷ bound."""
    width, height = facts["work_size"]
    factor = facts["vae_scale_factor"]  # SDXL's VAE: 8 (2^(4 blocks − 1))
    latent_hw = (height // factor, width // factor)
    flops = unet_forward_flops(unet_config, batch=2, latent_hw=latent_hw, tokens=facts["prompt_tokens"])
    total = flops * facts["n_steps"]
    bound_s = total / (peak_tflops * 1e12)
    per_run = {}
    forward_flops = {2: flops}
    for name, run in runs.items():
        stages = run["batches"].get("1", {}).get("stages", {})
        unet_s = stages.get("unet")
        denoise_s = stages.get("denoise", (stages.get("vae_encode", 0) + (unet_s or 0) + stages.get("vae_decode", 0)))
        run_bound_s = bound_s
        preset = run.get("preset")
        if preset and (preset["unet_steps"], preset["unet_batch_per_image"]) != (facts["n_steps"], 2):
            # a speed preset runs its own steps, without guidance one latent per step: its own bound
            batch = preset["unet_batch_per_image"]
            if batch not in forward_flops:
                forward_flops[batch] = unet_forward_flops(unet_config, batch=batch, latent_hw=latent_hw,
                                                          tokens=facts["prompt_tokens"])
            run_bound_s = forward_flops[batch] * preset["unet_steps"] / (peak_tflops * 1e12)
        per_run[name] = {"unet_s": unet_s, "unet_over_bound": unet_s / run_bound_s if unet_s else None,
                         "denoise_s": denoise_s, "denoise_over_bound": denoise_s / run_bound_s if denoise_s else None,
                         "bound_s": run_bound_s}
    return {"unet_forward_flops": flops, "latent_shape": [2, unet_config["in_channels"], *latent_hw],
            "encoder_tokens": facts["prompt_tokens"], "unet_steps": facts["n_steps"], "denoise_flops": total,
            "peak_tflops": peak_tflops, "bound_s": bound_s, "per_run": per_run}


# ----------------------------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------------------------


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1.0 else f"{value:.3f} s"


def _fmt_gib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def format_report(report: dict[str, Any]) -> str:
    """The JSON report as readable tables."""
    lines: list[str] = []
    d, s, runs = report["device"], report["setup"], report["runs"]
    names = list(runs)
    width = max(16, *(len(n) + 2 for n in names))
    lines.append(f"claybot GPU speed — {report['mode']} mode, {report['date']}")
    lines.append(f"device: {d['name']} ({d['type']}); torch {d['torch']}, diffusers {d['diffusers']}, "
                 f"onnxruntime {d['onnxruntime']}" + (f", CUDA {d['cuda']}" if d.get("cuda") else "")
                 + f"; {d['cpu_threads']} CPU threads")
    lines.append(f"models: {s['models']}")
    lines.append(f"photo {s['photo'][0]}×{s['photo'][1]} → work {s['work_size'][0]}×{s['work_size'][1]} → out "
                 f"{s['output_size'][0]}×{s['output_size'][1]}; {s['steps']} steps × strength {s['strength']} = "
                 f"{s['n_steps']} UNet steps (CFG: UNet batch 2 per image); {s['dtype']}; LoRA rank "
                 f"{s['lora_rank']} fused")
    lines.append(f"tagger: {s['tagger_input_size']} px, {s['tagger_tags']} tags, on "
                 f"{', '.join(s['tagger_providers'])}{' with I/O binding' if s['tagger_io_binding'] else ''}; "
                 f"prompt: {s['n_tags']} tags → {s['prompt_tokens']} tokens per text encoder (bare call: "
                 "truncated to 77)")
    lines.append(f"repeats: median of {s['repeats']} after one untimed first call per batch size")
    for name in names:
        p = runs[name].get("preset")
        if p and p["name"] != "default":
            lines.append(f"speed preset of '{name}': [speed.{p['name']}] {p['unet_steps']} UNet steps "
                         f"({p['nominal_steps']} nominal × strength {s['strength']}), {p['scheduler']} "
                         f"({p['timestep_spacing']}), guidance {p['guidance_scale']:g}: "
                         f"{p['unet_evaluations_per_image']} UNet evaluations per image (baseline: {s['n_steps'] * 2})")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append("")

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<30}" + "".join(f"{c:>{width}}" for c in cells))

    lines.append("batch 1, per stage")
    row("", names)
    for key, label in (("tag", "tag (WD14)"), ("prompt", "prompt (compel encode)"), ("vae_encode", "VAE encode"),
                       ("unet", "UNet loop"), ("vae_decode", "VAE decode"),
                       ("other", "other (bare: + text encode)"), ("total", "total photo → image")):
        row(label, [_fmt_s(runs[n]["batches"].get("1", {}).get("stages", {}).get(key)) for n in names])
    row("UNet steps/s", [f"{runs[n]['batches'].get('1', {}).get('unet_steps_per_s') or 0:.2f}" for n in names])
    row("first call (warm-up/compile)", [_fmt_s(runs[n]["batches"].get("1", {}).get("first_call_s")) for n in names])
    row("model load", [_fmt_s(runs[n]["load_s"]) for n in names])
    if any("worker_warm_up_s" in runs[n] for n in names):
        row("Stylizer.warm_up()", [_fmt_s(runs[n].get("worker_warm_up_s")) for n in names])
    lines.append("")
    lines.append("throughput (images/s) · seconds per call · peak GPU memory")
    row("", names)
    for b in s["batches"]:
        cells = [runs[n]["batches"].get(str(b)) for n in names]
        row(f"batch {b} images/s", [f"{c['images_per_s']:.3f}" if c else "—" for c in cells])
        row(f"batch {b} per call", [_fmt_s(c["seconds"]) if c else "—" for c in cells])
        row(f"batch {b} UNet steps/s", [f"{c['unet_steps_per_s'] or 0:.2f}" if c else "—" for c in cells])
        row(f"batch {b} peak GPU memory", [_fmt_gib(c["peak_gpu_mem_bytes"]) if c else "—" for c in cells])
    lines.append("")
    ours = [n for n in names if n != "bare"]
    for title, ratios in (("speed-up vs the bare diffusers call (bare seconds ÷ ours, same batch; ours includes "
                           "tagging)", report["speedup_vs_bare"]),
                          ("speed-up vs claybot's baseline (baseline seconds ÷ this configuration's, same batch)",
                           report["speedup_vs_baseline"])):
        if not ratios:
            continue
        lines.append(title)
        row("", ours)
        for b in s["batches"]:
            row(f"batch {b}", [f"{ratios[n][str(b)]:.3f}×" if str(b) in ratios.get(n, {}) else "—" for n in ours])
        lines.append("")
    f = report["flops"]
    lines.append("UNet FLOP bound (FlopCounterMode, one UNet forward at the working latent shape)")
    lines.append(f"  one forward, latent {tuple(f['latent_shape'])}, {f['encoder_tokens']} text tokens: "
                 f"{f['unet_forward_flops'] / 1e12:.4f} TFLOP")
    lines.append(f"  × {f['unet_steps']} steps = {f['denoise_flops'] / 1e12:.3f} TFLOP ÷ {f['peak_tflops']:g} TFLOP/s "
                 f"peak = bound {f['bound_s'] * 1000:.4g} ms")
    for name, r in f["per_run"].items():
        unet = "—" if r["unet_s"] is None else (f"UNet loop {r['unet_s'] * 1000:.1f} ms = "
                                                 f"{r['unet_over_bound']:.2f}× bound")
        own = "" if r.get("bound_s", f["bound_s"]) == f["bound_s"] else \
            f" (its own preset's bound: {r['bound_s'] * 1000:.4g} ms)"
        lines.append(f"  {name:<18} {unet}; denoise (VAE incl.) {r['denoise_s'] * 1000:.1f} ms = "
                     f"{r['denoise_over_bound']:.2f}× bound{own}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def print_meta(peak_tflops: float) -> dict[str, Any]:
    """Parameter counts of the hard-coded configs (meta device) and the full-size UNet's FLOPs at 1024²."""
    counts = meta_param_counts()
    print("full-size configs built on the meta device (no weights) vs published SDXL base 1.0")
    for name, c in counts.items():
        print(f"  {name:<15} {c['params']:>14,} params   published {c['published']:>14,}   {c['rel_diff']:+.4%}")
    flops = {}
    for tokens in (77, 154):
        flops[tokens] = unet_forward_flops(SDXL_BASE.unet, batch=2, latent_hw=(128, 128), tokens=tokens)
        print(f"  UNet forward, latent (2, 4, 128, 128) = 1024×1024 with CFG, {tokens} tokens: "
              f"{flops[tokens] / 1e12:.4f} TFLOP; × 15 steps ÷ {peak_tflops:g} TFLOP/s = "
              f"{flops[tokens] * 15 / (peak_tflops * 1e12) * 1000:.1f} ms (a bound, not a measurement)")
    # [speed.fast]: 4 steps, no guidance, so one latent per UNet forward
    fast = unet_forward_flops(SDXL_BASE.unet, batch=1, latent_hw=(128, 128), tokens=154)
    steps = FAST_PRESET["steps"]
    print(f"  [speed.fast]: UNet forward, latent (1, 4, 128, 128), no guidance, 154 tokens: {fast / 1e12:.4f} TFLOP; "
          f"× {steps} steps ÷ {peak_tflops:g} TFLOP/s = {fast * steps / (peak_tflops * 1e12) * 1000:.1f} ms "
          f"({flops[154] * 15 / (fast * steps):.1f}× fewer FLOPs than the default's 15 guided steps)")
    return {"params": counts, "unet_forward_flops_1024_cfg": {str(k): v for k, v in flops.items()},
            "unet_forward_flops_1024_fast": fast}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="full-size models on CUDA (the default with a GPU)")
    mode.add_argument("--smoke", action="store_true", help="the tiny models on the CPU (the default without)")
    mode.add_argument("--meta", action="store_true", help="only check the full-size configs on the meta device")
    mode.add_argument("--cpu-check", action="store_true",
                      help="build the FULL-size models and run the full path once on the CPU in float32 at 256×256, "
                           "2 steps, batch 1 (peaks at ~20 GB RAM, ~8 GB disk; checks plumbing, not speed)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--switch", action="append", default=[], choices=[n for n in CONFIGS if n != "baseline"],
                        help="measure baseline + this configuration (repeatable)")
    parser.add_argument("--all-switches", action="store_true", help="baseline, each switch alone, and all")
    parser.add_argument("--preset", action="append", default=[], choices=["fast"],
                        help="also measure the [speed.fast] preset (4-step LoRA, Euler trailing, no guidance)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare diffusers call")
    parser.add_argument("--no-baseline", action="store_true",
                        help="only the configurations named (benchmarks/device/run.sh measures the baseline once)")
    parser.add_argument("--batches", default=None, help="comma list; default 1,2,4 (smoke: 1,2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per batch size; default 3 (smoke: 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="nominal steps (img2img runs steps × strength); default 30 (smoke: 10)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16", help="full mode only")
    parser.add_argument("--vae", choices=["fp16-fix", "base"], default="fp16-fix",
                        help="the Stylizer's VAE in full mode: an fp16-fix-shaped one (force_upcast false, as "
                             "config.toml's madebyollin/sdxl-vae-fp16-fix) or the base folder's (upcast to fp32)")
    parser.add_argument("--compile", action="store_true", help="smoke mode: really compile (slow on the CPU)")
    parser.add_argument("--compile-backend", choices=["eager", "aot_eager"],
                        help="torch.compile traces whole graphs (fullgraph, as claybot asks) but hands them to this "
                             "backend instead of inductor: the compile path without minutes of code generation")
    parser.add_argument("--worker-warm-up", action="store_true",
                        help="also time Stylizer.warm_up() (with compile + buckets: every bucket × batch size)")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_PEAK_TFLOPS,
                        help="the device's dense fp16/bf16 tensor peak (default: H100 SXM, 989)")
    parser.add_argument("--models-dir", type=Path,
                        default=Path(os.environ.get("CLAYBOT_BENCH_MODELS", "~/.cache/claybot/gpu-bench")),
                        help="full mode: where the random-weight models are built once and reused")
    parser.add_argument("--rebuild", action="store_true", help="full mode: rebuild the models")
    parser.add_argument("--tiny-models", type=Path,
                        help="smoke mode: pipeline.gpu.tiny's models here, written once and reused (default: a "
                             "scratch folder, removed after)")
    parser.add_argument("--lora-rank", type=int, default=32)
    args = parser.parse_args(argv)
    if not (args.full or args.smoke or args.meta or args.cpu_check):
        args.full, args.smoke = torch.cuda.is_available(), not torch.cuda.is_available()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.meta:
        result = print_meta(args.peak_tflops)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0
    if args.full and not torch.cuda.is_available():
        print("gpu_speed: --full needs a CUDA GPU (try --smoke or --meta here)", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*invalid value encountered in cast.*")  # random weights → NaNs
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    smoke, cpu_check = args.smoke, args.cpu_check
    steps = args.steps or (10 if smoke else 2 if cpu_check else 30)
    quiet_libraries()
    batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1" if cpu_check else "1,2,4")).split(",")]
    repeats = args.repeats or (2 if smoke else 1 if cpu_check else 3)
    names = ["baseline", *args.switch] if args.switch else ["baseline"] if cpu_check else ["baseline", "all"]
    if args.all_switches:
        names = ["baseline", *SWITCHES, "all"]
    names = list(dict.fromkeys([*names, *args.preset]))
    if args.no_baseline:
        names = [n for n in names if n != "baseline"] or names
    notes: list[str] = []
    if smoke:
        notes.append("smoke mode: tiny random models on the CPU; checks that the script runs, not speed; the FLOP "
                     "bound uses the GPU peak and means nothing here")
    if cpu_check:
        notes.append("CPU check: full-size random models in float32 on the CPU at 256×256 with 2 steps; checks the "
                     "full-size plumbing, not speed; the FLOP bound uses the GPU peak and means nothing here")
    if smoke or cpu_check:
        if not args.compile and any(CONFIGS[n].get("compile") for n in names):
            notes.append("compile skipped on the CPU (pass --compile to compile anyway): 'all' runs without it")
    device = torch.device("cuda" if args.full and not cpu_check else "cpu")
    if args.compile_backend:
        _compile_with(args.compile_backend)
        notes.append(f"torch.compile used the {args.compile_backend!r} backend (graphs traced, no inductor code)")
    info = detect_device()
    if args.full:
        peak = known_peak(info["name"])
        if peak is not None and abs(peak - args.peak_tflops) > 1:
            notes.append(f"{info['name']} looks like a {peak:g} TFLOP/s part but --peak-tflops is "
                         f"{args.peak_tflops:g}: the bound uses {args.peak_tflops:g}")
        notes.append(f"detected device: {info['name']}; FLOP bound at {args.peak_tflops:g} TFLOP/s dense fp16/bf16")

    scratch = None
    if smoke:
        if args.tiny_models is None:
            scratch = Path(tempfile.mkdtemp(prefix="claybot-gpu-speed-"))
        models = write_smoke_models(args.tiny_models or scratch / "models")
        side, megapixels, dtype = 64, 0.0041, "float32"  # 64×64: the tiny models are about plumbing, not pixels
    else:
        models = write_full_models(args.models_dir, lora_rank=args.lora_rank, rebuild=args.rebuild)
        if args.vae == "base":
            models = BenchModels(models.sdxl_folder, None, models.lora, models.tagger_folder, models.lora_rank,
                                 models.build_s, models.speed_lora)
        side, megapixels, dtype = (256, 0.0655, "float32") if cpu_check else (1024, 1.0, args.dtype)
    photo = bench_photo(side)
    config_dir = Path(tempfile.mkdtemp(prefix="claybot-gpu-speed-config-"))
    template = (ROOT / "config.toml").read_text(encoding="utf-8")

    runs: dict[str, Any] = {}
    facts: dict[str, Any] = {}

    def assemble(complete: bool) -> dict[str, Any]:
        """The report of the runs measured so far."""
        speedup = {}
        if "bare" in runs:
            for name in (n for n in runs if n != "bare"):
                speedup[name] = {b: runs["bare"]["batches"][b]["seconds"] / runs[name]["batches"][b]["seconds"]
                                 for b in runs[name]["batches"] if b in runs["bare"]["batches"]}
        vs_baseline = {}
        if "baseline" in runs:
            base = runs["baseline"]["batches"]
            vs_baseline = {name: {b: base[b]["seconds"] / run["batches"][b]["seconds"] for b in run["batches"]}
                           for name, run in runs.items() if name not in ("bare", "baseline")}
        return {
            "mode": "smoke" if smoke else "cpu-check" if cpu_check else "full",
            "complete": complete,  # false while later configurations are still to come (or were cut short)
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device": info,
            "setup": {**{k: v for k, v in facts.items() if k != "unet_config"}, "photo": list(photo.size),
                      "batches": batches, "repeats": repeats, "lora_rank": models.lora_rank,
                      "build_s": models.build_s, "models": str(models.sdxl_folder.parent),
                      "vae": str(models.vae_folder) if models.vae_folder else "the base folder's"},
            "runs": runs,
            "speedup_vs_bare": speedup,
            "speedup_vs_baseline": vs_baseline,
            "flops": flop_bound(facts["unet_config"], facts, runs, args.peak_tflops),
            "notes": notes,
        }

    try:
        for name in names:
            switches = dict(CONFIGS[name])
            if (smoke or cpu_check) and not args.compile:
                switches.pop("compile", None)
                if name == "compile":
                    continue
            path = config_dir / f"{name}.toml"
            path.write_text(bench_config_text(template, models, device=device.type, dtype=dtype, steps=steps,
                                              megapixels=megapixels, switches=switches), encoding="utf-8")
            print(f"measuring claybot '{name}' ({', '.join(f'{k}={v}' for k, v in switches.items()) or 'all off'})",
                  flush=True)
            runs[name], run_facts = measure_claybot(name, path, photo, batches, repeats,
                                                    worker_warm_up=args.worker_warm_up)
            free_memory()
            runs[name]["switches"] = switches
            facts = facts or run_facts
            write_json(args.json, assemble(complete=False))  # a run cut short later keeps this one
        if not args.no_bare and facts:
            print("measuring the bare diffusers call", flush=True)
            from PIL import Image

            from pipeline.gpu.prompt import plain_text

            work_image = photo.resize(tuple(facts["work_size"]), Image.Resampling.LANCZOS)
            runs["bare"] = measure_bare(
                models, prompt=plain_text(facts["prompt"]), negative_prompt=facts["negative_prompt"],
                image=work_image, steps=facts["steps"], strength=facts["strength"],
                guidance_scale=facts["guidance_scale"], dtype=getattr(torch, facts["dtype"]), device=device,
                batches=batches, repeats=repeats, n_steps=facts["n_steps"])
            free_memory()
            if runs["bare"]["vae_force_upcast"] and models.vae_folder is not None:
                notes.append("the bare call uses the model folder's own VAE (force_upcast: encode/decode in fp32); "
                             "claybot's config names an fp16-fix-shaped VAE, as config.toml does (--vae base "
                             "gives claybot the folder's VAE too)")
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if not facts:
        print("gpu_speed: no configuration was measured (compile is skipped on the CPU without --compile)",
              file=sys.stderr)
        return 1
    report = assemble(complete=True)
    print()
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


def _compile_with(backend: str) -> None:
    """Make torch.compile use backend (the Stylizer asks for inductor's modes; other backends take none)."""
    compile_ = torch.compile

    def compile_with_backend(model=None, **kwargs):
        kwargs.pop("mode", None)
        return compile_(model, **{**kwargs, "backend": backend})

    torch.compile = compile_with_backend


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Write the report whole or not at all (a step killed mid-write leaves the previous one)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
