"""Where a search's results stop being relevant: a fixed floor and adaptive cuts.

A fixed cosine threshold does not carry from one query to the next (CLIP's scores for a good
match can be 0.2 for one query and 0.35 for another), so besides `min_score` a search can cut
where its own candidates say: after the largest drop between consecutive scores (`gap`), or
below the candidates' mean minus `k` standard deviations (`stddev`). The candidates are the
`CUTOFF_CANDIDATES` best hits (or `limit`, if more), so the statistics do not depend on how
many results the client asked for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import InvalidInput

Cutoff = Literal["none", "gap", "stddev"]
CUTOFF_CANDIDATES = 32


@dataclass(frozen=True)
class Cut:
    """How many of the best-first scores are kept, and the score they had to reach."""

    kept: int
    threshold: float | None


def candidates_for(limit: int, cutoff: Cutoff) -> int:
    """How many hits to ask the index for."""
    return limit if cutoff == "none" else max(limit, CUTOFF_CANDIDATES)


def cut_scores(
    scores: Sequence[float], *, min_score: float | None, cutoff: Cutoff, k: float = 1.0
) -> Cut:
    """Apply the adaptive cut to best-first `scores`, then `min_score`; the stricter wins."""
    thresholds: list[float] = []
    if cutoff == "gap" and len(scores) >= 2:
        gaps = [scores[i] - scores[i + 1] for i in range(len(scores) - 1)]
        widest = max(range(len(gaps)), key=gaps.__getitem__)  # the first of equal gaps
        if gaps[widest] > 0:
            thresholds.append(scores[widest])
    elif cutoff == "stddev" and len(scores) >= 2:
        thresholds.append(statistics.fmean(scores) - k * statistics.pstdev(scores))
    if min_score is not None:
        thresholds.append(min_score)
    if not thresholds:
        return Cut(kept=len(scores), threshold=None)
    threshold = max(thresholds)
    kept = sum(1 for score in scores if score >= threshold)
    return Cut(kept=kept, threshold=threshold)


# --- pages past the first ---------------------------------------------------------------------
# A search cursor holds the offset of the next page and a fingerprint of the search it
# belongs to (query, limit and cut), so that it cannot continue a different search. Pages are
# positions in the ranking at the time of each request: images added in between can shift
# them. Searches go at most MAX_SEARCH_DEPTH results deep.
MAX_SEARCH_DEPTH = 1000


def search_fingerprint(*parts: object) -> str:
    """A short digest of what defines a search's ranking and cut."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def encode_search_cursor(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_search_cursor(cursor: str, fingerprint: str) -> int:
    """The offset a cursor continues at; `InvalidInput` when it is malformed, too deep, or
    from another search."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii"))
        data = json.loads(raw)
        offset, owner = data["o"], data["f"]
    except (ValueError, UnicodeError, binascii.Error, KeyError, TypeError):
        raise InvalidInput("malformed cursor", cursor=cursor[:80]) from None
    if not isinstance(offset, int) or not 0 < offset < MAX_SEARCH_DEPTH:
        raise InvalidInput("malformed cursor", cursor=cursor[:80])
    if owner != fingerprint:
        raise InvalidInput(
            "this cursor belongs to another search: send the same query, limit and cut with it",
            cursor=cursor[:80],
        )
    return offset
