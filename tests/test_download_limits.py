"""Model downloads end, in bounded space and time, whatever the host does (a hostile fake Civitai on 127.0.0.1).

Each limit is set small here (a 1 MB cap, a sub-second window) so that a host that would run for hours is cut off in
a moment; the fake's own loops are bounded, so a client without limits ends too, late, and its test fails.
"""

from __future__ import annotations

import hashlib
import resource
import signal
import socket
import threading
from collections import namedtuple
from pathlib import Path

import pytest

from pipeline.core import downloads, models
from pipeline.core.downloads import MB, DownloadLimits
from pipeline.core.errors import ModelError
from pipeline.core.settings import PipelineSettings, UrlModel
from tests.fake_civitai import FakeCivitai, FakeVersion

LORA = b"pretend safetensors LoRA bytes " * 4000  # ~120 KB
KEY = "styles.clay.lora"
FAST = DownloadLimits(retry_wait=0.02)  # the defaults, with retries milliseconds apart


@pytest.fixture
def fake():
    server = FakeCivitai()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)


def _store(fake: FakeCivitai, tmp_path: Path, limits: DownloadLimits = FAST) -> models.ModelStore:
    return models.ModelStore(tmp_path / "cache", civitai_url=fake.base, limits=limits)


def _files(store: models.ModelStore, suffix: str) -> list[Path]:
    return [p for p in store.cache_dir.rglob(f"*{suffix}") if p.is_file()]


def _storage(fake: FakeCivitai) -> list[dict]:
    return [r for r in fake.requests if r["path"].startswith("/storage/")]


def test_the_limits_come_from_the_pipeline_section_of_the_config():
    pipeline = PipelineSettings(max_download_gb=0.5, min_download_kb_per_s=10.0, civitai_api_deadline=7.0)
    limits = models.ModelStore.of(pipeline).limits
    assert (limits.max_file_bytes, limits.min_rate, limits.api_deadline) == (512 * MB, 10 * 1024, 7.0)
    assert models.ModelStore.of(PipelineSettings()).limits.max_file_bytes == 8 << 30  # an SDXL checkpoint fits


# -- a byte cap: the API's size and pipeline.max_download_gb ------------------------------------------------------


def test_an_endless_file_of_unknown_size_is_cut_at_max_download_gb_and_deleted(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, size_kb=None, endless=True))
    store = _store(fake, tmp_path, DownloadLimits(max_file_bytes=MB, retry_wait=0.02))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    message = str(caught.value)
    assert message.startswith(f"{KEY}: the download of Civitai model version 10 (clay.safetensors) went on past "
                              "1.0 MB, more than pipeline.max_download_gb")
    assert "the part was deleted" in message and f"set {KEY} to its local path" in message
    assert not _files(store, ".part") and not _files(store, ".safetensors")
    assert len(_storage(fake)) == 1, "a file beyond its cap is not tried again"


def test_an_endless_file_is_cut_just_past_the_size_civitai_announced(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, endless=True))
    store = _store(fake, tmp_path)  # 8 GB allowed, but the API said 121 KB

    with pytest.raises(ModelError, match=r"went on past 1\.1 MB, and Civitai's API gives its size as 121 KB; the "
                                         r"part was deleted"):
        models.resolve("civitai:10", KEY, store)
    assert not _files(store, ".part")


def test_a_content_length_beyond_the_cap_is_refused_before_a_byte_is_written(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, content_length=1 << 40))
    store = _store(fake, tmp_path)

    with pytest.raises(ModelError, match=r"announces 1024\.0 GB \(Content-Length\), and Civitai's API gives its "
                                         r"size as 121 KB"):
        models.resolve("civitai:10", KEY, store)
    assert not _files(store, ".part")
    assert len(_storage(fake)) == 1


def test_a_file_the_api_announces_above_max_download_gb_is_not_downloaded(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, size_kb=9 * 1024 * 1024))  # a 9 GB "LoRA"
    store = _store(fake, tmp_path)

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    assert str(caught.value).startswith(f"{KEY}: Civitai model version 10 (clay.safetensors) is 9.0 GB (Civitai's "
                                        "API), more than pipeline.max_download_gb = 8 allows; raise it")
    assert fake.paths() == ["/api/v1/model-versions/10"]


def test_a_disk_without_room_for_the_file_is_refused_before_downloading(fake, tmp_path, monkeypatch):
    fake.add(FakeVersion(10, 4, LORA))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 100 * MB))
    store = _store(fake, tmp_path)

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    message = str(caught.value)
    assert message.startswith(f"{KEY}: Civitai model version 10 (clay.safetensors) needs 121 KB and ")
    assert "has 100.0 MB free" in message and "set pipeline.cache_dir to a folder on a larger disk" in message
    assert not _storage(fake)


