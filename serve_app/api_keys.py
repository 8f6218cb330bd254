"""API keys: who may call the server, and what each key may touch.

Keys come from `API_KEYS` (comma-separated) and `API_KEYS_FILE`, read once by the builder:

- a text file (any name but the two below): one key per line, `#` comments; such keys, like
  those of `API_KEYS`, are unscoped: every module, project and voice, read-write, no limits;
- a `.yaml`/`.yml` or `.json` file: a list of scoped keys (or `{"keys": [...]}`), each

      {name, key | key_sha256, modules: [image, image_search, voice],
       projects: [ids or "prefix*"], voices: [ids or "prefix*"], access: read | read-write,
       requests_per_minute, max_concurrent}

  where a scope left out is everything (`["*"]`, every module, read-write, no limit) and
  `[]` is nothing.

A file that cannot be read, holds no key, or has an entry that does not validate stops the
start with a message naming the entry (never the key). The Gateway only ever holds `ApiKey`s:
a name, the SHA-256 digest of the key and its scope.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

ModuleName = Literal["image", "image_search", "voice"]
ALL_MODULES: tuple[ModuleName, ...] = ("image", "image_search", "voice")
Access = Literal["read", "read-write"]
EVERYTHING = ("*",)
STRUCTURED_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
MIN_SCOPED_KEY_CHARS = 16

# An id as the routes take them (letters, digits, '_', '-', '.'), optionally ending in '*'
# (a prefix), or '*' alone (every id).
IdPattern = Annotated[
    str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\*?)$", max_length=129)
]
KeyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class KeyFileError(ValueError):
    """API_KEYS / API_KEYS_FILE cannot be used; the message names the file and the entry."""


def digest(key: str) -> str:
    """The SHA-256 hex digest a key is known by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def id_allowed(patterns: Iterable[str], value: str) -> bool:
    """Whether `value` is one of `patterns`: an exact id, a `prefix*` or `*`."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if value.startswith(pattern[:-1]):
                return True
        elif value == pattern:
            return True
    return False


class ApiKey(BaseModel):
    """A key as the Gateway knows it: its name, its digest and its scope (no secret)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    digest: Sha256Hex = Field(repr=False)
    modules: tuple[ModuleName, ...] = ALL_MODULES
    projects: tuple[str, ...] = EVERYTHING
    voices: tuple[str, ...] = EVERYTHING
    access: Access = "read-write"
    requests_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)

    @property
    def can_write(self) -> bool:
        return self.access == "read-write"

    @property
    def unscoped(self) -> bool:
        """Everything, as a plain key of API_KEYS: every module, project and voice, writes,
        no limits."""
        return (
            set(self.modules) == set(ALL_MODULES)
            and self.projects == EVERYTHING
            and self.voices == EVERYTHING
            and self.can_write
            and self.requests_per_minute is None
            and self.max_concurrent is None
        )

    def allows_module(self, module: str) -> bool:
        return module in self.modules

    def allows_project(self, project_id: str) -> bool:
        return id_allowed(self.projects, project_id)

    def allows_voice(self, voice_id: str) -> bool:
        return id_allowed(self.voices, voice_id)


