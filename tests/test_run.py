"""`claybot run`, unmodified, as an operator starts it: both front ends against our fake platforms on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import tomlkit
from PIL import Image

from tests.conftest import kill_if_running, photo_bytes, stop_cleanly
from tests.fake_discord import FakeDiscord
from tests.fake_telegram import FakeTelegram, private_chat, user

CLAYBOT = Path(sys.executable).parent / "claybot"
TELEGRAM_TOKEN = "555009:fake-telegram-token-run-test"
DISCORD_TOKEN = "fake-discord-token.for.run-test"
PHOTO = photo_bytes((128, 96))


def _config(tiny_config_path: Path, folder: Path, telegram: FakeTelegram, discord: FakeDiscord) -> Path:
    doc = tomlkit.parse(tiny_config_path.read_text(encoding="utf-8"))
    doc["bot"]["data_dir"] = str(folder / "data")
    doc["telegram"]["api_base_url"] = telegram.api_base_url
    doc["telegram"]["file_base_url"] = telegram.file_base_url
    doc["discord"]["api_base_url"] = discord.api_base_url
    doc["discord"]["gateway_url"] = discord.gateway_url
    doc["discord"]["guild_ready_timeout"] = 0.1
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def test_claybot_run_answers_a_photo_on_telegram_and_on_discord(tiny_config_path, tmp_path):
    telegram, discord = FakeTelegram(TELEGRAM_TOKEN), FakeDiscord(DISCORD_TOKEN)
    await telegram.start()
    await discord.start()
    config = _config(tiny_config_path, tmp_path, telegram, discord)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAYBOT_TELEGRAM_TOKEN": TELEGRAM_TOKEN,
           "CLAYBOT_DISCORD_TOKEN": DISCORD_TOKEN}
    log = tmp_path / "claybot.log"
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(CLAYBOT, "run", "--config", str(config), env=env,
                                                       stdout=out, stderr=out)
    try:
        # Both front ends came up: Telegram long-polls, Discord registered its commands.
        await telegram.wait_for(lambda call: call.method == "getUpdates", timeout=120)
        await discord.wait_for(lambda call: call.method == "PUT" and call.path.endswith("/commands"), timeout=120)

        alice = user(1001, "Alice")
        sent = await telegram.send_photo(private_chat(alice), alice, PHOTO, caption="/clay 0.6")
        answer = await telegram.wait_for(
            lambda call: call.method in ("sendPhoto", "sendDocument") and call.reply_to == sent["message_id"],
            timeout=120)
        image = Image.open(io.BytesIO(next(iter(answer.files.values()))))
        assert image.format == "PNG" and abs(image.width / image.height - 4 / 3) < 0.03

        interaction = await discord.slash("clay", discord.alice, image=discord.attachment(PHOTO), strength=0.6)
        result = await discord.wait_for(
            lambda call: call.method == "PATCH" and call.path.endswith(f"/{interaction.token}/messages/@original")
            and bool(call.files), timeout=120)
        clay = Image.open(io.BytesIO(result.files["clay.png"]))
        assert clay.format == "PNG" and abs(clay.width / clay.height - 4 / 3) < 0.03

        # SIGTERM: it stops in order and exits cleanly.
        assert await stop_cleanly(process) == 0
    finally:
        await kill_if_running(process)
        await telegram.close()
        await discord.close()
    text = log.read_text()
    assert TELEGRAM_TOKEN not in text and DISCORD_TOKEN not in text, "a token reached the log"


async def _start_claybot(config: Path, log: Path, discord_token: str = DISCORD_TOKEN) -> asyncio.subprocess.Process:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAYBOT_TELEGRAM_TOKEN": TELEGRAM_TOKEN,
           "CLAYBOT_DISCORD_TOKEN": discord_token}
    with log.open("w") as out:
        return await asyncio.create_subprocess_exec(CLAYBOT, "run", "--config", str(config), env=env,
                                                    stdout=out, stderr=out)


async def test_a_failing_discord_is_retried_while_telegram_keeps_answering(tiny_config_path, tmp_path):
    telegram, discord = FakeTelegram(TELEGRAM_TOKEN), FakeDiscord(DISCORD_TOKEN)
    await telegram.start()
    await discord.start()
    # discord.py cannot make sense of this answer to the command registration: it raises inside its start-up.
    discord.answer_oddly("PUT", "/commands", 200, {"unexpected": "answer"})
    config = _config(tiny_config_path, tmp_path, telegram, discord)
    log = tmp_path / "claybot.log"
    process = await _start_claybot(config, log)
    try:
        await discord.wait_for(lambda call: call.method == "PUT" and call.path.endswith("/commands"), timeout=120)
        alice = user(1002, "Alice")
        sent = await telegram.send_photo(private_chat(alice), alice, PHOTO, caption="/clay")
        await telegram.wait_for(
            lambda call: call.method in ("sendPhoto", "sendDocument") and call.reply_to == sent["message_id"],
            timeout=120)
        assert process.returncode is None  # still running

        # A few seconds later Discord is tried again, registers its commands and answers.
        registered = await discord.wait_for(lambda call: call.method == "PUT" and call.path.endswith("/commands"),
                                            after=discord.calls.index(next(c for c in discord.calls
                                                                           if c.method == "PUT")) + 1, timeout=60)
        assert discord.commands, registered
        interaction = await discord.slash("clay", discord.alice, image=discord.attachment(PHOTO))
        await discord.wait_for(
            lambda call: call.method == "PATCH" and call.path.endswith(f"/{interaction.token}/messages/@original")
            and bool(call.files), timeout=120)
        assert await stop_cleanly(process) == 0
    finally:
        await kill_if_running(process)
        await telegram.close()
        await discord.close()
    text = log.read_text()
    failures = [line for line in text.splitlines() if "discord front end failed" in line]
    assert len(failures) == 1, text
    assert "TypeError" in failures[0] and "trying again in 5 s" in failures[0]
    assert "Traceback" not in text


async def test_a_refused_discord_token_stops_claybot_with_a_message_naming_the_variable(tiny_config_path, tmp_path):
    telegram, discord = FakeTelegram(TELEGRAM_TOKEN), FakeDiscord(DISCORD_TOKEN)
    await telegram.start()
    await discord.start()
    config = _config(tiny_config_path, tmp_path, telegram, discord)
    log = tmp_path / "claybot.log"
    process = await _start_claybot(config, log, discord_token="not-the-discord-token")
    try:
        assert await asyncio.wait_for(process.wait(), 120) == 2
    finally:
        await kill_if_running(process)
        await telegram.close()
        await discord.close()
    text = log.read_text()
    assert "claybot: Discord refused the bot token in CLAYBOT_DISCORD_TOKEN" in text
    assert "Traceback" not in text and "not-the-discord-token" not in text
