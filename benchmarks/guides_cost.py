"""What the guides cost: claybot's real Stylizer with no guide, the structure guide (ControlNet + depth), the
identity guide (IP-Adapter plus + face detector) and both, on random-weight models of the real architectures.

    # anywhere, about a minute on 2 CPU cores: pipeline.gpu.tiny's models (the ratio of tiny models, not SDXL's)
    .venv/bin/python benchmarks/guides_cost.py --smoke --json /tmp/guides.json
    # anywhere, in seconds: the full-size guide architectures on the meta device (parameter counts)
    .venv/bin/python benchmarks/guides_cost.py --meta
    # on a CUDA machine: full-size SDXL (benchmarks/gpu_speed.py's models) + a full-size SDXL ControlNet
    # (ControlNetModel.from_unet of SDXL base, as diffusers/controlnet-depth-sdxl-1.0; config.toml's suggested
    # "-small" variant is about a quarter of it, so this is an upper bound), Depth Anything V2 Small, IP-Adapter
    # plus SDXL ViT-H with its ViT-H/14 image encoder, all random weights, float16, a 1024×1024 photo
    .venv/bin/python benchmarks/guides_cost.py --full --json out/guides.json

Per configuration, the denoising stage (control image / face embeds + UNet steps + VAE) is timed at two step
counts (strength 1, so every nominal step runs); the slope is the cost of ONE step and the intercept the fixed cost
per call (depth model, face detector, image encoder, VAE). On the CPU the clock is the process's own CPU time of
the whole call (prompt encoding then joins the intercept), so neighbours on a shared machine do not skew it.
Reported: per-step seconds and their ratio to no guide (the extra cost per step of each guide), the fixed cost per
call, and the medians behind them. No assertion: the figures are for people.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

CONFIGS = ("none", "structure", "identity", "both")

# Full-size guide architectures (random weights; nothing is downloaded).
# Depth Anything V2 Small (depth-anything/Depth-Anything-V2-Small-hf): DINOv2-S/14 backbone + DPT head.
DEPTH_SMALL_BACKBONE: dict[str, Any] = {
    "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
    "patch_size": 14, "image_size": 518, "out_features": ["stage3", "stage6", "stage9", "stage12"],
    "reshape_hidden_states": False,
}
DEPTH_SMALL: dict[str, Any] = {
    "reassemble_hidden_size": 384, "neck_hidden_sizes": [48, 96, 192, 384], "fusion_hidden_size": 64,
    "head_hidden_size": 32, "patch_size": 14, "depth_estimation_type": "relative",
    "reassemble_factors": [4, 2, 1, 0.5],
}
# h94/IP-Adapter models/image_encoder (config.json as published): OpenCLIP ViT-H/14 vision tower.
VIT_H_ENCODER: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
# ip-adapter-plus(-face)_sdxl_vit-h: a 16-query Resampler over ViT-H's hidden states, k/v on SDXL's 70 cross-attns.
ADAPTER_PLUS_VIT_H = {"encoder_hidden": 1280, "hidden": 1280, "heads": 20, "queries": 16}
# Published sizes the meta mode compares against: parameters from the files' sizes, and the model card's count.
PUBLISHED_PARAMS = {"image_encoder": 2_528_373_448 // 4,  # models/image_encoder/model.safetensors, float32
                    "ip_adapter": 848_000_000 // 2,  # ip-adapter-plus_sdxl_vit-h.safetensors, "848 MB", float16
                    "depth_model": 24_800_000,  # Depth Anything V2 Small: "24.8M"
                    "controlnet": 2_500_000_000 // 2}  # diffusers/controlnet-depth-sdxl-1.0: "2.5 GB" float16


def build_depth(device: str | torch.device = "cpu"):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    with torch.device(device):
        config = DepthAnythingConfig(backbone_config=Dinov2Config(**DEPTH_SMALL_BACKBONE), **DEPTH_SMALL)
        return DepthAnythingForDepthEstimation(config).eval()


def build_controlnet(unet_config: dict, device: str | torch.device = "cpu"):
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    with torch.device(device):
        return ControlNetModel.from_unet(unet, load_weights_from_unet=False).eval()


def build_image_encoder(device: str | torch.device = "cpu"):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device(device):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_ENCODER)).eval()


def print_meta() -> dict[str, Any]:
    """Parameter counts of the full-size guide architectures, built on the meta device."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    from pipeline.gpu.architectures import SDXL_BASE
    from pipeline.gpu.tiny_guides import attention_width

    SDXL_UNET_CONFIG = SDXL_BASE.unet

    counts: dict[str, Any] = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        projection = IPAdapterPlusImageProjection(embed_dims=1280, output_dims=2048, hidden_dims=1280, heads=20,
                                                  num_queries=16)
    kv = 0
    channels = SDXL_UNET_CONFIG["block_out_channels"]
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            kv += 2 * attention_width(name, channels) * SDXL_UNET_CONFIG["cross_attention_dim"]
    modules = {"controlnet": build_controlnet(SDXL_UNET_CONFIG, "meta"), "depth_model": build_depth("meta"),
               "image_encoder": build_image_encoder("meta")}
    for name, module in modules.items():
        counts[name] = {"params": sum(p.numel() for p in module.parameters())}
    counts["ip_adapter"] = {"params": sum(p.numel() for p in projection.parameters()) + kv}
    counts["unet"] = {"params": sum(p.numel() for p in unet.parameters())}
    print("full-size guide architectures on the meta device (no weights)")
    for name, c in counts.items():
        line = f"  {name:<14} {c['params']:>14,} params"
        if name in PUBLISHED_PARAMS:
            c["published_params"] = PUBLISHED_PARAMS[name]
            line += f"   published ≈ {c['published_params']:,}"
        if name == "controlnet":
            line += f"   ({c['params'] / counts['unet']['params']:.0%} of the UNet's: a copy of its encoder half)"
        print(line)
    return {"params": counts}


