"""Where a model named in config.toml lives: a local path, a Hugging Face repo id, an https URL with a sha256,
or a Civitai model version (``civitai:<id>``, an AIR; see pipeline.core.civitai).

Repo ids, URLs and Civitai versions are fetched once into the cache (with a progress bar) and reused; only
safetensors and ONNX files are ever handed to a loader. When the Hugging Face Hub cannot be reached, a model already
in the cache is used at once and a missing one fails in seconds, not after a minute of retries.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pipeline.core import civitai
from pipeline.core.downloads import GB, Download, DownloadLimits, printable, safe_file_name, stream
from pipeline.core.errors import ModelError
from pipeline.core.settings import ModelSpec, PipelineSettings, UrlModel

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[^:]+)?$")
MODEL_SUFFIXES = (".safetensors", ".onnx", ".ckpt", ".pt", ".pth", ".bin", ".csv", ".json")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

# What to fetch of a Hugging Face repo for each role (never the repo's pickled or duplicate single-file weights).
# README.md: the model card, whose licence ``[models] commercial`` holds the model to (pipeline/core/licences.py).
DIFFUSERS_FILES = ["model_index.json", "README.md", "*/*.json", "*/*.txt", "*/diffusion_pytorch_model.safetensors",
                   "*/model.safetensors", "*/model-*.safetensors", "*/*.safetensors.index.json"]
CONFIG_FILES = ["model_index.json", "*/*.json", "*/*.txt"]
VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
TAGGER_FILES = ["model.onnx", "selected_tags.csv"]
LORA_FILES = ["*.safetensors"]
# An image-to-video pipeline: its transformers come in shards, and its T5 tokenizer may need spiece.model.
VIDEO_FILES = [*DIFFUSERS_FILES, "*/diffusion_pytorch_model-*.safetensors", "*/*.model"]
# An edit model (FLUX.2 klein: a sharded Qwen3 text encoder, a byte-level BPE tokenizer): the same files; beside a
# single-file transformer, the rest of its pipeline (no transformer weights: the file replaces them).
EDIT_FILES = VIDEO_FILES
EDIT_BASE_FILES = ["model_index.json", "README.md", "*/*.json", "*/*.txt", "*/*.model", "text_encoder/*.safetensors",
                   "vae/*.safetensors"]
_FILES_FOR_KEY = {"pipeline.base_model": DIFFUSERS_FILES, "pipeline.base_config": CONFIG_FILES,
                  "pipeline.vae": VAE_FILES, "tagger.model": TAGGER_FILES, "animate.model": VIDEO_FILES}

PROBE_TIMEOUT = 3.0  # seconds a TCP connection to the Hub may take before it counts as unreachable
_probes: dict[str, tuple[float, str | None]] = {}
_probes_lock = threading.Lock()


def allow_patterns(key: str) -> list[str] | None:
    """The files of a Hugging Face repo that the model at this config key needs."""
    if key.startswith("styles.") and key.endswith(".lora"):
        return LORA_FILES
    if key.startswith("styles.") and key.endswith(".edit.model"):
        return EDIT_FILES
    if key.startswith("styles.") and key.endswith(".edit.config"):
        return EDIT_BASE_FILES
    return _FILES_FOR_KEY.get(key)


@dataclass(frozen=True)
class ModelStore:
    """Where downloaded models are kept, how Civitai is reached, and how far one download may go."""

    cache_dir: Path
    civitai_url: str = civitai.CIVITAI_URL
    civitai_token_env: str = civitai.TOKEN_ENV
    limits: DownloadLimits = DownloadLimits()

    @classmethod
    def of(cls, pipeline: PipelineSettings) -> ModelStore:
        """The store a config's [pipeline] section describes."""
        limits = DownloadLimits(max_file_bytes=int(pipeline.max_download_gb * GB),
                                min_rate=pipeline.min_download_kb_per_s * 1024,
                                api_deadline=pipeline.civitai_api_deadline)
        return cls(Path(os.path.expanduser(pipeline.cache_dir)), pipeline.civitai_url, pipeline.civitai_token_env,
                   limits)


@dataclass(frozen=True)
class ModelRef:
    """A model spec sorted into its kind."""

    kind: Literal["none", "local", "repo", "url", "civitai"]
    value: str
    filename: str = ""  # for repo ids: one file inside the repo; for URLs: the cached file's name
    sha256: str = ""


def parse(spec: ModelSpec) -> ModelRef:
    """Sort a spec into local path, repo id or URL (a string that looks like a file path is a path)."""
    if isinstance(spec, UrlModel):
        name = spec.filename or os.path.basename(spec.url.split("?", 1)[0]) or spec.sha256[:16]
        return ModelRef("url", spec.url, name, spec.sha256)
    if not spec:
        return ModelRef("none", "")
    if civitai.is_reference(spec):
        return ModelRef("civitai", spec.strip())
    looks_local = (
        spec.startswith(("/", "./", "../", "~"))
        or (":" not in spec and spec.lower().endswith(MODEL_SUFFIXES))  # "owner/name:file.safetensors" is a repo
        or os.path.exists(os.path.expanduser(spec))
    )
    if not looks_local and _REPO_ID.match(spec):
        repo, _, filename = spec.partition(":")
        return ModelRef("repo", repo, filename)
    return ModelRef("local", spec)


