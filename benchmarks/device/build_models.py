"""The GPU run kit's first step: write every model the later steps load, once, and say how long it took.

    python benchmarks/device/build_models.py --models-dir /tmp/claybot-models --json out/build.json          # GPU
    python benchmarks/device/build_models.py --smoke --models-dir /tmp/m --json /tmp/build.json             # CPU

Full size: benchmarks/gpu_speed.py's SDXL base + WD14 + LoRAs (~7.5 GB) and benchmarks/guides_cost.py's guide
models (~4.5 GB), random weights, float16, built on the GPU. Smoke: pipeline.gpu.tiny's models (guides included).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="pipeline.gpu.tiny's models, on the CPU")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    import bench_models
    import torch

    bench_models.quiet_libraries()
    folder = args.models_dir.expanduser()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if args.smoke:
        bench_models.tiny_models(folder / "tiny")
        seconds["tiny"] = time.perf_counter() - started
    else:
        if not torch.cuda.is_available():
            print("build_models: full-size models are built on a CUDA GPU (try --smoke here)", file=sys.stderr)
            return 2
        from guides_cost import write_full_guide_models

        from pipeline.gpu.architectures import SDXL_BASE

        bench_models.write_full_models(folder)
        seconds["sdxl_wd14_loras"] = time.perf_counter() - started
        begun = time.perf_counter()
        write_full_guide_models(folder / "guides", SDXL_BASE.unet, "cuda")
        seconds["guides"] = time.perf_counter() - begun
    report: dict[str, Any] = {"mode": "smoke" if args.smoke else "full",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "seconds": seconds, "total_s": time.perf_counter() - started, "bytes_on_disk": _size(folder)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"models in {folder}: {report['bytes_on_disk'] / 2**30:.2f} GiB, {report['total_s']:.1f} s "
          "(0 s to build where they were there already)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
