"""Every model a config names, fetched ahead of time (`claybot models`), so a machine is warm before it goes live.

Torch-free: it fetches files the way the worker will (same cache, same files of each repo) without loading them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from pipeline.core import models
from pipeline.core.errors import ModelError


@dataclass(frozen=True)
class FetchedModel:
    """One model of the config, on disk: where it came from, where it is, its size and checksums."""

    key: str
    source: str
    path: Path
    files: list[tuple[str, int, str]]  # (name relative to path, bytes, sha256); one entry for a single file

    @property
    def size(self) -> int:
        """Bytes on disk, all files together."""
        return sum(size for _, size, _ in self.files)


def fetch_models(config: Config) -> tuple[list[FetchedModel], list[str]]:
    """Fetch every model the config names: what is on disk, and one line per model that could not be fetched."""
    store = models.ModelStore.of(config.pipeline)
    fetched, failures = [], []
    for key, spec in config.model_specs().items():
        try:
            path = models.resolve(spec, key, store, allow_patterns=models.allow_patterns(key))
        except ModelError as err:
            failures.append(str(err))
            continue
        fetched.append(FetchedModel(key, models.source_of(spec), path, _files(path)))
    return fetched, failures


def fetch_or_fail(config: Config) -> list[FetchedModel]:
    """Fetch every model; a ModelError with one line per model that could not be fetched."""
    fetched, failures = fetch_models(config)
    if failures:
        raise ModelError("\n".join(failures))
    return fetched


def _files(path: Path) -> list[tuple[str, int, str]]:
    if path.is_file():
        return [(path.name, path.stat().st_size, sha256_of(path))]
    found = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [(str(p.relative_to(path)), p.stat().st_size, sha256_of(p)) for p in found]


def sha256_of(path: Path) -> str:
    """The file's sha256 (read through symlinks: the Hub's cache links snapshots to blobs)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def render(model: FetchedModel) -> str:
    """The lines `claybot models` prints for one model."""
    lines = [model.key, f"  source  {model.source}", f"  path    {model.path}"]
    count = f" in {len(model.files)} files" if model.path.is_dir() else ""
    lines.append(f"  size    {_human(model.size)} ({model.size:,} bytes){count}")
    if model.path.is_file():
        lines.append(f"  sha256  {model.files[0][2]}")
    else:
        width = max((len(name) for name, _, _ in model.files), default=0)
        lines += [f"  sha256  {name:<{width}}  {digest}" for name, _, digest in model.files]
    return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