def absolutize(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """A local path relative to the config file's folder, made absolute; other specs unchanged."""
    ref = parse(spec)
    if ref.kind != "local":
        return spec
    path = Path(os.path.expanduser(ref.value))
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def describe(spec: ModelSpec) -> str:
    """A short human name for a spec, for messages."""
    return describe_ref(parse(spec))


def check_spec(spec: ModelSpec, key: str) -> None:
    """Refuse a malformed Civitai reference, or one the key cannot use, naming the key (no file is touched)."""
    ref = parse(spec)
    if ref.kind != "civitai":
        return
    try:
        civitai.check_kind(civitai.parse_reference(ref.value), key)
    except ValueError as err:
        raise ModelError(f"{key}: {err}") from None


def check_local(spec: ModelSpec, key: str) -> None:
    """Fail at start-up if a local model path does not exist or names a pickled checkpoint."""
    ref = parse(spec)
    if ref.kind != "local":
        return
    path = Path(ref.value)
    if not path.exists():
        raise ModelError(f"{key}: no file or folder at {path}. Put the model there or point {key} at it.")
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"{key}: {path.name} is a pickled checkpoint, which can run code when loaded; "
            "claybot only loads .safetensors and .onnx files. Use the model's .safetensors release."
        )


def resolve(
    spec: ModelSpec, key: str, cache_dir: str | Path | ModelStore, *, allow_patterns: list[str] | None = None
) -> Path:
    """A local path to the model: local specs as they are, the others downloaded once into the cache."""
    ref = parse(spec)
    if ref.kind == "none":
        raise ModelError(f"{key} is empty: name a local path, a Hugging Face repo id, a Civitai model version or an "
                         "https URL with a sha256.")
    if ref.kind == "local":
        check_local(spec, key)
        return Path(ref.value)
    store = cache_dir if isinstance(cache_dir, ModelStore) else ModelStore(Path(os.path.expanduser(str(cache_dir))))
    cache = store.cache_dir
    how_to = f"Download it yourself and set {key} to its local path."
    if ref.kind == "repo":
        return _from_hub(ref, key, cache / "hub", allow_patterns, how_to)
    if ref.kind == "civitai":
        check_spec(spec, key)
        return civitai.fetch(civitai.parse_reference(ref.value), key, cache / "civitai",
                             base_url=store.civitai_url, token_env=store.civitai_token_env, limits=store.limits)
    return _from_url(ref, key, cache, how_to, store.limits)


def on_disk(spec: ModelSpec, key: str, store: ModelStore) -> Path | None:
    """Where the model is on this machine already (a local path that exists, a Hub repo in the cache, a URL's
    checked file), found without touching the network; None when it is not there. A Civitai version counts as
    absent (its cache is keyed by what the API says)."""
    ref = parse(spec)
    if ref.kind == "local":
        path = Path(os.path.expanduser(ref.value))
        return path if path.exists() else None
    if ref.kind == "url":
        path = _url_path(ref, store.cache_dir)
        return path if path.is_file() else None
    if ref.kind != "repo":
        return None
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if ref.filename and Path(ref.filename).suffix:
            return Path(hf_hub_download(ref.value, ref.filename, cache_dir=store.cache_dir / "hub",
                                        local_files_only=True))
        folder = Path(snapshot_download(ref.value, cache_dir=store.cache_dir / "hub", local_files_only=True,
                                        allow_patterns=allow_patterns(key)))
    except Exception:  # huggingface_hub's "not in the cache" errors, and unreadable caches
        return None
    if ref.filename:  # "owner/name:sub/folder"
        folder = folder / ref.filename.strip("/")
    has_weights = (folder / "model_index.json").is_file() or any(folder.glob("*.safetensors"))
    return folder if has_weights else None


def _from_hub(ref: ModelRef, key: str, cache: Path, allow_patterns: list[str] | None, how_to: str) -> Path:
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    def fetch(local_files_only: bool) -> Path:
        if ref.filename and not Path(ref.filename).suffix:  # "owner/name:sub/folder": that folder of the repo
            folder = ref.filename.strip("/")
            root = snapshot_download(ref.value, cache_dir=cache, allow_patterns=[f"{folder}/*"],
                                     local_files_only=local_files_only)
            return Path(root) / folder
        if ref.filename:
            return Path(hf_hub_download(ref.value, ref.filename, cache_dir=cache, local_files_only=local_files_only))
        return Path(snapshot_download(ref.value, cache_dir=cache, allow_patterns=allow_patterns,
                                      local_files_only=local_files_only))

    # huggingface_hub retries an unreachable Hub for ~23 s per file before it looks in its cache: ask the network
    # once, quickly, and go straight to the cache when it does not answer.
    offline = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else unreachable(constants.ENDPOINT)
    if offline:
        try:
            path = fetch(local_files_only=True)
        except Exception:
            raise ModelError(
                f"{key}: {describe_ref(ref)} is not in the cache ({cache}) and the Hugging Face Hub cannot be "
                f"reached ({offline}). Connect this machine to the internet and run `claybot models` once, or "
                f"download it yourself and set {key} to its local path."
            ) from None
        logger.info("%s: the Hugging Face Hub cannot be reached (%s); using the cached %s", key, offline,
                    describe_ref(ref))
        return path
    logger.info("fetching %s from the Hugging Face Hub (cached in %s)", describe_ref(ref), cache)
    try:
        return fetch(local_files_only=False)
    except Exception as err:  # huggingface_hub raises many kinds: offline, 404, gated, timeout
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        raise ModelError(
            f"{key}: could not fetch {describe_ref(ref)} from the Hugging Face Hub ({reason}). {how_to}"
        ) from None


