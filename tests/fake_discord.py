"""A small fake Discord on 127.0.0.1 for tests: REST under /api/v10, a gateway websocket and file downloads.

The real discord.py client talks to it (``discord.api_base_url`` / ``discord.gateway_url`` point here). It keeps
what Discord would keep — messages, the interactions' original responses, registered commands, uploaded files —
and records every REST call (method, path, JSON body, uploaded files), so tests assert what a user would see.
Tests push gateway events (INTERACTION_CREATE, MESSAGE_REACTION_ADD, ENTITLEMENT_CREATE) with the helpers at the end.

Behaviours copied from Discord because the bot relies on them:
- JSON answers carry ``Content-Type: application/json`` exactly (discord.py parses nothing else as JSON);
- the interaction callback answers with the callback response JSON (``with_response=true``), never 204;
- after a deferral, the original response is a loading message; while it still loads, the first follow-up
  becomes the response itself and keeps the deferral's visibility (an "ephemeral" one is then public);
- for a button's interaction, ``@original`` is the message the button is on;
- ``attachment://name`` in embeds resolves to the uploaded file's URL;
- premium apps: a purchase of a SKU is an entitlement (``buy``), listed by ``GET applications/<app>/entitlements``
  (oldest first, filtered by user_id, sku_ids, guild_id, exclude_ended, exclude_deleted, after/before, limit) and
  marked consumed by ``POST applications/<app>/entitlements/<id>/consume``; ENTITLEMENT_CREATE may come twice.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import discord
from aiohttp import WSMsgType, web

logger = logging.getLogger(__name__)

API = "/api/v10"
EPHEMERAL, LOADING = 1 << 6, 1 << 7
MANAGE_GUILD = discord.Permissions(manage_guild=True).value
MEMBER_PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, read_message_history=True,
                                         attach_files=True, add_reactions=True, use_application_commands=True).value
OPTION_TYPES = {"attachment": 11, "number": 10, "integer": 4, "boolean": 5, "string": 3, "channel": 7}
_counter = itertools.count()


def snowflake() -> int:
    """A unique Discord id made now (interactions' ids tell discord.py when they were created)."""
    return discord.utils.time_snowflake(discord.utils.utcnow()) + next(_counter) % (1 << 22)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str  # after /api/v10, e.g. "/channels/1/messages"
    query: dict[str, str]
    json: Any  # the JSON body, or the payload_json of a multipart body
    files: dict[str, bytes] = field(default_factory=dict)  # uploaded file name → bytes
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeInteraction:
    """An interaction the test sent, and what Discord remembers about its response."""

    id: int
    token: str
    type: int
    channel_id: int
    payload: dict
    sent_at: float = 0.0  # when the gateway event went out (time.monotonic)
    original: int | None = None  # message id of the original response
    loading: bool = False


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    seq: int = 0
    identified: bool = False


class FakeDiscord:
    """One application with one server of two text channels, and users with and without Manage Server."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.app_id = snowflake()
        self.bot_user = self.user("claybot", bot=True, id=self.app_id)
        self.owner = self.user("owner")
        self.admin = self.user("ada")
        self.alice = self.user("alice")
        self.bob = self.user("bob")
        self.guild_id = snowflake()
        self.channel_id = snowflake()
        self.other_channel_id = snowflake()
        self.nsfw_channel_id = snowflake()  # an age-restricted channel
        self.allow_message_content = True  # the portal switch for the privileged intent
        self.calls: list[Call] = []
        self.messages: dict[int, dict] = {}
        self.deleted: list[int] = []
        self.downloads: list[str] = []  # paths of served files, in order
        self.commands: dict[str, list[dict]] = {}  # "global" or a guild id → registered definitions
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self.identify_payloads: list[dict] = []  # the IDENTIFY payloads, token removed
        self.odd_answers: list[tuple[str, str, int, Any]] = []  # see answer_oddly
        self.entitlements: dict[int, dict] = {}  # id → the entitlement as Discord keeps it (premium purchases)
        self._files: dict[str, tuple[bytes, str]] = {}  # path → (bytes, content type)
        self._connections: list[_Connection] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/gw/", self._gateway)
        app.router.add_get("/files/{id}/{name}", self._file)
        app.router.add_route("*", API + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for connection in list(self._connections):
            await connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return self.base + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw/"

    # -- payloads --------------------------------------------------------------------------------------------------

    @staticmethod
    def user(name: str, *, bot: bool = False, id: int | None = None) -> dict:
        return {"id": str(id or snowflake()), "username": name, "discriminator": "0", "global_name": name,
                "avatar": None, "bot": bot, "public_flags": 0}

    def member(self, user: dict, *, permissions: int = MEMBER_PERMISSIONS) -> dict:
        return {"user": user, "roles": [], "joined_at": now_iso(), "deaf": False, "mute": False, "flags": 0,
                "pending": False, "nick": None, "avatar": None, "permissions": str(permissions)}

    def channel(self, channel_id: int) -> dict:
        name = {self.channel_id: "photos", self.nsfw_channel_id: "after-dark"}.get(channel_id, "general")
        return {"id": str(channel_id), "type": 0, "guild_id": str(self.guild_id), "name": name, "position": 0,
                "permission_overwrites": [], "nsfw": channel_id == self.nsfw_channel_id, "parent_id": None,
                "topic": None,
                "rate_limit_per_user": 0, "last_message_id": None, "flags": 0}

    def guild(self) -> dict:
        everyone = {"id": str(self.guild_id), "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS),
                    "position": 0, "color": 0, "colors": {"primary_color": 0}, "hoist": False, "managed": False,
                    "mentionable": False, "flags": 0}
        return {"id": str(self.guild_id), "name": "Clay Club", "icon": None, "splash": None, "discovery_splash": None,
                "owner_id": self.owner["id"], "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
                "default_message_notifications": 0, "explicit_content_filter": 0, "roles": [everyone],
                "emojis": [], "stickers": [], "features": [], "mfa_level": 0, "system_channel_id": None,
                "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None, "description": None,
                "banner": None, "premium_tier": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
                "nsfw_level": 0, "premium_progress_bar_enabled": False, "joined_at": now_iso(), "large": False,
                "unavailable": False, "member_count": 4, "voice_states": [], "presences": [], "threads": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
                "members": [self.member(self.bot_user, permissions=MEMBER_PERMISSIONS)],
                "channels": [self.channel(self.channel_id), self.channel(self.other_channel_id),
                             self.channel(self.nsfw_channel_id)]}

    def add_file(self, data: bytes, filename: str, content_type: str = "application/octet-stream") -> str:
        """Serve bytes at a new URL on the fake; returns the URL."""
        path = f"/files/{snowflake()}/{filename}"
        self._files[path] = (data, content_type)
        return self.base + path

    def attachment(self, data: bytes, filename: str = "photo.jpg", content_type: str | None = "image/jpeg", *,
                   size: int | None = None, width: int | None = 128, height: int | None = 96) -> dict:
        """An attachment whose file the fake serves; ``size`` may claim another size than the bytes have."""
        url = self.add_file(data, filename, content_type or "application/octet-stream")
        payload = {"id": str(snowflake()), "filename": filename, "size": len(data) if size is None else size,
                   "url": url, "proxy_url": url}
        if content_type is not None:
            payload["content_type"] = content_type
        if width is not None and content_type and content_type.startswith("image/"):
            payload |= {"width": width, "height": height}
        return payload

    def image_embed(self, data: bytes, filename: str = "cat.jpg") -> dict:
        """The embed Discord makes for a posted image link (the file comes through Discord's media proxy)."""
        proxy = self.add_file(data, filename, "image/jpeg")
        return {"type": "image", "url": f"https://example.com/{filename}",
                "thumbnail": {"url": f"https://example.com/{filename}", "proxy_url": proxy, "width": 128,
                              "height": 96}}

    def post_message(self, author: dict, content: str = "", *, attachments: Iterable[dict] = (),
                     embeds: Iterable[dict] = (), channel_id: int | None = None) -> dict:
        """A message someone posted (the bot learns of it only by fetching it or through an interaction)."""
        return self._new_message(channel_id or self.channel_id, author, content, attachments=list(attachments),
                                 embeds=list(embeds))

    def _new_message(self, channel_id: int, author: dict, content: str | None, *, attachments: list[dict] = (),
                     embeds: list[dict] = (), components: list[dict] = (), flags: int = 0,
                     reference: dict | None = None, interaction: FakeInteraction | None = None) -> dict:
        message = {"id": str(snowflake()), "channel_id": str(channel_id), "guild_id": str(self.guild_id),
                   "author": author, "content": content or "", "timestamp": now_iso(), "edited_timestamp": None,
                   "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
                   "attachments": list(attachments), "embeds": list(embeds), "components": list(components),
                   "pinned": False, "type": 0, "flags": flags}
        if reference:
            message["message_reference"] = reference
            message["type"] = 19
        if interaction is not None:
            message["application_id"] = str(self.app_id)
            message["webhook_id"] = str(self.app_id)
            message["interaction_metadata"] = {"id": str(interaction.id), "type": interaction.type,
                                               "user": interaction.payload["member"]["user"]}
        self.messages[int(message["id"])] = message
        return message

    # -- what the tests send -----------------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict, *, connect_timeout: float = 30.0) -> None:
        """Send a gateway event to the newest identified connection (the bot under test), once there is one: a bot
        registers its commands before it connects to the gateway, and a test may act as soon as it sees them."""
        deadline = time.monotonic() + connect_timeout
        while not (live := [c for c in self._connections if c.identified and not c.ws.closed]):
            assert time.monotonic() < deadline, "no bot is connected to the fake gateway"
            await asyncio.sleep(0.02)
        connection = live[-1]
        if event == "INTERACTION_CREATE":
            self.interactions[data["token"]].sent_at = time.monotonic()
        connection.seq += 1
        await connection.ws.send_json({"op": 0, "t": event, "s": connection.seq, "d": data})

    def command(self, name: str, guild_id: int | None = None) -> dict:
        """The registered definition of a command (as the bot synced it)."""
        for definition in self.commands.get(str(guild_id) if guild_id else "global", []):
            if definition["name"] == name:
                return definition
        raise AssertionError(f"command {name!r} was never registered; have {self.commands}")

    def _interaction(self, type: int, data: dict, user: dict, *, permissions: int, channel_id: int | None,
                     size_limit: int, message: dict | None = None) -> FakeInteraction:
        channel_id = channel_id or self.channel_id
        interaction = FakeInteraction(snowflake(), secrets.token_urlsafe(24), type, channel_id, {})
        interaction.payload = {
            "id": str(interaction.id), "application_id": str(self.app_id), "type": type, "data": data,
            "guild_id": str(self.guild_id), "channel_id": str(channel_id), "channel": self.channel(channel_id),
            "member": self.member(user, permissions=permissions), "token": interaction.token, "version": 1,
            "app_permissions": str(MEMBER_PERMISSIONS), "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
            "attachment_size_limit": size_limit,
        }
        if message is not None:
            interaction.payload["message"] = message
            interaction.original = int(message["id"])
        self.interactions[interaction.token] = interaction
        return interaction

    async def slash(self, name: str, user: dict, *, permissions: int = MEMBER_PERMISSIONS,
                    channel_id: int | None = None, size_limit: int = 10 * 2**20, **options: Any) -> FakeInteraction:
        """A slash command with option values; attachments as ``attachment()`` dicts, channels as ids."""
        definition = self.command(name)
        types = {option["name"]: option["type"] for option in definition.get("options", [])}
        resolved: dict[str, dict] = {}
        values = []
        for key, value in options.items():
            option_type = types[key]
            if option_type == OPTION_TYPES["attachment"]:
                resolved.setdefault("attachments", {})[value["id"]] = value
                value = value["id"]
            elif option_type == OPTION_TYPES["channel"]:
                resolved.setdefault("channels", {})[str(value)] = {**self.channel(value), "permissions": "0"}
                value = str(value)
            values.append({"name": key, "type": option_type, "value": value})
        data = {"id": definition["id"], "name": name, "type": 1, "options": values, "resolved": resolved}
        interaction = self._interaction(2, data, user, permissions=permissions, channel_id=channel_id,
                                        size_limit=size_limit)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def context_menu(self, name: str, message: dict, user: dict, *,
                           size_limit: int = 10 * 2**20) -> FakeInteraction:
        """A message context-menu command on ``message`` (Discord resolves the message, images included)."""
        definition = self.command(name)
        data = {"id": definition["id"], "name": name, "type": 3, "target_id": message["id"],
                "resolved": {"messages": {message["id"]: message}}}
        interaction = self._interaction(2, data, user, permissions=MEMBER_PERMISSIONS,
                                        channel_id=int(message["channel_id"]), size_limit=size_limit)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def press(self, message_id: int, label: str, user: dict, *,
                    size_limit: int = 10 * 2**20) -> FakeInteraction:
        """Press the button labelled ``label`` on a stored message (``size_limit``: the interaction's
        attachment_size_limit)."""
        message = self.messages[message_id]
        buttons = [c for row in message["components"] for c in row.get("components", [])]
        button = next((b for b in buttons if b.get("label") == label), None)
        assert button is not None, f"no button {label!r} on message {message_id}: {buttons}"
        data = {"custom_id": button["custom_id"], "component_type": 2}
        interaction = self._interaction(3, data, user, permissions=MEMBER_PERMISSIONS,
                                        channel_id=int(message["channel_id"]), size_limit=size_limit,
                                        message=message)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def react(self, message: dict, user: dict, emoji: str = "\N{AMPHORA}") -> None:
        """Someone adds a reaction to a message."""
        await self.dispatch("MESSAGE_REACTION_ADD", {
            "user_id": user["id"], "channel_id": message["channel_id"], "message_id": message["id"],
            "guild_id": str(self.guild_id), "emoji": {"id": None, "name": emoji}, "member": self.member(user),
            "message_author_id": message["author"]["id"], "burst": False, "type": 0})

    def entitlement(self, user: dict, sku_id: int | str, *, test: bool = True) -> dict:
        """Someone bought a (consumable) SKU: Discord keeps the entitlement, unconsumed, whether or not the bot is
        connected to hear of it. ``test``: a purchase in the application's test mode (type 4, no start or end)."""
        payload: dict[str, Any] = {"id": str(snowflake()), "sku_id": str(sku_id), "application_id": str(self.app_id),
                                   "user_id": user["id"], "type": 4 if test else 1, "deleted": False,
                                   "consumed": False}
        if not test:
            payload["starts_at"] = now_iso()
        self.entitlements[int(payload["id"])] = payload
        return payload

    async def buy(self, user: dict, sku_id: int | str, *, times: int = 1) -> dict:
        """Someone bought a SKU while the bot is connected: the entitlement, and ENTITLEMENT_CREATE ``times`` times
        (Discord has delivered it twice)."""
        payload = self.entitlement(user, sku_id)
        for _ in range(times):
            await self.entitlement_created(payload)
        return payload

    async def entitlement_created(self, payload: dict) -> None:
        """Send ENTITLEMENT_CREATE for a kept entitlement (again, if a test likes)."""
        await self.dispatch("ENTITLEMENT_CREATE", dict(payload))

    def consumed(self, entitlement: dict) -> bool:
        """Whether the bot consumed this entitlement."""
        return bool(self.entitlements[int(entitlement["id"])]["consumed"])

    async def delete_message(self, message: dict) -> None:
        """Someone deletes a message: it is gone, and the gateway tells the bot (MESSAGE_DELETE)."""
        self._delete(int(message["id"]))
        await self.dispatch("MESSAGE_DELETE", {"id": message["id"], "channel_id": message["channel_id"],
                                               "guild_id": str(self.guild_id)})

    # -- what the tests look at --------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[Call], bool], *, timeout: float = 30.0, after: int = 0) -> Call:
        """The first recorded call (from index ``after``) that matches, waiting for it if need be."""
        def find() -> Call | None:
            return next((call for call in self.calls[after:] if predicate(call)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        return find()

    def calls_of(self, interaction: FakeInteraction) -> list[Call]:
        """Every call made with this interaction's token (callback, edits, follow-ups)."""
        return [call for call in self.calls if f"/{interaction.token}" in call.path]

    def original(self, interaction: FakeInteraction) -> dict | None:
        """The interaction's original response message as it stands."""
        return self.messages.get(interaction.original) if interaction.original else None

    # -- REST ------------------------------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Call:
        body: Any = None
        files: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files[part.filename] = bytes(await part.read())
        elif request.can_read_body:
            text = await request.text()
            body = json.loads(text) if text else None
        call = Call(request.method, request.path.removeprefix(API), dict(request.query), body, files)
        self.calls.append(call)
        return call

    def answer_oddly(self, method: str, path_end: str, status: int, body: Any) -> None:
        """Answer the next ``method`` call whose path ends with ``path_end`` with this (unexpected) status and body."""
        self.odd_answers.append((method, path_end, status, body))

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        call = await self._record(request)
        for odd in self.odd_answers:
            if call.method == odd[0] and call.path.endswith(odd[1]):
                self.odd_answers.remove(odd)
                async with self._changed:
                    self._changed.notify_all()
                return _json(odd[3], odd[2])
        try:
            return await self._route(request, call)
        except Exception as err:  # a 5xx would make discord.py retry for seconds; fail loudly at once instead
            logger.exception("fake Discord failed on %s %s", call.method, call.path)
            return _json({"message": f"the fake failed: {err!r}", "code": 0}, 400)
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _route(self, request: web.Request, call: Call) -> web.StreamResponse:
        parts = call.path.strip("/").split("/")
        webhook = parts[0] in ("webhooks", "interactions")
        if not webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        match call.method, parts:
            case "GET", ["users", "@me"]:
                return _json(self.bot_user)
            case "GET", ["oauth2", "applications", "@me"]:
                return _json({"id": str(self.app_id), "name": "claybot", "description": "", "icon": None,
                              "bot_public": True, "bot_require_code_grant": False, "owner": self.owner,
                              "verify_key": "00" * 32, "flags": 0, "team": None, "summary": "",
                              "rpc_origins": [], "bot": self.bot_user})
            case "GET", ["gateway"] | ["gateway", "bot"]:
                return _json({"url": self.gateway_url.rstrip("/"), "shards": 1,
                              "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0,
                                                      "max_concurrency": 1}})
            case "PUT", ["applications", _, "commands"]:
                return _json(self._register("global", call.json))
            case "PUT", ["applications", _, "guilds", guild_id, "commands"]:
                return _json(self._register(guild_id, call.json))
            case "POST", ["interactions", _, token, "callback"]:
                return self._callback(self.interactions[token], call)
            case _, ["webhooks", _, token, *rest]:
                return self._webhook(self.interactions[token], call, rest)
            case "GET", ["channels", _, "messages", message_id]:
                message = self.messages.get(int(message_id))
                return _json(message) if message else _json({"message": "Unknown Message", "code": 10008}, 404)
            case "POST", ["channels", channel_id, "messages"]:
                message = self._new_message(int(channel_id), self.bot_user, None,
                                            reference=(call.json or {}).get("message_reference"))
                return _json(self._edit(message, call))
            case "PATCH", ["channels", _, "messages", message_id]:
                return _json(self._edit(self.messages[int(message_id)], call))
            case "DELETE", ["channels", _, "messages", message_id]:
                self._delete(int(message_id))
                return web.Response(status=204)
            case "PUT" | "DELETE", ["channels", _, "messages", _, "reactions", _, "@me"]:
                return web.Response(status=204)
            case "GET", ["applications", app_id, "entitlements"] if app_id == str(self.app_id):
                return _json(self._list_entitlements(call.query))
            case "POST", ["applications", app_id, "entitlements", entitlement_id, "consume"] \
                    if app_id == str(self.app_id):
                found = self.entitlements.get(int(entitlement_id))
                if found is None or found["deleted"]:
                    return _json({"message": "Unknown Entitlement", "code": 10069}, 404)
                found["consumed"] = True
                return web.Response(status=204)
        return _json({"message": f"the fake has no route for {call.method} {call.path}", "code": 0}, 404)

    def _list_entitlements(self, query: dict[str, str]) -> list[dict]:
        """The application's entitlements as Discord lists them: oldest first, filtered, at most ``limit``."""
        found = sorted(self.entitlements.values(), key=lambda e: int(e["id"]))
        if "user_id" in query:
            found = [e for e in found if e.get("user_id") == query["user_id"]]
        if query.get("sku_ids"):
            skus = set(query["sku_ids"].split(","))
            found = [e for e in found if e["sku_id"] in skus]
        if "guild_id" in query:
            found = [e for e in found if e.get("guild_id") == query["guild_id"]]
        if query.get("exclude_ended") in ("1", "true"):
            now = datetime.datetime.now(datetime.UTC)
            found = [e for e in found if not e.get("ends_at") or datetime.datetime.fromisoformat(e["ends_at"]) > now]
        if query.get("exclude_deleted", "1") in ("1", "true"):
            found = [e for e in found if not e["deleted"]]
        if "after" in query:
            found = [e for e in found if int(e["id"]) > int(query["after"])]
        if "before" in query:
            found = [e for e in found if int(e["id"]) < int(query["before"])][-int(query.get("limit", 100)):]
        return found[:int(query.get("limit", 100))]

    def _register(self, where: str, definitions: list[dict]) -> list[dict]:
        registered = [{**d, "id": str(snowflake()), "application_id": str(self.app_id), "version": str(snowflake()),
                       "description": d.get("description", ""), "dm_permission": True, "nsfw": False}
                      for d in definitions]
        self.commands[where] = registered
        return registered

    def _callback(self, interaction: FakeInteraction, call: Call) -> web.Response:
        kind = call.json["type"]
        data = call.json.get("data") or {}
        message = None
        if kind in (4, 5):  # a message, or a deferral: a loading message to be edited later
            flags = int(data.get("flags") or 0) | (LOADING if kind == 5 else 0)
            message = self._new_message(interaction.channel_id, self.bot_user, data.get("content"), flags=flags,
                                        interaction=interaction)
            if kind == 4:
                self._edit(message, call, body=data)
            interaction.original, interaction.loading = int(message["id"]), kind == 5
        elif kind == 7:  # update the button's message now
            message = self._edit(self.messages[interaction.original], call, body=data)
        response = {"interaction": {"id": str(interaction.id), "type": interaction.type,
                                    "response_message_id": str(interaction.original) if interaction.original else None,
                                    "response_message_loading": kind == 5,
                                    "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL)},
                    "resource": {"type": kind, **({"message": message} if message else {})}}
        return _json(response)

    def _webhook(self, interaction: FakeInteraction, call: Call, rest: list[str]) -> web.Response:
        match call.method, rest:
            case "POST", []:  # a follow-up
                if interaction.loading:  # the first follow-up answers the deferral, with the deferral's flags
                    message = self.messages[interaction.original]
                    flags = message["flags"] & ~LOADING
                    interaction.loading = False
                    self._edit(message, call)
                    message["flags"] = flags
                    return _json(message)
                flags = int((call.json or {}).get("flags") or 0)
                message = self._new_message(interaction.channel_id, self.bot_user, None, flags=flags,
                                            interaction=interaction)
                return _json(self._edit(message, call))
            case _, ["messages", which]:
                message_id = interaction.original if which == "@original" else int(which)
                if message_id not in self.messages:
                    return _json({"message": "Unknown Message", "code": 10008}, 404)
                if call.method == "GET":
                    return _json(self.messages[message_id])
                if call.method == "DELETE":
                    self._delete(message_id)
                    return web.Response(status=204)
                if which == "@original":
                    interaction.loading = False
                    self.messages[message_id]["flags"] &= ~LOADING
                return _json(self._edit(self.messages[message_id], call))
        return _json({"message": f"the fake has no webhook route for {call.method} {call.path}", "code": 0}, 404)

    def _edit(self, message: dict, call: Call, body: dict | None = None) -> dict:
        """Apply a create/edit body (JSON or multipart) to a stored message, as Discord does."""
        body = call.json if body is None else body
        body = body or {}
        if "content" in body:
            message["content"] = body["content"] or ""
        if "components" in body:
            message["components"] = body["components"] or []
        uploads = list(call.files.items())
        if "attachments" in body or uploads:
            kept = {a["id"]: a for a in message["attachments"]}
            attachments = []
            for entry in body.get("attachments", [{"id": i} for i in range(len(uploads))]):
                if str(entry["id"]) in kept:
                    attachments.append(kept[str(entry["id"])])
                elif isinstance(entry["id"], int) and entry["id"] < len(uploads):
                    name, data = uploads[entry["id"]]
                    attachments.append(self.attachment(data, name, _content_type(name), width=None))
            message["attachments"] = attachments
        if "embeds" in body:
            message["embeds"] = [self._resolve_embed(embed, message["attachments"]) for embed in body["embeds"] or []]
        if call.method == "PATCH":
            message["edited_timestamp"] = now_iso()
        return message

    @staticmethod
    def _resolve_embed(embed: dict, attachments: list[dict]) -> dict:
        embed = {"type": "rich", **embed}
        for key in ("image", "thumbnail"):
            url = (embed.get(key) or {}).get("url", "")
            if url.startswith("attachment://"):
                found = next((a for a in attachments if a["filename"] == url.removeprefix("attachment://")), None)
                if found is not None:
                    embed[key] = {"url": found["url"], "proxy_url": found["proxy_url"]}
        return embed

    def _delete(self, message_id: int) -> None:
        self.messages.pop(message_id, None)
        self.deleted.append(message_id)

    async def _file(self, request: web.Request) -> web.Response:
        found = self._files.get(request.path)
        self.downloads.append(request.path)
        self.calls.append(Call("GET", request.path, dict(request.query), None))  # in order with the REST calls
        async with self._changed:
            self._changed.notify_all()
        if found is None:
            return web.Response(status=404)
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})

    # -- the gateway -----------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = _Connection(ws)
        self._connections.append(connection)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}})
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if message["op"] == 1:  # heartbeat
                    await ws.send_json({"op": 11})
                elif message["op"] == 2:  # identify
                    await self._identify(connection, message["d"])
                elif message["op"] == 6:  # resume: sessions are not kept here, so start a new one
                    await ws.send_json({"op": 9, "d": False})
        finally:
            self._connections.remove(connection)
        return ws

    async def _identify(self, connection: _Connection, payload: dict) -> None:
        token = payload.get("token")
        self.identify_payloads.append({k: v for k, v in payload.items() if k != "token"})
        if token != self.token:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        if payload["intents"] & discord.Intents(message_content=True).value and not self.allow_message_content:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        ready = {"v": 10, "user": self.bot_user, "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                 "session_id": secrets.token_hex(16), "resume_gateway_url": self.gateway_url,
                 "application": {"id": str(self.app_id), "flags": 0}, "private_channels": [], "relationships": []}
        for event, data in (("READY", ready), ("GUILD_CREATE", self.guild())):
            connection.seq += 1
            await connection.ws.send_json({"op": 0, "t": event, "s": connection.seq, "d": data})
        connection.identified = True


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": aiohttp's json_response adds "; charset=utf-8" and discord.py then sees text.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


def _content_type(filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
            "mp4": "video/mp4"}.get(
        suffix, "application/octet-stream")
