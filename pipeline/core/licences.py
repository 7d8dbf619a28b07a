"""The licence a configured model states in its model card, and the gate that keeps a commercial claybot off models
whose licence forbids commercial use.

A model's card is the ``README.md`` of its folder (the one the Hugging Face Hub shows), whose YAML front matter names
its licence (``license``, ``license_name``, ``license_link``); a diffusers folder's ``model_index.json`` may carry a
``license`` too. A card is text from outside: one that cannot be read counts as stating no licence, and every value
quoted from it in a message is cut short and stripped of control characters, so a card cannot flood or forge a log.

claybot reads what the card says; it does not read the licence itself. "Commercial" here means the card names a
licence known to allow commercial use; anything it does not recognise is "unknown", for the operator to read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from pipeline.core.errors import ModelError

Use = Literal["commercial", "non-commercial", "unknown"]

# A README.md or model_index.json larger than this is not read: cards are tens of KB, and PyYAML takes seconds a MB.
MAX_CARD_BYTES = 2 * 1024 * 1024
SHOWN_CHARS = 80  # the most characters of one value from a card that a message quotes

# Licence ids (the Hub's ``license`` values) that allow commercial use; the RAIL family with use restrictions.
COMMERCIAL_IDS = frozenset({
    "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "isc", "zlib", "unlicense",
    "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "mpl-2.0",
    "bsl-1.0", "afl-3.0", "ecl-2.0", "ms-pl", "postgresql", "ofl-1.1", "pddl", "odc-by", "wtfpl",
    "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m",
})
# Words that say "not for commercial use", looked for in the id, name and link once spaces, dots and underscores
# are hyphens; FLUX's own licence names contain "non-commercial".
_NON_COMMERCIAL_WORDS = ("non-commercial", "noncommercial", "research-only")
_CC_NC = re.compile(r"(?:^|-)(?:cc|by)-nc(?:-|$)")  # cc-by-nc-4.0, CC BY-NC-SA 4.0, creativecommons.org/…/by-nc/
# ``license: other`` naming the FLUX [dev] licence ("flux-dev", "license-flux1-dev", a link to LICENSE-FLUX1-dev), as
# FLUX.1 [dev] fine-tunes do: that licence is non-commercial.
_FLUX_DEV = re.compile(r"(?:^|-)flux-?[12]?-dev(?:-|$)")


@dataclass(frozen=True)
class Licence:
    """A licence as a model card states it: ``id`` the lower-cased ``license`` value ("apache-2.0", "other"; several
    joined with ", "), ``name`` its ``license_name`` and ``link`` its ``license_link`` ("" when not given)."""

    id: str
    name: str = ""
    link: str = ""

    @property
    def use(self) -> Use:
        """Whether the licence allows commercial use: "commercial", "non-commercial", or "unknown" (read it)."""
        texts = [_words(self.id), _words(self.name), _words(self.link)]
        if any(word in text for text in texts for word in _NON_COMMERCIAL_WORDS) or any(map(_CC_NC.search, texts)):
            return "non-commercial"
        ids = [part.strip() for part in self.id.lower().split(",") if part.strip()]
        if ids in ([], ["other"]) and any(_FLUX_DEV.search(text) for text in texts[1:]):
            return "non-commercial"
        if ids and all(part in COMMERCIAL_IDS for part in ids):
            return "commercial"
        return "unknown"

    def describe(self) -> str:
        """How the card states it, short and safe for one log line: "'apache-2.0'", "'other' (llama3)"."""
        shown = f"'{_shown(self.id)}'" if self.id else "no id"
        if self.name and self.name.lower() != self.id:
            shown += f" ({_shown(self.name)})"
        return shown


def read_licence(path: Path) -> Licence | None:
    """The licence the model at ``path`` (a folder, or one file) states in its model card; None when none is stated
    or the card cannot be read."""
    return _find(path)[0]


def check(key: str, what: str, path: Path, *, commercial: bool) -> str | None:
    """The licence gate for the model at config key ``key`` (``what``: its short human name), found at ``path``.

    Only a commercial claybot (``[models] commercial = true``) is gated: a licence that forbids commercial use
    raises ModelError; one claybot does not recognise, or none stated, gives a warning line for the caller to log;
    a licence that allows commercial use gives None. A claybot that is not commercial is never gated (None).
    """
    if not commercial:
        return None
    licence, trouble = _find(path)
    who = _shown(what)
    if licence is None:
        states = f"no licence stated ({trouble})" if trouble else "no licence stated"
        return (f"{key}: [models] commercial = true, and {who}'s model card has {states}. Read the licence on the "
                "model's page and make sure it allows commercial use.")
    use = licence.use
    if use == "commercial":
        return None
    if use == "non-commercial":
        raise ModelError(
            f"{key}: [models] commercial = true: this claybot charges or is run commercially, and {who}'s model card "
            f"says its licence ({_shown(licence.name or licence.id)}) does not allow commercial use. Use a model whose "
            "licence allows it, or set commercial = false if you do not charge for claybot or run it commercially."
        )
    where = f"({_shown(licence.link)})" if licence.link else "on the model's page"
    return (f"{key}: [models] commercial = true, and {who}'s model card says licence {licence.describe()}, which "
            f"claybot does not know to allow commercial use. Read it {where} and make sure it does.")


def _find(path: Path) -> tuple[Licence | None, str]:
    """The licence stated for ``path``, or None and why none was found ("" when simply none is stated)."""
    trouble = ""
    for folder in _card_folders(path):
        for read in (_from_card, _from_model_index):
            licence, problem = read(folder)
            if licence is not None:
                return licence, ""
            trouble = trouble or problem
    return None, trouble


def _card_folders(path: Path) -> list[Path]:
    """Where the model card for ``path`` may be: its folder (a file's own folder), then, inside a Hugging Face cache
    snapshot (``…/models--owner--name/snapshots/<revision>/…``), each folder up to the snapshot's root."""
    folder = path if path.is_dir() else path.parent
    folders = [folder]
    parts = folder.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            root = Path(*parts[: i + 2])
            up = folder
            while up != root and root in up.parents:
                up = up.parent
                folders.append(up)
            break
    return folders


def _from_card(folder: Path) -> tuple[Licence | None, str]:
    """The licence in ``folder``'s README.md front matter, or None and what went wrong reading it."""
    from huggingface_hub.repocard import metadata_load

    card = folder / "README.md"
    problem = _unreadable(card)
    if problem is not None:
        return None, problem
    try:
        meta = metadata_load(card)
    except Exception as err:  # a hostile or broken card: YAML errors, bad UTF-8, a list instead of a mapping, …
        return None, f"its README.md could not be read: {type(err).__name__}"
    if not isinstance(meta, dict):
        return None, ""
    licence = _text(meta.get("license"))
    if not licence:
        return None, ""
    return Licence(licence.lower(), _text(meta.get("license_name")), _text(meta.get("license_link"))), ""


def _from_model_index(folder: Path) -> tuple[Licence | None, str]:
    """The ``license`` string of ``folder``'s model_index.json, or None and what went wrong reading it."""
    index = folder / "model_index.json"
    problem = _unreadable(index)
    if problem is not None:
        return None, problem
    try:
        data = json.loads(index.read_bytes())
    except Exception as err:  # bad JSON, bad UTF-8, nesting too deep
        return None, f"its model_index.json could not be read: {type(err).__name__}"
    licence = data.get("license") if isinstance(data, dict) else None
    if not isinstance(licence, str) or not licence.strip():
        return None, ""
    return Licence(licence.strip().lower()), ""


def _unreadable(file: Path) -> str | None:
    """Why ``file`` is not read: "" when it is absent (nothing to say), a reason when it is too large or unreadable,
    None when it can be read."""
    try:
        if not file.is_file():
            return ""
        size = file.stat().st_size
    except OSError as err:
        return f"its {file.name} could not be read: {type(err).__name__}"
    if size > MAX_CARD_BYTES:
        return f"its {file.name} is too large to read ({size:,} bytes)"
    return None


def _text(value: object) -> str:
    """A front-matter value as text: a string stripped, a list of strings joined with ", ", anything else ""."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return ", ".join(item.strip() for item in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _words(text: str) -> str:
    """``text`` lower-cased with every run of spaces, dots, underscores and other punctuation made one hyphen."""
    return re.sub(r"[^a-z0-9+]+", "-", text.lower())


def _shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """A value from a card as one log line may show it: control and format characters (newlines, ANSI escapes,
    bidirectional overrides) removed, whitespace runs made one space, at most ``limit`` characters ("…" when cut)."""
    head = value[: limit * 4]  # only the start is looked at, so a 1 MB value costs nothing here
    kept = "".join(" " if ch.isspace() else ch for ch in head if ch.isspace() or unicodedata.category(ch)[0] != "C")
    kept = " ".join(kept.split())
    if len(kept) > limit or len(value) > len(head):
        return kept[:limit].rstrip() + "…"
    return kept


class LicenceRow(NamedTuple):
    """One model of the licence table: its name, its licence, whether that allows commercial use, and a note."""

    model: str
    licence: str
    commercial: str  # "yes", "no", or "read it"
    note: str


# The models claybot's docs name, with their licences as stated on their Hugging Face model pages (as read 2026-12).
LICENCE_TABLE: tuple[LicenceRow, ...] = (
    LicenceRow("Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)",
               "CreativeML Open RAIL++-M (openrail++)", "yes", "with the licence's use restrictions"),
    LicenceRow("WD14 tagger (SmilingWolf/wd-vit-tagger-v3)", "Apache-2.0", "yes", ""),
    LicenceRow("ClayAnimation.Redmond LoRA (artificialguybr/ClayAnimationRedmond)", "creativeml-openrail-m", "yes",
               "with the licence's use restrictions"),
    LicenceRow("FLUX.2 [klein] 4B (black-forest-labs/FLUX.2-klein-4B)", "Apache-2.0", "yes", ""),
    LicenceRow("FLUX.2 [klein] 9B (black-forest-labs/FLUX.2-klein-9B)", "FLUX Non-Commercial License", "no",
               "non-commercial use only"),
    LicenceRow("FLUX.2 [dev] (black-forest-labs/FLUX.2-dev)", "FLUX Non-Commercial License", "no",
               "non-commercial use only"),
    LicenceRow("FLUX.1 Kontext [dev] (black-forest-labs/FLUX.1-Kontext-dev)", "FLUX.1 [dev] Non-Commercial License",
               "no", "non-commercial use only"),
    LicenceRow("Qwen-Image-Edit-2511 (Qwen/Qwen-Image-Edit-2511)", "Apache-2.0", "yes", ""),
    LicenceRow("Wan 2.2 TI2V-5B (Wan-AI/Wan2.2-TI2V-5B-Diffusers)", "Apache-2.0", "yes", ""),
    LicenceRow("LTX-Video 0.9.7 distilled (Lightricks/LTX-Video-0.9.7-distilled)", "LTXV Open Weights License",
               "read it", "Lightricks' own licence, with use restrictions; not an open-source licence"),
)


def licence_table_markdown() -> str:
    """LICENCE_TABLE as a Markdown table, for the README."""
    lines = ["| Model | Licence | Commercial use | Note |", "| --- | --- | --- | --- |"]
    for row in LICENCE_TABLE:
        cells = (cell.replace("|", "\\|") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
