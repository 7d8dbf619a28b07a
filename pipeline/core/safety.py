"""The SFW gate: WD14's rating scores against the most a chat allows.

The tagger scores four ratings, from ``general`` (all ages) to ``explicit``. A photo is *over* a chat's limit when
the scores of the ratings above that limit outweigh the scores of those at or below it — stricter than taking the
single best-scoring rating, so a photo the tagger is torn about is not let through on a narrow lead.
"""

from __future__ import annotations

import math

RATINGS = ("general", "sensitive", "questionable", "explicit")

# What users read; neutral on purpose: no tag names, no judgement of the photo or the person.
INPUT_REFUSED = ("I can only make pictures that suit every audience in this chat, and this photo doesn't seem to. "
                 "A server or group admin can allow more where that is appropriate.")
OUTPUT_REFUSED = ("The picture I made from this photo doesn't seem to suit every audience, so I won't post it "
                  "here; please try another photo.")
CLIP_REFUSED = ("The clip I made from this picture doesn't seem to suit every audience, so I won't post it here; "
                "please try another picture.")


def over_limit(ratings: dict[str, float], max_rating: str | None) -> bool:
    """Whether a photo with these rating scores is over ``max_rating`` (None: nothing is)."""
    if max_rating is None or max_rating == RATINGS[-1]:
        return False
    allowed = RATINGS.index(max_rating)
    above = sum(ratings.get(name, 0.0) for name in RATINGS[allowed + 1:])
    within = sum(ratings.get(name, 0.0) for name in RATINGS[: allowed + 1])
    return above > within


def severity(ratings: dict[str, float]) -> float:
    """How far up the ratings a set of scores leans: their mean rank, from 0 (general) to 3 (explicit)."""
    total = sum(ratings.get(name, 0.0) for name in RATINGS)
    return sum(rank * ratings.get(name, 0.0) for rank, name in enumerate(RATINGS)) / total if total > 0 else 0.0


def worst(ratings: list[dict[str, float]]) -> dict[str, float]:
    """The scores that lean furthest up the ratings (of a clip's picture and frames: what it is reported as)."""
    return max(ratings, key=severity, default={})


def check_rating(value: str | None) -> str | None:
    """A valid ``max_rating`` (or None); ValueError naming the allowed ones."""
    if value is not None and value not in RATINGS:
        raise ValueError(f"must be one of {', '.join(RATINGS)}, not {value!r}")
    return value


RATED_EVERY = 0.5  # seconds of clip at most between two of its frames the gate rates
RATED_AT_LEAST = 5  # frames rated in every clip of that many frames or more


def rated_frames(count: int, fps: int, *, every: float = RATED_EVERY, least: int = RATED_AT_LEAST) -> list[int]:
    """The frames of a ``count``-frame clip at ``fps`` that the gate rates: the first, the last, and evenly between,
    never more than ``every`` seconds apart (so a longer clip has more), and at least ``least`` of them."""
    if count <= 1:
        return [0]
    step = max(1, math.floor(every * fps))  # frames between two rated ones, at most
    gaps = min(count - 1, max(least - 1, math.ceil((count - 1) / step)))
    return sorted({round(i * (count - 1) / gaps) for i in range(gaps + 1)})
