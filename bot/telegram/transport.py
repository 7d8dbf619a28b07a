"""python-telegram-bot's requests to the Bot API over aiohttp (``AiohttpRequest``, a PTB ``BaseRequest``).

PTB's own client (httpx over httpcore and anyio) cost the chat process about 3 ms of CPU per call: in a burst of 200
photos, the first lines waited on it. aiohttp (already claybot's HTTP library for Discord and model downloads) does a
call in a fraction of that, writes a small request in one go, and does not scan its pool on every call.
getUpdates keeps PTB's client (bot/outage.py watches it for outages).
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from bot.outage import quiet_json

logger = logging.getLogger(__name__)

DEADLINE = 600.0  # seconds a call may take in all: a 20 MB photo, or 10 MB up, at about 300 kbit/s
MAX_ANSWER = 21 * 2**20  # bytes of an answer: Telegram's 20 MB downloads, with room (JSON answers are far smaller)


class AiohttpRequest(BaseRequest):
    """Bot API calls and file downloads through one aiohttp session of at most ``connections`` connections; each
    call ends within ``deadline`` seconds, and an answer of more than ``max_answer`` bytes is refused, not read."""

    def __init__(self, *, connections: int, pool_timeout: float, connect_timeout: float = 5.0,
                 read_timeout: float = 5.0, deadline: float = DEADLINE, max_answer: int = MAX_ANSWER) -> None:
        self.connections = connections
        self.pool_timeout, self.connect_timeout = pool_timeout, connect_timeout
        self._read_timeout, self.deadline, self.max_answer = read_timeout, deadline, max_answer
        self._session: aiohttp.ClientSession | None = None
        # HTTP(S)_PROXY / NO_PROXY, as PTB's httpx client honours them, passed with each call: aiohttp's trust_env
        # would also send ~/.netrc's login for the host (or its "default" one) to the Bot API and to the proxy
        self.proxies = urllib.request.getproxies()

    @property
    def read_timeout(self) -> float | None:
        """The seconds a call waits for its answer, unless it says otherwise."""
        return self._read_timeout

    async def initialize(self) -> None:
        """Open the session (in the running event loop)."""
        if self._session is None or self._session.closed:
            # certifi's authorities, as PTB's httpx client trusts: a slim container may have no system store
            tls = ssl.create_default_context(cafile=certifi.where())
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections, ssl=tls)
            # PTB reads the answers itself (BaseRequest.parse_json_payload); no cookies, no Expect headers, and
            # no trust_env (the proxy comes with each call, netrc never)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  headers={"User-Agent": self.USER_AGENT}, trust_env=False)

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        """The answer's JSON; a proxy's HTML page is a TelegramError without PTB's traceback and whole page logged."""
        return quiet_json(payload)

    async def shutdown(self) -> None:
        """Close the session and its connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        """One call: its HTTP status and its body; TimedOut or NetworkError when there is none."""
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        read = self._read_timeout if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = self.connect_timeout if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self.pool_timeout if isinstance(pool_timeout, DefaultValue) else pool_timeout
        # Like PTB's own client, time-outs bound each wait (for a connection, for the next bytes): a big photo on a
        # slow link keeps going while bytes keep coming. aiohttp has no time-out per write, and a server dripping a
        # byte at a time never trips the one per read, so the whole call has a deadline too: nothing is held for good.
        timeout = aiohttp.ClientTimeout(total=self.deadline,
                                        connect=None if pool is None or connect is None else pool + connect,
                                        sock_connect=connect, sock_read=read)
        try:
            where = urlsplit(url)
            proxy = self.proxies.get(where.scheme)
            if proxy and urllib.request.proxy_bypass(where.hostname or ""):
                proxy = None
            async with self._session.request(method, url, data=_body(request_data), timeout=timeout,
                                             proxy=proxy) as response:
                return response.status, await self._answer(response)
        except TimeoutError as err:  # asyncio's, which aiohttp raises for every time-out
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{err.__class__.__name__}: {err}") from err

    async def _answer(self, response: aiohttp.ClientResponse) -> bytes:
        """The answer's body, refused once it passes ``max_answer`` bytes (or says it will), not read whole."""
        announced = response.content_length
        if announced is not None and announced <= self.max_answer and "Content-Encoding" not in response.headers:
            return await response.read()  # no more than announced: aiohttp stops there
        if announced is None or announced <= self.max_answer:  # unannounced, or gzip's size before unpacking
            body = bytearray()
            async for chunk in response.content.iter_chunked(2**16):
                body += chunk
                if len(body) > self.max_answer:
                    break
            else:
                return bytes(body)
        raise NetworkError(f"The answer is larger than {self.max_answer / 2**20:g} MB; not read")


def _body(request_data: RequestData | None) -> aiohttp.FormData | dict[str, str] | None:
    """The call's parameters as PTB's own client sends them: form fields, multipart when there are files."""
    if request_data is None:
        return None
    fields = request_data.json_parameters
    if not request_data.contains_files:
        return fields
    form = aiohttp.FormData(fields)
    for name, (filename, content, mime_type) in request_data.multipart_data.items():
        form.add_field(name, content, filename=filename, content_type=mime_type)
    return form
