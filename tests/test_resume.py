"""A chat process restarted while its jobs run (Redis backend) answers them in the chats they came from: the jobs
Redis still holds when they finish, and one Redis lost by running it again from the photo the journal kept."""

from __future__ import annotations

import asyncio
import io

import redis.asyncio as redis
from PIL import Image

from bot.config import load_config
from bot.flow import RequestFlow
from bot.store import ClaybotDatabase
from bot.telegram import TelegramFrontEnd
from pipeline.core.intake import take_in
from pipeline.core.redis_queue import RedisQueue
from tests.conftest import photo_bytes
from tests.fake_telegram import FakeTelegram, private_chat, user
from tests.redis_server import RedisServer, redis_config, start_worker, stop_worker

TOKEN = "555004:fake-telegram-token-resume-test"
ALICE, BOB = user(1001, "Alice"), user(1002, "Bob")


async def _accept(flow: RequestFlow, who: dict, seed: int, message_id: int) -> None:
    """What RequestFlow.handle does up to the queue: a ticket in the journal, the job in Redis, the photo kept."""
    job = await take_in(flow.queue.gpu, photo_bytes((128, 96)), seed=seed, reply_to=("telegram", str(who["id"])))
    ticket = await flow.journal.admit("telegram", str(who["id"]), str(who["id"]), str(who["id"]),
                                      {"message_id": message_id})
    handle = await flow.queue.submit(job)
    await flow.journal.queued(ticket, handle.id, job)


async def test_jobs_accepted_before_a_restart_are_answered_in_their_chat(tiny_config_path, tmp_path):
    server = RedisServer(tmp_path).start()
    fake = FakeTelegram(TOKEN)
    await fake.start()
    for who in (ALICE, BOB):
        fake.chats[who["id"]] = private_chat(who)  # the chats the photos came from, before the restart
    config_path = redis_config(tiny_config_path, tmp_path, server.url)
    config = load_config(config_path)
    config = config.model_copy(update={"telegram": config.telegram.model_copy(
        update={"api_base_url": fake.api_base_url, "file_base_url": fake.file_base_url})})
    worker = None
    try:
        async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
            before = RedisQueue(config.gpu(), config.queue, owner="chat-1")
            await before.start()
            flow = RequestFlow(before, config, store=store)
            await _accept(flow, BOB, seed=5, message_id=51)
            client = redis.from_url(server.url)
            await client.flushall()  # Redis loses Bob's job (say, restarted without its AOF file)
            await client.aclose()
            await _accept(flow, ALICE, seed=4, message_id=41)
            await before.close()  # the chat process goes down with both jobs accepted, unanswered

        worker = start_worker(config_path, "w0")
        async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
            after = RedisQueue(config.gpu(), config.queue, owner="chat-1")
            await after.start()
            flow = RequestFlow(after, config, store=store)
            telegram = TelegramFrontEnd(config, flow, TOKEN)
            await telegram.start()
            try:
                entries = await flow.unanswered()
                assert await flow.recover({"telegram": telegram}, entries, await after.recover()) == 2
                sent = [await fake.wait_for(lambda call, who=who: call.method == "sendPhoto"
                                            and int(call.params["chat_id"]) == who["id"], timeout=180)
                        for who in (ALICE, BOB)]
                await asyncio.gather(*flow.recovering.tasks)
            finally:
                await telegram.close()
                await after.close()
            assert await flow.unanswered() == []  # both answered in the journal too
        for call, seed, message_id in zip(sent, (4, 5), (41, 51), strict=True):
            assert f"seed {seed}" in call.params["caption"]
            assert call.reply_to == message_id  # a reply to the photo, as if nothing had happened
            assert Image.open(io.BytesIO(next(iter(call.files.values())))).format == "PNG"
    finally:
        if worker is not None:
            stop_worker(worker)
        await fake.close()
        server.stop()
