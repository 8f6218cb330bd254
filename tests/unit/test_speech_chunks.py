"""The streaming text splitter: sentence boundaries in three scripts, a short first chunk,
every chunk within the model's size, nothing lost."""

from __future__ import annotations

import pytest

from core.speech_chunks import (
    FIRST_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    nbytes,
    split_for_streaming,
)

ENGLISH = (
    "Hello there. This is the second sentence, which is a bit longer than the first one. "
    "Third one here! And the fourth, last one?"
)
KOREAN = "안녕하세요. 오늘은 날씨가 정말 좋네요. 산책하러 갈까요? 네, 좋아요."
JAPANESE = "今日はいい天気ですね。散歩に行きましょうか？はい、行きましょう。"


def squeezed(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("text", [ENGLISH, KOREAN, JAPANESE])
@pytest.mark.parametrize("max_bytes", [12, 30, 60, 100, 300])
def test_nothing_is_lost_and_no_chunk_is_too_big(text: str, max_bytes: int) -> None:
    chunks = split_for_streaming(text, max_bytes)
    assert squeezed("".join(chunks)) == squeezed(text)
    assert all(chunk and chunk == chunk.strip() for chunk in chunks)
    assert all(nbytes(chunk) <= max_bytes for chunk in chunks), chunks
    assert nbytes(chunks[0]) <= min(FIRST_CHUNK_BYTES, max_bytes)


def test_english_sentences_first_alone_rest_packed() -> None:
    assert split_for_streaming(ENGLISH, 100) == [
        "Hello there.",
        "This is the second sentence, which is a bit longer than the first one. Third one here!",
        "And the fourth, last one?",
    ]


def test_korean_and_japanese_break_at_their_punctuation() -> None:
    assert split_for_streaming(KOREAN, 40) == [
        "안녕하세요.",
        "오늘은 날씨가 정말 좋네요.",
        "산책하러 갈까요? 네, 좋아요.",
    ]
    # full-width marks need no space after them
    assert split_for_streaming(JAPANESE, 40) == [
        "今日はいい天気ですね。",
        "散歩に行きましょうか？",
        "はい、行きましょう。",
    ]


def test_decimals_and_abbreviation_dots_without_space_do_not_break() -> None:
    assert split_for_streaming("Pi is 3.14 and e is 2.71. Next one.", 20) == [
        "Pi is 3.14 and e is",  # the first sentence is cut at a space, not at "3."
        "2.71. Next one.",
    ]


def test_a_tiny_first_sentence_takes_the_next_with_it() -> None:
    # f5-tts speaks chunks under 10 bytes at 0.3x speed
    chunks = split_for_streaming("Hi. Ok. This is it. Another sentence follows here.", 100)
    assert chunks[0] == "Hi. Ok. This is it."
    assert nbytes(chunks[0]) >= MIN_CHUNK_BYTES


def test_a_long_first_sentence_is_cut_at_a_clause() -> None:
    text = (
        "When the long first sentence goes on and on, past the first chunk's budget, "
        "it is cut at its first clause instead. Then more."
    )
    chunks = split_for_streaming(text, 300)
    assert chunks[0] == "When the long first sentence goes on and on,"
    assert squeezed("".join(chunks)) == squeezed(text)


def test_line_breaks_are_boundaries() -> None:
    assert split_for_streaming("Title line\nBody text follows here", 15) == [
        "Title line",
        "Body text",
        "follows here",
    ]


def test_text_without_any_break_is_cut_between_characters() -> None:
    assert split_for_streaming("a" * 50, 20) == ["a" * 20, "a" * 20, "a" * 10]
    # punctuation is not left alone in a chunk
    chunks = split_for_streaming("今日はいい天気ですね、散歩", 30)
    assert all(any(c.isalnum() for c in chunk) for chunk in chunks), chunks


def test_empty_and_invalid() -> None:
    assert split_for_streaming("   \n ", 100) == []
    with pytest.raises(ValueError, match="max_bytes"):
        split_for_streaming("hi", 0)
