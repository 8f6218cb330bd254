"""Text split for streaming speech: sentences, a short first chunk, no chunk past the model's size.

A streamed synthesis speaks its text chunk after chunk and sends each chunk's audio as soon as
it is made, so the first audio comes after the first chunk, not after the whole text. The
first chunk is therefore kept short (`FIRST_CHUNK_BYTES`): the first sentence, or its first
clause when the sentence is long, but not under `MIN_CHUNK_BYTES` (f5-tts speaks a chunk under
10 bytes at 0.3x speed), so a very short first sentence takes the next one with it. The rest is
packed into chunks of whole sentences up to `max_bytes`, the model's chunk size
(`core.voice_cost.chunk_size`), as f5-tts packs them; unlike f5-tts's `chunk_text`, a sentence
longer than that is cut at clause marks, then at spaces, then between characters, so that no
chunk outgrows what the model was sized for.

Sentences end at `. ! ? …` followed by a space (English, Korean; "3.5" is not a break), at
full-width `。！？` (Japanese, Chinese; no space follows them) and at line breaks. Clauses end
at `, ; :` followed by a space and at `、，；：`. Sizes are UTF-8 bytes, the unit f5-tts sizes
chunks in (a Hangul syllable or a kana is 3 bytes). Pure Python.
"""

from __future__ import annotations

import re

FIRST_CHUNK_BYTES = 60  # about one short sentence: 2-4 s of speech
MIN_CHUNK_BYTES = 10  # f5-tts slows chunks under 10 bytes down to 0.3x

# A sentence: text up to a terminator (plus closing quotes/brackets) and the spaces after it.
_SENTENCE = re.compile(
    r"""
    .*?(?:
        [.!?…]+["'”’)\]」』]*(?:\s+|$)      # Latin-style end: needs a space (or the end)
      | [。！？]+["'”’)\]」』）]*\s*          # full-width end: no space needed
      | \n+                                  # a line break
      | $
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_CLAUSE = re.compile(r".*?(?:[,;:](?:\s+|$)|[、，；：]\s*|$)", re.DOTALL)
_WORD = re.compile(r"\S*\s*")
_WHITESPACE = re.compile(r"\s+")


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def split_for_streaming(
    text: str, max_bytes: int, *, first_max_bytes: int = FIRST_CHUNK_BYTES
) -> list[str]:
    """`text` as chunks to speak one after another: a short first chunk (at most
    `first_max_bytes`), then whole sentences packed up to `max_bytes`; none is over
    `max_bytes` (nor empty). Joined with spaces they say the whole text."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    first_max = max(min(first_max_bytes, max_bytes), 1)
    pieces = [p for s in _sentences(text) for p in _fit(s, max_bytes)]
    if not pieces:
        return []
    chunks: list[str] = []
    # The first chunk: the first piece's opening within first_max ...
    head, rest = _opening(pieces[0], first_max)
    pieces = ([rest] if rest.strip() else []) + pieces[1:]
    # ... and the pieces after it while it is too short to be spoken at normal speed.
    while nbytes(head.strip()) < MIN_CHUNK_BYTES and pieces:
        if nbytes(head + pieces[0]) > first_max:
            room = first_max - nbytes(head)
            more, left = _opening(pieces[0], room, cut_words=False) if room > 0 else ("", "")
            if not more.strip() or nbytes((head + more).strip()) > first_max:
                break
            head += more
            pieces[0] = left
            if not left.strip():
                pieces.pop(0)
            continue
        head += pieces.pop(0)
    chunks.append(head)
    current = ""
    for piece in pieces:
        if current and nbytes(current.strip()) + nbytes(piece.strip()) + 1 > max_bytes:
            chunks.append(current)
            current = ""
        current += piece
    if current.strip():
        chunks.append(current)
    return [_WHITESPACE.sub(" ", chunk).strip() for chunk in chunks]


def _sentences(text: str) -> list[str]:
    """The sentences of `text`, each with the spaces after it (none empty)."""
    return [m.group(0) for m in _SENTENCE.finditer(text) if m.group(0).strip()]


def _fit(sentence: str, max_bytes: int) -> list[str]:
    """`sentence` as pieces of at most `max_bytes` (stripped): itself, else cut at clauses,
    then at spaces, then between characters; consecutive small parts are joined again."""
    if nbytes(sentence.strip()) <= max_bytes:
        return [sentence]
    for pattern in (_CLAUSE, _WORD):
        parts = [m.group(0) for m in pattern.finditer(sentence) if m.group(0)]
        if len(parts) > 1:
            out: list[str] = []
            for part in parts:
                for small in _fit(part, max_bytes):
                    if out and nbytes((out[-1] + small).strip()) <= max_bytes:
                        out[-1] += small
                    else:
                        out.append(small)
            return out
    out, current = [], ""
    for char in sentence:  # no clause mark and no space: cut between characters
        if current and nbytes(current + char) > max_bytes:
            out.append(current)
            current = ""
        current += char
    if out and not any(c.isalnum() for c in current):  # keep trailing punctuation with a word
        out[-1], current = out[-1][:-1], out[-1][-1] + current
    return out + ([current] if current else [])


def _opening(piece: str, limit: int, *, cut_words: bool = True) -> tuple[str, str]:
    """(the longest opening of `piece` of at most `limit` bytes that ends at a clause mark or
    a space, the rest); the whole piece when it fits, a cut between characters when no mark
    or space allows a shorter one (("", piece) then, unless `cut_words`)."""
    if nbytes(piece.strip()) <= limit:
        return piece, ""
    for pattern in (_CLAUSE, _WORD):
        head = ""
        for match in pattern.finditer(piece):
            part = match.group(0)
            if not part or nbytes((head + part).strip()) > limit:
                break
            head += part
        if head.strip():
            return head, piece[len(head) :]
    if not cut_words:
        return "", piece
    cut = 0
    while cut < len(piece) and nbytes(piece[: cut + 1]) <= limit:
        cut += 1
    cut = max(cut, 1)
    return piece[:cut], piece[cut:]
