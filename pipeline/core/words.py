"""A person's own words in a request (``/clay 0.6 as a knight in armour``): the one rule for what may be added.

They reach a prompt (SDXL styles: after the trigger words and the tags) or an instruction (the edit engine's
``{words}``), a caption and a log line, so they are bounded, printable, one line, and free of prompt syntax that could
re-weight the style. Torch-free: the front ends check them before anything is queued, intake checks them again.
"""

from __future__ import annotations

import unicodedata

from pipeline.core.errors import BadRequest

MAX_WORDS = 200  # characters, after spaces are tidied
# Format characters that ordinary text needs: the zero-width joiner (emoji such as 👩‍🚀) and non-joiner (Persian,
# Indic scripts). Every other one (bidirectional overrides that reorder a caption, invisible spaces) is refused.
JOINERS = frozenset({"\u200c", "\u200d"})


def clean_words(text: str | None) -> str:
    """``text`` tidied (runs of spaces, tabs and line breaks → one space; ends trimmed); BadRequest naming the
    problem when it is longer than ``MAX_WORDS`` or holds a control or invisible formatting character."""
    if not text:
        return ""
    if len(text) > 4 * MAX_WORDS:  # nothing this long is tidied, let alone shown back
        raise BadRequest(f"Your words are too long: at most {MAX_WORDS} characters, please.")
    tidy = " ".join(text.split())
    if len(tidy) > MAX_WORDS:
        raise BadRequest(f"Your words are too long ({len(tidy)} characters): at most {MAX_WORDS}, please.")
    for char in tidy:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") and char not in JOINERS:
            raise BadRequest(f"Your words hold an invisible or control character (U+{ord(char):04X}); "
                             "please send plain text.")
    return tidy
