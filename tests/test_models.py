"""Where a model named in config.toml comes from: local paths, Hugging Face repo ids, URLs with a sha256 — offline."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import types
from pathlib import Path

import pytest

from pipeline.core import models
from pipeline.core.errors import ModelError
from pipeline.core.settings import UrlModel

LORA_BYTES = b"pretend safetensors bytes " * 100
LORA_SHA = hashlib.sha256(LORA_BYTES).hexdigest()


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- parse ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "value", "filename"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "repo", "stabilityai/stable-diffusion-xl-base-1.0", ""),
        ("SmilingWolf/wd-vit-tagger-v3", "repo", "SmilingWolf/wd-vit-tagger-v3", ""),
        ("owner/name:clay.safetensors", "repo", "owner/name", "clay.safetensors"),
        ("owner/name:loras/clay_v2.safetensors", "repo", "owner/name", "loras/clay_v2.safetensors"),
        ("/abs/x.safetensors", "local", "/abs/x.safetensors", ""),
        ("./x", "local", "./x", ""),
        ("../models/x", "local", "../models/x", ""),
        ("~/models/x.safetensors", "local", "~/models/x.safetensors", ""),
        ("models/x.safetensors", "local", "models/x.safetensors", ""),
        ("models/CLAYMATE_V2.03_.safetensors", "local", "models/CLAYMATE_V2.03_.safetensors", ""),
        ("", "none", "", ""),
    ],
)
def test_parse_sorts_a_spec_into_repo_local_or_none(spec, kind, value, filename):
    ref = models.parse(spec)
    assert (ref.kind, ref.value, ref.filename) == (kind, value, filename)


def test_parse_takes_an_existing_relative_folder_for_a_local_path(tmp_path, monkeypatch):
    # "owner/name" that exists on disk is the folder, not a repo id.
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert models.parse("owner/name").kind == "local"


def test_parse_sorts_a_url_model_as_url_with_its_digest_and_file_name():
    ref = models.parse(UrlModel(url="https://example.invalid/loras/clay.safetensors?download=1", sha256=LORA_SHA))
    assert ref.kind == "url"
    assert ref.value == "https://example.invalid/loras/clay.safetensors?download=1"
    assert ref.sha256 == LORA_SHA
    assert ref.filename == "clay.safetensors"
    named = models.parse(UrlModel(url="https://example.invalid/dl/123", sha256=LORA_SHA, filename="clay.safetensors"))
    assert named.filename == "clay.safetensors"


def test_describe_names_a_repo_file_with_its_repo():
    assert models.describe("owner/name:clay.safetensors") == "owner/name:clay.safetensors"
    assert models.describe("") == "(none)"


def test_absolutize_makes_local_paths_relative_to_the_config_folder_and_leaves_repos(tmp_path):
    assert models.absolutize("models/x.safetensors", tmp_path) == str(tmp_path / "models" / "x.safetensors")
    assert models.absolutize("owner/name", tmp_path) == "owner/name"
    assert models.absolutize("owner/name:clay.safetensors", tmp_path) == "owner/name:clay.safetensors"
    url = UrlModel(url="https://example.invalid/clay.safetensors", sha256=LORA_SHA)
    assert models.absolutize(url, tmp_path) is url


# -- check_local ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_check_local_refuses_pickled_checkpoints(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: .*pickled checkpoint.*\.safetensors"):
        models.check_local(str(path), "styles.clay.lora")


def test_check_local_accepts_an_existing_safetensors_file_and_a_folder(tmp_path):
    path = tmp_path / "clay.safetensors"
    path.write_bytes(b"x")
    models.check_local(str(path), "styles.clay.lora")
    models.check_local(str(tmp_path), "tagger.model")


def test_check_local_names_the_key_of_a_missing_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: no file or folder at .*nope\.safetensors"):
        models.check_local(str(missing), "styles.clay.lora")


def test_resolve_returns_a_local_path_as_it_is_and_checks_it(tmp_path):
    path = tmp_path / "clay.safetensors"
    path.write_bytes(b"x")
    assert models.resolve(str(path), "styles.clay.lora", tmp_path / "cache") == path
    pickled = tmp_path / "sdxl.ckpt"
    pickled.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"pipeline\.base_model: .*pickled"):
        models.resolve(str(pickled), "pipeline.base_model", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_resolve_of_an_empty_spec_names_the_key():
    with pytest.raises(ModelError, match=r"pipeline\.vae is empty"):
        models.resolve("", "pipeline.vae", "/nonexistent-cache")


# -- Hugging Face repo ids, offline ----------------------------------------------------------------------------------


@pytest.fixture
def hub_at_closed_port(monkeypatch) -> str:
    """Point huggingface_hub at a closed port on 127.0.0.1.

    huggingface_hub reads HF_ENDPOINT once, at import (into ``constants.ENDPOINT`` and the resolve-URL template),
    so setting the variable now would not reach it: patch the constants it reads at call time instead.
    """
    import huggingface_hub.constants as hf_constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for anything that imports huggingface_hub afresh
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    return endpoint


def test_unreachable_hub_fails_fast_naming_key_repo_and_the_local_path_way_out(hub_at_closed_port, tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        models.resolve("someone/some-model", "tagger.model", tmp_path,
                       allow_patterns=["model.onnx", "selected_tags.csv"])
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith("tagger.model: someone/some-model is not in the cache")
    assert "the Hugging Face Hub cannot be reached (127.0.0.1: Connection refused)" in message
    assert "run `claybot models` once, or download it yourself and set tagger.model to its local path" in message
    assert elapsed < 10, f"took {elapsed:.1f}s: huggingface_hub retried for too long"
    assert not list((tmp_path / "hub").rglob("*.onnx"))


@pytest.fixture
def hub_sleeps(monkeypatch) -> list[float]:
    """The waits huggingface_hub's retry loop would make (recorded, not slept)."""
    import huggingface_hub.utils._http as hf_http

    sleeps: list[float] = []
    fast_time = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    fast_time.sleep = sleeps.append
    monkeypatch.setattr(hf_http, "time", fast_time)
    return sleeps