# -- models on disk --------------------------------------------------------------------------------------------


def write_full_guide_models(folder: Path, unet_config: dict, device: str) -> dict[str, Path]:
    """Full-size guide models (float16, random weights) into folder, once."""
    from diffusers import UNet2DConditionModel
    from transformers import DPTImageProcessor

    from pipeline.gpu import tiny_guides

    paths = {"controlnet": folder / "controlnet", "depth": folder / "depth", "encoder": folder / "image_encoder",
             "adapter": folder / "ip-adapter-plus_sdxl_vit-h-random.safetensors"}
    if (folder / "done.json").is_file():
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"building full-size guide models with random weights into {folder} …", flush=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    build_controlnet(unet_config, device).half().save_pretrained(str(paths["controlnet"]))
    build_depth(device).half().save_pretrained(str(paths["depth"]))
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(str(paths["depth"]))
    build_image_encoder(device).half().save_pretrained(str(paths["encoder"]))
    tiny_guides.write_ip_adapter_plus(paths["adapter"], unet, **ADAPTER_PLUS_VIT_H, dtype=torch.float16)
    (folder / "done.json").write_text("{}", encoding="utf-8")
    return paths


def guided_config(base_text: str, guides: dict[str, Path], which: str) -> str:
    """The benchmark config with the default style's guides switched on as ``which`` says."""
    import tomlkit

    doc = tomlkit.parse(base_text)
    style = doc["styles"][str(doc["pipeline"].get("default_style", "clay"))]
    if which in ("structure", "both"):
        style["structure"] = {"controlnet": str(guides["controlnet"]), "kind": "depth",
                              "depth_model": str(guides["depth"]), "scale": 0.8}
    if which in ("identity", "both"):
        # no face detector: the whole photo feeds the adapter, so it acts on every run (a detector that finds no
        # face would skip it); UltraFace RFB-320's own cost is a few MFLOPs
        style["identity"] = {"adapter": str(guides["adapter"]), "image_encoder": str(guides["encoder"]),
                             "scale": 0.6}
    return tomlkit.dumps(doc)


# -- measuring -------------------------------------------------------------------------------------------------