def unreachable(url: str) -> str | None:
    """None when the server at the URL answers HTTP within seconds (any status), else why it did not.

    A TCP connection alone proves little (a proxy or a captive network accepts anything), so this asks for a real
    answer, through the proxies the environment names as huggingface_hub does. The outcome is remembered for half a
    minute, so that a config naming several Hub models waits at most once.
    """
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}/"
    with _probes_lock:
        seen = _probes.get(origin)
        if seen and time.monotonic() - seen[0] < 30:
            return seen[1]
    outcome: list[str | None] = []

    def ask() -> None:  # in a thread: a stuck DNS lookup has no timeout of its own
        import requests

        try:
            requests.head(origin, timeout=PROBE_TIMEOUT, allow_redirects=False).close()
            outcome.append(None)
        except requests.RequestException as err:
            outcome.append(f"{parts.hostname}: {_network_reason(err)}")

    probe = threading.Thread(target=ask, name="hub-probe", daemon=True)
    probe.start()
    probe.join(2 * PROBE_TIMEOUT + 0.5)  # connect, then the answer: each within PROBE_TIMEOUT
    reason = outcome[0] if outcome else f"{parts.hostname}: no answer within {2 * PROBE_TIMEOUT:g} s"
    with _probes_lock:
        _probes[origin] = (time.monotonic(), reason)
    return reason


def _network_reason(err: Exception) -> str:
    text = str(err)
    for known in ("Name or service not known", "Temporary failure in name resolution", "Connection refused",
                  "No route to host", "Network is unreachable", "timed out", "Connection reset"):
        if known.lower() in text.lower():
            return known
    return type(err).__name__


def _from_url(ref: ModelRef, key: str, cache: Path, how_to: str, limits: DownloadLimits) -> Path:
    """The file at an https URL, fetched once into ``cache/urls`` (bounded, resumed, checked) and reused."""
    import requests
    from filelock import FileLock

    path = _url_path(ref, cache)
    folder = path.parent
    if path.is_file():  # only a file whose sha256 matched is ever moved to this name
        return path
    part = path.with_name(f"{path.name}.part")
    later = how_to[0].lower() + how_to[1:].rstrip(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (cache / ".locks").mkdir(exist_ok=True)
        with FileLock(str(cache / ".locks" / f"{path.name}.lock")):  # two workers on one cache: one download
            if path.is_file():
                return path
            with requests.Session() as session:
                session.headers["User-Agent"] = "claybot"
                session.max_redirects = 5
                what = printable(ref.value, 500)  # quoted in log lines: no control character gets through
                digest = stream(session, Download(ref.value, part, key, what, "the server", later), limits)
            if digest != ref.sha256:
                part.unlink(missing_ok=True)
                raise ModelError(f"{key}: the file downloaded from {ref.value} does not match sha256 {ref.sha256} "
                                 f"(it has {digest}; it was deleted). Check the sha256 in config.toml, or {later}.")
            os.replace(part, path)
            return path
    except OSError as err:  # a read-only cache, a file in the way (write failures are worded inside)
        raise ModelError(f"{key}: cannot write {ref.value} into {folder} ({err.strerror or err}); set "
                         "pipeline.cache_dir to a writable folder.") from None


def _url_path(ref: ModelRef, cache: Path) -> Path:
    """Where a URL's checked file is kept: the name carries the digest, so two files of one name never collide."""
    suffix = Path(ref.filename).suffix.lower()
    fallback = "model" + (suffix if suffix in MODEL_SUFFIXES else "")
    return cache / "urls" / f"{ref.sha256[:12]}-{safe_file_name(ref.filename, fallback)}"


def describe_ref(ref: ModelRef) -> str:
    """A short human name for a sorted spec."""
    if ref.kind == "repo" and ref.filename:
        return f"{ref.value}:{ref.filename}"
    return ref.value or "(none)"


def source_of(spec: ModelSpec) -> str:
    """Where a model comes from, in words: "Hugging Face owner/name", "Civitai civitai:123", "local", an URL."""
    ref = parse(spec)
    return {"repo": f"Hugging Face {describe_ref(ref)}", "civitai": f"Civitai {ref.value}",
            "url": f"URL {ref.value}", "local": "local file", "none": "(none)"}[ref.kind]
