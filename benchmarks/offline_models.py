"""How long an offline machine waits before it hears that a Hub model is missing. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/offline_models.py

For one file of a repo (the default clay LoRA's shape) that is not in the cache, with the Hub at an address that
does not answer, it times:

- huggingface_hub's ``hf_hub_download`` alone (what claybot called before): it retries the HEAD request with backoff;
- ``pipeline.core.models.resolve`` (what claybot calls now): one short probe, then the cache, then one clear line.

Two kinds of "offline": the Hub's port refuses connections (127.0.0.1, a closed port), and its name does not resolve
(a ``.invalid`` host). Nothing leaves this machine.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import huggingface_hub.constants as hf_constants  # noqa: E402
from huggingface_hub import hf_hub_download  # noqa: E402

from pipeline.core import models  # noqa: E402
from pipeline.core.errors import ModelError  # noqa: E402

REPO, FILE = "artificialguybr/ClayAnimationRedmond", "ClayAnimationRedm.safetensors"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_hub_at(endpoint: str) -> None:
    """huggingface_hub reads its endpoint at import: set the constants it reads at call time."""
    hf_constants.ENDPOINT = endpoint
    hf_constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"


def timed(call) -> tuple[float, str]:
    started = time.monotonic()
    try:
        call()
        outcome = "fetched?!"
    except ModelError as err:
        outcome = str(err)[:110] + "…"
    except Exception as err:  # huggingface_hub's own
        outcome = f"{type(err).__name__}"
    return time.monotonic() - started, outcome


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # huggingface_hub logs every retry
    print(f"one file of a repo, not cached ({REPO}:{FILE}); Hub unreachable")
    for label, endpoint in (("refused", f"http://127.0.0.1:{closed_port()}"),
                            ("no DNS", "https://claybot-offline.invalid")):
        point_hub_at(endpoint)
        with tempfile.TemporaryDirectory() as cache:
            before, why_before = timed(lambda cache=cache: hf_hub_download(REPO, FILE, cache_dir=Path(cache) / "hub"))
        with tempfile.TemporaryDirectory() as cache:
            after, why_after = timed(lambda cache=cache: models.resolve(f"{REPO}:{FILE}", "styles.clay.lora", cache))
        print(f"  {label:8} hf_hub_download alone {before:6.2f} s  ({why_before})")
        print(f"  {label:8} models.resolve        {after:6.2f} s  ({why_after})")
        print(f"  {label:8} → {before / max(after, 1e-3):.0f}× shorter wait")


if __name__ == "__main__":
    main()
