"""A fake Civitai on 127.0.0.1: the public API's version metadata, and downloads that redirect to storage.

It speaks the shapes of Civitai's REST API (`/api/v1/model-versions/{id}` with `files[].hashes.SHA256`,
`/api/download/models/{id}` answering a redirect to a signed storage URL, 401 for login-only models without a key)
and can misbehave on request, as a hostile or broken host would: serve other bytes than it hashed, cut the
connection mid-download, send a body that never ends, announce a huge Content-Length or none, trickle a byte at a
time, answer endless or malformed JSON. Every loop is bounded (ENDLESS bytes at most), so a client without limits
still ends, late, and its test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web

ENDLESS = 64 << 20  # what "never ends" means here: more than any test's cap, small enough to end in seconds
_LISTED = object()  # sizeKB as the data's real size


@dataclass
class FakeVersion:
    """One model version: its file, what the API says about it, and how the fake serves it."""

    version_id: int
    model_id: int
    data: bytes
    name: str = "clay.safetensors"
    model_type: str = "LORA"
    login_required: bool = False
    served: bytes | None = None  # bytes the download sends instead of ``data`` (a corrupted transfer)
    cut_after: int | None = None  # close the connection after this many bytes of a response...
    cuts: int = 0  # ...this many times
    extra_files: list[dict] = field(default_factory=list)  # other files[] entries (a .ckpt, training data)
    listed_name: str | None = None  # the file name the metadata gives, when it differs (a hostile one)
    metadata: object = None  # answer this JSON instead of the version's metadata (a broken API)
    raw_metadata: bytes | None = None  # answer these bytes as application/json (NaN, deep nesting, not JSON)
    endless_metadata: bool = False  # a JSON answer that goes on and on (up to ENDLESS bytes)
    metadata_length: int | None = None  # the Content-Length the metadata answer announces
    trickle_metadata: float = 0.0  # seconds between the metadata answer's bytes, sent one at a time
    model_name: str = "Fake Clay"  # model.name in the metadata (a hostile one: newlines, ANSI codes)
    size_kb: object = _LISTED  # files[].sizeKB: the real size, None to leave it out, or any other value
    endless: bool = False  # after the file, zeros without end (no Content-Length; up to ENDLESS bytes)
    content_length: int | None = None  # the Content-Length the download announces, when it lies
    trickle: float = 0.0  # seconds between the download's bytes, sent one at a time

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class FakeCivitai:
    """The server, run in a thread with its own event loop (claybot's downloader is synchronous)."""

    token = "civitai-secret-key-1234"

    def __init__(self) -> None:
        self.versions: dict[int, FakeVersion] = {}
        self.requests: list[dict] = []  # method, path, query, authorization, range, host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Civitai did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def add(self, version: FakeVersion) -> FakeVersion:
        self.versions[version.version_id] = version
        return version

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    # -- server ---------------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/v1/model-versions/{id}", self._metadata)
        app.router.add_get("/api/download/models/{id}", self._download)
        app.router.add_get("/storage/{id}/{name}", self._storage)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _record(self, request: web.Request) -> None:
        self.requests.append({"method": request.method, "path": request.path, "query": request.query_string,
                              "authorization": request.headers.get("Authorization"),
                              "range": request.headers.get("Range"), "host": request.host})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _metadata(self, request: web.Request) -> web.Response:
        self._record(request)
        version = self.versions.get(int(request.match_info["id"]))
        if version is None:
            return web.json_response({"error": "No version with id"}, status=404)
        if version.raw_metadata is not None:
            return web.Response(body=version.raw_metadata, content_type="application/json")
        if version.endless_metadata:
            return await self._endless_json(request)
        if version.metadata is not None:
            return web.json_response(version.metadata)
        download = f"{self.base}/api/download/models/{version.version_id}"
        files = [*version.extra_files, {
            "id": version.version_id * 10, "name": version.listed_name or version.name, "type": "Model",
            "sizeKB": len(version.data) / 1024 if version.size_kb is _LISTED else version.size_kb,
            "metadata": {"format": "SafeTensor", "size": None, "fp": None},
            "hashes": {"AutoV2": version.sha256[:10].upper(), "SHA256": version.sha256.upper(), "CRC32": "0"},
            "downloadUrl": f"{download}?type=Model&format=SafeTensor", "primary": True,
        }]
        meta = {
            "id": version.version_id, "modelId": version.model_id, "name": "v2.0", "baseModel": "SDXL 1.0",
            "air": f"urn:air:sdxl:{version.model_type.lower()}:civitai:{version.model_id}@{version.version_id}",
            "trainedWords": ["clay"], "model": {"name": version.model_name, "type": version.model_type, "nsfw": False},
            "files": files, "downloadUrl": download,
        }
        if files[-1]["sizeKB"] is None:
            del files[-1]["sizeKB"]
        body = json.dumps(meta).encode()
        if version.trickle_metadata or version.metadata_length is not None:
            return await self._send(request, body, version.metadata_length, version.trickle_metadata,
                                    "application/json")
        return web.Response(body=body, content_type="application/json")

    async def _endless_json(self, request: web.Request) -> web.StreamResponse:
        """``{"files": [{…}, {…}, …`` without end (chunked, no Content-Length), until ENDLESS bytes or a hang-up."""
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        item = json.dumps({"name": "x.safetensors", "hashes": {"SHA256": "0" * 64}}).encode() + b","
        chunk = item * (65536 // len(item))
        await response.write(b'{"files": [')
        sent = 0
        while sent < ENDLESS:
            await response.write(chunk)
            sent += len(chunk)
        return response

    async def _send(self, request: web.Request, body: bytes, length: int | None, trickle: float,
                    content_type: str, status: int = 200, headers: dict | None = None) -> web.StreamResponse:
        """Send ``body`` under the announced Content-Length (None: the real one), one byte every ``trickle`` s."""
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = content_type
        response.content_length = len(body) if length is None else length
        await response.prepare(request)
        if trickle:
            for index in range(len(body)):  # ends, late, for a client that never gives up
                await response.write(body[index:index + 1])
                await asyncio.sleep(trickle)
        else:
            await response.write(body)
        if length is not None and length != len(body):
            request.transport.close()  # a lie about the length: the connection ends short of it
            return response
        await response.write_eof()
        return response

    async def _download(self, request: web.Request) -> web.Response:
        self._record(request)
        version = self.versions.get(int(request.match_info["id"]))
        if version is None:
            return web.json_response({"error": "Not found"}, status=404)
        if version.login_required and not self._authorized(request):
            return web.json_response({"error": "Unauthorized", "message": "The creator of this asset requires you "
                                      "to be logged in to download it"}, status=401)
        # Storage lives on another host name, as Civitai's does: a client must not carry the API key there.
        raise web.HTTPTemporaryRedirect(
            f"http://localhost:{self.port}/storage/{version.version_id}/{version.name}?X-Signature=abc")

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        version = self.versions[int(request.match_info["id"])]
        body = version.data if version.served is None else version.served
        if version.endless:
            return await self._endless(request, body)
        start = 0
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[6:-1])
            if start >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
        ranged_headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if start else None
        if version.trickle or version.content_length is not None:
            return await self._send(request, body[start:], version.content_length, version.trickle,
                                    "application/octet-stream", 206 if start else 200, ranged_headers)
        response = web.StreamResponse(status=206 if start else 200, headers=ranged_headers)
        response.content_type = "application/octet-stream"
        response.content_length = len(body) - start
        await response.prepare(request)
        chunk = body[start:]
        if version.cuts > 0 and version.cut_after is not None:
            version.cuts -= 1
            await response.write(chunk[: version.cut_after])
            await asyncio.sleep(0.05)
            request.transport.close()  # the connection drops mid-file, Content-Length unmet
            return response
        await response.write(chunk)
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """The file, then zeros without end (chunked, no Content-Length; Range ignored), until ENDLESS or a hang-up."""
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        await response.write(body)
        zeros = bytes(65536)
        sent = len(body)
        while sent < ENDLESS:
            await response.write(zeros)
            sent += len(zeros)
        return response
