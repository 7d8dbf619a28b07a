"""Models named by Civitai (civitai:<version>, AIR, page URL), fetched from a fake Civitai API on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import tomllib
from pathlib import Path

import pytest

from bot.cli import ROOT_CONFIG
from bot.config import ConfigError, parse_config
from pipeline.core import civitai, models
from pipeline.core.downloads import DownloadLimits
from pipeline.core.errors import ModelError
from tests.fake_civitai import FakeCivitai, FakeVersion

LORA = b"pretend safetensors LoRA bytes " * 4000  # ~120 KB: several chunks on the wire


@pytest.fixture
def fake():
    server = FakeCivitai()
    yield server
    server.close()


@pytest.fixture
def store(fake, tmp_path, monkeypatch) -> models.ModelStore:
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    # retries a few milliseconds apart, not seconds: the cuts here are made on purpose, not by a busy network
    return models.ModelStore(tmp_path / "cache", civitai_url=fake.base, limits=DownloadLimits(retry_wait=0.02))


def _cached_files(store: models.ModelStore) -> list[Path]:
    return [p for p in (store.cache_dir / "civitai").rglob("*") if p.is_file() and not p.name.startswith(".")]


# -- naming a model the way Civitai shows it ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "version", "model", "kind", "file_id"), [
    ("civitai:128713", 128713, None, "", None),
    (" civitai:128713 ", 128713, None, "", None),
    ("urn:air:sdxl:lora:civitai:122359@128713", 128713, 122359, "lora", None),
    ("URN:AIR:SDXL:LORA:CIVITAI:122359@128713", 128713, 122359, "lora", None),
    ("air:sdxl:lora:civitai:122359@128713", 128713, 122359, "lora", None),
    ("urn:air:sdxl:lora:civitai:122359@128713+99.safetensors", 128713, 122359, "lora", 99),
    ("urn:air:pony:checkpoint:civitai:1@2", 2, 1, "checkpoint", None),
    ("https://civitai.com/models/122359/clay-style?modelVersionId=128713", 128713, 122359, "", None),
    ("https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor", 128713, None, "", None),
])
def test_civitai_references_parse_into_a_pinned_version(spec, version, model, kind, file_id):
    assert models.parse(spec).kind == "civitai"
    ref = civitai.parse_reference(models.parse(spec).value)
    assert (ref.version_id, ref.model_id, ref.resource_type, ref.file_id) == (version, model, kind, file_id)


def _root() -> dict:
    return tomllib.loads(ROOT_CONFIG.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("key", "spec", "says"), [
    ("styles.clay.lora", "civitai:abc", r"not a Civitai model version: write civitai:<modelVersionId>"),
    ("styles.clay.lora", "civitai:", r"not a Civitai model version"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:122359", r"names no version: add @<modelVersionId>"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:122359@", r"names no version"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:clay@128713", r"the model id 'clay' must be a number"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:1@v2", r"the version id 'v2' must be a number"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:1@2+x", r"file id after '\+' must be a number"),
    ("styles.clay.lora", "urn:air:sdxl:lora:civitai:1@2.ckpt", r"\.ckpt file; claybot loads only \.safetensors"),
    ("styles.clay.lora", "urn:air:sd1:lora:civitai:1@2", r"'sd1' resource, and claybot runs SDXL"),
    ("styles.clay.lora", "urn:air:sdxl:lora:huggingface:1@2", r"'huggingface' resource; .*Civitai only"),
    ("styles.clay.lora", "urn:air:lora:civitai:1@2", r"not an AIR claybot understands"),
    ("styles.clay.lora", "urn:air:sdxl:checkpoint:civitai:1@2", r"names a checkpoint, and styles\.clay\.lora needs"),
    ("pipeline.base_model", "urn:air:sdxl:lora:civitai:1@2", r"names a lora, and pipeline\.base_model needs"),
    ("styles.clay.lora", "https://civitai.com/models/122359/clay", r"names a model but not which version"),
    ("styles.clay.lora", "https://civitai.com/images/5", r"not a Civitai model page or download URL"),
    ("tagger.model", "civitai:128713", r"tagger\.model needs a folder"),
])
def test_malformed_civitai_references_stop_start_up_naming_the_key(tmp_path, key, spec, says):
    raw = _root()
    section, name = key.split(".", 1)
    if section == "styles":
        raw["styles"]["clay"]["lora"] = spec
    else:
        raw[section][name] = spec
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .*{says}"):
        parse_config(raw, base_dir=tmp_path)
    # The same check holds where the models are not checked (claybot status, the tiny-models template).
    with pytest.raises(ConfigError):
        parse_config(raw, base_dir=tmp_path, check_models=False)


def test_a_well_formed_civitai_lora_is_a_valid_config_without_any_download(tmp_path):
    raw = _root()
    raw["styles"]["clay"]["lora"] = "urn:air:sdxl:lora:civitai:122359@128713"
    config = parse_config(raw, base_dir=tmp_path)
    assert config.styles["clay"].lora == "urn:air:sdxl:lora:civitai:122359@128713"
    assert config.pipeline.civitai_token_env == "CIVITAI_TOKEN"


def test_a_civitai_base_model_brings_in_base_config_for_its_component_configs(tmp_path):
    raw = _root()
    raw["pipeline"]["base_model"] = "urn:air:sdxl:checkpoint:civitai:112902@351306"
    assert "pipeline.base_config" in parse_config(raw, base_dir=tmp_path).model_specs()


def test_civitai_url_must_be_https_or_this_machine(tmp_path):
    raw = _root()
    raw["pipeline"]["civitai_url"] = "http://civitai.example.com"
    with pytest.raises(ConfigError, match=r"pipeline\.civitai_url: must be an https:// URL"):
        parse_config(raw, base_dir=tmp_path)


# -- fetching from the API --------------------------------------------------------------------------------------


def test_version_metadata_names_the_file_whose_sha256_the_download_must_match(fake, store):
    version = fake.add(FakeVersion(128713, 122359, LORA))

    path = models.resolve("urn:air:sdxl:lora:civitai:122359@128713", "styles.clay.lora", store)

    assert path.read_bytes() == LORA
    assert path.name == "clay.safetensors"
    assert path.is_relative_to(store.cache_dir / "civitai")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256
    # metadata first, then the download, which redirects to storage on another host name
    assert fake.paths() == ["/api/v1/model-versions/128713", "/api/download/models/128713",
                            "/storage/128713/clay.safetensors"]
    assert fake.requests[1]["query"] == "type=Model&format=SafeTensor"  # the file the metadata described
    assert fake.requests[2]["host"].startswith("localhost")
    assert set(_cached_files(store)) == {path, path.parent / "civitai.json"}


def test_a_fetched_version_is_reused_without_asking_civitai_again(fake, store):
    fake.add(FakeVersion(128713, 122359, LORA))
    first = models.resolve("civitai:128713", "styles.clay.lora", store)
    asked = len(fake.requests)

    again = models.resolve("https://civitai.com/models/122359/x?modelVersionId=128713", "styles.clay.lora", store)

    assert again == first
    assert len(fake.requests) == asked, "a cached version must not be fetched (nor asked about) again"


def test_a_cached_version_is_used_when_civitai_is_unreachable(fake, store, tmp_path):
    fake.add(FakeVersion(128713, 122359, LORA))
    first = models.resolve("civitai:128713", "styles.clay.lora", store)
    offline = models.ModelStore(store.cache_dir, civitai_url=f"http://127.0.0.1:{_closed_port()}")
    assert models.resolve("civitai:128713", "styles.clay.lora", offline) == first


def test_a_download_whose_sha256_differs_is_refused_and_not_left_in_the_cache(fake, store):
    version = fake.add(FakeVersion(128713, 122359, LORA, served=LORA[:-10] + b"tampered!!"))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:128713", "styles.clay.lora", store)

    message = str(caught.value)
    assert message.startswith("styles.clay.lora: the file Civitai sent for Civitai model version 128713")
    assert f"Civitai's API reports {version.sha256}" in message
    assert hashlib.sha256(version.served).hexdigest() in message
    assert "set styles.clay.lora to its local path" in message
    assert not [p for p in _cached_files(store) if p.suffix in (".safetensors", ".part")]
    # and the next start does not take anything for the real file: it fetches again
    version.served = None
    assert models.resolve("civitai:128713", "styles.clay.lora", store).read_bytes() == LORA


def test_a_login_only_model_without_a_key_says_which_variable_to_set(fake, store):
    fake.add(FakeVersion(128713, 122359, LORA, login_required=True))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:128713", "styles.clay.lora", store)

    message = str(caught.value)
    assert message.startswith("styles.clay.lora: Civitai requires a logged-in account to download")
    assert "HTTP 401" in message
    assert "API key" in message and "environment variable CIVITAI_TOKEN" in message
    assert not _cached_files(store)


def test_the_key_variable_is_the_one_the_config_names(fake, tmp_path, monkeypatch):
    fake.add(FakeVersion(128713, 122359, LORA, login_required=True))
    monkeypatch.delenv("MY_CIVITAI_KEY", raising=False)
    store = models.ModelStore(tmp_path / "cache", civitai_url=fake.base, civitai_token_env="MY_CIVITAI_KEY")
    with pytest.raises(ModelError, match=r"environment variable MY_CIVITAI_KEY"):
        models.resolve("civitai:128713", "styles.clay.lora", store)


def test_with_the_key_a_login_only_model_downloads_and_the_key_goes_nowhere_else(fake, store, monkeypatch, caplog):
    fake.add(FakeVersion(128713, 122359, LORA, login_required=True))
    monkeypatch.setenv("CIVITAI_TOKEN", fake.token)
    caplog.set_level(logging.DEBUG)

    path = models.resolve("civitai:128713", "styles.clay.lora", store)

    assert path.read_bytes() == LORA
    by_path = {r["path"]: r for r in fake.requests}
    assert by_path["/api/download/models/128713"]["authorization"] == f"Bearer {fake.token}"
    assert by_path["/storage/128713/clay.safetensors"]["authorization"] is None, "the key must not reach storage"
    assert fake.token not in caplog.text
    assert all(fake.token not in (r["query"] or "") for r in fake.requests), "never in a URL, where logs see it"


def test_a_wrong_key_is_explained_without_showing_it(fake, store, monkeypatch):
    fake.add(FakeVersion(128713, 122359, LORA, login_required=True))
    monkeypatch.setenv("CIVITAI_TOKEN", "not-the-key-5678")
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:128713", "styles.clay.lora", store)
    assert "Civitai refused the API key in CIVITAI_TOKEN" in str(caught.value)
    assert "not-the-key-5678" not in str(caught.value)


def test_a_cut_connection_is_resumed_where_it_stopped(fake, store):
    fake.add(FakeVersion(128713, 122359, LORA, cut_after=50_000, cuts=1))

    path = models.resolve("civitai:128713", "styles.clay.lora", store)

    assert path.read_bytes() == LORA
    storage = [r for r in fake.requests if r["path"].startswith("/storage/")]
    assert [r["range"] for r in storage] == [None, "bytes=50000-"]
    assert not [p for p in _cached_files(store) if p.suffix == ".part"]


def test_a_download_cut_every_time_keeps_its_part_and_the_next_run_finishes_it(fake, store):
    version = fake.add(FakeVersion(128713, 122359, LORA, cut_after=30_000, cuts=store.limits.attempts))

    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:128713", "styles.clay.lora", store)
    message = str(caught.value)
    assert message.startswith("styles.clay.lora: the download of Civitai model version 128713 (clay.safetensors) "
                              f"failed {store.limits.attempts} times")
    assert "run `claybot models` again later" in message
    parts = [p for p in _cached_files(store) if p.suffix == ".part"]
    assert len(parts) == 1 and parts[0].stat().st_size == store.limits.attempts * 30_000

    fake.requests.clear()
    path = models.resolve("civitai:128713", "styles.clay.lora", store)
    assert path.read_bytes() == version.data
    assert [r["range"] for r in fake.requests if r["path"].startswith("/storage/")] == [
        f"bytes={store.limits.attempts * 30_000}-"]


def test_an_unknown_version_says_where_the_number_comes_from(fake, store):
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: Civitai has no published model version 999 "
                                         r"\(HTTP 404\)\. Check the number: it is the modelVersionId"):
        models.resolve("civitai:999", "styles.clay.lora", store)


def test_a_checkpoint_named_as_a_lora_is_refused_before_it_is_downloaded(fake, store):
    fake.add(FakeVersion(5, 4, b"x" * 1000, name="big.safetensors", model_type="Checkpoint"))
    with pytest.raises(ModelError, match=r"styles\.clay\.lora: .*is a Checkpoint, and styles\.clay\.lora needs a "
                                         r"lora"):
        models.resolve("civitai:5", "styles.clay.lora", store)
    assert fake.paths() == ["/api/v1/model-versions/5"]


def test_an_air_whose_model_does_not_own_the_version_is_refused(fake, store):
    fake.add(FakeVersion(128713, 122359, LORA))
    with pytest.raises(ModelError, match=r"version 128713 belongs to model 122359, not 7"):
        models.resolve("urn:air:sdxl:lora:civitai:7@128713", "styles.clay.lora", store)
    assert fake.paths() == ["/api/v1/model-versions/128713"]


def test_a_version_without_a_safetensors_file_is_refused(fake, store):
    fake.add(FakeVersion(6, 4, b"x" * 1000, name="clay.ckpt"))
    with pytest.raises(ModelError, match=r"offers no \.safetensors model file \(its files: clay\.ckpt\); claybot "
                                         r"loads only \.safetensors"):
        models.resolve("civitai:6", "styles.clay.lora", store)
    assert fake.paths() == ["/api/v1/model-versions/6"]


def test_the_safetensors_file_is_chosen_over_a_pickled_one_of_the_same_version(fake, store):
    pickled = {"id": 1, "name": "clay.pt", "type": "Model", "primary": True, "hashes": {"SHA256": "0" * 64},
               "downloadUrl": f"{fake.base}/api/download/models/7?type=Model&format=PickleTensor"}
    fake.add(FakeVersion(7, 4, LORA, extra_files=[pickled]))
    assert models.resolve("civitai:7", "styles.clay.lora", store).name == "clay.safetensors"
    assert fake.requests[1]["query"] == "type=Model&format=SafeTensor"


def test_a_file_name_from_the_api_cannot_leave_the_cache_folder(fake, store):
    fake.add(FakeVersion(8, 4, LORA, listed_name="../../../evil\x00.safetensors"))
    path = models.resolve("civitai:8", "styles.clay.lora", store)
    assert path == store.cache_dir / "civitai" / "8" / "8.safetensors"
    assert path.read_bytes() == LORA


@pytest.mark.parametrize("answer", [[], {"files": "nope"}, {"files": [{"name": "a.safetensors", "hashes": "x"}]},
                                    {"model": "x", "files": []}])
def test_a_broken_api_answer_is_one_clear_line(fake, store, answer):
    fake.add(FakeVersion(9, 4, LORA, metadata=answer))
    with pytest.raises(ModelError, match=r"^styles\.clay\.lora: "):
        models.resolve("civitai:9", "styles.clay.lora", store)
    assert "/api/download/models/9" not in fake.paths()


def test_a_download_that_does_not_stop_is_cut_off_and_refused(fake, store):
    fake.add(FakeVersion(10, 4, LORA, served=LORA + b"\0" * (3 << 20)))
    with pytest.raises(ModelError, match=r"^styles\.clay\.lora: the download of .* announces 3\.1 MB "
                                         r"\(Content-Length\), and Civitai's API gives its size as 121 KB"):
        models.resolve("civitai:10", "styles.clay.lora", store)
    assert not [p for p in _cached_files(store) if p.suffix in (".safetensors", ".part")]


def test_a_cache_that_cannot_be_written_is_one_clear_line(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    fake.add(FakeVersion(128713, 122359, LORA))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache should be")
    store = models.ModelStore(blocked, civitai_url=fake.base)
    with pytest.raises(ModelError, match=r"^styles\.clay\.lora: cannot write Civitai model version 128713 into .*"
                                         r"set pipeline\.cache_dir to a writable folder"):
        models.resolve("civitai:128713", "styles.clay.lora", store)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_civitai_names_the_key_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    store = models.ModelStore(tmp_path / "cache", civitai_url=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:128713", "styles.clay.lora", store)
    message = str(caught.value)
    assert message.startswith("styles.clay.lora: cannot reach Civitai at http://127.0.0.1:")
    assert "Connection refused" in message
    assert "set styles.clay.lora to its local path" in message


def test_the_worker_loads_a_lora_named_by_its_air_from_the_configured_civitai(fake, tiny_config, tmp_path,
                                                                              monkeypatch):
    # The GPU side resolves models with the config's civitai_url and cache_dir, and loads what it fetched.
    from PIL import Image

    from pipeline.gpu.stylizer import Photo, Stylizer

    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    lora = Path(tiny_config.styles["clay"].lora).read_bytes()
    fake.add(FakeVersion(128713, 122359, lora, name="CLAYMATE_V2.03_.safetensors"))
    gpu = tiny_config.gpu()
    pipeline = gpu.pipeline.model_copy(update={"civitai_url": fake.base, "cache_dir": str(tmp_path / "cache")})
    styles = {"clay": gpu.styles["clay"].model_copy(update={"lora": "urn:air:sdxl:lora:civitai:122359@128713"})}
    stylizer = Stylizer(gpu.model_copy(update={"pipeline": pipeline, "styles": styles}))

    assert fake.paths() == ["/api/v1/model-versions/128713", "/api/download/models/128713",
                            "/storage/128713/CLAYMATE_V2.03_.safetensors"]
    assert (tmp_path / "cache" / "civitai" / "128713" / "CLAYMATE_V2.03_.safetensors").read_bytes() == lora
    result = stylizer.run([Photo(Image.new("RGB", (128, 96), (200, 120, 60)), 7)], style="clay", strength=0.5)[0]
    assert result.prompt.startswith("(Clay Animation, Clay:2)")
