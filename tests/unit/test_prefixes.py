"""The object-store prefixes are checked at start: non-empty, ending in '/', valid keys, and no
one inside another (an empty IMAGE_REMOTE_PREFIX would make voices and backups servable)."""

from __future__ import annotations

import pytest

from serve_app.settings import SettingsError, load_settings

PREFIXES = (
    "IMAGE_REMOTE_PREFIX",
    "IMAGE_SEARCH_REMOTE_PREFIX",
    "VOICE_REMOTE_PREFIX",
    "IMAGE_SEARCH_DB_BACKUP_PREFIX",
)


def test_the_defaults_are_separate_folders() -> None:
    settings = load_settings(None)
    assert [getattr(settings, name.lower()) for name in PREFIXES] == [
        "AI/POSTER/",
        "AI/SEARCH/",
        "AI/VOICE/",
        "backups/image_search/",
    ]


@pytest.mark.parametrize("name", PREFIXES)
@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "non-empty"),
        ("AI/POSTER", "ending in '/'"),
        ("/AI/POSTER/", "not a valid key prefix"),
        ("AI//POSTER/", "not a valid key prefix"),
        ("AI/../POSTER/", "not a valid key prefix"),
        ("AI\\POSTER/", "not a valid key prefix"),
        ("AI/\x00/", "not a valid key prefix"),
    ],
)
def test_a_bad_prefix_is_refused_by_name(name: str, value: str, why: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {name: value})
    message = str(caught.value)
    assert name in message and why in message, message


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"IMAGE_REMOTE_PREFIX": "AI/"}, ("IMAGE_REMOTE_PREFIX", "IMAGE_SEARCH_REMOTE_PREFIX")),
        (
            {"VOICE_REMOTE_PREFIX": "AI/SEARCH/voices/"},
            ("IMAGE_SEARCH_REMOTE_PREFIX", "VOICE_REMOTE_PREFIX"),
        ),
        (
            {"IMAGE_SEARCH_DB_BACKUP_PREFIX": "AI/VOICE/backups/"},
            ("VOICE_REMOTE_PREFIX", "IMAGE_SEARCH_DB_BACKUP_PREFIX"),
        ),
        (
            {"IMAGE_SEARCH_REMOTE_PREFIX": "AI/POSTER/"},
            ("IMAGE_REMOTE_PREFIX", "IMAGE_SEARCH_REMOTE_PREFIX"),
        ),
    ],
)
def test_overlapping_prefixes_are_refused(
    overrides: dict[str, object], names: tuple[str, ...]
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, overrides)
    message = str(caught.value)
    assert "overlap" in message and all(name in message for name in names), message


def test_neighbours_that_share_a_beginning_are_fine() -> None:
    """'AI/VOICE/' and 'AI/VOICES/' are separate folders; only a whole folder can overlap."""
    settings = load_settings(
        None, {"VOICE_REMOTE_PREFIX": "AI/VOICE/", "IMAGE_REMOTE_PREFIX": "AI/VOICES/"}
    )
    assert settings.image_remote_prefix == "AI/VOICES/"
