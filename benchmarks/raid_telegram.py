"""Raid benchmark: many big photos at once into one Telegram group, against the real `claybot run` (tiny models).

    .venv/bin/python benchmarks/raid_telegram.py [--photos 60] [--mb 17] [--budget-mb N] [--max-queue N]

The load test's machinery (benchmarks/load_telegram.py: our fake Bot API server, the unmodified `claybot run`,
the classification of answers) with a different burst: ``--photos`` people each post one photo of about ``--mb``
MB (random pixels stored as PNG, so it cannot shrink) with the caption /clay, all into one group. The limits are
off so every photo is let through to the download: the worst case for the chat process's memory, which
``bot.photo_budget_mb`` must bound. Prints how the requests ended, the chat process's peak memory (VmHWM), the time
to the first acknowledgement and to the picture (p50/p95), and the most photo bytes it held at once. Exits 1 if
a request was lost, answered twice or answered with anything but a picture or a clear "busy".
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_telegram import Report, run_load  # noqa: E402
from PIL import Image  # noqa: E402

from tests.fake_telegram import group_chat  # noqa: E402

NO_LIMITS = {"user_per_minute": 0, "user_per_hour": 0, "chat_per_minute": 0, "chat_per_hour": 0, "user_queued": 0}
RAID_GROUP = group_chat(-1009000, "Raided group")


def big_photo(mb: float) -> bytes:
    """A PNG of random pixels of about ``mb`` MB (incompressible, so the file is as big as its pixels)."""
    side = max(8, int((mb * 2**20 / 3) ** 0.5))
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


def in_the_group(i: int, who: dict, users: int) -> dict:
    """Every photo of the raid goes to the same group."""
    return RAID_GROUP


async def run_raid(config_template: Path, folder: Path, *, photos: int, mb: float, budget_mb: float | None = None,
                   max_photo_mb: float | None = None, max_queue: int | None = None, steps: int | None = 2,
                   timeout: float = 900.0) -> Report:
    """Post ``photos`` photos of ``mb`` MB at once from as many people into one group; wait for every answer."""
    bot: dict[str, object] = {}
    if max_photo_mb is not None:
        bot["max_photo_mb"] = max_photo_mb
    if budget_mb is not None:
        bot["photo_budget_mb"] = budget_mb
    changes: dict[str, dict[str, object]] = {"limits": dict(NO_LIMITS), "bot": bot}
    if max_queue is not None:
        changes["queue"] = {"max_queue": max_queue}
    return await run_load(config_template, folder, users=photos, requests=photos, steps=steps, timeout=timeout,
                          photo=big_photo(mb), changes=changes, chat_of=in_the_group)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--mb", type=float, default=17.0, help="size of each photo in MB")
    parser.add_argument("--budget-mb", type=float, default=None, help="bot.photo_budget_mb; default: the config's")
    parser.add_argument("--max-queue", type=int, default=None, help="queue.max_queue; default: the config's")
    parser.add_argument("--config", type=Path, default=None, help="default: tiny models in a temporary folder")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per job (the chat side is measured)")
    args = parser.parse_args()
    from queue_overhead import ensure_config

    config = ensure_config(args.config)
    folder = Path(tempfile.mkdtemp(prefix="claybot-raid-"))
    report = asyncio.run(run_raid(config, folder, photos=args.photos, mb=args.mb, budget_mb=args.budget_mb,
                                  max_queue=args.max_queue, steps=args.steps))
    print(f"raid: {args.photos} photos of {args.mb:g} MB at once into one group")
    print("\n".join(report.lines()))
    print(f"(claybot's log: {folder / 'claybot.log'})")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
