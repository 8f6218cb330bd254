"""Prompt text rules shared by the prompt writer and the Gateway's fallback: cleaning a chat
model's answer, and the deterministic template used whenever no model answer is usable."""

from __future__ import annotations

import re

PROMPT_MAX_CHARS = 600
FALLBACK_TITLE_MAX_CHARS = 120
FALLBACK_DESCRIPTION_MAX_CHARS = 360  # with the title and the template: < PROMPT_MAX_CHARS

_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u300c\u300d\u300e\u300f"
_DOUBLE_QUOTES = re.compile('["\u201c\u201d\u00ab\u00bb\u300c\u300d\u300e\u300f]')
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:image\s+|english\s+)?prompt\s*(?:\*\*)?\s*[:\-\u2013]\s*(?:\*\*)?\s*", re.I
)


def clean_prompt(text: str | None) -> str:
    """Normalise a model answer: one line, no label or quotes, at most PROMPT_MAX_CHARS."""
    if not text:
        return ""
    text = _LABEL.sub("", " ".join(text.split()))
    text = _DOUBLE_QUOTES.sub("", text.strip(_QUOTES + " "))
    text = " ".join(text.split()).strip(_QUOTES + " ")
    return truncate(text, PROMPT_MAX_CHARS)


def fallback_prompt(title: str, description: str = "") -> str:
    """A deterministic template prompt that keeps the original-language title and description."""
    title = truncate(" ".join(title.split()).strip(_QUOTES + " "), FALLBACK_TITLE_MAX_CHARS)
    description = truncate(
        " ".join(description.split()).rstrip(" .\u3002"), FALLBACK_DESCRIPTION_MAX_CHARS
    )
    subject = f'Poster artwork for "{title}"' if title else "Poster artwork"
    if description:
        subject = f"{subject}: {description}"
    prompt = f"{subject}. Cinematic composition, dramatic lighting, rich detail, high quality."
    return truncate(prompt, PROMPT_MAX_CHARS)


def truncate(text: str, limit: int) -> str:
    """Cut at a word boundary when one is near, so the result is at most `limit` chars."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")
