"""serve_app/relevance.py: the cuts a search can apply to its best-first scores."""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from serve_app.relevance import (
    CUTOFF_CANDIDATES,
    candidates_for,
    cut_scores,
    decode_search_cursor,
    encode_search_cursor,
    search_fingerprint,
)

SCORES = [0.34, 0.33, 0.31, 0.22, 0.21, 0.20, 0.19]  # a clear drop after the third


def test_no_cut_keeps_everything() -> None:
    cut = cut_scores(SCORES, min_score=None, cutoff="none")
    assert (cut.kept, cut.threshold) == (7, None)


def test_min_score_is_a_floor() -> None:
    assert cut_scores(SCORES, min_score=0.21, cutoff="none").kept == 5
    assert cut_scores(SCORES, min_score=0.9, cutoff="none").kept == 0


def test_gap_cuts_after_the_largest_drop() -> None:
    cut = cut_scores(SCORES, min_score=None, cutoff="gap")
    assert cut.kept == 3 and cut.threshold == pytest.approx(0.31)


def test_stddev_cuts_below_mean_minus_k_deviations() -> None:
    loose = cut_scores(SCORES, min_score=None, cutoff="stddev", k=1.0)
    strict = cut_scores(SCORES, min_score=None, cutoff="stddev", k=0.0)
    mean = sum(SCORES) / len(SCORES)
    assert strict.threshold == pytest.approx(mean) and strict.kept == 3
    assert loose.kept == 6  # one deviation below the mean (0.196) drops only the last
    assert loose.threshold is not None and loose.threshold < strict.threshold


def test_the_stricter_of_min_score_and_the_adaptive_cut_wins() -> None:
    assert cut_scores(SCORES, min_score=0.335, cutoff="gap").kept == 1
    assert cut_scores(SCORES, min_score=0.1, cutoff="gap").kept == 3


def test_too_few_or_flat_scores_are_not_cut() -> None:
    assert cut_scores([0.3], min_score=None, cutoff="gap").kept == 1
    assert cut_scores([], min_score=None, cutoff="stddev").kept == 0
    assert cut_scores([0.3, 0.3, 0.3], min_score=None, cutoff="gap").kept == 3


def test_adaptive_cuts_look_at_a_fixed_number_of_candidates() -> None:
    assert candidates_for(5, "none") == 5
    assert candidates_for(5, "gap") == CUTOFF_CANDIDATES
    assert candidates_for(100, "stddev") == 100


def test_search_cursors_continue_only_their_own_search() -> None:
    mine = search_fingerprint("고양이", 10, None, "none", 1.0)
    other = search_fingerprint("고양이", 20, None, "none", 1.0)
    assert mine != other
    cursor = encode_search_cursor(10, mine)
    assert decode_search_cursor(cursor, mine) == 10
    with pytest.raises(InvalidInput, match="another search"):
        decode_search_cursor(cursor, other)
    for bad in ("", "!!!", encode_search_cursor(0, mine), encode_search_cursor(5000, mine)):
        with pytest.raises(InvalidInput, match="malformed"):
            decode_search_cursor(bad, mine)
