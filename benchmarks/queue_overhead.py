"""What the queue and the worker process cost, on the tiny models (CPU is fine). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/queue_overhead.py [--jobs 8] [--config tiny-models/config.toml]

1. N jobs one after another through LocalQueue + worker versus the same N bare diffusers ``pipe(...)`` calls in
   one process, side by side in one run → the overhead ratio (target ≤ 1.05).
2. 8 concurrent compatible jobs with max_batch 4 versus max_batch 1 → batched versus sequential throughput.
3. The chat side alone, in a fresh interpreter: import time of the queue and job types, and peak RSS after
   submitting and awaiting jobs (target ≤ 150 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.cli import ROOT_CONFIG, tiny_config_text  # noqa: E402
from bot.config import Config, load_config  # noqa: E402
from pipeline.core.intake import take_in  # noqa: E402
from pipeline.core.local import LocalQueue  # noqa: E402
from pipeline.gpu.prompt import plain_text  # noqa: E402


def sample_photo() -> bytes:
    """The repository's example photo."""
    return (ROOT / "examples" / "photo.jpg").read_bytes()


def ensure_config(path: Path | None) -> Path:
    """The given config, or tiny models written to a temporary folder."""
    if path is not None:
        return path
    from pipeline.gpu.tiny import write_tiny_models

    folder = Path(tempfile.mkdtemp(prefix="claybot-bench-"))
    tiny = write_tiny_models(folder)
    config = folder / "config.toml"
    config.write_text(tiny_config_text(ROOT_CONFIG.read_text(encoding="utf-8"), tiny), encoding="utf-8")
    return config


def bare_calls(config: Config, n: int, prompt: str, strength: float) -> float:
    """Seconds for n default diffusers img2img calls in this process (models loaded beforehand)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from pipeline.core.images import decode_photo, working_size

    p = config.pipeline
    pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(p.base_model, config=p.base_config,
                                                             local_files_only=True)
    pipe.load_lora_weights(config.styles["clay"].lora)
    pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    photo = decode_photo(sample_photo(), max_pixels=10**9)
    image = photo.resize(working_size(*photo.size, p.megapixels), Image.Resampling.LANCZOS)

    def call(seed: int) -> None:
        pipe(prompt=prompt, image=image, strength=strength, num_inference_steps=p.steps,
             guidance_scale=p.guidance_scale, generator=torch.Generator().manual_seed(seed)).images[0].save(
                 io.BytesIO(), format="PNG")

    call(0)  # warm-up, as the worker does
    started = time.perf_counter()
    for seed in range(n):
        call(seed)
    return time.perf_counter() - started


async def queued_calls(config: Config, n: int, strength: float, *, concurrent: bool,
                       max_batch: int) -> tuple[float, str]:
    """Seconds for n jobs through the local queue and worker (after the worker is ready), and the prompt used."""
    gpu = config.gpu()
    gpu = gpu.model_copy(update={"pipeline": gpu.pipeline.model_copy(update={"max_batch": max_batch})})
    queue = LocalQueue(gpu, config.queue.model_copy(update={"batch_window": 0.05 if concurrent else 0.0}))
    await queue.start()
    try:
        await queue.wait_ready(timeout=600)
        photo = sample_photo()
        started = time.perf_counter()
        if concurrent:
            handles = [await queue.submit(await take_in(queue.gpu, photo, seed=s, options={"strength": strength}))
                       for s in range(n)]
            results = await asyncio.gather(*(h.result(timeout=600) for h in handles))
        else:
            results = []
            for seed in range(n):
                handle = await queue.submit(await take_in(queue.gpu, photo, seed=seed, options={"strength": strength}))
                results.append(await handle.result(timeout=600))
        return time.perf_counter() - started, results[-1].prompt
    finally:
        await queue.close(grace=5)


CHAT_SIDE = textwrap.dedent("""
    import time
    started = time.perf_counter()
    from pipeline.core.intake import take_in
    from pipeline.core.local import LocalQueue
    from bot.config import load_config
    import_s = time.perf_counter() - started
    import asyncio, json, resource, sys

    async def main():
        config = load_config(sys.argv[1])
        queue = LocalQueue(config.gpu(), config.queue)
        await queue.start()
        photo = open(sys.argv[2], "rb").read()
        handles = [await queue.submit(await take_in(queue.gpu, photo, seed=s)) for s in range(int(sys.argv[3]))]
        await asyncio.gather(*(h.result(timeout=600) for h in handles))
        await queue.close()

    asyncio.run(main())
    # VmHWM is this process's own peak; ru_maxrss would carry over the parent's peak across fork+exec.
    try:
        peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"import_s": import_s, "peak_rss_mb": peak_kb / 1024,
                      "gpu_libraries_loaded": [m for m in ("torch", "diffusers", "onnxruntime") if m in sys.modules]}))
""")


def chat_side(config_path: Path, n: int) -> dict:
    """Import time and peak RSS of a process that only submits and awaits jobs."""
    out = subprocess.run([sys.executable, "-c", CHAT_SIDE, str(config_path), str(ROOT / "examples" / "photo.jpg"),
                          str(n)], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--config", type=Path, default=None, help="default: fresh tiny models")
    args = parser.parse_args()
    config_path = ensure_config(args.config)
    config = load_config(config_path)
    strength = config.styles["clay"].default_strength

    queued, prompt = asyncio.run(queued_calls(config, args.jobs, strength, concurrent=False, max_batch=1))
    # The bare call gets the same words (diffusers' own encoder reads no weights), so both encode alike.
    bare = bare_calls(config, args.jobs, plain_text(prompt), strength)
    batched, _ = asyncio.run(queued_calls(config, 8, strength, concurrent=True, max_batch=4))
    sequential, _ = asyncio.run(queued_calls(config, 8, strength, concurrent=True, max_batch=1))
    chat = chat_side(config_path, 4)

    print(f"config: {config_path}  (steps {config.pipeline.steps}, strength {strength}, "
          f"{config.pipeline.megapixels} MP)")
    print(f"{args.jobs} jobs one after another:")
    print(f"  bare diffusers pipe() calls   {bare:7.2f} s   {bare / args.jobs * 1000:7.1f} ms/job")
    print(f"  queue + worker process        {queued:7.2f} s   {queued / args.jobs * 1000:7.1f} ms/job")
    print(f"  overhead ratio                {queued / bare:7.3f}   (target ≤ 1.05; includes tagging and "
          "weighted prompt encoding the bare call does not do)")
    print("8 concurrent compatible jobs:")
    print(f"  max_batch 1 (one at a time)   {sequential:7.2f} s   {8 / sequential:6.2f} jobs/s")
    print(f"  max_batch 4 (batched)         {batched:7.2f} s   {8 / batched:6.2f} jobs/s")
    print(f"  batched speed-up              {sequential / batched:7.2f}×")
    print("chat side (fresh interpreter, 4 jobs submitted and awaited):")
    print(f"  import of queue + job types   {chat['import_s'] * 1000:7.1f} ms")
    print(f"  peak RSS                      {chat['peak_rss_mb']:7.1f} MB   (target ≤ 150 MB)")
    print(f"  GPU libraries imported        {chat['gpu_libraries_loaded'] or 'none'}")


if __name__ == "__main__":
    main()
