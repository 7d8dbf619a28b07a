"""A small fake Telegram Bot API server (aiohttp on 127.0.0.1) for end-to-end tests with the real PTB client.

It implements the methods claybot calls, keeps the chats' messages so replies carry their ``reply_to_message``,
serves file downloads, long-polls updates that tests push as real update JSON, and records every call (method,
decoded parameters, uploaded files, arrival time) for assertions. With ``flood_limit``, it refuses a group's
messages past that many per ``flood_window`` seconds as Telegram does: HTTP 429 with ``retry_after``, not sent.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

# Parameters PTB sends JSON-encoded (form values are strings); the rest stay strings, ids become ints.
JSON_PARAMS = {"reply_parameters", "reply_markup", "allowed_updates", "commands", "reaction", "caption_entities",
               "entities", "link_preview_options", "prices"}
INT_PARAMS = {"chat_id", "message_id", "offset", "limit", "timeout", "message_thread_id", "cache_time", "user_id"}
DOWNLOAD_LIMIT = 20 * 2**20  # what the real Bot API refuses to hand out with getFile
# What Telegram counts against a group's flood limit: messages sent and edited (not chat actions, deletions,
# callback answers or file look-ups).
FLOODED = frozenset({"sendMessage", "sendPhoto", "sendDocument", "sendAnimation", "sendVideo", "sendMediaGroup",
                     "copyMessage", "forwardMessage", "editMessageText", "editMessageCaption", "editMessageMedia",
                     "editMessageReplyMarkup"})
TOO_MANY = "Too Many Requests: retry after {}"


@dataclass
class Call:
    """One request the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the server answered (the sent message, for send* calls); None for an error
    error: str | None = None  # the error's description, when the server refused the call

    @property
    def reply_to(self) -> int | None:
        """The message id this call answers, from reply_parameters (or the older reply_to_message_id)."""
        if "reply_parameters" in self.params:
            return self.params["reply_parameters"]["message_id"]
        value = self.params.get("reply_to_message_id")
        return int(value) if value is not None else None


BAD_GATEWAY_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
                    "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


class ApiError(Exception):
    """An error answer, as the Bot API gives them (``parameters``: e.g. a 429's ``retry_after``)."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    @classmethod
    def too_many(cls, retry_after: int) -> ApiError:
        """Telegram's flood-control answer."""
        return cls(429, TOO_MANY.format(retry_after), {"retry_after": retry_after})


def user(user_id: int, name: str) -> dict:
    """A Telegram User object."""
    return {"id": user_id, "is_bot": False, "first_name": name, "username": name.lower()}


def private_chat(who: dict) -> dict:
    """The private chat with a user."""
    return {"id": who["id"], "type": "private", "first_name": who["first_name"], "username": who["username"]}


def group_chat(chat_id: int = -1001234567890, title: str = "Clay club") -> dict:
    """A supergroup."""
    return {"id": chat_id, "type": "supergroup", "title": title}


