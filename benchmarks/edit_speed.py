"""Seconds per picture and peak GPU memory of claybot's edit engine (FLUX.2 [klein] 4B) at full size, random weights.

    # on a CUDA machine (the default there): klein 4B built in GPU memory, 1024×1024, 4 steps, bfloat16
    .venv/bin/python benchmarks/edit_speed.py --json out/edit.json
    # anywhere, in seconds on 2 CPU cores: the same code path on pipeline.gpu.tiny_edit's model
    .venv/bin/python benchmarks/edit_speed.py --smoke --json /tmp/edit_smoke.json
    # anywhere: the hard-coded full-size configs built on the meta device (parameter counts)
    .venv/bin/python benchmarks/edit_speed.py --meta

Real weights cannot be downloaded here, and speed does not depend on weight values, so full-size mode BUILDS the
published klein 4B architecture with random weights straight in GPU memory (configs hard-coded below: the
Flux2Transformer2DModel of klein 4B, 5 double and 20 single blocks of width 3072, 128 latent channels, text width
7680 = 3 × Qwen3-4B's 2560; Qwen3-4B, 36 layers; the FLUX.2 VAE, diffusers' AutoencoderKLFlux2 defaults) and runs it
through claybot's REAL EditEngine (pipeline.gpu.edit) at config.toml's likeness settings: the photo as the reference
image, the instruction with tags and words, 4 steps, guidance 1, 1024×1024 (a square photo at 1 megapixel). The
tokenizer is the tiny byte-level one: the pipeline pads every instruction to max_sequence_length (512) tokens, so
the text encoder's work is the real one.

Reported: seconds per picture (median of --repeats timed calls after one untimed call, its time first_call_s), the
denoising part and seconds per step, peak GPU memory during a picture (weights included), parameter counts. The SDXL
default and [speed.fast] figures to set them beside come from the same kit run (speed.json, benchmarks/gpu_speed.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

# klein 4B as published (its model_index / transformer config, and Qwen3-4B's config.json); the VAE is diffusers'
# AutoencoderKLFlux2 default, FLUX.2's own.
KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 7680, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000, "guidance_embeds": False,
}
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rope_theta": 1000000.0, "tie_word_embeddings": True,
}
WORDS = "as a knight in armour"


def build_full(device: torch.device, dtype: torch.dtype) -> Any:
    """The klein 4B pipeline with random weights, each part built on the device then cast."""
    import diffusers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipeline.gpu.tiny_edit import build_tokenizer

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(0)
        transformer = diffusers.Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER).to(dtype).eval()
        _free()
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)).to(dtype).eval()
        _free()
        vae = diffusers.AutoencoderKLFlux2().to(dtype).eval()
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
        return diffusers.Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                            tokenizer=build_tokenizer(), transformer=transformer, is_distilled=True)


def meta_param_counts() -> dict[str, int]:
    """The full-size parts built on the meta device (no memory), their parameters counted."""
    import diffusers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        parts = {"transformer": diffusers.Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER),
                 "text_encoder": Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)), "vae": diffusers.AutoencoderKLFlux2()}
    return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def settings(megapixels: float, device: str, model: str) -> Any:
    """The repository's config's settings (its likeness style at ``megapixels``), on ``device``, edit model
    ``model``."""
    import tomllib

    from bot.cli import ROOT_CONFIG
    from bot.config import parse_config

    raw = tomllib.loads(ROOT_CONFIG.read_text(encoding="utf-8"))
    raw["pipeline"]["device"] = device
    likeness = raw["styles"]["likeness"]
    likeness["enabled"] = True
    likeness["edit"].update(model=model, megapixels=megapixels)
    return parse_config(raw, base_dir=ROOT, check_models=False).gpu()


def measure(engine: Any, gpu: Any, *, device: torch.device, repeats: int, side: int) -> dict[str, Any]:
    """Time the engine's pictures of the example photo (a square of ``side``); peak GPU memory while one is made."""
    import asyncio
    import io

    from PIL import Image

    from pipeline.core.intake import take_in
    from pipeline.core.jobs import Done, Failed, Progress, Task, Update
    from pipeline.gpu.engine import DecodedJob, Run
    from pipeline.gpu.tagger import Tags

    photo = Image.open(ROOT / "examples" / "photo.jpg").convert("RGB")
    square = min(photo.size)
    photo = photo.crop((0, 0, square, square)).resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    tags = Tags(general=[("1girl", 0.9), ("smile", 0.8), ("outdoors", 0.7)], characters=[], ratings={"general": 1.0})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one(seed: int, marks: list[float]) -> Done:
        job = asyncio.run(take_in(gpu, buffer.getvalue(), style="likeness", seed=seed, options={"words": WORDS}))
        decoded = DecodedJob(Task(f"bench-{seed}", job), photo)
        decoded.tags = tags
        answers: list[Any] = []

        def send(message: Any) -> None:
            if isinstance(message, Update) and isinstance(message.event, Progress):
                sync()  # the step's kernels are done: its end is now
                marks.append(time.perf_counter())
            answers.append(message)

        engine.run([decoded], Run(send, 600.0, float("inf"), engine.tagger))
        events = [m.event for m in answers if isinstance(m, Update)]
        failed = [e for e in events if isinstance(e, Failed)]
        if failed:
            raise SystemExit(f"edit_speed: the engine failed: {failed[0].reason}")
        return next(e for e in events if isinstance(e, Done))

    started = time.perf_counter()
    one(0, [])
    sync()
    first_call_s = time.perf_counter() - started
    runs: list[dict[str, float]] = []
    peak: int | None = None
    done = None
    for repeat in range(repeats):
        marks: list[float] = []
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        done = one(repeat + 1, marks)
        total = time.perf_counter() - started
        if device.type == "cuda":
            peak = max(peak or 0, torch.cuda.max_memory_allocated(device))
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - started
        runs.append({"seconds": total, "s_per_step": per_step, "denoise_s": per_step * len(marks)})
    assert done is not None
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    model = next(iter(engine._pipes.values()))
    return {
        "pipeline": type(model).__name__, "size": [done.width, done.height], "steps": len(marks),
        "first_call_s": first_call_s, "seconds_per_picture": median["seconds"], "s_per_step": median["s_per_step"],
        "denoise_s": median["denoise_s"], "other_s": median["seconds"] - median["denoise_s"], "repeats": repeats,
        "peak_gpu_bytes": peak, "dtype": str(next(model.transformer.parameters()).dtype).removeprefix("torch."),
        "params": {name: sum(p.numel() for p in getattr(model, name).parameters())
                   for name in ("transformer", "text_encoder", "vae")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="full-size klein 4B on CUDA (the default with a GPU)")
    mode.add_argument("--smoke", action="store_true", help="the tiny klein on the CPU (the default without)")
    mode.add_argument("--meta", action="store_true", help="only count the full-size configs' parameters")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--repeats", type=int, default=None, help="timed pictures; default 3 (smoke: 1)")
    parser.add_argument("--side", type=int, default=None, help="the square photo's side; default 1024 (smoke: 128)")
    args = parser.parse_args(argv)
    if args.meta:
        counts = meta_param_counts()
        print("klein 4B parameters: " + ", ".join(f"{name} {count / 1e9:.2f} B" for name, count in counts.items()))
        if args.json:
            args.json.write_text(json.dumps({"mode": "meta", "params": counts}, indent=2), encoding="utf-8")
        return 0
    full = args.full or (not args.smoke and torch.cuda.is_available())
    if full and not torch.cuda.is_available():
        print("edit_speed: --full needs a CUDA GPU (try --smoke or --meta here)", file=sys.stderr)
        return 2
    from animate_speed import detect_device

    from pipeline.gpu.edit import EditEngine

    side = args.side or (1024 if full else 128)
    repeats = args.repeats or (3 if full else 1)
    device = torch.device("cuda" if full else "cpu")
    report: dict[str, Any] = {"mode": "full" if full else "smoke", "date": _dt.datetime.now(_dt.UTC).isoformat(),
                              "device": detect_device(), "notes": [], "complete": False}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if full:
            pipe = build_full(device, torch.bfloat16)
            model = "(built in memory)"
        else:
            from pipeline.gpu.tiny_edit import write_tiny_edit_model

            model = str(write_tiny_edit_model(Path(tmp) / "edit"))
            pipe = None
        build_s = time.perf_counter() - started
        gpu = settings((side * side) / 1e6, device.type, model)
        # no tagger: the jobs carry their tags, and their chat allows every rating (nothing to rate)
        engine = EditEngine(gpu, None, built={"likeness": pipe} if pipe is not None else None)
        if pipe is None:
            engine._pipe(engine.models["likeness"])  # the tiny one loads through from_pretrained, as in a worker
        run = measure(engine, gpu, device=device, repeats=repeats, side=side)
    run["build_s"] = build_s
    report["runs"] = {"edit": run}
    report["complete"] = True
    peak = run["peak_gpu_bytes"]
    print(f"edit_speed ({report['mode']}) on {report['device']['name']}: klein at {run['size'][0]}×{run['size'][1]}, "
          f"{run['steps']} steps, {run['dtype']}: {run['seconds_per_picture']:.2f} s per picture "
          f"({run['s_per_step']:.3f} s per step), first call {run['first_call_s']:.2f} s, peak GPU memory "
          f"{f'{peak / 2**30:.1f} GiB' if peak else 'n/a (CPU)'}; built in {build_s:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
