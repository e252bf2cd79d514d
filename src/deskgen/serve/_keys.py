"""API keys of ``deskgen serve``: a TOML file of hashes, and a per-key rate limiter.

```toml
# deskgen serve API keys: only hashes are stored (deskgen keys new NAME --keys FILE)
[keys.team-a]
sha256 = "<64 hex digits>"
requests_per_minute = 60      # optional: unlimited without
max_concurrent_jobs = 4       # optional: queued + running jobs, unlimited without
```

A key is shown once, when `new_key` makes it; the file keeps only its SHA-256. Keys are 256
random bits, so a plain (unsalted, fast) hash is safe and a lookup costs one hash. No message,
repr or log line here ever holds a key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._exceptions import ConfigError, MissingDependencyError
from .._record import atomic_write_bytes

__all__ = ["ApiKey", "KeyRing", "RateLimiter", "hash_key", "new_key", "remove_key"]

_HEADER = "# deskgen serve API keys: only hashes are stored (deskgen keys new NAME --keys FILE)\n"
_BARE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a TOML bare key; names with dots get quotes
_MUST = {
    "name": "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    "sha256": "64 lowercase hex digits: the key's hash as `deskgen keys new` writes it",
    "requests_per_minute": "a whole number >= 1 (leave it out for no limit)",
    "max_concurrent_jobs": "a whole number >= 1 (leave it out for no limit)",
}


class ApiKey(BaseModel):
    """One key: its name (the owner of its jobs), its hash, and its limits."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent_jobs: int | None = Field(default=None, ge=1)


def hash_key(token: str) -> str:
    """The SHA-256 (hex) of a key's UTF-8 bytes: what the key file stores instead of the key."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _problem(where: str, name: str, exc: ValidationError) -> ConfigError:
    """A ConfigError naming the key and each bad field, with a fix; never the values given
    (a key pasted into the file by mistake must not reach a log)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "entry"
        if field not in _MUST:
            problems.append(f"unknown field {field!r} (known: {', '.join(list(_MUST)[1:])})")
        else:
            missing = " is missing: it" if error["type"] == "missing" else ""
            problems.append(f"{field}{missing} must be {_MUST[field]}")
    return ConfigError(f"Key {name!r}{where}: " + "; ".join(problems))


def _loads(path: Path, text: str) -> dict[str, Any]:
    """The file's ``[keys]`` table; ConfigError (with the line) for bad TOML or other tables."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise MissingDependencyError(
                "Reading key files on Python 3.10", extra="serve", missing=["tomli"]
            ) from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message says the line and column
        raise ConfigError(f"The key file {str(path)!r} is not valid TOML: {exc}") from None
    keys = data.get("keys", {})
    if set(data) - {"keys"} or not isinstance(keys, dict):
        raise ConfigError(
            f"The key file {str(path)!r} may hold only [keys.NAME] tables: remove the others"
        )
    return keys


def _parse(path: Path, text: str) -> list[ApiKey]:
    """The keys of a key file's text, in file order."""
    parsed = []
    for name, entry in _loads(path, text).items():
        if not isinstance(entry, dict) or "name" in entry:  # the table's name is the key's
            raise ConfigError(
                f"Key {name!r} in {str(path)!r}: write it as a [keys.{name}] table of "
                f"{', '.join(list(_MUST)[1:])} (no name field: the table names the key)"
            )
        try:
            parsed.append(ApiKey(name=name, **entry))
        except ValidationError as exc:
            raise _problem(f" in {str(path)!r}", name, exc) from None
    return parsed


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"No key file {str(path)!r}: make one with deskgen keys new NAME --keys {path}"
        ) from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"Cannot read the key file {str(path)!r}: {exc}") from None


