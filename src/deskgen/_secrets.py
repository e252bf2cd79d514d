"""Secrets (API keys, tokens) kept out of what deskgen raises, chains, logs and reports.

A leaf module: the backends and the generator call `scrub_exception` where exceptions leave
them, `secret_values` finds the secrets among a backend's options, and `MASK` / `SECRET_NAME`
are shared with the benchmark reports (`deskgen.bench`), which mask options by name.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

__all__ = ["MASK", "SECRET_NAME", "scrub", "scrub_exception", "secret_values"]

MASK = "***"
"""What a secret is replaced with."""

SECRET_NAME = re.compile(
    r"(?:^|[_-])(?:api_?key|key|token|secret|password|passwd|auth|credentials?)(?:$|[_-])",
    re.IGNORECASE,
)
"""Option names whose values are secrets: api_key, hf_token, auth_token... (not "keyword")."""

MIN_SECRET_LENGTH = 8
"""Shorter values are not searched for in text: a placeholder key such as ``"test"`` or
``"unused"`` would otherwise blank out ordinary words of a message."""

_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}")
"""An OpenAI-style key (``sk-...``, ``sk-proj-...``), whoever's it is."""

_TEXT_ATTRIBUTES = ("strerror", "filename", "filename2")
"""Text an exception keeps outside ``args`` and ``__dict__`` (OSError's fields)."""


def secret_values(value: Any, *, key: str = "") -> tuple[SecretStr, ...]:
    """The secrets in ``value``, still wrapped: every `SecretStr`, and every string under a name
    that `SECRET_NAME` matches, at any depth of models, dicts and lists (a backend's options)."""
    found: list[str] = []

    def walk(item: Any, name: str) -> None:
        if isinstance(item, SecretStr):
            found.append(item.get_secret_value())
        elif isinstance(item, str):
            if name and SECRET_NAME.search(name):
                found.append(item)
        elif isinstance(item, BaseModel):
            for field in type(item).model_fields:
                walk(getattr(item, field, None), field)
        elif isinstance(item, dict):
            for k, v in item.items():
                walk(v, str(k))
        elif isinstance(item, (list, tuple, set, frozenset)):
            for v in item:
                walk(v, name)

    walk(value, key)
    return tuple(SecretStr(s) for s in dict.fromkeys(found) if s)


def _plain(secrets: Iterable[str | SecretStr]) -> tuple[str, ...]:
    values = (s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets)
    return tuple(sorted({s for s in values if len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1])


def scrub(text: str, secrets: Iterable[str | SecretStr] = ()) -> str:
    """``text`` with each of ``secrets`` (of at least `MIN_SECRET_LENGTH` characters) and any
    ``sk-...``-shaped key replaced by `MASK`."""
    return _scrub(text, _plain(secrets))


def _scrub(text: str, longest_first: tuple[str, ...]) -> str:
    for secret in longest_first:
        text = text.replace(secret, MASK)
    return _KEY_SHAPED.sub("sk-" + MASK, text)


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v, secrets) for v in value)
    return value


def scrub_exception(exc: BaseException, secrets: Iterable[str | SecretStr] = ()) -> BaseException:
    """Scrub ``exc`` and every exception it chains (``__cause__``, ``__context__``) in place, as
    `scrub` does text: their ``args`` (which ``str``, ``repr`` and tracebacks show), the text
    and JSON data they keep as attributes (an ``openai`` error's ``message`` and ``body``, the
    ``__notes__``), and OSError's file names. Returns ``exc``."""
    keep = _plain(secrets)
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # an exotic exception type, a read-only property: what can't be set is left
        with contextlib.suppress(AttributeError, TypeError):
            current.args = _scrub_value(current.args, keep)
        for name, value in list(getattr(current, "__dict__", {}).items()):
            if isinstance(value, (str, dict, list, tuple)):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(current, name, _scrub_value(value, keep))
        for name in _TEXT_ATTRIBUTES:
            value = getattr(current, name, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(current, name, _scrub(value, keep))
        pending += [current.__cause__, current.__context__]
    return exc
