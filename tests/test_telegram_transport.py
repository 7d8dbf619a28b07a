"""The Bot API calls over aiohttp (bot/telegram/transport.py), with the real python-telegram-bot ``Bot``: uploads
arrive whole, the Bot API's refusals keep their kind and words, and a server that is away or silent becomes PTB's
NetworkError / TimedOut (never a hang, never the token in the message)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web
from telegram import Bot
from telegram.error import BadRequest, NetworkError, TimedOut

from bot.telegram.transport import AiohttpRequest
from tests.conftest import photo_bytes
from tests.fake_telegram import FakeTelegram, private_chat, user

pytestmark = pytest.mark.asyncio

TOKEN = "555004:fake-telegram-token-transport"
ALICE = user(1001, "Alice")


def bot_at(base_url: str, *, read_timeout: float = 5.0) -> Bot:
    request = AiohttpRequest(connections=4, pool_timeout=5.0, read_timeout=read_timeout)
    return Bot(TOKEN, base_url=base_url, base_file_url=base_url.replace("/bot", "/file/bot"), request=request,
               get_updates_request=AiohttpRequest(connections=1, pool_timeout=5.0))


async def test_a_photo_upload_and_its_fields_arrive_whole_and_a_download_comes_back_whole():
    fake = FakeTelegram(TOKEN)
    await fake.start()
    picture = photo_bytes((96, 64))
    try:
        asked = await fake.send_photo(private_chat(ALICE), ALICE, photo_bytes((32, 24)), caption="/clay")
        async with bot_at(fake.api_base_url) as bot:
            sent = await bot.send_photo(ALICE["id"], picture, caption="clay · strength 0.5 — ünïcode",
                                        reply_to_message_id=asked["message_id"], filename="clay.png")
            fetched = await (await bot.get_file(sent.photo[-1].file_id)).download_as_bytearray()
    finally:
        await fake.close()
    (call,) = fake.calls_to("sendPhoto")
    assert call.files["photo"] == picture
    assert call.params["caption"] == "clay · strength 0.5 — ünïcode"
    assert call.reply_to == asked["message_id"]
    assert bytes(fetched) == picture


async def test_a_refusal_keeps_its_kind_and_words():
    fake = FakeTelegram(TOKEN)
    await fake.start()
    try:
        async with bot_at(fake.api_base_url) as bot:
            with pytest.raises(BadRequest, match="(?i)chat not found"):
                await bot.send_message(424242, "hello")
    finally:
        await fake.close()


async def test_a_bot_api_that_is_away_is_a_network_error_without_the_token(unused_tcp_port):
    request = AiohttpRequest(connections=4, pool_timeout=5.0)
    await request.initialize()
    try:
        with pytest.raises(NetworkError) as err:
            await request.post(f"http://127.0.0.1:{unused_tcp_port}/bot{TOKEN}/sendMessage")
    finally:
        await request.shutdown()
    assert TOKEN not in str(err.value)


async def serve(handler) -> web.AppRunner:
    """A bare HTTP server on 127.0.0.1 answering every path with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_a_slow_download_that_keeps_coming_is_not_cut_off():
    # A big photo over a slow link: each wait for bytes is bounded, not the whole download (as PTB's own client).
    chunk = b"x" * 1000

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(12):  # 1.2 s in all, never 0.3 s without bytes
            await response.write(chunk)
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    runner = await serve(trickle)
    request = AiohttpRequest(connections=4, pool_timeout=5.0, read_timeout=0.3)
    await request.initialize()
    try:
        data = await request.retrieve(f"http://127.0.0.1:{runner.addresses[0][1]}/file/bot{TOKEN}/photo.jpg")
    finally:
        await request.shutdown()
        await runner.cleanup()
    assert data == chunk * 12


async def test_a_silent_bot_api_times_out_instead_of_hanging():
    answered = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await answered.wait()
        return web.json_response({"ok": True, "result": True})

    runner = await serve(silent)
    port = runner.addresses[0][1]
    try:
        request = AiohttpRequest(connections=4, pool_timeout=5.0, read_timeout=0.3)
        await request.initialize()
        try:
            with pytest.raises(TimedOut):
                await asyncio.wait_for(request.post(f"http://127.0.0.1:{port}/bot{TOKEN}/sendMessage"), 10)
        finally:
            await request.shutdown()
    finally:
        answered.set()
        await runner.cleanup()