class KeyRing:
    """The keys a server accepts, looked up by hash."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        names: set[str] = set()
        for key in keys:
            if key.name in names:
                raise ConfigError(f"Two keys are named {key.name!r}: rename or remove one")
            other = self._by_hash.get(key.sha256)
            if other is not None:
                raise ConfigError(
                    f"Keys {other.name!r} and {key.name!r} have the same sha256: remove one "
                    f"(deskgen keys remove NAME)"
                )
            names.add(key.name)
            self._by_hash[key.sha256] = key

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """The keys of a key file; ConfigError saying what to fix if it is missing or bad."""
        path = Path(path)
        return cls(_parse(path, _read(path)))

    def authenticate(self, token: str) -> ApiKey | None:
        """The key ``token`` is, or None for a wrong (or empty) one."""
        if not token:
            return None
        digest = hash_key(token)
        # the dict lookup's timing is about a hash the caller already knows; the final check
        # is constant-time anyway
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return None
        return key

    @property
    def names(self) -> tuple[str, ...]:
        """The keys' names, sorted."""
        return tuple(sorted(key.name for key in self._by_hash.values()))

    def __len__(self) -> int:
        return len(self._by_hash)

    def __repr__(self) -> str:
        return f"KeyRing(names={list(self.names)!r})"


def _block(key: ApiKey) -> str:
    """One key's TOML table (names are checked, so quoting them needs no escapes)."""
    name = key.name if _BARE_NAME.match(key.name) else f'"{key.name}"'
    lines = [f"\n[keys.{name}]", f'sha256 = "{key.sha256}"']
    lines += [
        f"{field} = {getattr(key, field)}"
        for field in ("requests_per_minute", "max_concurrent_jobs")
        if getattr(key, field) is not None
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Atomically and durably replace the file, readable by its owner only."""
    if path.exists():  # atomic_write keeps the old mode: make it 0600 before the new bytes land
        os.chmod(path, 0o600)
    atomic_write_bytes(path, text.encode("utf-8"))
    os.chmod(path, 0o600)


def new_key(
    path: str | os.PathLike[str],
    *,
    name: str,
    requests_per_minute: int | None = None,
    max_concurrent_jobs: int | None = None,
) -> str:
    """Make a key, add its hash to the key file (made if missing), and return the key: the only
    time it is shown. The file's other entries and comments stay as they were."""
    path = Path(path)
    text = _read(path) if path.exists() else None
    keys = _parse(path, text) if text is not None else []
    if any(key.name == name for key in keys):
        raise ConfigError(
            f"{str(path)!r} has a key named {name!r} already: pick another name, or remove it "
            f"first (deskgen keys remove {name} --keys {path})"
        )
    token = "dg-" + secrets.token_urlsafe(32)
    try:
        key = ApiKey(
            name=name,
            sha256=hash_key(token),
            requests_per_minute=requests_per_minute,
            max_concurrent_jobs=max_concurrent_jobs,
        )
    except ValidationError as exc:
        raise _problem("", name, exc) from None
    if text is None:
        updated = _HEADER + _block(key)
    else:  # append, so hand-written comments survive; re-render if that isn't the same keys
        updated = text + ("" if text.endswith("\n") or not text else "\n") + _block(key)
        try:
            same = _parse(path, updated) == [*keys, key]
        except ConfigError:
            same = False
        if not same:
            updated = _HEADER + "".join(_block(k) for k in [*keys, key])
    _write(path, updated)
    return token


def remove_key(path: str | os.PathLike[str], *, name: str) -> None:
    """Remove a key from the key file: servers that load the file after refuse it. The file is
    written anew from its entries (comments other than the header are dropped)."""
    path = Path(path)
    keys = _parse(path, _read(path))
    if not any(key.name == name for key in keys):
        known = ", ".join(sorted(key.name for key in keys)) or "none"
        raise ConfigError(f"{str(path)!r} has no key named {name!r} (it has: {known})")
    _write(path, _HEADER + "".join(_block(key) for key in keys if key.name != name))


class RateLimiter:
    """A thread-safe token bucket per key name: a whole minute's requests at once (the burst),
    refilled at ``requests_per_minute / 60`` per second. Keys without a limit always pass."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def acquire(self, key: ApiKey) -> float | None:
        """None when the request may go (one token taken), else the seconds (> 0) until it may:
        the value for a Retry-After header."""
        rpm = key.requests_per_minute
        if rpm is None:
            return None
        rate = rpm / 60.0
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(key.name, (float(rpm), now))
            tokens = min(float(rpm), tokens + max(0.0, now - then) * rate)
            if tokens >= 1.0:
                self._buckets[key.name] = (tokens - 1.0, now)
                return None
            self._buckets[key.name] = (tokens, now)
            return (1.0 - tokens) / rate
