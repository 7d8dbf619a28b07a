"""A chat process restarted while its jobs run (Redis backend) answers them in the chats they came from."""

from __future__ import annotations

import io

from PIL import Image

from bot.config import load_config
from bot.flow import RequestFlow, resume
from bot.telegram import TelegramFrontEnd
from pipeline.jobs import StyleRequest
from pipeline.redis_queue import RedisQueue
from tests.conftest import photo_bytes
from tests.fake_telegram import FakeTelegram, private_chat, user
from tests.redis_server import RedisServer, redis_config, start_worker, stop_worker

TOKEN = "555004:fake-telegram-token-resume-test"


async def test_jobs_accepted_before_a_restart_are_answered_in_their_chat(tiny_config_path, tmp_path, monkeypatch):
    server = RedisServer(tmp_path).start()
    fake = FakeTelegram(TOKEN)
    await fake.start()
    fake.chats[1001] = private_chat(user(1001, "Alice"))  # the chat the photo came from, before the restart
    config_path = redis_config(tiny_config_path, tmp_path, server.url)
    config = load_config(config_path)
    config = config.model_copy(update={"telegram": config.telegram.model_copy(
        update={"api_base_url": fake.api_base_url, "file_base_url": fake.file_base_url})})
    worker = None
    try:
        before = RedisQueue(config.gpu(), config.queue, owner="chat-1")
        await before.start()
        await before.submit(StyleRequest(photo_bytes((128, 96)), seed=4, reply_to=("telegram", "1001")))
        await before.close()  # the chat process goes down with the job accepted, unanswered

        worker = start_worker(config_path, "w0")
        after = RedisQueue(config.gpu(), config.queue, owner="chat-1")
        await after.start()
        telegram = TelegramFrontEnd(config, RequestFlow(after, config), TOKEN)
        await telegram.start()
        try:
            for handle in await after.recover():
                await resume(handle, {"telegram": telegram})
            sent = await fake.wait_for(lambda call: call.method == "sendPhoto", timeout=120)
        finally:
            await telegram.close()
            await after.close()
        assert int(sent.params["chat_id"]) == 1001
        assert "seed 4" in sent.params["caption"]
        image = Image.open(io.BytesIO(next(iter(sent.files.values()))))
        assert image.format == "PNG"
    finally:
        if worker is not None:
            stop_worker(worker)
        await fake.close()
        server.stop()