@pytest.fixture
def file_size_limit():
    """Writes past ``limit`` bytes fail with EFBIG, as a full disk fails them (the process-wide RLIMIT_FSIZE)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_write_that_fails_deletes_the_part_so_the_next_start_begins_afresh(fake, tmp_path, file_size_limit):
    fake.add(FakeVersion(10, 4, LORA))
    store = _store(fake, tmp_path)

    file_size_limit(50_000)
    try:
        with pytest.raises(ModelError) as caught:
            models.resolve("civitai:10", KEY, store)
    finally:
        file_size_limit(resource.RLIM_INFINITY)

    message = str(caught.value)
    assert message.startswith(f"{KEY}: could not write Civitai model version 10 (clay.safetensors) into ")
    assert "the part was deleted" in message and "pipeline.cache_dir" in message
    assert not _files(store, ".part")
    fake.requests.clear()
    assert models.resolve("civitai:10", KEY, store).read_bytes() == LORA
    assert [r["range"] for r in _storage(fake)] == [None]


def test_a_part_longer_than_the_file_can_be_is_deleted_not_resumed(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA))
    store = _store(fake, tmp_path)
    folder = store.cache_dir / "civitai" / "10"
    folder.mkdir(parents=True)
    (folder / "clay.safetensors.part").write_bytes(b"\0" * (3 * MB))  # left by an endless stream

    assert models.resolve("civitai:10", KEY, store).read_bytes() == LORA
    assert [r["range"] for r in _storage(fake)] == [None], "a part beyond the file's size must not be resumed"


def test_an_endless_url_model_is_cut_at_max_download_gb_and_deleted(fake, tmp_path):
    # A { url, sha256 } model has no announced size: only pipeline.max_download_gb bounds it.
    fake.add(FakeVersion(10, 4, LORA, endless=True))
    url = f"http://127.0.0.1:{fake.port}/storage/10/clay.safetensors"
    store = _store(fake, tmp_path, DownloadLimits(max_file_bytes=MB))

    with pytest.raises(ModelError) as caught:
        models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)

    assert str(caught.value).startswith(f"{KEY}: the download of {url} went on past 1.0 MB, more than "
                                        "pipeline.max_download_gb")
    assert not [p for p in (store.cache_dir / "urls").rglob("*") if p.is_file()]


def test_the_caps_of_a_lora_and_a_tagger_are_far_below_a_checkpoints():
    limits = DownloadLimits()  # pipeline.max_download_gb = 8, for an SDXL checkpoint
    assert limits.most("pipeline.base_model") == 8 << 30
    assert limits.most("styles.clay.lora") == limits.most("tagger.model") == 2 << 30
    assert limits.cap(None, "styles.clay.lora") == 2 << 30  # no announced size: the kind's cap, not 8 GB
    assert DownloadLimits(max_file_bytes=MB).most("styles.clay.lora") == MB  # a lower max_download_gb still rules


def test_an_endless_lora_of_unknown_size_is_cut_at_what_a_lora_can_be_not_at_max_download_gb(fake, tmp_path,
                                                                                                monkeypatch):
    # issue 31, item 5: with no size announced, a LoRA's download went on to max_download_gb (8 GB) before the cap;
    # here a LoRA may be 1 MB, so the cut comes in a moment (ENDLESS is 64 MB)
    monkeypatch.setattr(downloads, "KIND_CAPS", (("styles.*.lora", "a LoRA", MB),))
    fake.add(FakeVersion(10, 4, LORA, size_kb=None, endless=True))
    store = _store(fake, tmp_path)  # 8 GB allowed

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    assert str(caught.value).startswith(f"{KEY}: the download of Civitai model version 10 (clay.safetensors) went "
                                        "on past 1.0 MB, more than a LoRA can be (1.0 MB); the part was deleted.")
    assert not _files(store, ".part") and len(_storage(fake)) == 1


def test_a_lora_the_api_announces_beyond_what_a_lora_can_be_is_not_downloaded(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "KIND_CAPS", (("styles.*.lora", "a LoRA", 100_000),))
    fake.add(FakeVersion(10, 4, LORA))  # 121 KB

    with pytest.raises(ModelError, match=r"is 121 KB \(Civitai's API\), more than a LoRA can be \(98 KB\)"):
        models.resolve("civitai:10", KEY, _store(fake, tmp_path))
    assert fake.paths() == ["/api/v1/model-versions/10"]


def test_a_file_of_unknown_size_stops_where_the_disks_room_ends_not_at_the_cap(fake, tmp_path, monkeypatch):
    # issue 31, item 5: the free space was checked only for a size announced; an endless file of none filled the disk
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(downloads.shutil, "disk_usage",
                        lambda path: usage(10 << 30, 10 << 30, downloads.DISK_RESERVE + MB))
    fake.add(FakeVersion(10, 4, LORA, endless=True))
    url = f"http://127.0.0.1:{fake.port}/storage/10/clay.safetensors"
    store = _store(fake, tmp_path)  # 8 GB allowed, 2 GB for a LoRA: the disk has 1 MB to give

    with pytest.raises(ModelError) as caught:
        models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)

    message = str(caught.value)
    assert message.startswith(f"{KEY}: the download of {url} went on past 1.0 MB, all the room ")
    assert "the part was deleted" in message and "set pipeline.cache_dir to a folder on a larger disk" in message
    assert not [p for p in (store.cache_dir / "urls").rglob("*") if p.is_file()]
    assert len(_storage(fake)) == 1


def test_a_file_of_unknown_size_is_not_started_on_a_disk_with_no_room_left(fake, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 100 * MB))
    fake.add(FakeVersion(10, 4, LORA, endless=True))
    url = f"http://127.0.0.1:{fake.port}/storage/10/clay.safetensors"
    store = _store(fake, tmp_path)

    with pytest.raises(ModelError, match=r"has no announced size and .* has 100\.0 MB free \(claybot leaves "
                                         r"256\.0 MB free\)"):
        models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)
    assert not _storage(fake)  # refused before asking for a byte


def test_a_url_model_is_resumed_after_a_cut_and_checked(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, cut_after=40_000, cuts=1))
    url = f"http://127.0.0.1:{fake.port}/storage/10/clay.safetensors"
    store = _store(fake, tmp_path)

    path = models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)

    assert path.read_bytes() == LORA
    assert [r["range"] for r in _storage(fake)] == [None, "bytes=40000-"]


# -- time: a deadline for the metadata, a minimum rate for files ------------------------------------------------


def test_metadata_trickled_a_byte_at_a_time_is_cut_at_the_deadline(fake, tmp_path):
    fake.add(FakeVersion(10, 4, LORA, trickle_metadata=0.05))  # ~900 bytes: 45 s for a client without a deadline
    store = _store(fake, tmp_path, DownloadLimits(api_deadline=0.5))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    assert str(caught.value).startswith(f"{KEY}: Civitai's answer about Civitai model version 10 did not arrive "
                                        "within its deadline (pipeline.civitai_api_deadline)")
    assert "/api/download/models/10" not in fake.paths()


def test_a_file_trickled_below_the_minimum_rate_is_cut_off_and_resumed_later(fake, tmp_path):
    data = LORA[:2000]  # 40 s at a byte per 20 ms for a client without a minimum rate
    version = fake.add(FakeVersion(10, 4, data, trickle=0.02))
    store = _store(fake, tmp_path, DownloadLimits(min_rate=10 * 1024, rate_window=0.3, retry_wait=0.02))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:10", KEY, store)

    message = str(caught.value)
    assert message.startswith(f"{KEY}: Civitai sent Civitai model version 10 (clay.safetensors) at ")
    assert "slower than pipeline.min_download_kb_per_s = 10; the part fetched so far is kept" in message
    (part,) = _files(store, ".part")
    kept = part.stat().st_size
    assert 0 < kept < len(data)

    version.trickle = 0.0  # the host recovers: the next start fetches only the rest
    fake.requests.clear()
    assert models.resolve("civitai:10", KEY, store).read_bytes() == data
    assert [r["range"] for r in _storage(fake)] == [f"bytes={kept}-"]


@pytest.fixture
def raw_server():
    """An HTTP server on 127.0.0.1 that answers every connection with the bytes given (headers no library writes)."""
    servers: list[socket.socket] = []

    def start(answer: bytes) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        servers.append(listener)

        def serve() -> None:
            for _ in range(8):  # bounded: a client retrying without end would still be let go
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/clay.safetensors"

    yield start
    for listener in servers:
        listener.close()


@pytest.mark.parametrize("length", [b"\xb2", b"12abc", b"-5"])
def test_a_content_length_that_is_no_number_is_ignored_not_a_traceback(raw_server, tmp_path, length):
    # Byte 0xb2 reads as "²" (headers are latin-1), and int("²") fails though "²".isdigit() is true: such a header
    # is ignored, as HTTP clients ignore it.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\nConnection: close\r\n\r\n"
    url = raw_server(head + LORA)
    store = models.ModelStore(tmp_path / "cache", limits=DownloadLimits(retry_wait=0.02))

    path = models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)

    assert path.read_bytes() == LORA  # read to the end of the connection, as HTTP says without a usable length


def test_a_content_length_of_5000_digits_is_refused_as_too_large(raw_server, tmp_path):
    # int() refuses more than 4300 digits; such a length is simply beyond any cap.
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n" + LORA)
    store = models.ModelStore(tmp_path / "cache", limits=DownloadLimits(retry_wait=0.02))

    with pytest.raises(ModelError, match=rf"^{KEY}: the download of {url} announces .* GB \(Content-Length\), more "
                                         r"than pipeline\.max_download_gb = 8 allows"):
        models.resolve(UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest()), KEY, store)
