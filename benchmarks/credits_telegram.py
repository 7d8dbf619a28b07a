"""Credits on Telegram under load: Stars pre-checkout answers while a burst is queued, and what credits cost.

    .venv/bin/python benchmarks/credits_telegram.py [--users 50] [--requests 200] [--steps 2] [--config ...]

Runs the unmodified ``claybot run`` (chat process + pipeline worker) against the fake Bot API twice with the same
burst (``--requests`` captioned photos from ``--users`` people, as benchmarks/load_telegram.py posts them): once with
[credits] off, once on (free allowance large enough that the burst is admitted the same way). In the credits-on run,
while the photos are queued, people press Pay on Stars invoices: a pre_checkout_query every 0.25 s until the burst is
answered. Prints the pre-checkout answer latency (p50/p99/max; Telegram cancels at 10 s, the target is p99 <= 1 s),
the chat process's peak RSS in each run, and on/off ratios of the time to first acknowledgement and to the picture.
Exits 1 if a pre-checkout went unanswered or was refused, or a request was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tomlkit  # noqa: E402

from benchmarks.load_telegram import (  # noqa: E402
    REFUSALS,
    Request,
    _peak_rss_mb,
    classify,
    claybot_running,
    mixed_chats,
    write_config,
)
from tests.conftest import photo_bytes  # noqa: E402
from tests.fake_telegram import FakeTelegram, user  # noqa: E402

TOKEN = "555078:fake-telegram-token-credits-bench"
PACK = {"id": "small", "credits": 10, "stars": 50}
CHECKOUT_EVERY = 0.25  # seconds between two people pressing Pay
TARGET_P99 = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def with_credits(path: Path, per_person: int) -> None:
    """[credits] on, with one pack, and enough free credits a day that the burst is admitted as with it off."""
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    credits = tomlkit.table()
    credits["enabled"] = True
    credits["free_per_day"] = per_person
    packs = tomlkit.aot()
    pack = tomlkit.table()
    pack.update(PACK)
    packs.append(pack)
    credits["packs"] = packs
    doc["credits"] = credits
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


async def burst(template: Path, folder: Path, *, users: int, requests: int, steps: int | None, credits: bool,
                timeout: float = 900.0) -> dict:
    """One run: the burst, and (credits on) the pre-checkouts sent while it is queued."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    config = write_config(template, folder, fake, steps)
    if credits:
        with_credits(config, per_person=requests)
    queries: list[str] = []
    async with claybot_running(config, folder, fake) as process:
        people = [user(5000 + i, f"Person {i}") for i in range(users)]
        photo = photo_bytes((128, 96))
        started = time.monotonic()
        posted = []
        for i in range(requests):
            who = people[i % users]
            sent_at = time.monotonic()
            posted.append(Request(await fake.send_photo(mixed_chats(i, who, users), who, photo, caption="/clay"),
                                  sent_at))
        deadline = time.monotonic() + timeout
        next_check = time.monotonic()
        while time.monotonic() < deadline:
            classify(fake, posted)
            if all(r.outcome is not None for r in posted):
                break
            if credits and time.monotonic() >= next_check:
                buyer = people[len(queries) % users]
                invoice = {"currency": "XTR", "prices": [{"label": "10 credits", "amount": PACK["stars"]}],
                           "payload": f"pack:{PACK['id']}:{buyer['id']}"}
                queries.append(await fake.pre_checkout(buyer, invoice))
                next_check += CHECKOUT_EVERY
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)  # the last pre-checkouts' answers
        classify(fake, posted)
        peak = _peak_rss_mb(process.pid)
    answers = [fake.pre_checkout_answers.get(q) for q in queries]
    latencies = [a["at"] - fake.pre_checkout_asked[q] for q, a in zip(queries, answers, strict=True) if a]
    return {
        "outcomes": Counter(r.outcome or "lost" for r in posted),
        "lost": [r for r in posted if r.outcome not in ("image", *REFUSALS)],
        "acks": [min(c.at for c in r.answers) - r.sent_at for r in posted if r.answers],
        "pictures": [min(c.at for c in r.answers if c.method != "sendMessage") - r.sent_at for r in posted
                     if r.outcome == "image"],
        "rss": peak, "seconds": elapsed, "checkouts": len(queries), "latencies": latencies,
        "refused": sum(1 for a in answers if a and not a["ok"]), "unanswered": sum(1 for a in answers if not a),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per job (the chat side is measured)")
    parser.add_argument("--config", type=Path, default=None, help="default: tiny models in a temporary folder")
    args = parser.parse_args()
    from benchmarks.queue_overhead import ensure_config

    template = ensure_config(args.config)
    runs = {}
    for name, on in (("off", False), ("on", True)):
        folder = Path(tempfile.mkdtemp(prefix=f"claybot-credits-{name}-"))
        runs[name] = asyncio.run(burst(template, folder, users=args.users, requests=args.requests, steps=args.steps,
                                       credits=on))
        run = runs[name]
        print(f"credits {name}: {sum(run['outcomes'].values())} requests in {run['seconds']:.1f}s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(run["outcomes"].items()))
              + f"; chat process peak RSS {run['rss']:.1f} MB; first acknowledgement p50 "
              f"{percentile(run['acks'], 0.5) * 1000:.0f} ms; picture p50 {percentile(run['pictures'], 0.5):.1f} s")
    on, off = runs["on"], runs["off"]
    lat = on["latencies"]
    print(f"pre_checkout_query answers while the burst was queued: {on['checkouts']} sent, p50 "
          f"{percentile(lat, 0.5) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms, max "
          f"{max(lat, default=float('nan')) * 1000:.0f} ms (target p99 <= {TARGET_P99 * 1000:.0f} ms); refused "
          f"{on['refused']}, unanswered {on['unanswered']}")
    for what, key, q in (("first acknowledgement p50", "acks", 0.5), ("first acknowledgement p95", "acks", 0.95),
                         ("picture p50", "pictures", 0.5)):
        print(f"credits on/off, {what}: {percentile(on[key], q) / percentile(off[key], q):.2f}")
    print(f"credits on/off, chat process peak RSS: {on['rss'] / off['rss']:.2f}")
    bad = on["unanswered"] or on["refused"] or on["lost"] or off["lost"] or percentile(lat, 0.99) > TARGET_P99
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
