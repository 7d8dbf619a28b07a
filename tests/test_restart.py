"""`claybot run` (local backend) killed with jobs in flight and started again answers every one of them, once.

The chat process is SIGKILLed, as a crash or an OOM kill would: nothing of it runs on the way down. What it had
accepted is in its SQLite journal; the pipeline worker died with it. Telegram (our fake, which keeps unconfirmed
updates as the real one does) delivers again what the dead process had fetched but not confirmed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import tomlkit
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import kill_if_running, photo_bytes, stop_cleanly
from tests.fake_telegram import FakeTelegram, private_chat, user

CLAYBOT = Path(sys.executable).parent / "claybot"
TOKEN = "555010:fake-telegram-token-restart-test"
PHOTO = photo_bytes((128, 96))
PEOPLE = [user(3001 + i, f"Person {i}") for i in range(4)]


def _config(tiny_config_path: Path, folder: Path, telegram: FakeTelegram) -> Path:
    doc = tomlkit.parse(tiny_config_path.read_text(encoding="utf-8"))
    doc["bot"]["data_dir"] = str(folder / "data")
    doc["telegram"]["api_base_url"] = telegram.api_base_url
    doc["telegram"]["file_base_url"] = telegram.file_base_url
    doc["pipeline"]["steps"] = 150  # slower jobs (about a second), so some are still waiting when the process dies
    doc["queue"]["batch_window"] = 0.0
    doc["pipeline"]["max_batch"] = 1
    doc["bot"]["log_format"] = "json"
    doc["metrics"]["enabled"] = True
    doc["metrics"]["port"] = 0  # any free port; the log says which
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def _start(config: Path, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAYBOT_TELEGRAM_TOKEN": TOKEN}
    env.pop("CLAYBOT_DISCORD_TOKEN", None)
    with log.open("a") as out:
        return await asyncio.create_subprocess_exec(CLAYBOT, "run", "--config", str(config), env=env,
                                                    stdout=out, stderr=out)


def _pictures(telegram: FakeTelegram, message: dict) -> list:
    return [call for call in telegram.calls_to("sendPhoto", "sendDocument")
            if call.reply_to == message["message_id"] and call.params["chat_id"] == message["chat"]["id"]]


async def test_a_killed_chat_process_answers_its_accepted_jobs_after_a_restart(tiny_config_path, tmp_path):
    telegram = FakeTelegram(TOKEN)
    await telegram.start()
    config = _config(tiny_config_path, tmp_path, telegram)
    log = tmp_path / "claybot.log"
    process = await _start(config, log)
    try:
        await telegram.wait_for(lambda call: call.method == "getUpdates", timeout=120)
        sent = [await telegram.send_photo(private_chat(who), who, PHOTO, caption="/clay") for who in PEOPLE]
        statuses = {}
        for message in sent:  # each accepted and queued: its status line is out, and edited to its position
            status = await telegram.wait_for(lambda call, m=message: call.method == "sendMessage"
                                             and call.reply_to == m["message_id"], answered=True, timeout=120)
            statuses[message["message_id"]] = status.result["message_id"]
            await telegram.wait_for(lambda call, s=status: call.method in ("editMessageText", "deleteMessage")
                                    and call.params["message_id"] == s.result["message_id"], timeout=120)
        await asyncio.sleep(0.5)  # the journal notes each status message just after it is sent
        process.send_signal(signal.SIGKILL)
        await process.wait()
        killed_at = len(telegram.calls)
        unanswered = [m for m in sent if not _pictures(telegram, m)]
        assert unanswered, "every job finished before the kill: the test proves nothing"

        process = await _start(config, log)
        for message in sent:
            await telegram.wait_for(lambda call, m=message: call in _pictures(telegram, m), timeout=180)
        await asyncio.sleep(3)  # anything sent twice would come now

        for message in sent:
            pictures = _pictures(telegram, message)
            assert len(pictures) == 1, f"photo {message['message_id']} got {len(pictures)} pictures"
            image = Image.open(io.BytesIO(next(iter(pictures[0].files.values()))))
            assert image.format == "PNG"
        after = {call.reply_to for call in telegram.calls[killed_at:] if call.method in ("sendPhoto", "sendDocument")}
        assert after == {m["message_id"] for m in unanswered}  # the restarted process answered exactly those
        # ... and removed the status lines the dead process had left under those photos.
        deleted = {call.params["message_id"] for call in telegram.calls[killed_at:] if call.method == "deleteMessage"}
        assert {statuses[m["message_id"]] for m in unanswered} <= deleted

        # The log: one JSON object per line; the restarted process's lines about recovered jobs name the job.
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        recovered = [line for line in lines if "submitted again as" in line["message"]]
        assert len(recovered) == len(unanswered) and all(line["job_id"] for line in recovered)
        # The metrics endpoint of the running process, on loopback.
        url = [re.search(r"http://127\.0\.0\.1:\d+/metrics", line["message"]).group(0) for line in lines
               if line["message"].startswith("metrics at ")][-1]  # the restarted process's
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        assert families["claybot_workers_alive"].samples[0].value == 1
        assert families["claybot_queue_waiting"].samples[0].value == 0

        # `claybot status` counts the day's requests from the journal: four pictures, none lost.
        status = await asyncio.create_subprocess_exec(CLAYBOT, "status", "--config", str(config),
                                                      stdout=asyncio.subprocess.PIPE)
        out, _ = await status.communicate()
        assert "requests in the last 24 h: 4 image" in out.decode()

        assert await stop_cleanly(process) == 0
    finally:
        await kill_if_running(process)
        await telegram.close()
    assert TOKEN not in log.read_text()