class KeyFileEntry(BaseModel):
    """One key of a YAML/JSON key file."""

    model_config = ConfigDict(extra="forbid")

    name: KeyName
    key: SecretStr | None = Field(default=None, min_length=MIN_SCOPED_KEY_CHARS)
    key_sha256: Sha256Hex | None = None
    modules: list[ModuleName] = Field(default_factory=lambda: list(ALL_MODULES))
    projects: list[IdPattern] = Field(default_factory=lambda: list(EVERYTHING))
    voices: list[IdPattern] = Field(default_factory=lambda: list(EVERYTHING))
    access: Access = "read-write"
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    max_concurrent: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_key(self) -> KeyFileEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` and `key_sha256`")
        return self

    def to_api_key(self) -> ApiKey:
        known_by = (
            digest(self.key.get_secret_value())
            if self.key is not None
            else str(self.key_sha256).lower()
        )
        return ApiKey(
            name=self.name,
            digest=known_by,
            modules=tuple(dict.fromkeys(self.modules)),
            projects=tuple(dict.fromkeys(self.projects)),
            voices=tuple(dict.fromkeys(self.voices)),
            access=self.access,
            requests_per_minute=self.requests_per_minute,
            max_concurrent=self.max_concurrent,
        )


def read_key_file(path: Path) -> list[ApiKey]:
    """The keys of API_KEYS_FILE; KeyFileError when it cannot be read or holds no key."""
    shown = f"API_KEYS_FILE={str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{shown} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise KeyFileError(f"{shown} cannot be read: {reason}") from None
    if path.suffix.lower() in STRUCTURED_SUFFIXES:
        keys = _structured_keys(shown, path.suffix.lower(), text)
    else:
        keys = plain_keys(_key_lines(text), source="API_KEYS_FILE")
    if not keys:
        raise KeyFileError(
            f"{shown} holds no key: an empty key file would leave every route open; "
            "add keys, or unset API_KEYS_FILE"
        )
    return keys


def _key_lines(text: str) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def plain_keys(keys: Sequence[str], source: str) -> list[ApiKey]:
    """Unscoped keys, named by where they come from and their position (`API_KEYS#2`)."""
    found: dict[str, ApiKey] = {}
    for position, key in enumerate((key.strip() for key in keys), start=1):
        if key:
            known_by = digest(key)
            found.setdefault(known_by, ApiKey(name=f"{source}#{position}", digest=known_by))
    return list(found.values())


def _structured_keys(shown: str, suffix: str, text: str) -> list[ApiKey]:
    try:
        data: Any = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}"
        elif isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}"
        raise KeyFileError(f"{shown} is not valid {suffix[1:].upper()}{where}") from None
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise KeyFileError(f'{shown} must hold a list of keys (or {{"keys": [...]}})')
    keys: list[ApiKey] = []
    for position, raw in enumerate(data, start=1):
        label = f"entry {position}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label += f" ({raw['name']!r})"
        try:
            keys.append(KeyFileEntry.model_validate(raw).to_api_key())
        except ValidationError as exc:
            raise KeyFileError(f"{shown}: {label}: {_problems(exc)}") from None
    check_unique(keys, shown)
    return keys


def _problems(exc: ValidationError) -> str:
    """The validation errors without their input (which may be a key)."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "entry"
        problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)


def check_unique(keys: Sequence[ApiKey], shown: str) -> None:
    """No two keys with one name, nor one key under two names (its scope would be unclear)."""
    names: dict[str, int] = {}
    digests: dict[str, str] = {}
    for key in keys:
        names[key.name] = names.get(key.name, 0) + 1
        if key.digest in digests:
            raise KeyFileError(
                f"{shown}: {key.name!r} and {digests[key.digest]!r} are the same key"
            )
        digests[key.digest] = key.name
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise KeyFileError(f"{shown}: key names must be unique: {', '.join(repeated)}")


def configured_keys(api_keys: str | None, api_keys_file: Path | None) -> tuple[ApiKey, ...]:
    """Every key of API_KEYS and API_KEYS_FILE together (KeyFileError naming the problem).

    A key given twice without a scope (in API_KEYS and a text file) is one key; a key given
    twice where either has a scope is refused: which scope it has would be unclear.
    """
    keys = plain_keys(api_keys.split(","), source="API_KEYS") if api_keys else []
    if api_keys_file is not None:
        keys += read_key_file(api_keys_file)
    merged: dict[str, ApiKey] = {}
    for key in keys:
        earlier = merged.setdefault(key.digest, key)
        if earlier is not key and not (earlier.unscoped and key.unscoped):
            raise KeyFileError(
                f"API_KEYS and API_KEYS_FILE: {earlier.name!r} and {key.name!r} are the same "
                "key with different scopes"
            )
    return tuple(merged.values())
