"""Seconds per clip and peak GPU memory of claybot's Animator at full size, with random weights.

    # on a CUDA machine (the default there): Wan 2.2 TI2V-5B and LTX-Video 0.9.7 13B, built in GPU memory
    .venv/bin/python benchmarks/animate_speed.py --json out/animate_speed.json
    .venv/bin/python benchmarks/animate_speed.py --family ltx --frames 121     # one family, longer clips
    # anywhere, in well under a minute on 2 CPU cores: the same code path on pipeline.gpu.tiny_video's models
    .venv/bin/python benchmarks/animate_speed.py --smoke --json /tmp/animate_smoke.json
    # anywhere, in seconds: the hard-coded full-size configs built on the meta device (parameter counts)
    .venv/bin/python benchmarks/animate_speed.py --meta

Real weights cannot be downloaded here, and speed does not depend on weight values, so full-size mode BUILDS each
published architecture with random weights, straight in GPU memory (configs hard-coded below, from diffusers'
conversion scripts): Wan 2.2 TI2V-5B (WanTransformer3DModel, the Wan 2.2 VAE in float32 as claybot runs it, the
UMT5-XXL encoder) and LTX-Video 0.9.7 13B (LTXVideoTransformer3DModel, its timestep-aware VAE, the T5-XXL encoder).
Each runs through claybot's REAL Animator (pipeline.gpu.animate) at config.toml's settings for that family: Wan at
30 steps with guidance 5 (two transformer passes a step), LTX distilled at 8 steps with guidance 1, both 73 frames
at 832×480 (0.4 MP of a 16:9 picture), bfloat16.

Reported per family: seconds per clip (median of --repeats timed calls after one untimed 2-step call, reported as
first_call_s), the denoising part and seconds per step (CUDA-synchronised at each step's end), the rest (prompt
encoding, the picture's VAE encode, the VAE decode of every frame), peak GPU memory during a clip (weights included),
parameter counts; with --encode also the MP4 encode (pipeline.core.clip) of the frames. Random weights make noise
frames, the encoder's worst case, so encode figures are an upper bound. Every figure also goes to --json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# The published architectures, hard-coded (diffusers' scripts/convert_wan_to_diffusers.py "Wan2.2-TI2V-5B" and
# vae22_diffusers_config; scripts/convert_ltx_to_diffusers.py version "0.9.7"; google/umt5-xxl and
# google/t5-v1_1-xxl config.json). Latent means and deviations are 0 and 1: values, not sizes.
# ----------------------------------------------------------------------------------------------------------------

WAN_TRANSFORMER: dict[str, Any] = {
    "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 14336,
    "freq_dim": 256, "in_channels": 48, "num_attention_heads": 24, "num_layers": 30, "out_channels": 48,
    "patch_size": (1, 2, 2), "qk_norm": "rms_norm_across_heads", "text_dim": 4096,
}
WAN_VAE: dict[str, Any] = {
    "base_dim": 160, "z_dim": 48, "is_residual": True, "in_channels": 12, "out_channels": 12, "decoder_base_dim": 256,
    "scale_factor_temporal": 4, "scale_factor_spatial": 16, "patch_size": 2,
    "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48,
}
UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "tie_word_embeddings": False,
}
LTX_TRANSFORMER: dict[str, Any] = {
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 32,
    "attention_head_dim": 128, "cross_attention_dim": 4096, "num_layers": 48, "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    "caption_channels": 4096, "attention_bias": True, "attention_out_bias": True,
}
LTX_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 128, "block_out_channels": (128, 256, 512, 1024, 2048),
    "down_block_types": ("LTXVideo095DownBlock3D",) * 4, "decoder_block_out_channels": (256, 512, 1024),
    "layers_per_block": (4, 6, 6, 2, 2), "decoder_layers_per_block": (5, 5, 5, 5),
    "spatio_temporal_scaling": (True, True, True, True), "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True), "upsample_factor": (2, 2, 2), "timestep_conditioning": True,
    "patch_size": 4, "patch_size_t": 1, "resnet_norm_eps": 1e-6, "scaling_factor": 1.0, "encoder_causal": True,
    "decoder_causal": False, "spatial_compression_ratio": 32, "temporal_compression_ratio": 8,
}
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "tie_word_embeddings": False,
}
# What a clip is made with in each mode: config.toml's settings for the family (full), the tiny ones (smoke).
FULL_SETTINGS = {"wan": {"frames": 73, "fps": 24, "steps": 30, "guidance_scale": 5.0, "megapixels": 0.4},
                 "ltx": {"frames": 73, "fps": 24, "steps": 8, "guidance_scale": 1.0, "megapixels": 0.4}}
SMOKE_SETTINGS = {"wan": {"frames": 9, "fps": 8, "steps": 2, "guidance_scale": 5.0, "megapixels": 0.0123},
                  "ltx": {"frames": 9, "fps": 8, "steps": 2, "guidance_scale": 1.0, "megapixels": 0.0123}}
NAMES = {"wan": "Wan 2.2 TI2V-5B", "ltx": "LTX-Video 0.9.7 13B"}
PROMPT = ("claymation stop-motion animation, subtle natural movement, 1girl, solo, smile, looking at viewer, "
          "brown hair, upper body, outdoors, sky")
NEGATIVE = "blurry, distorted, deformed, morphing, flickering, jittery, static, still frame, low quality"


def build_full(family: str, device: torch.device, dtype: torch.dtype):
    """The full-size pipeline of a family with random weights, each part built on the device then cast."""
    import diffusers
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    from pipeline.gpu.tiny_video import build_tokenizer

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(0)
        if family == "wan":
            transformer = diffusers.WanTransformer3DModel(**WAN_TRANSFORMER).to(dtype).eval()
            _free()
            vae = diffusers.AutoencoderKLWan(**WAN_VAE).eval()  # float32: claybot's Animator runs Wan's VAE so
            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(dtype).eval()
            scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                          num_train_timesteps=1000, flow_shift=5.0)
            return diffusers.WanImageToVideoPipeline(
                tokenizer=build_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                transformer=transformer, transformer_2=None, image_encoder=None, image_processor=None,
                boundary_ratio=None, expand_timesteps=True)
        transformer = diffusers.LTXVideoTransformer3DModel(**LTX_TRANSFORMER).to(dtype).eval()
        _free()
        vae = diffusers.AutoencoderKLLTXVideo(**LTX_VAE).to(dtype).eval()
        text_encoder = T5EncoderModel(T5Config(**T5_XXL)).to(dtype).eval()
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)
        return diffusers.LTXConditionPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                              tokenizer=build_tokenizer(), transformer=transformer)


def build_smoke(family: str):
    """pipeline.gpu.tiny_video's model of the family, in memory."""
    from pipeline.gpu.tiny_video import build_tiny_ltx, build_tiny_wan

    return build_tiny_wan() if family == "wan" else build_tiny_ltx()