def measure(config_path: Path, photo, step_counts: tuple[int, int], repeats: int, device: torch.device) -> dict:
    """Median denoise seconds of one photo at each step count (strength 1), then slope and intercept."""
    from bot.config import load_config
    from pipeline.gpu.stylizer import Photo, Stylizer

    gpu = load_config(config_path).gpu()
    stylizer = Stylizer(gpu)
    style = gpu.pipeline.default_style
    tags = stylizer.tagger([photo])
    medians, ran = {}, {}
    for steps in step_counts:
        stylizer.set_steps(steps)
        progress: list[int] = []
        stylizer.run([Photo(photo, 0)], style=style, strength=1.0, tags=tags,  # untimed: lazy initialisation
                     on_step=lambda step, total, seen=progress: seen.append(step))
        ran[str(steps)] = len(progress)
        times = []
        for i in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                result = stylizer.run([Photo(photo, i)], style=style, strength=1.0, tags=tags)[0]
                torch.cuda.synchronize()
                times.append(result.timings["denoise"])
            else:
                # on a shared CPU, wall time measures the neighbours: count this process's own CPU time (one
                # math thread, see OMP_NUM_THREADS) of the whole call; prompt encoding is in the intercept
                started = time.process_time()
                stylizer.run([Photo(photo, i)], style=style, strength=1.0, tags=tags)
                times.append(time.process_time() - started)
        medians[steps] = statistics.median(times)
    (s1, t1), (s2, t2) = medians.items()
    per_step = (t2 - t1) / (s2 - s1)
    del stylizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"denoise_s": {str(k): v for k, v in medians.items()}, "steps_run": ran, "per_step_s": per_step,
            "fixed_s": t1 - per_step * s1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny models on the CPU (the default without a GPU)")
    mode.add_argument("--full", action="store_true", help="full-size models on CUDA (the default with one)")
    mode.add_argument("--meta", action="store_true", help="only the full-size guide architectures' sizes")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", default=None, help="two step counts, e.g. 4,12 (smoke) or 10,30 (full)")
    parser.add_argument("--models-dir", type=Path, default=Path("~/.cache/claybot-bench"))
    parser.add_argument("--tiny-models", type=Path,
                        help="smoke mode: pipeline.gpu.tiny's models here, written once and reused")
    args = parser.parse_args(argv)
    if not (args.smoke or args.full or args.meta):
        args.full, args.smoke = torch.cuda.is_available(), not torch.cuda.is_available()
    if args.meta:
        report = print_meta()
        _write(args.json, report)
        return 0
    if args.full and not torch.cuda.is_available():
        print("guides_cost: --full needs a CUDA GPU (try --smoke or --meta here)", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    import bench_models

    from pipeline.gpu.architectures import SDXL_BASE

    bench_models.quiet_libraries()
    device = torch.device("cuda" if args.full else "cpu")
    steps = tuple(int(s) for s in (args.steps or ("4,16" if args.smoke else "10,30")).split(","))
    repeats = args.repeats or (3 if args.smoke else 3)
    scratch = Path(tempfile.mkdtemp(prefix="claybot-guides-cost-"))
    try:
        if args.smoke:
            from pipeline.gpu.tiny import LORA_RANK

            tiny = bench_models.tiny_models(args.tiny_models or scratch / "models")
            models = bench_models.BenchModels(sdxl_folder=tiny.sdxl_folder, vae_folder=None, lora=tiny.lora_kohya,
                                              tagger_folder=tiny.tagger_folder, lora_rank=LORA_RANK, build_s=0.0)
            guides = {"controlnet": tiny.controlnet_folder, "depth": tiny.depth_folder,
                      "encoder": tiny.image_encoder_folder, "adapter": tiny.ip_adapter}
            # 256×256: 32×32 latents, big enough that a tiny step costs more than the timer's noise
            side, megapixels, dtype = 256, 0.0656, "float32"
        else:
            models = bench_models.write_full_models(args.models_dir)
            guides = write_full_guide_models(args.models_dir.expanduser() / "guides", SDXL_BASE.unet, "cuda")
            side, megapixels, dtype = 1024, 1.0, "float16"
        base = bench_models.bench_config_text((ROOT / "config.toml").read_text(encoding="utf-8"), models,
                                           device=device.type, dtype=dtype, steps=steps[0], megapixels=megapixels,
                                           switches={})
        photo = bench_models.bench_photo(side)
        runs: dict[str, Any] = {}

        def report_of(complete: bool) -> dict[str, Any]:
            none = runs["none"]["per_step_s"]
            return {"mode": "smoke" if args.smoke else "full", "complete": complete,
                    "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "versions": {name: metadata.version(name) for name in ("torch", "diffusers", "transformers")},
                    "photo": [side, side], "step_counts": list(steps), "repeats": repeats, "runs": runs,
                    "per_step_ratio_to_none": {k: v["per_step_s"] / none for k, v in runs.items()},
                    "notes": ["smoke: tiny random models on the CPU; the ratios are the tiny models', not SDXL's"]
                    if args.smoke else []}

        for which in CONFIGS:
            path = scratch / f"{which}.toml"
            path.write_text(guided_config(base, guides, which), encoding="utf-8")
            print(f"measuring guides: {which}", flush=True)
            runs[which] = measure(path, photo, steps, repeats, device)
            _write(args.json, report_of(complete=False), quiet=True)  # a run cut short later keeps this one
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    none = runs["none"]["per_step_s"]
    report = report_of(complete=True)
    print()
    print(f"guides' cost, {report['mode']} mode ({report['device']}, {side}×{side}, steps {steps[0]} and {steps[1]}, "
          f"median of {repeats})")
    print(f"  {'guides':<10} {'per step':>10} {'× none':>8} {'fixed/call':>11}")
    for which, run in runs.items():
        print(f"  {which:<10} {run['per_step_s'] * 1000:>8.1f}ms {run['per_step_s'] / none:>8.2f} "
              f"{run['fixed_s'] * 1000:>9.1f}ms")
    for note in report["notes"]:
        print(f"  note: {note}")
    _write(args.json, report)
    return 0


def _write(path: Path | None, report: dict, quiet: bool = False) -> None:
    """Write the report whole or not at all (a run killed mid-write leaves the previous one)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        partial.replace(path)
        if not quiet:
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
