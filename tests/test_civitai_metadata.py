"""Civitai's metadata is read within 1 MB and as strict JSON; names from it are bounded in bytes and escaped."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import ROOT_CONFIG
from pipeline.core import models
from pipeline.core.downloads import DownloadLimits
from pipeline.core.errors import ModelError
from pipeline.core.settings import UrlModel
from tests.fake_civitai import FakeCivitai, FakeVersion

LORA = b"pretend safetensors LoRA bytes " * 4000
KEY = "styles.clay.lora"
SHA = "ab" * 32
GOOD_FILE = {"id": 1, "name": "clay.safetensors", "type": "Model", "primary": True, "sizeKB": 120.5,
             "hashes": {"SHA256": SHA}}


@pytest.fixture
def fake():
    server = FakeCivitai()
    yield server
    server.close()


@pytest.fixture
def store(fake, tmp_path, monkeypatch) -> models.ModelStore:
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    return models.ModelStore(tmp_path / "cache", civitai_url=fake.base, limits=DownloadLimits(retry_wait=0.02))


def _answer(**changes) -> bytes:
    meta = {"id": 9, "modelId": 4, "name": "v1", "model": {"name": "Clay", "type": "LORA"}, "files": [GOOD_FILE]}
    meta.update(changes)
    return json.dumps(meta).encode()


def _file(**changes) -> bytes:
    return _answer(files=[{**GOOD_FILE, **changes}])


# -- size and shape --------------------------------------------------------------------------------------------------


def test_endless_json_metadata_is_cut_at_1_mb(fake, store):
    fake.add(FakeVersion(9, 4, LORA, endless_metadata=True))
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:9", KEY, store)
    assert str(caught.value).startswith(f"{KEY}: Civitai's answer about Civitai model version 9 goes on past 1.0 MB, "
                                        "far more than the API gives; run `claybot models` again later")
    assert "/api/download/models/9" not in fake.paths()


def test_metadata_announcing_a_huge_content_length_is_refused_unread(fake, store):
    fake.add(FakeVersion(9, 4, LORA, metadata_length=10 << 30))
    with pytest.raises(ModelError, match=rf"^{KEY}: Civitai's answer about Civitai model version 9 announces 10\.0 "
                                         r"GB, far more than the API gives \(at most 1\.0 MB\)"):
        models.resolve("civitai:9", KEY, store)


@pytest.mark.parametrize(("raw", "says"), [
    (_file(sizeKB=float("nan")), "is not valid JSON"),  # json.dumps writes NaN, which JSON does not have
    (_file(sizeKB=float("inf")), "is not valid JSON"),
    (_answer(files=[{**GOOD_FILE, "sizeKB": 1}]).replace(b'"sizeKB": 1', b'"sizeKB": 1e400'), "is not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "is nested too deeply"),
    (b'{"files": [' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"]}", "is nested too deeply"),
    (b"\xff\xfe not utf-8", "is not valid JSON"),
    (b'{"modelId": ' + b"1" * 5000 + b"}", "is not valid JSON"),  # int() refuses more than 4300 digits
    (_file(sizeKB="120"), "the size of clay.safetensors is 120"),
    (_file(sizeKB=-5), "the size of clay.safetensors is -5"),
    (_file(sizeKB=[1]), r"the size of clay.safetensors is \[1\]"),
    (_file(sizeKB=True), "the size of clay.safetensors is True"),
    (_file(sizeKB=10**30), "the size of clay.safetensors is"),
    (_file(name=5), r"offers no \.safetensors model file"),
    (_file(name=["clay.safetensors"]), r"offers no \.safetensors model file"),
    (_file(hashes=["SHA256", SHA]), "reports no SHA256 for clay.safetensors"),
    (_file(hashes={"SHA256": 5}), "reports no SHA256 for clay.safetensors"),
    (_file(hashes=None), "reports no SHA256 for clay.safetensors"),
    (_answer(files=[{k: v for k, v in GOOD_FILE.items() if k != "hashes"}]), "reports no SHA256"),
    (_answer(files=[{k: v for k, v in GOOD_FILE.items() if k != "name"}]), r"offers no \.safetensors model file"),
    (_answer(files=["clay.safetensors"]), r"offers no \.safetensors model file"),
    (_answer(files={"0": GOOD_FILE}), "files must be a list"),
    (_answer(model=["Clay", "LORA"]), "model an object"),
    (_answer(model={"name": {"x": 1}, "type": ["LORA"]}), "model.type is not a text"),
    (_answer(modelId={"id": 4}, files=[GOOD_FILE]), None),  # no AIR model id to compare with: harmless
    (b"null", "an object was expected"),
    (b'"files"', "an object was expected"),
])
def test_malformed_metadata_is_one_line_naming_the_key_never_a_traceback(fake, store, raw, says):
    fake.add(FakeVersion(9, 4, LORA, raw_metadata=raw))
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:9", KEY, store)
    message = str(caught.value)
    assert message.startswith(f"{KEY}: ") and "\n" not in message
    if says is None:  # the metadata was usable; the download then fails its sha256
        assert "has sha256" in message
    else:
        assert re.search(says, message), message
        assert "/api/download/models/9" not in fake.paths()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_claybot_models_reports_every_model_when_one_has_malformed_metadata(fake, tmp_path):
    # The VAE's metadata is broken (NaN); the LoRA after it is still fetched, and both are reported.
    fake.add(FakeVersion(2, 1, b"vae bytes", name="vae.safetensors", model_type="VAE",
                         raw_metadata=_file(sizeKB=float("nan"))))
    fake.add(FakeVersion(128713, 122359, LORA))
    base, tagger = tmp_path / "sdxl", tmp_path / "wd14"
    (base / "unet").mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    tagger.mkdir()
    (tagger / "model.onnx").write_bytes(b"onnx")
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    raw = ROOT_CONFIG.read_text(encoding="utf-8")
    for old, new in [('base_model = "stabilityai/stable-diffusion-xl-base-1.0"', f'base_model = "{base}"'),
                     ('base_config = "stabilityai/stable-diffusion-xl-base-1.0"', f'base_config = "{base}"'),
                     ('vae = "madebyollin/sdxl-vae-fp16-fix"', 'vae = "civitai:2"'),
                     ('model = "SmilingWolf/wd-vit-tagger-v3"', f'model = "{tagger}"'),
                     ('lora = "artificialguybr/ClayAnimationRedmond:ClayAnimationRedm.safetensors"',
                      'lora = "civitai:128713"'),
                     ('civitai_url = "https://civitai.com"', f'civitai_url = "{fake.base}"'),
                     ('cache_dir = "~/.cache/claybot"', f'cache_dir = "{tmp_path / "cache"}"')]:
        assert old in raw
        raw = raw.replace(old, new)
    config = tmp_path / "config.toml"
    config.write_text(raw, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    run = subprocess.run([str(Path(sys.executable).parent / "claybot"), "models", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, env=env)

    assert "Traceback" not in run.stderr
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("claybot: ")]
    assert errors[0].startswith("claybot: pipeline.vae: Civitai's answer about Civitai model version 2 is not valid "
                                "JSON")
    assert errors[-1] == "claybot: 1 of 5 models could not be fetched"
    assert f"path    {tmp_path / 'cache' / 'civitai' / '128713' / 'clay.safetensors'}" in run.stdout


# -- names: bounded in bytes, escaped in logs and messages ----------------------------------------------------------


@pytest.mark.parametrize("stem", ["𠀀" * 201, "𠀀" * 61, "é" * 150])
def test_a_long_name_of_multibyte_characters_is_bounded_in_bytes(fake, store, stem):
    fake.add(FakeVersion(8, 4, LORA, listed_name=f"{stem}.safetensors"))

    path = models.resolve("civitai:8", KEY, store)

    assert path.read_bytes() == LORA
    assert len(path.name.encode()) + len(".part") <= 255
    assert path.name.endswith(".safetensors") and path.name.startswith(stem[:10])
    assert models.resolve("civitai:8", KEY, store) == path  # and the record finds it again


def test_a_url_model_with_a_long_multibyte_file_name_is_bounded_in_bytes(fake, store):
    fake.add(FakeVersion(8, 4, LORA))
    url = f"http://127.0.0.1:{fake.port}/storage/8/clay.safetensors"
    spec = UrlModel(url=url, sha256=hashlib.sha256(LORA).hexdigest(), filename="𠀀" * 70 + ".safetensors")

    path = models.resolve(spec, KEY, store)

    assert path.read_bytes() == LORA and len(path.name.encode()) + len(".part") <= 255


HOSTILE = "Clay\n2026-12-04 12:00:00 WARNING claybot: forged line\x1b[2K\x1b[31m\u202e"


def test_a_model_name_cannot_forge_a_log_line(fake, store, caplog):
    fake.add(FakeVersion(8, 4, LORA, model_name=HOSTILE))
    caplog.set_level(logging.INFO)

    models.resolve("civitai:8", KEY, store)

    lines = [record.getMessage() for record in caplog.records]
    fetching = next(line for line in lines if line.startswith("fetching Civitai model version 8"))
    assert "Clay\\n2026-12-04 12:00:00 WARNING claybot: forged line\\x1b[2K\\x1b[31m\\u202e" in fetching
    assert not any(char in line for line in lines for char in "\n\x1b\u202e")


def test_a_model_name_cannot_forge_a_line_of_an_error(fake, store):
    fake.add(FakeVersion(8, 4, LORA, model_name=HOSTILE, model_type="Checkpoint"))
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:8", KEY, store)
    message = str(caught.value)
    assert "is a Checkpoint, and styles.clay.lora needs a lora" in message
    assert not any(char in message for char in "\n\x1b\u202e")


def test_a_huge_model_name_is_cut_short_in_messages(fake, store):
    fake.add(FakeVersion(8, 4, LORA, model_name="clay " * 100_000, model_type="Checkpoint"))
    with pytest.raises(ModelError) as caught:
        models.resolve("civitai:8", KEY, store)
    assert len(str(caught.value).encode()) < 1000