async def test_calls_go_through_the_proxy_the_environment_names_unless_no_proxy_names_the_host(monkeypatch):
    # Operators behind a proxy set HTTPS_PROXY (HTTP_PROXY for a plain-HTTP Bot API server), as PTB's client honoured.
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:  # a forward proxy gets the whole URL
        seen.append(str(request.url))
        return web.json_response({"ok": True, "result": {"id": 5, "is_bot": True, "first_name": "claybot",
                                                         "username": "claybot_test_bot"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with bot_at("http://api.telegram.invalid/bot") as bot:  # a name that resolves nowhere: only a proxy
            assert (await bot.get_me()).username == "claybot_test_bot"
        assert seen and all(url.endswith("/getMe") and "api.telegram.invalid" in url for url in seen)
        through_proxy = len(seen)
        monkeypatch.setenv("NO_PROXY", "api.telegram.invalid")
        with pytest.raises(NetworkError):
            async with bot_at("http://api.telegram.invalid/bot") as bot:
                await bot.get_me()
        assert len(seen) == through_proxy  # straight to the (unreachable) host, not through the proxy
    finally:
        await runner.cleanup()


async def test_netrc_credentials_are_never_sent_to_the_bot_api_nor_to_a_proxy(tmp_path, monkeypatch):
    # issue 31, item 5: aiohttp's trust_env=True sent ~/.netrc's login for the host (or its "default") with every call
    headers: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        headers.append(dict(request.headers))
        return web.json_response({"ok": True, "result": {"id": 5, "is_bot": True, "first_name": "claybot",
                                                         "username": "claybot_test_bot"}})

    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login alice password s3cret\n"
                                     "default login bob password hunter2\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    runner = await serve(record)
    port = runner.addresses[0][1]
    try:
        async with bot_at(f"http://127.0.0.1:{port}/bot") as bot:  # straight to the server
            assert (await bot.get_me()).username == "claybot_test_bot"
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")  # the same server as a forward proxy
        async with bot_at("http://api.telegram.invalid/bot") as bot:
            assert (await bot.get_me()).username == "claybot_test_bot"
    finally:
        await runner.cleanup()
    assert len(headers) >= 2
    assert not [h for h in headers if "Authorization" in h or "Proxy-Authorization" in h], headers


async def test_an_answer_larger_than_the_cap_is_refused_not_read_whole():
    # issue 31, item 5: an answer was read whole into memory, whatever its size
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):  # up to 64 MiB
                await response.write(chunk)
                sent[0] += len(chunk)
        return response

    runner = await serve(endless)
    request = AiohttpRequest(connections=4, pool_timeout=5.0, max_answer=2**20)
    await request.initialize()
    try:
        with pytest.raises(NetworkError, match="larger than 1 MB"):
            await asyncio.wait_for(request.retrieve(f"http://127.0.0.1:{runner.addresses[0][1]}/file/bot{TOKEN}/a"),
                                   30)
    finally:
        await request.shutdown()
        await runner.cleanup()
    assert sent[0] < 64 * 2**20


async def test_an_announced_size_beyond_the_cap_is_refused_before_reading():
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (2 * 2**20))

    runner = await serve(big)
    request = AiohttpRequest(connections=4, pool_timeout=5.0, max_answer=2**20)
    await request.initialize()
    try:
        with pytest.raises(NetworkError, match="larger than 1 MB"):
            await request.retrieve(f"http://127.0.0.1:{runner.addresses[0][1]}/file/bot{TOKEN}/a")
    finally:
        await request.shutdown()
        await runner.cleanup()


async def test_an_answer_that_trickles_forever_ends_at_the_deadline():
    # issue 31, item 5: each wait for bytes was bounded, the whole answer not: a drip every 0.05 s held a call for good
    stop = asyncio.Event()

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():
                await response.write(b"x")
                await asyncio.sleep(0.05)
        return response

    runner = await serve(drip)
    request = AiohttpRequest(connections=4, pool_timeout=5.0, read_timeout=1.0, deadline=1.0)
    await request.initialize()
    try:
        with pytest.raises(TimedOut):
            await asyncio.wait_for(request.retrieve(f"http://127.0.0.1:{runner.addresses[0][1]}/file/bot{TOKEN}/a"),
                                   30)
    finally:
        stop.set()
        await request.shutdown()
        await runner.cleanup()