class FakeTelegram:
    """The fake server; ``api_base_url`` / ``file_base_url`` go into TelegramSettings."""

    def __init__(self, token: str, *, bot_username: str = "claybot_test_bot", flood_limit: int = 0,
                 flood_window: float = 60.0) -> None:
        self.token = token
        # Telegram's flood limit in groups: at most flood_limit messages (FLOODED) per flood_window seconds in
        # each group (a negative chat id); past it, 429 with retry_after. 0: no limit.
        self.flood_limit, self.flood_window = flood_limit, flood_window
        self._group_sent: dict[int, deque[float]] = {}
        self.bot_user = {"id": 7000000001, "is_bot": True, "first_name": "claybot", "username": bot_username,
                         "can_join_groups": True, "can_read_all_group_messages": False,
                         "supports_inline_queries": False}
        self.calls: list[Call] = []
        self.allowed_updates: list[str] | None = None
        self.chats: dict[int, dict] = {}
        self.admins: set[int] = set()  # users getChatMember calls administrators (and the bot itself)
        self.files_gone = False  # the file server answers 404 to every download
        self.bad_gateway = False  # a reverse proxy in front answers every call with its 502 HTML page (set_bad_gateway)
        self.messages: dict[tuple[int, int], dict] = {}
        self.deleted: set[tuple[int, int]] = set()
        self.files: dict[str, dict] = {}  # file_id → {"path", "data", "size"}
        self._updates: list[dict] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._file_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._failures: dict[str, list[ApiError]] = {}
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        # payments (Telegram Stars): what the bot sent and answered, and what Telegram's ledger lists
        self.invoices: list[dict] = []  # sendInvoice's parameters, as sent
        self.pre_checkout_answers: dict[str, dict] = {}  # query id → {"ok", "error_message", "at"} (monotonic)
        self.pre_checkout_asked: dict[str, float] = {}  # query id → when the update was pushed (monotonic)
        self.refunds: list[dict] = []  # refundStarPayment's {"user_id", "telegram_payment_charge_id"}
        self.star_transactions: list[dict] = []  # StarTransaction objects getStarTransactions lists, oldest first
        self._charge_ids = itertools.count(1)
        self._holds: dict[str, asyncio.Event] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on a free port of 127.0.0.1 (or on ``port``, to come back where it was)."""
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{bot}/{method}", self._api)
        app.router.add_get("/file/{bot}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def go_away(self) -> None:
        """The Bot API becomes unreachable (connections refused), as in an outage, until ``come_back``."""
        self._closing = True  # waiting long polls answer now
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
        self._closing = False

    async def set_bad_gateway(self, on: bool) -> None:
        """A reverse proxy in front answers every call with its 502 HTML page (``on``), as when the Bot API behind
        it is away, or passes calls through again; a waiting long poll answers now."""
        self.bad_gateway = on
        async with self._changed:
            self._changed.notify_all()

    async def come_back(self) -> None:
        """Reachable again, at the same address."""
        await self.start(self.port)

    async def close(self) -> None:
        """Answer waiting long polls and stop listening."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # -- what tests do ---------------------------------------------------------------------------------------------

    async def push(self, kind: str, payload: dict) -> dict:
        """Queue one update (``kind`` is its field: message, callback_query, message_reaction …)."""
        update = {"update_id": next(self._update_ids), kind: payload}
        async with self._changed:
            self._updates.append(update)
            self._changed.notify_all()
        return update

    def add_file(self, data: bytes, *, suffix: str = "jpg", size: int | None = None) -> tuple[str, str]:
        """Store a file the bot may fetch; returns (file_id, file_unique_id). ``size`` may lie, as a test wants."""
        number = next(self._file_ids)
        file_id = f"file-{number}-{'x' * 20}"
        self.files[file_id] = {"path": f"fake-files/file_{number}.{suffix}", "data": data,
                               "size": len(data) if size is None else size}
        return file_id, f"unique-{number}"

    async def send_photo(self, chat: dict, sender: dict, data: bytes, *, caption: str | None = None,
                         file_size: int | None = None, reply_to: dict | None = None,
                         thread_id: int | None = None, as_chat: dict | None = None) -> dict:
        """A user posts a photo (Telegram lists a thumbnail and the full size); ``as_chat``: on behalf of a chat."""
        width, height = Image.open(io.BytesIO(data)).size
        file_id, unique = self.add_file(data, size=file_size)
        thumb_id, thumb_unique = self.add_file(data)
        photo = [{"file_id": thumb_id, "file_unique_id": thumb_unique, "width": max(1, width // 4),
                  "height": max(1, height // 4), "file_size": len(data) // 4 + 1},
                 {"file_id": file_id, "file_unique_id": unique, "width": width, "height": height,
                  "file_size": self.files[file_id]["size"]}]
        content: dict[str, Any] = {"photo": photo}
        if as_chat is not None:
            content["sender_chat"] = as_chat
        return await self._user_message(chat, sender, content, caption=caption, reply_to=reply_to,
                                        thread_id=thread_id)

    async def send_document(self, chat: dict, sender: dict, data: bytes, *, file_name: str, mime_type: str | None,
                            caption: str | None = None, file_size: int | None = None,
                            size_in_metadata: bool = True) -> dict:
        """A user posts a file (an image sent "as a file" keeps its bytes); file_size is optional in the API."""
        suffix = file_name.rsplit(".", 1)[-1]
        file_id, unique = self.add_file(data, suffix=suffix, size=file_size)
        document = {"file_id": file_id, "file_unique_id": unique, "file_name": file_name}
        if size_in_metadata:
            document["file_size"] = self.files[file_id]["size"]
        if mime_type:
            document["mime_type"] = mime_type
        return await self._user_message(chat, sender, {"document": document}, caption=caption)

    async def send_text(self, chat: dict, sender: dict, text: str, *, reply_to: dict | None = None,
                        as_chat: dict | None = None) -> dict:
        """A user sends text (a leading /command gets its bot_command entity, as Telegram does); ``as_chat``: on
        behalf of a chat, as an anonymous group admin does (Telegram then names GroupAnonymousBot as the sender)."""
        extra: dict[str, Any] = {"text": text}
        if as_chat is not None:
            extra["sender_chat"] = as_chat
        if text.startswith("/"):
            extra["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return await self._user_message(chat, sender, extra, reply_to=reply_to)

    async def react(self, chat: dict, sender: dict, message_id: int, emoji: str, *, old: tuple[str, ...] = ()) -> dict:
        """A user changes their reaction on a message: the update names the message, not its content."""
        payload = {"chat": chat, "message_id": message_id, "user": sender, "date": int(time.time()),
                   "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
                   "new_reaction": [{"type": "emoji", "emoji": emoji}]}
        return await self.push("message_reaction", payload)

    async def press(self, sender: dict, message: dict, data: str) -> str:
        """A user presses an inline button under ``message``; returns the callback query id."""
        query_id = f"query-{next(self._update_ids)}"
        chat = message["chat"]
        payload = {"id": query_id, "from": sender, "chat_instance": f"instance{chat['id']}", "data": data,
                   "message": self.messages[(chat["id"], message["message_id"])]}
        await self.push("callback_query", payload)
        return query_id

    # -- payments (Telegram Stars) ---------------------------------------------------------------------------------

    async def pre_checkout(self, sender: dict, invoice: dict, *, payload: str | None = None,
                           total_amount: int | None = None) -> str:
        """``sender`` presses Pay on an invoice the bot sent (``invoice``: its sendInvoice parameters, see
        ``invoices``); ``payload``/``total_amount`` may lie, as a forged query would. Returns the query id; its
        answer lands in ``pre_checkout_answers``."""
        query_id = f"pcq-{next(self._update_ids)}"
        payload_ = invoice["payload"] if payload is None else payload
        amount = _price(invoice) if total_amount is None else total_amount
        self.pre_checkout_asked[query_id] = time.monotonic()
        await self.push("pre_checkout_query", {"id": query_id, "from": sender, "currency": invoice["currency"],
                                               "total_amount": amount, "invoice_payload": payload_})
        return query_id

    def payment(self, sender: dict, invoice: dict, *, charge_id: str | None = None) -> dict:
        """A SuccessfulPayment object for ``invoice`` paid by ``sender`` (a fresh charge id unless given); it is
        also listed by getStarTransactions from now on, as Telegram's ledger lists every payment."""
        charge = charge_id or f"stxCharge{next(self._charge_ids):06d}"
        payment = {"currency": invoice["currency"], "total_amount": _price(invoice),
                   "invoice_payload": invoice["payload"], "telegram_payment_charge_id": charge,
                   "provider_payment_charge_id": ""}
        if not any(t["id"] == charge and "source" in t for t in self.star_transactions):
            self.star_transactions.append({"id": charge, "amount": payment["total_amount"], "date": int(time.time()),
                                           "source": {"type": "user", "transaction_type": "invoice_payment",
                                                      "user": sender, "invoice_payload": invoice["payload"]}})
        return payment

    async def successful_payment(self, chat: dict, sender: dict, payment: dict) -> dict:
        """Telegram's service message telling the bot ``payment`` (see ``payment``) went through; push it again
        to deliver it twice, as Telegram may."""
        return await self._user_message(chat, sender, {"successful_payment": payment})

    def hold(self, method: str) -> asyncio.Event:
        """Calls of ``method`` wait (recorded, unanswered) until the returned event is set: a slow Bot API call."""
        self._holds[method] = asyncio.Event()
        return self._holds[method]

    def fail_next(self, method: str, code: int, description: str, *, retry_after: int | None = None) -> None:
        """Answer the next call of ``method`` with this error (as Telegram does when something is off);
        ``retry_after``: with Telegram's flood-control parameters."""
        parameters = None if retry_after is None else {"retry_after": retry_after}
        self._failures.setdefault(method, []).append(ApiError(code, description, parameters))

    def flooded(self) -> list[Call]:
        """The calls refused with 429 (flood control)."""
        return [call for call in self.calls if call.error is not None and call.error.startswith("Too Many")]

    def calls_to(self, *methods: str) -> list[Call]:
        """Recorded calls of these methods, in order."""
        return [call for call in self.calls if call.method in methods]

    async def wait_for(self, predicate: Callable[[Call], bool], *, after: int = 0, answered: bool = False,
                       timeout: float = 30.0) -> Call:
        """The first call from ``calls[after:]`` matching ``predicate`` (with ``answered``, only once the server
        has answered it with success, so ``result`` holds the sent message), waiting for it if need be."""
        async def first() -> Call:
            async with self._changed:
                while True:
                    for call in self.calls[after:]:
                        if (call.result is not None or not answered) and predicate(call):
                            return call
                    await self._changed.wait()
        return await asyncio.wait_for(first(), timeout)

    def message(self, chat_id: int, message_id: int) -> dict | None:
        """A message as the server keeps it (None once deleted)."""
        return self.messages.get((chat_id, message_id))

    # -- the API ---------------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["bot"] != f"bot{self.token}":
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        if self.bad_gateway:  # nginx's page while the Bot API behind it is away: HTML, not the Bot API's JSON
            return web.Response(status=502, content_type="text/html", text=BAD_GATEWAY_PAGE)
        params, files = await _decode(request)
        call = Call(method, params, files)
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        held = self._holds.get(method)
        if held is not None:
            await held.wait()
        try:
            if self._failures.get(method):
                raise self._failures[method].pop(0)
            self._flood_control(call)
            result = await handler(call)
        except ApiError as err:
            await self._answered(call, None, err.description)
            answer = {"ok": False, "error_code": err.code, "description": err.description}
            if err.parameters:
                answer["parameters"] = err.parameters
            return web.json_response(answer, status=err.code)
        await self._answered(call, result)
        return web.json_response({"ok": True, "result": result})

    def _flood_control(self, call: Call) -> None:
        """A group's message past the flood limit is refused, with the seconds until the window has room."""
        chat = call.params.get("chat_id")
        if not self.flood_limit or call.method not in FLOODED or not isinstance(chat, int) or chat >= 0:
            return
        now = time.monotonic()
        sent = self._group_sent.setdefault(chat, deque())
        while sent and sent[0] <= now - self.flood_window:
            sent.popleft()
        if len(sent) >= self.flood_limit:
            raise ApiError.too_many(max(1, math.ceil(sent[0] + self.flood_window - now)))
        sent.append(now)

    async def _answered(self, call: Call, result: Any, error: str | None = None) -> None:
        async with self._changed:
            call.result, call.error = result, error
            self._changed.notify_all()

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["bot"] != f"bot{self.token}":
            return web.Response(status=401)
        path = request.match_info["path"]
        async with self._changed:
            self.calls.append(Call("download", {"path": path}, result=True))
            self._changed.notify_all()
        for stored in self.files.values():
            if stored["path"] == path and not self.files_gone:
                return web.Response(body=stored["data"], content_type="application/octet-stream")
        return web.Response(status=404)

    async def _m_getMe(self, call: Call) -> dict:
        return self.bot_user

    async def _m_deleteWebhook(self, call: Call) -> bool:
        return True

    async def _m_setMyCommands(self, call: Call) -> bool:
        return True

    async def _m_getUpdates(self, call: Call) -> list[dict]:
        offset = call.params.get("offset", 0)
        timeout = float(call.params.get("timeout", 0))
        if "allowed_updates" in call.params:
            self.allowed_updates = call.params["allowed_updates"]
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]  # offset confirms the rest
                ready = [u for u in self._updates if self._wanted(u)]
                remaining = deadline - time.monotonic()
                if ready or remaining <= 0 or self._closing or self.bad_gateway:
                    return ready
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    def _wanted(self, update: dict) -> bool:
        # Telegram sends message_reaction updates only to bots that ask for them.
        kind = next(key for key in update if key != "update_id")
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind != "message_reaction"

    async def _m_sendMessage(self, call: Call) -> dict:
        return self._bot_message(call, {"text": call.params["text"]})

    async def _m_sendPhoto(self, call: Call) -> dict:
        data = call.files["photo"]
        width, height = Image.open(io.BytesIO(data)).size
        file_id, unique = self.add_file(data)
        photo = [{"file_id": file_id, "file_unique_id": unique, "width": width, "height": height,
                  "file_size": len(data)}]
        return self._bot_message(call, {"photo": photo, **_caption(call)})

    async def _m_sendDocument(self, call: Call) -> dict:
        data = call.files["document"]
        suffix, mime = ("mp4", "video/mp4") if _is_mp4(data) else ("png", "image/png")
        file_id, unique = self.add_file(data, suffix=suffix)
        document = {"file_id": file_id, "file_unique_id": unique, "file_name": f"clay.{suffix}",
                    "mime_type": mime, "file_size": len(data)}
        return self._bot_message(call, {"document": document, **_caption(call)})

    async def _m_sendAnimation(self, call: Call) -> dict:
        # Telegram sets ``document`` beside ``animation``, for clients that predate animations.
        data = call.files["animation"]
        if not _is_mp4(data):
            raise ApiError(400, "Bad Request: wrong file type for an animation")
        file_id, unique = self.add_file(data, suffix="mp4")
        common = {"file_id": file_id, "file_unique_id": unique, "file_name": "clay.mp4", "mime_type": "video/mp4",
                  "file_size": len(data)}
        animation = {**common, "width": int(call.params.get("width", 0)), "height": int(call.params.get("height", 0)),
                     "duration": int(call.params.get("duration", 0))}
        return self._bot_message(call, {"animation": animation, "document": common, **_caption(call)})

    async def _m_editMessageText(self, call: Call) -> dict:
        message = self._existing(call, "message to edit not found")
        if message.get("text") == call.params["text"]:
            raise ApiError(400, "Bad Request: message is not modified: specified new message content and reply "
                                "markup are exactly the same as a current content and reply markup of the message")
        message["text"] = call.params["text"]
        message["edit_date"] = int(time.time())
        return message

    async def _m_deleteMessage(self, call: Call) -> bool:
        self._existing(call, "message to delete not found")
        key = (call.params["chat_id"], call.params["message_id"])
        del self.messages[key]
        self.deleted.add(key)
        return True

    async def _m_sendChatAction(self, call: Call) -> bool:
        self._chat(call.params["chat_id"])
        return True

    async def _m_getFile(self, call: Call) -> dict:
        stored = self.files.get(call.params["file_id"])
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if stored["size"] > DOWNLOAD_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        return {"file_id": call.params["file_id"], "file_unique_id": "u" + call.params["file_id"],
                "file_size": stored["size"], "file_path": stored["path"]}

    async def _m_answerCallbackQuery(self, call: Call) -> bool:
        return True

    async def _m_setMessageReaction(self, call: Call) -> bool:
        self._existing(call, "message to react not found")
        return True

    async def _m_sendInvoice(self, call: Call) -> dict:
        # Digital goods: Telegram Stars only, no payment provider, exactly one price (Bot API "Payments").
        params = call.params
        if params.get("currency") != "XTR":
            raise ApiError(400, "Bad Request: currency must be XTR for payments in Telegram Stars")
        if params.get("provider_token"):
            raise ApiError(400, "Bad Request: provider_token must be empty for payments in Telegram Stars")
        prices = params.get("prices")
        if not isinstance(prices, list) or len(prices) != 1 or int(prices[0].get("amount", 0)) <= 0:
            raise ApiError(400, "Bad Request: exactly one price is expected for payments in Telegram Stars")
        payload = params.get("payload", "")
        if not 1 <= len(payload.encode()) <= 128:
            raise ApiError(400, "Bad Request: invoice payload must be 1-128 bytes")
        self.invoices.append(dict(params))
        invoice = {"title": params["title"], "description": params["description"],
                   "start_parameter": params.get("start_parameter", ""), "currency": "XTR",
                   "total_amount": int(prices[0]["amount"])}
        return self._bot_message(call, {"invoice": invoice})

    async def _m_answerPreCheckoutQuery(self, call: Call) -> bool:
        query_id = call.params["pre_checkout_query_id"]
        if query_id not in self.pre_checkout_asked:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query id is invalid")
        if query_id in self.pre_checkout_answers:
            raise ApiError(400, "Bad Request: query is already answered")
        ok = str(call.params.get("ok")).lower() == "true"
        if not ok and not call.params.get("error_message"):
            raise ApiError(400, "Bad Request: error_message is required when ok is false")
        self.pre_checkout_answers[query_id] = {"ok": ok, "error_message": call.params.get("error_message"),
                                               "at": call.at}
        return True

    async def _m_refundStarPayment(self, call: Call) -> bool:
        charge, user_id = call.params["telegram_payment_charge_id"], call.params["user_id"]
        paid = next((t for t in self.star_transactions if t["id"] == charge and "source" in t), None)
        if paid is None or paid["source"]["user"]["id"] != user_id:
            raise ApiError(400, "Bad Request: CHARGE_ID_INVALID")
        if any(t["id"] == charge and "receiver" in t for t in self.star_transactions):
            raise ApiError(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        self.refunds.append({"user_id": user_id, "telegram_payment_charge_id": charge})
        self.star_transactions.append({"id": charge, "amount": paid["amount"], "date": int(time.time()),
                                       "receiver": {"type": "user", "transaction_type": "invoice_payment",
                                                    "user": paid["source"]["user"]}})
        return True

    async def _m_getStarTransactions(self, call: Call) -> dict:
        # Telegram lists the newest first; offset counts from there, limit 1-100 (default 100).
        offset, limit = int(call.params.get("offset", 0)), int(call.params.get("limit", 100))
        newest_first = list(reversed(self.star_transactions))
        return {"transactions": newest_first[offset:offset + max(1, min(limit, 100))]}

    async def _m_getChatMember(self, call: Call) -> dict:
        user_id = int(call.params["user_id"])
        if user_id != self.bot_user["id"] and user_id not in self.admins:
            return {"status": "member", "user": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}}
        who = self.bot_user if user_id == self.bot_user["id"] else {"id": user_id, "is_bot": False,
                                                                      "first_name": f"user{user_id}"}
        return {"status": "administrator", "user": who, "can_be_edited": False, "is_anonymous": False,
                "can_manage_chat": True, "can_delete_messages": True, "can_manage_video_chats": False,
                "can_restrict_members": False, "can_promote_members": False, "can_change_info": False,
                "can_invite_users": True, "can_post_stories": False, "can_edit_stories": False,
                "can_delete_stories": False}

    # -- messages --------------------------------------------------------------------------------------------------

    async def _user_message(self, chat: dict, sender: dict, content: dict, *, caption: str | None = None,
                            reply_to: dict | None = None, thread_id: int | None = None) -> dict:
        self.chats[chat["id"]] = chat
        message = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat, "from": sender,
                   **content}
        if caption is not None:
            message["caption"] = caption
            if caption.startswith("/"):
                message["caption_entities"] = [{"type": "bot_command", "offset": 0,
                                                "length": len(caption.split()[0])}]
        if reply_to is not None:
            message["reply_to_message"] = _without_reply(reply_to)
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self.messages[(chat["id"], message["message_id"])] = message
        await self.push("message", message)
        return message

    def _bot_message(self, call: Call, content: dict) -> dict:
        chat = self._chat(call.params["chat_id"])
        message = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat,
                   "from": self.bot_user, **content}
        if call.reply_to is not None:
            original = self.messages.get((chat["id"], call.reply_to))
            if original is None and not call.params.get("reply_parameters", {}).get("allow_sending_without_reply"):
                raise ApiError(400, "Bad Request: message to be replied not found")
            if original is not None:
                message["reply_to_message"] = _without_reply(original)
        if "reply_markup" in call.params:
            message["reply_markup"] = call.params["reply_markup"]
        if "message_thread_id" in call.params:
            message["message_thread_id"] = call.params["message_thread_id"]
            message["is_topic_message"] = True
        self.messages[(chat["id"], message["message_id"])] = message
        return message

    def _chat(self, chat_id: int) -> dict:
        chat = self.chats.get(chat_id)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _existing(self, call: Call, missing: str) -> dict:
        message = self.messages.get((call.params["chat_id"], call.params["message_id"]))
        if message is None:
            raise ApiError(400, f"Bad Request: {missing}")
        return message


def _without_reply(message: dict) -> dict:
    # Telegram nests one level only: a reply_to_message has no reply_to_message of its own.
    return {key: value for key, value in message.items() if key != "reply_to_message"}


def _price(invoice: dict) -> int:
    """An invoice's one price, in Stars."""
    return int(invoice["prices"][0]["amount"])


def _is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"  # an ISO media file's first box


def _caption(call: Call) -> dict:
    return {"caption": call.params["caption"]} if "caption" in call.params else {}


async def _decode(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Form or multipart parameters → values (JSON-decoded where PTB encodes them) and uploaded files."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        raw: dict[str, Any] = await request.json()
    else:
        raw = dict(await request.post())
    for key, value in raw.items():
        if isinstance(value, web.FileField):
            files[key] = value.file.read()
        elif key in JSON_PARAMS and isinstance(value, str):
            params[key] = json.loads(value)
        elif key in INT_PARAMS and isinstance(value, str):
            params[key] = int(value) if value.lstrip("-").isdigit() else value
        else:
            params[key] = value
    return params, files
