"""`claybot models` and `claybot check` fetch every model of a config before anything loads (no torch needed)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import ROOT_CONFIG
from tests.fake_civitai import FakeCivitai, FakeVersion

LORA = b"pretend safetensors LoRA bytes " * 4000
CLAYBOT = Path(sys.executable).parent / "claybot"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake():
    server = FakeCivitai()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _offline_env(home: Path) -> dict[str, str]:
    """A clean environment whose Hugging Face Hub is a closed port on this machine and whose home is empty."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_default_config_checks_offline_up_to_the_download_and_names_every_hub_repo(tmp_path):
    run = subprocess.run([str(CLAYBOT), "check", "--config", str(ROOT_CONFIG)], capture_output=True, text=True,
                         timeout=120, env=_offline_env(tmp_path))

    assert run.returncode == 1
    assert f"{ROOT_CONFIG}: settings are valid" in run.stdout
    assert "Traceback" not in run.stderr
    lines = run.stderr.removeprefix("claybot: ").splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "pipeline.base_model", "pipeline.vae", "tagger.model", "styles.clay.lora"]
    lora = lines[3]
    assert lora.startswith("styles.clay.lora: artificialguybr/ClayAnimationRedmond:ClayAnimationRedm.safetensors "
                           f"is not in the cache ({tmp_path / '.cache' / 'claybot' / 'hub'})")
    assert "the Hugging Face Hub cannot be reached (127.0.0.1: Connection refused)" in lora
    assert "run `claybot models` once, or download it yourself and set styles.clay.lora to its local path" in lora
    assert "SmilingWolf/wd-vit-tagger-v3" in lines[2]
    assert not (tmp_path / ".cache" / "claybot" / "hub").exists() or not [
        p for p in (tmp_path / ".cache" / "claybot" / "hub").rglob("*") if p.is_file()]


def test_claybot_models_fetches_every_model_and_prints_source_path_size_and_sha256(fake, tmp_path):
    version = fake.add(FakeVersion(128713, 122359, LORA))
    base = tmp_path / "sdxl"
    (base / "unet").mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"u" * 2048)
    tagger = tmp_path / "wd14"
    tagger.mkdir()
    (tagger / "model.onnx").write_bytes(b"onnx")
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    raw = ROOT_CONFIG.read_text(encoding="utf-8")
    raw = raw.replace('base_model = "stabilityai/stable-diffusion-xl-base-1.0"', f'base_model = "{base}"')
    raw = raw.replace('vae = "madebyollin/sdxl-vae-fp16-fix"', 'vae = ""')
    raw = raw.replace('model = "SmilingWolf/wd-vit-tagger-v3"', f'model = "{tagger}"')
    raw = raw.replace('lora = "artificialguybr/ClayAnimationRedmond:ClayAnimationRedm.safetensors"',
                      'lora = "urn:air:sdxl:lora:civitai:122359@128713"')
    raw = raw.replace('civitai_url = "https://civitai.com"', f'civitai_url = "{fake.base}"')
    raw = raw.replace('cache_dir = "~/.cache/claybot"', f'cache_dir = "{tmp_path / "cache"}"')
    config = tmp_path / "config.toml"
    config.write_text(raw, encoding="utf-8")

    run = subprocess.run([str(CLAYBOT), "models", "--config", str(config)], capture_output=True, text=True,
                         timeout=120)

    assert run.returncode == 0, run.stderr
    out = run.stdout
    lora = out[out.index("styles.clay.lora"):]
    assert "source  Civitai urn:air:sdxl:lora:civitai:122359@128713" in lora
    assert f"path    {tmp_path / 'cache' / 'civitai' / '128713' / 'clay.safetensors'}" in lora
    assert f"({len(LORA):,} bytes)" in lora
    assert f"sha256  {version.sha256}" in lora
    tagger_part = out[out.index("tagger.model"):out.index("styles.clay.lora")]
    assert f"path    {tagger}" in tagger_part and "in 2 files" in tagger_part
    assert f"model.onnx         {hashlib.sha256(b'onnx').hexdigest()}" in tagger_part
    assert "pipeline.base_model" in out and "all 3 models are on disk" in out
    assert fake.paths().count("/api/download/models/128713") == 1

    again = subprocess.run([str(CLAYBOT), "models", "--config", str(config)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and f"sha256  {version.sha256}" in again.stdout
    assert fake.paths().count("/api/download/models/128713") == 1, "a warm cache is not fetched again"


def test_claybot_models_lists_every_model_it_could_not_fetch_and_fails(fake, tmp_path):
    fake.add(FakeVersion(128713, 122359, LORA, login_required=True))
    raw = ROOT_CONFIG.read_text(encoding="utf-8")
    raw = raw.replace('lora = "artificialguybr/ClayAnimationRedmond:ClayAnimationRedm.safetensors"',
                      'lora = "civitai:128713"')
    raw = raw.replace('civitai_url = "https://civitai.com"', f'civitai_url = "{fake.base}"')
    raw = raw.replace('cache_dir = "~/.cache/claybot"', f'cache_dir = "{tmp_path / "cache"}"')
    config = tmp_path / "config.toml"
    config.write_text(raw, encoding="utf-8")
    env = _offline_env(tmp_path)

    run = subprocess.run([str(CLAYBOT), "models", "--config", str(config)], capture_output=True, text=True,
                         timeout=120, env=env)

    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("claybot: ")]
    assert [line.split(":")[1].strip() for line in lines[:4]] == [
        "pipeline.base_model", "pipeline.vae", "tagger.model", "styles.clay.lora"]
    assert "environment variable CIVITAI_TOKEN" in lines[3]
    assert lines[-1] == "claybot: 4 of 4 models could not be fetched"
    assert "Traceback" not in run.stderr