def meta_param_counts() -> dict[str, dict[str, int]]:
    """Every full-size part built on the meta device (no memory, no init), its parameters counted."""
    import diffusers
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        parts = {
            "wan": {"transformer": diffusers.WanTransformer3DModel(**WAN_TRANSFORMER),
                    "vae": diffusers.AutoencoderKLWan(**WAN_VAE),
                    "text_encoder": UMT5EncoderModel(UMT5Config(**UMT5_XXL))},
            "ltx": {"transformer": diffusers.LTXVideoTransformer3DModel(**LTX_TRANSFORMER),
                    "vae": diffusers.AutoencoderKLLTXVideo(**LTX_VAE),
                    "text_encoder": T5EncoderModel(T5Config(**T5_XXL))},
        }
    return {family: {name: _params(module) for name, module in modules.items()} for family, modules in parts.items()}


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_picture(megapixels: float):
    """The repository's example photo cut to 16:9 (832×480 at 0.4 MP), a clay picture's usual shape."""
    from PIL import Image

    photo = Image.open(ROOT / "examples" / "photo.jpg").convert("RGB")
    width = photo.width
    height = width * 9 // 16
    top = (photo.height - height) // 2
    side = max(64, int((megapixels * 1e6 * 16 / 9) ** 0.5))
    return photo.crop((0, top, width, top + height)).resize((side, side * 9 // 16), Image.Resampling.LANCZOS)


Dtype = Literal["bfloat16", "float32"]


def measure(family: str, pipe, *, device: torch.device, dtype: Dtype, clip: dict[str, Any], repeats: int,
            encode: bool) -> dict[str, Any]:
    """Time the Animator's clips on this pipeline; peak GPU memory while one is made."""
    from pipeline.core.clip import encode_mp4
    from pipeline.core.settings import AnimateSettings, GpuSettings, PipelineSettings
    from pipeline.gpu.animate import Animator

    def animator(steps: int) -> Animator:
        animate = AnimateSettings(enabled=True, model="(built in memory)", dtype=dtype, **{**clip, "steps": steps})
        return Animator(GpuSettings(pipeline=PipelineSettings(device=device.type), animate=animate), pipe=pipe)

    picture = bench_picture(clip["megapixels"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = animator(min(2, clip["steps"]))
    started = time.perf_counter()
    warm.run(picture, prompt=PROMPT, negative_prompt=NEGATIVE, seed=0)
    sync()
    first_call_s = time.perf_counter() - started

    timed = animator(clip["steps"])
    runs: list[dict[str, float]] = []
    peak: int | None = None
    frames = None
    for repeat in range(repeats):
        marks: list[float] = []

        def on_step(done: int, total: int, marks: list[float] = marks) -> None:
            sync()  # the step's kernels are done: its end is now
            marks.append(time.perf_counter())

        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        result = timed.run(picture, prompt=PROMPT, negative_prompt=NEGATIVE, seed=repeat + 1, on_step=on_step)
        sync()
        total = time.perf_counter() - started
        if device.type == "cuda":
            peak = max(peak or 0, torch.cuda.max_memory_allocated(device))
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - started
        denoise = per_step * len(marks)
        runs.append({"seconds": total, "s_per_step": per_step, "denoise_s": denoise, "other_s": total - denoise})
        frames = result.frames
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    assert frames is not None
    out: dict[str, Any] = {
        "pipeline": type(pipe).__name__, "size": [int(frames.shape[2]), int(frames.shape[1])],
        "frames": int(frames.shape[0]), **{k: clip[k] for k in ("fps", "steps", "guidance_scale")},
        "dtype": dtype, "first_call_s": first_call_s, "seconds_per_clip": median["seconds"],
        "s_per_step": median["s_per_step"], "denoise_s": median["denoise_s"], "other_s": median["other_s"],
        "repeats": repeats, "peak_gpu_bytes": peak,
        "params": {name: _params(getattr(pipe, name)) for name in ("transformer", "text_encoder", "vae")},
    }
    if encode:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            encoded = encode_mp4(frames, clip["fps"], max_bytes=10 * 1024 * 1024)
        out["mp4"] = {"encode_s": time.perf_counter() - started, "bytes": len(encoded.data), "crf": encoded.crf,
                      "attempts": encoded.attempts, "size": [encoded.width, encoded.height]}
    return out


def detect_device() -> dict[str, Any]:
    """What this run ran on."""
    import diffusers
    import transformers

    try:
        import av  # only --encode needs it; the GPU run kit leaves it behind

        av_version: str | None = av.__version__
    except ImportError:
        av_version = None
    info: dict[str, Any] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "transformers": transformers.__version__, "av": av_version,
                            "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(type="cuda", name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    total_memory_bytes=props.total_memory)
    else:
        info.update(type="cpu", name=platform.processor() or platform.machine())
    return info


def format_report(report: dict[str, Any]) -> str:
    lines = [f"animate_speed ({report['mode']}) on {report['device']['name']}, {report['date']}"]
    for family, run in report["runs"].items():
        peak = run["peak_gpu_bytes"]
        gib = f"{peak / 2**30:.1f} GiB" if peak else "n/a (CPU)"
        lines.append(f"  {family}: {run['model']}: {run['frames']} frames at {run['size'][0]}×{run['size'][1]}, "
                     f"{run['steps']} steps, guidance {run['guidance_scale']:g}, {run['dtype']}")
        lines.append(f"      {run['seconds_per_clip']:.2f} s per clip ({run['s_per_step']:.3f} s per step, "
                     f"{run['other_s']:.2f} s outside the steps); first call {run['first_call_s']:.2f} s; "
                     f"peak GPU memory {gib}; built in {run['build_s']:.1f} s")
        params = ", ".join(f"{name} {_count(count)}" for name, count in run["params"].items())
        lines.append(f"      parameters: {params}")
        if "mp4" in run:
            mp4 = run["mp4"]
            lines.append(f"      MP4: {mp4['bytes']} bytes, crf {mp4['crf']}, {mp4['attempts']} encodings, "
                         f"{mp4['encode_s']:.2f} s")
    lines += [f"  note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="full-size models on CUDA (the default with a GPU)")
    mode.add_argument("--smoke", action="store_true", help="the tiny models on the CPU (the default without)")
    mode.add_argument("--meta", action="store_true", help="only count the full-size configs' parameters")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--family", choices=["wan", "ltx", "both"], default="both")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (Wan 4k+1, LTX 8k+1); default 73")
    parser.add_argument("--steps", type=int, default=None, help="default: Wan 30, LTX 8 (smoke: 2)")
    parser.add_argument("--megapixels", type=float, default=None, help="default 0.4 (832×480)")
    parser.add_argument("--repeats", type=int, default=1, help="timed clips per family (median)")
    parser.add_argument("--encode", action="store_true", help="also time the MP4 encode (always on in smoke mode)")
    args = parser.parse_args(argv)
    if not (args.full or args.smoke or args.meta):
        args.full, args.smoke = torch.cuda.is_available(), not torch.cuda.is_available()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.meta:
        counts = meta_param_counts()
        for family, parts in counts.items():
            print(f"{NAMES[family]}: " + ", ".join(f"{k} {v / 1e9:.2f} B" for k, v in parts.items()))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"mode": "meta", "params": counts}, indent=2), encoding="utf-8")
        return 0
    if args.full and not torch.cuda.is_available():
        print("animate_speed: --full needs a CUDA GPU (try --smoke or --meta here)", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*invalid value encountered in cast.*")  # random weights → NaNs
    warnings.filterwarnings("ignore", category=FutureWarning)
    from pipeline.gpu.stylizer import _quiet_libraries

    _quiet_libraries()
    device = torch.device("cuda" if args.full else "cpu")
    dtype: Dtype = "bfloat16" if args.full else "float32"
    families = ["wan", "ltx"] if args.family == "both" else [args.family]
    notes = ["random weights: the frames are noise; speed and memory do not depend on weight values"]
    if args.smoke:
        notes.append("smoke mode: tiny random models on the CPU; checks that the script runs, not speed")
    runs: dict[str, Any] = {}
    for family in families:
        clip = dict((SMOKE_SETTINGS if args.smoke else FULL_SETTINGS)[family])
        clip.update({k: v for k, v in (("frames", args.frames), ("steps", args.steps),
                                      ("megapixels", args.megapixels)) if v is not None})
        print(f"building {NAMES[family] if args.full else 'tiny ' + family} …", flush=True)
        started = time.perf_counter()
        pipe = build_full(family, device, torch.bfloat16) if args.full else build_smoke(family)
        build_s = time.perf_counter() - started
        _free()
        print(f"measuring {family}: {clip}", flush=True)
        run = measure(family, pipe, device=device, dtype=dtype, clip=clip, repeats=args.repeats,
                      encode=args.encode or args.smoke)
        runs[family] = {"model": f"{NAMES[family]} (random weights)" if args.full else f"tiny {family}-shaped",
                        "build_s": build_s, **run}
        del pipe
        _free()
    report = {
        "mode": "full" if args.full else "smoke",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": detect_device(),
        "runs": runs,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "notes": notes,
    }
    print()
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
