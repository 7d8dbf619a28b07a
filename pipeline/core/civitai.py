"""Models named the way Civitai users find them: ``civitai:<modelVersionId>``, an AIR, or the model page's URL.

Forms understood (the version is always needed: it pins the file whose sha256 Civitai reports):

- ``civitai:128713`` — the model version id (the number after ``?modelVersionId=`` in the page's URL);
- ``urn:air:sdxl:lora:civitai:122359@128713`` — Civitai's AI Resource Identifier, ``<model>@<version>``, optionally
  ``+<fileId>`` and ``.safetensors``;
- ``https://civitai.com/models/122359/some-name?modelVersionId=128713`` or ``https://civitai.com/api/download/models/128713``.

The file is fetched through Civitai's public API: the version's metadata (``/api/v1/model-versions/{id}``) names
the file and its SHA256; the download (``/api/download/models/{id}``, which redirects to storage) is streamed into
the cache with a progress bar, resumed when the connection is cut, and kept only when its SHA256 matches. Only
``.safetensors`` files are fetched, each within the limits of pipeline.core.downloads (a size cap, a minimum
rate, a deadline and a 1 MB cap on the metadata). The API key, for models whose creators require a login, comes from the
environment variable the config names and is sent only to the configured Civitai host (never logged, never in a
message).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline.core.downloads import (
    BadAnswer,
    Download,
    DownloadLimits,
    parse_json,
    printable,
    read_answer,
    reason,
    safe_file_name,
    stream,
)
from pipeline.core.errors import ModelError

logger = logging.getLogger(__name__)

CIVITAI_URL = "https://civitai.com"
TOKEN_ENV = "CIVITAI_TOKEN"
# AIR ecosystems whose models are SDXL-shaped (claybot runs SDXL); others are refused with the way around it.
SDXL_ECOSYSTEMS = ("sdxl", "pony", "illustrious", "noobai")
# Civitai's model types (API `model.type`, AIR `type`) each config key accepts.
LORA_TYPES = ("lora", "locon", "lycoris", "dora")
TYPES_FOR_KEY = {"pipeline.base_model": ("checkpoint", "model"), "pipeline.vae": ("vae",)}
FOLDER_KEYS = ("tagger.model", "pipeline.base_config")  # need a folder of files; Civitai serves one file

_AIR = re.compile(
    r"^(?:urn:)?air:(?P<ecosystem>[^:]+):(?P<type>[^:]+):(?P<source>[^:]+):(?P<model>[^@+]+?)"
    r"(?:@(?P<version>[^+]*?))?(?:\+(?P<file>[^.]*))?(?:\.(?P<format>[^.]+))?$",
    re.IGNORECASE,
)
_HOW = "write civitai:<modelVersionId> or urn:air:sdxl:lora:civitai:<modelId>@<modelVersionId>"


@dataclass(frozen=True)
class CivitaiRef:
    """One Civitai model version (and, optionally, one file of it)."""

    version_id: int
    model_id: int | None = None
    resource_type: str = ""  # from an AIR: lora, checkpoint, vae…
    file_id: int | None = None

    def describe(self) -> str:
        """How messages name it."""
        if self.model_id is not None:
            return f"Civitai model {self.model_id} version {self.version_id}"
        return f"Civitai model version {self.version_id}"


def is_reference(spec: str) -> bool:
    """Whether a model spec is meant as a Civitai reference (well-formed or not)."""
    text = spec.strip().lower()
    if text.startswith(("civitai:", "urn:air:", "air:")):
        return True
    host = urlsplit(text).hostname or ""
    return text.startswith(("https://", "http://")) and (host == "civitai.com" or host.endswith(".civitai.com"))


def parse_reference(spec: str) -> CivitaiRef:
    """A Civitai reference from its text; ValueError with what is wrong and how to write it."""
    text = spec.strip()
    lowered = text.lower()
    if lowered.startswith("civitai:"):
        version = text.split(":", 1)[1].strip()
        if not version.isdigit():
            raise ValueError(f"{text!r} is not a Civitai model version: {_HOW} (the version id is the number after "
                             "?modelVersionId= in the model page's URL)")
        return CivitaiRef(int(version))
    if lowered.startswith(("https://", "http://")):
        return _from_url(text)
    match = _AIR.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an AIR claybot understands: {_HOW}")
    parts = {name: (value or "") for name, value in match.groupdict().items()}
    source, ecosystem, kind = parts["source"].lower(), parts["ecosystem"].lower(), parts["type"].lower()
    if source != "civitai":
        raise ValueError(f"{text!r} names a {source!r} resource; claybot fetches AIRs from Civitai only "
                         "(name a Hugging Face model as owner/name or owner/name:file.safetensors)")
    if ecosystem not in SDXL_ECOSYSTEMS:
        raise ValueError(f"{text!r} is a {ecosystem!r} resource, and claybot runs SDXL models (urn:air:sdxl:…); "
                         "if it is SDXL-compatible after all, name it as civitai:<modelVersionId>")
    if not parts["model"].isdigit():
        raise ValueError(f"{text!r}: the model id {parts['model']!r} must be a number ({_HOW})")
    if match.group("version") is None or not parts["version"]:
        raise ValueError(f"{text!r} names no version: add @<modelVersionId> (claybot pins one version, whose "
                         "file's sha256 it checks)")
    if not parts["version"].isdigit():
        raise ValueError(f"{text!r}: the version id {parts['version']!r} must be a number ({_HOW})")
    if match.group("file") is not None and not parts["file"].isdigit():
        raise ValueError(f"{text!r}: the file id after '+' must be a number")
    if match.group("format") is not None and parts["format"].lower() not in ("safetensors", "safetensor"):
        raise ValueError(f"{text!r} asks for a .{parts['format']} file; claybot loads only .safetensors files "
                         "(pickled checkpoints can run code when loaded)")
    return CivitaiRef(int(parts["version"]), int(parts["model"]), kind,
                      int(parts["file"]) if parts["file"] else None)


def _from_url(text: str) -> CivitaiRef:
    """A model page URL with its ``modelVersionId``, or an ``/api/download/models/<version>`` URL."""
    url = urlsplit(text)
    path = [part for part in url.path.split("/") if part]
    query = parse_qs(url.query)
    if path[:3] == ["api", "download", "models"] and len(path) == 4 and path[3].isdigit():
        return CivitaiRef(int(path[3]))
    if path[:1] == ["models"] and len(path) >= 2 and path[1].isdigit():
        version = query.get("modelVersionId", [""])[0]
        if version.isdigit():
            return CivitaiRef(int(version), int(path[1]))
        raise ValueError(f"{text!r} names a model but not which version: open the version's tab on the page and copy "
                         "the URL with ?modelVersionId=…, or write civitai:<modelVersionId>")
    raise ValueError(f"{text!r} is not a Civitai model page or download URL: {_HOW}")


def check_kind(ref: CivitaiRef, key: str) -> None:
    """Refuse a reference the key cannot use (a checkpoint as a LoRA, anything as the tagger's folder)."""
    if key in FOLDER_KEYS:
        raise ValueError(f"{key} needs a folder of files (a local folder or a Hugging Face repo id); Civitai serves "
                         "single files")
    allowed = allowed_types(key)
    if ref.resource_type and allowed and ref.resource_type not in allowed:
        raise ValueError(f"the AIR names a {ref.resource_type}, and {key} needs a {' or '.join(allowed[:2])}")


def allowed_types(key: str) -> tuple[str, ...]:
    """Civitai model types a config key accepts (empty: any)."""
    if key.startswith("styles.") and key.endswith(".lora"):
        return LORA_TYPES
    return TYPES_FOR_KEY.get(key, ())


# -- fetching ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionFile:
    """The file of a model version claybot fetches, as Civitai's API describes it (names already made safe)."""

    name: str
    sha256: str
    size: int | None
    download_query: str
    model_type: str
    title: str  # "model name · version name", for messages and `claybot models`


def fetch(ref: CivitaiRef, key: str, cache: Path, *, base_url: str = CIVITAI_URL, token_env: str = TOKEN_ENV,
          limits: DownloadLimits | None = None) -> Path:
    """The model version's .safetensors file in the cache: from an earlier download, or fetched and checked now."""
    from filelock import FileLock

    folder = cache / (f"{ref.version_id}+{ref.file_id}" if ref.file_id else str(ref.version_id))
    cached = _cached(folder)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):  # another claybot fetching the same file: wait for it, then reuse
            cached = _cached(folder)
            if cached is not None:
                return cached
            return _download(ref, key, folder, base_url.rstrip("/"), token_env, limits or DownloadLimits())
    except OSError as err:  # a read-only cache, a file in the way (network and write failures are worded inside)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ModelError(f"{key}: cannot write {ref.describe()} into {folder} ({err.strerror or err}); "
                         + ("free some space, or " if full else "") + "set pipeline.cache_dir to a writable folder."
                         ) from None


