"""Busy-group benchmark: Telegram's flood limit in one group, against the real `claybot run` (tiny models).

    .venv/bin/python benchmarks/busy_group.py [--photos 15] [--spam 20] [--scale 1.0]

Our fake Bot API server answers a group's messages past 20 a minute (sends and edits) with Telegram's 429 and its
``retry_after``, and does not post them. Into one group, one person first sends ``--spam`` commands that ask for no
picture (/help, /clay abc, a bare /animate), then ``--photos`` people each post a photo captioned /clay (inside the
shipped ``chat_per_minute = 15``). ``--scale`` shrinks Telegram's minute (and claybot's group window, status edit
interval and help-reply gap with it): 0.25 plays the same scene in a quarter of the time. Prints the photos
answered, lost and marked answered in the journal although no picture reached the group, the replies the spammer
got, the 429s, and the time from the first photo to the last picture. Exits 1 if a photo was lost or wrongly marked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tomlkit  # noqa: E402
from load_telegram import TOKEN, claybot_running, write_config  # noqa: E402

from tests.conftest import photo_bytes  # noqa: E402
from tests.fake_telegram import FakeTelegram, group_chat, user  # noqa: E402

TELEGRAM_PER_MINUTE = 20  # what Telegram lets a bot send in one group in a minute
SPAM = ("/help", "/clay abc", "/animate")
PICTURES = ("sendPhoto", "sendDocument")
BUSY_GROUP = group_chat(-1009100, "Busy group")


async def run_busy_group(config_template: Path, folder: Path, *, photos: int = 15, spam: int = 20,
                         scale: float = 1.0, limit: int = TELEGRAM_PER_MINUTE, steps: int | None = 2,
                         timeout: float = 600.0) -> dict[str, float]:
    """Spam, then photos, into one flood-limited group (``limit`` messages a minute: below claybot's budget, Telegram
    is stricter than claybot knows and answers 429s); wait for every picture (or ``timeout``); the figures."""
    minute = 60.0 * scale
    fake = FakeTelegram(TOKEN, flood_limit=limit, flood_window=minute)
    await fake.start()
    telegram = {"group_window": minute, "status_edit_interval": max(0.1, 3.0 * scale), "reply_gap": 30.0 * scale}
    known = tomlkit.parse(config_template.read_text(encoding="utf-8"))["telegram"]
    telegram = {key: value for key, value in telegram.items() if key in known}  # an older claybot: before / after
    config = write_config(config_template, folder, fake, steps, {"telegram": telegram})
    async with claybot_running(config, folder, fake):
        spammer = user(6000, "Spammer")
        commands = [await fake.send_text(BUSY_GROUP, spammer, SPAM[i % len(SPAM)]) for i in range(spam)]
        picture = photo_bytes((128, 96))
        started = time.monotonic()
        posted = [await fake.send_photo(BUSY_GROUP, user(6001 + i, f"Person {i}"), picture, caption="/clay")
                  for i in range(photos)]
        wanted = {photo["message_id"] for photo in posted}

        def answered() -> dict[int, float]:  # photo → when its picture reached the group
            got: dict[int, float] = {}
            for call in fake.calls:
                if call.method in PICTURES and call.result is not None and call.reply_to in wanted:
                    got.setdefault(call.reply_to, call.at)
            return got

        deadline = time.monotonic() + timeout
        while len(answered()) < photos and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let the journal write its last answers

    got = answered()
    asked = {message["message_id"] for message in commands}
    spam_replies = sum(1 for c in fake.calls if c.result is not None and c.reply_to in asked)
    with sqlite3.connect(folder / "data" / "claybot.sqlite3") as db:
        rows = db.execute("SELECT answer_to, state, outcome FROM jobs WHERE chat_id = ?",
                          (str(BUSY_GROUP["id"]),)).fetchall()
    journal = {json.loads(answer_to)["message_id"]: (state, outcome) for answer_to, state, outcome in rows}
    marked_unsent = sum(1 for message_id, (state, outcome) in journal.items()
                        if state == "answered" and outcome == "image" and message_id not in got)
    return {
        "photos": photos, "answered": len(got), "lost": photos - len(got), "marked_answered_unsent": marked_unsent,
        "left_for_a_restart": sum(1 for state, _ in journal.values() if state != "answered"),
        "spam": spam, "spam_replies": spam_replies, "refused_429": len(fake.flooded()),
        "last_picture_s": max(got.values(), default=started) - started, "minute_s": minute, "limit": limit,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=15)
    parser.add_argument("--spam", type=int, default=20, help="commands from one person that ask for no picture")
    parser.add_argument("--scale", type=float, default=1.0, help="Telegram's minute × this (0.25: 15 s)")
    parser.add_argument("--limit", type=int, default=TELEGRAM_PER_MINUTE,
                        help="messages a minute the fake Telegram takes in a group (claybot's budget stays 20)")
    parser.add_argument("--config", type=Path, default=None, help="default: tiny models in a temporary folder")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per job (the chat side is measured)")
    args = parser.parse_args()
    from queue_overhead import ensure_config

    config = ensure_config(args.config)
    folder = Path(tempfile.mkdtemp(prefix="claybot-busy-group-"))
    figures = asyncio.run(run_busy_group(config, folder, photos=args.photos, spam=args.spam, scale=args.scale,
                                         limit=args.limit, steps=args.steps))
    print(f"busy group: {args.spam} spam commands from one person, then {args.photos} photos; Telegram refuses "
          f"past {figures['limit']} messages per {figures['minute_s']:g} s")
    print(f"photos answered {figures['answered']}/{figures['photos']}, lost {figures['lost']}, marked answered "
          f"but unsent {figures['marked_answered_unsent']}, left unanswered for a restart "
          f"{figures['left_for_a_restart']}")
    print(f"spammer's replies {figures['spam_replies']}/{figures['spam']}; messages Telegram refused (429) "
          f"{figures['refused_429']}; first photo to last picture {figures['last_picture_s']:.1f} s")
    print(f"(claybot's log: {folder / 'claybot.log'})")
    return 1 if figures["lost"] or figures["marked_answered_unsent"] else 0


if __name__ == "__main__":
    sys.exit(main())
