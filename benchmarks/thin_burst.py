"""Hostile-photo burst: peak memory of the chat process and of the worker while a burst of thin, deep and
palette-bombed photos goes through the real local queue and worker (tiny models; CPU is fine). Prints figures.

    .venv/bin/python benchmarks/thin_burst.py [--copies 4] [--config tiny-models/config.toml] [--past-the-header]

Each of ``--copies`` rounds submits, all at once: a 30000×40 and a 200000×8 PNG (a few KB each), a 16-bit
greyscale PNG and a 1-bit palette PNG of 40 MP each (75 KB and 5 KB), an animated GIF of 200 frames and an 8:1
photo; the chat process also makes the Discord result's copy of every photo (bot.discord_photos.source_copy), as the
Discord front end does. ``--past-the-header`` turns the chat side's header check off, as in a chat process from
before the aspect bound, so the worker meets the thin photos too. The line to read:

    thin burst: N photos, outcomes {...}; chat process peak +X MB (VmHWM A → B); worker peak +Y MB (C → D);
    worker pid unchanged: True

(Before issue 13: a 30000×40 PNG took the worker to ~4 GB and 100 s, 200000×8 to ~24 GB, and one 16-bit 40 MP PNG
took the chat process to 1.1 GB.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from queue_overhead import ensure_config  # noqa: E402

from bot.config import load_config  # noqa: E402
from bot.discord_photos import source_copy  # noqa: E402
from pipeline.core.intake import take_in  # noqa: E402
from pipeline.core.jobs import Done, Failed, JobFailed  # noqa: E402
from pipeline.core.local import LocalQueue  # noqa: E402
from tests import hostile_photos  # noqa: E402


def high_water_mb(pid: int | str = "self") -> float:
    """VmHWM of a process: the most resident memory it ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst_photos() -> dict[str, bytes]:
    """The hostile photos of one round."""
    return {
        "thin 30000x40": hostile_photos.thin(30000, 40),
        "thin 200000x8": hostile_photos.thin(200000, 8),
        "16-bit 40MP": hostile_photos.deep_grey(),
        "palette 40MP": hostile_photos.palette_bomb(),
        "GIF 200 frames": hostile_photos.animated_gif(),
        "8:1": hostile_photos.thin(800, 100),
    }


async def one(queue: LocalQueue, name: str, data: bytes, max_input_pixels: int) -> str:
    """Submit one photo, wait for its answer, then make its Discord copy; its outcome's name."""
    try:
        handle = await queue.submit(await take_in(queue.gpu, data))
    except JobFailed as err:  # refused at intake from its header
        return f"{name}: {err.kind.value}"
    final = None
    async for event in handle.events():
        final = event if isinstance(event, Done | Failed) else final
    await asyncio.to_thread(source_copy, data, 2_500_000, max_input_pixels=max_input_pixels)
    return f"{name}: {'done' if isinstance(final, Done) else final.kind.value}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--past-the-header", action="store_true", help="skip the chat side's header check")
    args = parser.parse_args()

    config = load_config(ensure_config(args.config))
    if args.past_the_header:
        import pipeline.core.intake as intake

        intake.probe_photo = lambda data, max_pixels: (128, 96)
    queue = LocalQueue(config.gpu(), config.queue.model_copy(update={"batch_window": 0.0}))
    await queue.start()
    try:
        info = await queue.wait_ready(timeout=300)
        pid = info["pid"]
        photos = burst_photos()
        chat_before, worker_before = high_water_mb(), high_water_mb(pid)
        max_input_pixels = int(config.pipeline.max_input_megapixels * 1e6)
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(queue, name, data, max_input_pixels)
                                          for _ in range(args.copies) for name, data in photos.items()))
        seconds = time.perf_counter() - started
        chat_after, worker_after = high_water_mb(), high_water_mb(queue.worker_info["pid"])
        counts = dict(sorted(Counter(outcomes).items()))
        print(f"thin burst: {len(outcomes)} photos in {seconds:.1f}s, outcomes {counts}")
        print(f"thin burst: chat process peak +{chat_after - chat_before:.0f} MB (VmHWM {chat_before:.0f} → "
              f"{chat_after:.0f} MB); worker peak +{worker_after - worker_before:.0f} MB ({worker_before:.0f} → "
              f"{worker_after:.0f} MB); worker pid unchanged: {queue.worker_info['pid'] == pid}; "
              f"worker starts: {queue.stats.worker_starts}")
    finally:
        await queue.close(grace=5)


if __name__ == "__main__":
    asyncio.run(main())