def cached_info(path: Path) -> dict:
    """What was recorded about a file fetched from Civitai (empty when it was not)."""
    return _record(path.parent)


def _record(folder: Path) -> dict:
    try:
        record = json.loads((folder / "civitai.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _cached(folder: Path) -> Path | None:
    info = _record(folder)
    name = info.get("file", "")
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name.startswith("."):
        return None
    path = folder / name
    if path.is_file() and path.stat().st_size == info.get("size"):
        return path
    return None


def _download(ref: CivitaiRef, key: str, folder: Path, base: str, token_env: str, limits: DownloadLimits) -> Path:
    import requests

    token = os.environ.get(token_env, "").strip()
    session = requests.Session()
    session.headers["User-Agent"] = "claybot"
    session.max_redirects = 5  # each hop may take the whole deadline: a redirect loop must end soon
    # requests drops the Authorization header when a redirect leaves this host, so storage never sees the key.
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    desc = ref.describe()
    later = f"run `claybot models` again later, or download it yourself and set {key} to its local path"
    try:
        info = _version_file(session, ref, key, base, auth, token_env, later, limits)
        logger.info("fetching %s (%s, %s) from Civitai into %s", desc, info.title, info.name, folder)
        url = f"{base}/api/download/models/{ref.version_id}" + (f"?{info.download_query}" if info.download_query
                                                                  else "")
        part = folder / f"{info.name}.part"
        job = Download(url, part, key, f"{desc} ({info.name})", "Civitai", later, info.size, "Civitai's API", auth)

        def refuse(resp: Any) -> None:
            # Civitai answers 401/403, or a login page instead of the file, when a creator requires a login.
            if resp.status_code in (401, 403) or (
                    resp.status_code < 400 and "text/html" in resp.headers.get("Content-Type", "")):
                raise ModelError(_login_message(key, desc, resp.status_code, token_env, bool(auth)))

        digest = stream(session, job, limits, refuse)
    finally:
        session.close()
    if digest != info.sha256:
        part.unlink(missing_ok=True)
        raise ModelError(f"{key}: the file Civitai sent for {desc} ({info.name}) has sha256 {digest}, but Civitai's "
                         f"API reports {info.sha256}; it was deleted. {later[0].upper()}{later[1:]}.")
    path = folder / info.name
    os.replace(part, path)
    record = {"file": info.name, "sha256": info.sha256, "size": path.stat().st_size, "version_id": ref.version_id,
              "model_type": info.model_type, "title": info.title}
    tmp = folder / "civitai.json.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, folder / "civitai.json")
    return path


def _version_file(session: Any, ref: CivitaiRef, key: str, base: str, auth: dict, token_env: str, later: str,
                  limits: DownloadLimits) -> VersionFile:
    """The version's metadata: which .safetensors file to fetch, its SHA256 and size; checked against the key."""
    import requests

    desc = ref.describe()
    url = f"{base}/api/v1/model-versions/{ref.version_id}"
    deadline_at = time.monotonic() + limits.api_deadline
    try:
        resp = session.get(url, headers=auth, stream=True,
                           timeout=(min(limits.connect_timeout, limits.api_deadline), limits.api_deadline))
    except requests.RequestException as err:
        raise ModelError(f"{key}: cannot reach Civitai at {base} ({reason(err)}). Connect this machine to the "
                         f"internet and run `claybot models`, or download {desc} yourself and set {key} to its "
                         "local path.") from None
    with resp:
        if resp.status_code == 404:
            raise ModelError(f"{key}: Civitai has no published model version {ref.version_id} (HTTP 404). Check "
                             "the number: it is the modelVersionId in the model page's URL.")
        if resp.status_code in (401, 403):
            raise ModelError(_login_message(key, desc, resp.status_code, token_env, bool(auth)))
        if resp.status_code >= 400:
            raise ModelError(f"{key}: Civitai answered HTTP {resp.status_code} about {desc}; {later}.")
        try:
            meta = parse_json(read_answer(resp, deadline_at))
        except BadAnswer as err:
            deadline = " (pipeline.civitai_api_deadline)" if "deadline" in str(err) else ""
            raise ModelError(f"{key}: Civitai's answer about {desc} {err}{deadline}; {later}.") from None
    try:
        return _describe_file(meta, ref, key, desc)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as err:
        # a shape no check below foresaw: still one line, naming the key
        raise ModelError(f"{key}: Civitai's answer about {desc} is not the JSON its API gives "
                         f"({type(err).__name__}); {later}.") from None


def _describe_file(meta: object, ref: CivitaiRef, key: str, desc: str) -> VersionFile:
    """The file to fetch, from the version's metadata; ModelError naming the key for anything malformed."""
    broken = f"{key}: Civitai's answer about {desc} is not the JSON its API gives"
    if not isinstance(meta, dict):
        raise ModelError(f"{broken} (an object was expected).")
    files, model = meta.get("files") or [], meta.get("model") or {}
    if not isinstance(files, list) or not isinstance(model, dict):
        raise ModelError(f"{broken} (files must be a list and model an object).")
    title = " · ".join(printable(part, 100) for part in (model.get("name"), meta.get("name"))
                       if isinstance(part, str) and part)
    model_id = meta.get("modelId")
    if ref.model_id is not None and model_id is not None and model_id != ref.model_id:
        raise ModelError(f"{key}: Civitai model version {ref.version_id} belongs to model {printable(model_id, 40)}, "
                         f"not {ref.model_id}; check the AIR (…:civitai:<modelId>@<modelVersionId>).")
    model_type = model.get("type") or ""
    if not isinstance(model_type, str):
        raise ModelError(f"{broken} (model.type is not a text).")
    model_type = printable(model_type, 40)
    allowed = allowed_types(key)
    if model_type and allowed and model_type.lower() not in allowed:
        raise ModelError(f"{key}: {desc} ({title or 'no title'}) is a {model_type}, and {key} needs a "
                         f"{' or '.join(allowed[:2])}.")
    chosen = _choose_file(files, ref)
    if chosen is None:
        names = ", ".join(printable(f.get("name"), 100) for f in files[:20] if isinstance(f, dict)) or "none"
        which = f".safetensors file with id {ref.file_id}" if ref.file_id else ".safetensors model file"
        raise ModelError(f"{key}: {desc} ({title or 'no title'}) offers no {which} (its files: {names}); claybot "
                         "loads only .safetensors files.")
    listed = printable(chosen["name"], 100)
    hashes = chosen.get("hashes")
    sha256 = hashes.get("SHA256") if isinstance(hashes, dict) else None
    sha256 = sha256.lower() if isinstance(sha256, str) else ""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ModelError(f"{key}: Civitai reports no SHA256 for {listed} of {desc}, so it cannot be checked; "
                         f"download it yourself and set {key} to its local path.")
    size_kb = chosen.get("sizeKB")
    if size_kb is not None and (isinstance(size_kb, bool) or not isinstance(size_kb, int | float)
                                or not 0 <= size_kb < 1 << 40):
        raise ModelError(f"{broken} (the size of {listed} is {printable(size_kb, 40)}).")
    # the name becomes a path in the cache: nothing odd in it, and short enough in bytes for any file system
    name = safe_file_name(os.path.basename(chosen["name"]), f"{ref.version_id}.safetensors")
    if not name.lower().endswith(".safetensors"):
        name = f"{ref.version_id}.safetensors"
    download_url = chosen.get("downloadUrl")
    query = urlsplit(download_url).query if isinstance(download_url, str) else ""
    return VersionFile(name, sha256, round(size_kb * 1024) if size_kb is not None else None, query, model_type,
                       title or desc)


def _choose_file(files: list, ref: CivitaiRef) -> dict | None:
    """The .safetensors model file: the one the AIR names, else the primary one, else the first."""
    usable = [f for f in files if isinstance(f, dict) and isinstance(f.get("name"), str)
              and f["name"].lower().endswith(".safetensors")]
    if ref.file_id is not None:
        return next((f for f in usable if f.get("id") == ref.file_id), None)
    models = [f for f in usable if f.get("type", "Model") == "Model"]
    return next((f for f in models if f.get("primary") is True), models[0] if models else None)


def _login_message(key: str, desc: str, status: int, token_env: str, had_token: bool) -> str:
    if not had_token:
        return (f"{key}: Civitai requires a logged-in account to download {desc} (HTTP {status}): create an API key "
                f"(civitai.com → Account settings → API Keys) and put it in the environment variable {token_env}.")
    return (f"{key}: Civitai refused the API key in {token_env} for {desc} (HTTP {status}): check that the key is "
            "current and that its account may download this model (some need their terms accepted on the model "
            "page).")
