"""Where a model named in config.toml lives: a local path, a Hugging Face repo id, or an https URL with a sha256.

Repo ids and URLs are fetched once into the cache (with a progress bar) and reused; only safetensors and ONNX
files are ever handed to a loader.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.errors import ModelError
from pipeline.core.settings import ModelSpec, UrlModel

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[^:]+)?$")
MODEL_SUFFIXES = (".safetensors", ".onnx", ".ckpt", ".pt", ".pth", ".bin", ".csv", ".json")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass(frozen=True)
class ModelRef:
    """A model spec sorted into its kind."""

    kind: Literal["none", "local", "repo", "url"]
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
    spec: ModelSpec, key: str, cache_dir: str | Path, *, allow_patterns: list[str] | None = None
) -> Path:
    """A local path to the model: local specs as they are, repo ids and URLs downloaded once into the cache."""
    ref = parse(spec)
    if ref.kind == "none":
        raise ModelError(f"{key} is empty: name a local path, a Hugging Face repo id or an https URL with a sha256.")
    if ref.kind == "local":
        check_local(spec, key)
        return Path(ref.value)
    cache = Path(os.path.expanduser(str(cache_dir)))
    how_to = f"Download it yourself and set {key} to its local path."
    if ref.kind == "repo":
        return _from_hub(ref, key, cache / "hub", allow_patterns, how_to)
    return _from_url(ref, key, cache / "urls", how_to)


def _from_hub(ref: ModelRef, key: str, cache: Path, allow_patterns: list[str] | None, how_to: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    logger.info("fetching %s from the Hugging Face Hub (cached in %s)", describe_ref(ref), cache)
    try:
        if ref.filename and not Path(ref.filename).suffix:  # "owner/name:sub/folder": that folder of the repo
            folder = ref.filename.strip("/")
            root = snapshot_download(ref.value, cache_dir=cache, allow_patterns=[f"{folder}/*"])
            return Path(root) / folder
        if ref.filename:
            return Path(hf_hub_download(ref.value, ref.filename, cache_dir=cache))
        return Path(snapshot_download(ref.value, cache_dir=cache, allow_patterns=allow_patterns))
    except Exception as err:  # huggingface_hub raises many kinds: offline, 404, gated, timeout
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        raise ModelError(
            f"{key}: could not fetch {describe_ref(ref)} from the Hugging Face Hub ({reason}). {how_to}"
        ) from None


def _from_url(ref: ModelRef, key: str, cache: Path, how_to: str) -> Path:
    import pooch

    cache.mkdir(parents=True, exist_ok=True)
    # The file name carries the digest so that two different files with one name never collide in the cache.
    fname = f"{ref.sha256[:12]}-{ref.filename}"
    try:
        return Path(pooch.retrieve(ref.value, known_hash=f"sha256:{ref.sha256}", fname=fname, path=cache,
                                   progressbar=True))
    except ValueError as err:
        if "hash" in str(err).lower():
            raise ModelError(
                f"{key}: the file downloaded from {ref.value} does not match sha256 {ref.sha256}. "
                f"Check the sha256 in config.toml, or {how_to[0].lower()}{how_to[1:]}"
            ) from None
        raise ModelError(f"{key}: could not fetch {ref.value} ({err}). {how_to}") from None
    except Exception as err:  # connection refused, DNS failure, HTTP errors
        raise ModelError(f"{key}: could not fetch {ref.value} ({type(err).__name__}). {how_to}") from None


def describe_ref(ref: ModelRef) -> str:
    """A short human name for a sorted spec."""
    if ref.kind == "repo" and ref.filename:
        return f"{ref.value}:{ref.filename}"
    return ref.value or "(none)"