def test_unreachable_hub_for_one_file_of_a_repo_does_not_retry(hub_at_closed_port, hub_sleeps, tmp_path):
    # hf_hub_download alone retries a refused HEAD 5 times with backoff (1+2+4+8+8 s = 23 s) when nothing is cached,
    # and no environment variable shortens that: resolve asks the network once, then looks in the cache.
    with pytest.raises(ModelError) as caught:
        models.resolve("someone/some-model:clay.safetensors", "styles.clay.lora", tmp_path)
    message = str(caught.value)
    assert message.startswith("styles.clay.lora: someone/some-model:clay.safetensors is not in the cache")
    assert "the Hugging Face Hub cannot be reached" in message
    assert "set styles.clay.lora to its local path" in message
    assert hub_sleeps == [], "huggingface_hub's retry loop ran"


def _cached_hub_file(cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """A file laid out as huggingface_hub's cache keeps it (refs/main → snapshot folder)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_unreachable_hub_with_the_model_cached_uses_it_at_once(hub_at_closed_port, hub_sleeps, tmp_path):
    cached = _cached_hub_file(tmp_path, "someone/some-model", "clay.safetensors", LORA_BYTES)
    path = models.resolve("someone/some-model:clay.safetensors", "styles.clay.lora", tmp_path)
    assert path == cached and path.read_bytes() == LORA_BYTES
    assert hub_sleeps == []


def test_hf_hub_offline_is_honoured_and_named(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: someone/other:clay\.safetensors is not in the cache .*"
                                         r"cannot be reached \(HF_HUB_OFFLINE is set\)"):
        models.resolve("someone/other:clay.safetensors", "styles.clay.lora", tmp_path)
    cached = _cached_hub_file(tmp_path, "someone/other", "clay.safetensors", LORA_BYTES)
    assert models.resolve("someone/other:clay.safetensors", "styles.clay.lora", tmp_path) == cached


def test_a_hub_that_accepts_connections_but_never_answers_counts_as_unreachable(monkeypatch, tmp_path):
    # A captive network or a stuck proxy: TCP connects, no HTTP answer comes. The probe gives up after its timeouts.
    monkeypatch.setattr(models, "PROBE_TIMEOUT", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        reason = models.unreachable(url)
    assert reason is not None and reason.startswith("127.0.0.1: ")
    assert models.unreachable(url) == reason  # remembered: several models of one config wait once


# -- URLs with a sha256 ----------------------------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.requests: list[str] = []
        files = {"/clay.safetensors": LORA_BYTES}
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                requests.append(self.path)
                body = files.get(self.path.split("?", 1)[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def test_url_model_is_downloaded_once_into_the_cache_and_checked(server, tmp_path):
    spec = UrlModel(url=f"{server.base}/clay.safetensors", sha256=LORA_SHA)

    path = models.resolve(spec, "styles.clay.lora", tmp_path)

    assert path.read_bytes() == LORA_BYTES
    assert path.is_relative_to(tmp_path / "urls")
    assert path.name.endswith("clay.safetensors")
    assert server.requests == ["/clay.safetensors"]

    again = models.resolve(spec, "styles.clay.lora", tmp_path)
    assert again == path
    assert server.requests == ["/clay.safetensors"], "a cached file must not be fetched again"


def test_url_model_with_the_wrong_sha256_is_refused_naming_the_key(server, tmp_path):
    wrong = hashlib.sha256(b"something else").hexdigest()
    spec = UrlModel(url=f"{server.base}/clay.safetensors", sha256=wrong)

    with pytest.raises(ModelError) as caught:
        models.resolve(spec, "styles.clay.lora", tmp_path)

    message = str(caught.value)
    assert message.startswith("styles.clay.lora: ")
    assert f"does not match sha256 {wrong}" in message
    assert "set styles.clay.lora to its local path" in message
    assert server.requests == ["/clay.safetensors"]
    # The bad download is not kept where a later start would take it for the real file.
    assert not [p for p in (tmp_path / "urls").rglob("*") if p.is_file()]


def test_url_model_at_a_closed_port_names_the_url_and_the_key(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/clay.safetensors"
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        models.resolve(UrlModel(url=url, sha256=LORA_SHA), "styles.clay.lora", tmp_path)
    message = str(caught.value)
    assert message.startswith("styles.clay.lora: could not fetch")
    assert url in message
    assert "Download it yourself and set styles.clay.lora to its local path" in message
    assert time.monotonic() - started < 10


def test_url_model_missing_on_the_server_names_the_url_and_the_key(server, tmp_path):
    url = f"{server.base}/gone.safetensors"
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: could not fetch .*gone\.safetensors"):
        models.resolve(UrlModel(url=url, sha256=LORA_SHA), "styles.clay.lora", tmp_path)
    assert server.requests == ["/gone.safetensors"]


def test_two_url_models_with_one_file_name_do_not_collide_in_the_cache(server, tmp_path):
    first = models.resolve(UrlModel(url=f"{server.base}/clay.safetensors", sha256=LORA_SHA), "a", tmp_path)
    other_sha = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ModelError):
        models.resolve(UrlModel(url=f"{server.base}/clay.safetensors", sha256=other_sha), "b", tmp_path)
    assert Path(first).read_bytes() == LORA_BYTES  # the good cached file survives a bad one with its name
