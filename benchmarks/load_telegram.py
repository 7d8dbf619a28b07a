"""Load test: many people at once through Telegram, against the real `claybot run` on the tiny models.

    .venv/bin/python benchmarks/load_telegram.py [--users 50] [--requests 200] [--config tiny-models/config.toml]

Starts our fake Bot API server on 127.0.0.1 and the unmodified ``claybot run`` (chat process + pipeline worker) with
the config's limits, then has ``--users`` people post ``--requests`` captioned photos together: each in their own
private chat and in a few shared groups. Every request must end with exactly one answer: its picture, or a clear
"busy" / "rate limited" line. Prints how they ended, the chat process's peak memory (VmHWM: the worker is a
process of its own) and the time from each photo to its first acknowledgement (p50/p95/max). Exits 1 if a request
was lost, answered twice, or answered with anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tomlkit  # noqa: E402

from tests.conftest import photo_bytes  # noqa: E402
from tests.fake_telegram import Call, FakeTelegram, group_chat, private_chat, user  # noqa: E402

TOKEN = "555077:fake-telegram-token-load-test"
CLAYBOT = Path(sys.executable).parent / "claybot"
GROUPS = 5
# The clear refusals a person may get under load, from bot.journal, pipeline.core.jobs.busy_message and
# bot.budget.BUDGET_BUSY.
REFUSALS = {
    "rate_limited": re.compile(r"asked for \d+ pictures in the last (minute|hour); please ask again in \d+"),
    "queue_cap": re.compile(r"^You already have \d+ photos? waiting or being made"),
    "busy": re.compile(r"^I'm busy: \d+ photos are already waiting"),
    "budget_busy": re.compile(r"^Lots of photos are on their way to me right now"),
}
IN_PROGRESS = ("Got it", "Queued", "Waiting", "Sculpting")  # status lines before the answer


@dataclass(eq=False)  # each request is itself (hashable by identity)
class Request:
    """One photo posted, and what came back for it."""

    message: dict
    sent_at: float
    outcome: str | None = None
    answers: list[Call] = field(default_factory=list)
    last_words: str = ""  # the latest text the bot showed for it


@dataclass
class Report:
    """How the requests ended, and the figures."""

    outcomes: Counter
    problems: list[str]
    examples: dict[str, str]  # outcome → what one such person read
    ack_seconds: list[float]
    peak_rss_mb: float
    seconds: float
    picture_seconds: list[float] = field(default_factory=list)  # from each photo to its picture
    photos_held_mb: tuple[float, float] | None = None  # (most held at once, the budget), from the chat's log

    def percentile(self, q: float, seconds: list[float] | None = None) -> float:
        ordered = sorted(self.ack_seconds if seconds is None else seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def lines(self) -> list[str]:
        n = sum(self.outcomes.values())
        return [
            f"requests: {n} in {self.seconds:.1f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"chat process peak RSS (VmHWM): {self.peak_rss_mb:.1f} MB",
            f"time to first acknowledgement: p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p95 {self.percentile(0.95) * 1000:.0f} ms, max {max(self.ack_seconds, default=0) * 1000:.0f} ms",
            f"time to the picture: p50 {self.percentile(0.5, self.picture_seconds):.1f} s, "
            f"p95 {self.percentile(0.95, self.picture_seconds):.1f} s",
            "photos held by the chat process at once: " + (
                f"at most {self.photos_held_mb[0]:.1f} MB (budget {self.photos_held_mb[1]:g} MB)"
                if self.photos_held_mb else "not logged"),
            "problems: " + ("; ".join(self.problems[:10]) if self.problems else "none"),
            *(f"  {outcome}: {text!r}" for outcome, text in sorted(self.examples.items())),
        ]


def write_config(template: Path, folder: Path, fake: FakeTelegram, steps: int | None = None,
                 changes: dict[str, dict[str, object]] | None = None) -> Path:
    """The config with the fake server's URLs and a fresh data folder (its limits are the ones under test);
    ``steps`` makes each job cheaper when only the chat side is of interest; ``changes``: {table: {key: value}}."""
    doc = tomlkit.parse(template.read_text(encoding="utf-8"))
    if steps is not None:
        doc["pipeline"]["steps"] = steps
    for table, values in (changes or {}).items():
        for key, value in values.items():
            doc[table][key] = value
    doc["bot"]["data_dir"] = str(folder / "data")
    doc["telegram"]["api_base_url"] = fake.api_base_url
    doc["telegram"]["file_base_url"] = fake.file_base_url
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def stop_claybot(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, as an operator stops `claybot run`; killed if it has not stopped within 90 s."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 90)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def claybot_running(config: Path, folder: Path, fake: FakeTelegram) -> AsyncIterator[asyncio.subprocess.Process]:
    """`claybot run` on ``config`` (Telegram only, with the fake's token; its log in ``folder``/claybot.log), polling
    ``fake``; on the way out stopped as an operator stops it (``stop_claybot``), and the fake server closed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAYBOT_TELEGRAM_TOKEN": fake.token}
    env.pop("CLAYBOT_DISCORD_TOKEN", None)
    with (folder / "claybot.log").open("w") as log:
        process = await asyncio.create_subprocess_exec(CLAYBOT, "run", "--config", str(config), env=env, stdout=log,
                                                       stderr=log)
        try:
            await fake.wait_for(lambda call: call.method == "getUpdates", timeout=180)
            yield process
        finally:
            await stop_claybot(process)
            await fake.close()


def _peak_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def classify(fake: FakeTelegram, requests: list[Request]) -> None:
    """Each request's answers so far: pictures replying to it, and the last words of its status / text reply."""
    by_message = {(r.message["chat"]["id"], r.message["message_id"]): r for r in requests}
    for r in requests:
        r.answers = []
    texts: dict[tuple[int, int], str] = {}  # (chat, bot message) → its latest text
    owners: dict[tuple[int, int], Request] = {}
    for call in fake.calls:
        if call.error is not None or call.result is None:  # refused, or not answered yet
            continue
        chat = call.params.get("chat_id")
        chat = int(chat) if chat is not None else None
        if call.method in ("sendPhoto", "sendDocument", "sendMessage") and call.reply_to is not None:
            request = by_message.get((chat, call.reply_to))
            if request is None:
                continue
            request.answers.append(call)
            if call.method == "sendMessage":
                key = (chat, call.result["message_id"])
                texts[key], owners[key] = call.params["text"], request
        elif call.method == "editMessageText":
            key = (chat, int(call.params["message_id"]))
            if key in texts:
                texts[key] = call.params["text"]
    last_words = {owners[key]: text for key, text in texts.items()}
    for r in requests:
        pictures = [c for c in r.answers if c.method != "sendMessage"]
        if pictures:
            r.outcome = "image" if len(pictures) == 1 else "twice"
            continue
        text = r.last_words = last_words.get(r, "")
        r.outcome = next((name for name, pattern in REFUSALS.items() if pattern.search(text)), None)
        if r.outcome is None and text and not text.startswith(IN_PROGRESS):
            r.outcome = f"other: {text[:80]}"


def mixed_chats(i: int, who: dict, users: int) -> dict:
    """Request ``i``'s chat: each person's private chat first, then the shared groups, in turns."""
    return private_chat(who) if (i // users) % 2 == 0 else group_chat(-1005000 - i % GROUPS, f"Group {i % GROUPS}")


async def run_load(config_template: Path, folder: Path, *, users: int, requests: int, steps: int | None = None,
                   timeout: float = 600.0, photo: bytes | None = None,
                   changes: dict[str, dict[str, object]] | None = None,
                   chat_of: Callable[[int, dict, int], dict] = mixed_chats) -> Report:
    """Start `claybot run` against the fake server, post the photos together (``photo``: default a small JPEG),
    wait for every answer. ``changes`` go into the config; ``chat_of(i, person, users)``: where request i is posted."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = write_config(config_template, folder, fake, steps, changes)
    async with claybot_running(config, folder, fake) as process:
        people = [user(5000 + i, f"Person {i}") for i in range(users)]
        photo = photo if photo is not None else photo_bytes((128, 96))
        started = time.monotonic()
        posted: list[Request] = []
        for i in range(requests):  # all posted before the bot could answer many: "at once"
            who = people[i % users]
            sent_at = time.monotonic()
            message = await fake.send_photo(chat_of(i, who, users), who, photo, caption="/clay")
            posted.append(Request(message, sent_at))

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            classify(fake, posted)
            if all(r.outcome is not None for r in posted):
                break
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        await asyncio.sleep(3.0)  # anything answered twice would come now
        classify(fake, posted)
        peak = _peak_rss_mb(process.pid)

    outcomes = Counter(r.outcome or "lost" for r in posted)
    problems = [f"message {r.message['message_id']}: {r.outcome or 'no answer'}" for r in posted
                if r.outcome not in ("image", *REFUSALS)]
    acks = [min(c.at for c in r.answers) - r.sent_at for r in posted if r.answers]
    pictures = [min(c.at for c in r.answers if c.method != "sendMessage") - r.sent_at for r in posted
                if r.outcome == "image"]
    log_text = (folder / "claybot.log").read_text()
    if TOKEN in log_text:
        problems.append("the token reached the log")
    examples = {r.outcome: r.last_words for r in posted if r.outcome and r.last_words}
    held = re.search(r"photos held at once: at most ([\d.]+) MB \(bot.photo_budget_mb = ([\d.]+)\)", log_text)
    return Report(outcomes, problems, examples, acks, peak, elapsed, pictures,
                  (float(held.group(1)), float(held.group(2))) if held else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--config", type=Path, default=None, help="default: tiny models in a temporary folder")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per job; default: the config's")
    args = parser.parse_args()
    import tempfile

    from benchmarks.queue_overhead import ensure_config

    config = ensure_config(args.config)
    folder = Path(tempfile.mkdtemp(prefix="claybot-load-"))
    report = asyncio.run(run_load(config, folder, users=args.users, requests=args.requests, steps=args.steps))
    print("\n".join(report.lines()))
    print(f"(claybot's log: {folder / 'claybot.log'})")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
