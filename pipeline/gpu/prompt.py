"""Tags → an A1111-style prompt with the style's trigger words weighted up, and that syntax parsed into weights.

The original workflow wrote ``(claymation style:2), tag, tag, …``: without the raised weight the trigger drowns
among 20–40 tags and the style does not show. Torch-free; ``pipeline.gpu.conditioning`` turns the parsed prompt into
SDXL embeddings.
"""

from __future__ import annotations

import re

from pipeline.core.settings import StyleSettings, TaggerSettings
from pipeline.gpu.tagger import Tags

# Kaomoji tags keep their underscores (as in the taggers' reference scripts): "^_^" is not "^ ^".
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})


def tag_text(tag: str) -> str:
    """A tagger name as prompt text: underscores become spaces (kaomoji aside)."""
    return tag if tag in KAOMOJI else tag.replace("_", " ")


def escape(text: str) -> str:
    """Escape characters that are prompt syntax, so a tag like ``kirby (series)`` stays literal text."""
    return re.sub(r"([\\()\[\]])", r"\\\1", text)


def prompt_tags(tags: Tags, tagger: TaggerSettings, style: StyleSettings) -> list[str]:
    """The tags that go into the prompt: characters then general tags, best first, dropped tags removed, capped."""
    dropped = {tag_text(t).lower() for t in (*tagger.drop_tags, *style.clashing_tags)}
    trigger = style.trigger_words.lower()
    chosen: list[str] = []
    for name, _score in (*tags.characters, *tags.general):
        text = tag_text(name)
        if text.lower() in dropped or text.lower() == trigger or text in chosen:
            continue
        chosen.append(text)
    return chosen[: tagger.max_tags]


def format_weight(weight: float) -> str:
    """``2.0`` → ``2``, ``1.5`` → ``1.5``."""
    return f"{weight:g}"


def build_prompt(style: StyleSettings, tags: list[str], *, trigger_weight: float | None = None,
                 words: str = "") -> str:
    """``(trigger words:weight), tag, tag, …, words`` in A1111 syntax (the weight omitted when it is 1); the
    person's ``words`` come last, escaped: they add to the picture and can never re-weight the style."""
    weight = style.trigger_weight if trigger_weight is None else trigger_weight
    parts = [escape(tag) for tag in tags]
    if words.strip():
        parts.append(escape(words.strip()))
    trigger = style.trigger_words.strip()
    if trigger:
        parts.insert(0, f"({escape(trigger)}:{format_weight(weight)})" if weight != 1 else escape(trigger))
    return ", ".join(parts)


_ATTENTION = re.compile(
    r"""\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:""",
    re.VERBOSE,
)
_UP, _DOWN = 1.1, 1 / 1.1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111 prompt syntax → (text, weight) runs.

    ``(a:1.5)`` weights ``a`` by 1.5, ``(a)`` by 1.1, ``[a]`` by 1/1.1, nesting multiplies, ``\\(`` is a literal
    parenthesis; unbalanced brackets are closed at the end. Adjacent runs of equal weight are merged.
    """
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            runs.append([token[1], 1.0])
        elif token == "\\":
            runs.append(["\\", 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            try:
                multiply(round_open.pop(), float(weight))
            except ValueError:  # "(a:1.2.3)" — not a number: keep the text
                runs.append([token, 1.0])
        elif token.startswith(")") and round_open:
            multiply(round_open.pop(), _UP)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _DOWN)
        else:
            runs.append([token, 1.0])
    for start in round_open:
        multiply(start, _UP)
    for start in square_open:
        multiply(start, _DOWN)

    merged: list[tuple[str, float]] = []
    for chunk, weight in runs:
        if merged and abs(merged[-1][1] - weight) < 1e-9:
            merged[-1] = (merged[-1][0] + chunk, weight)
        else:
            merged.append((chunk, weight))
    return [(chunk, weight) for chunk, weight in merged if chunk] or [("", 1.0)]


def plain_text(text: str) -> str:
    """The prompt's words without weight syntax (for the pooled embedding and for display)."""
    return "".join(chunk for chunk, _ in parse_attention(text))
