"""`ResultsStore`: uploaded inputs and result PNGs in a folder or any fsspec filesystem.

Keys are relative (``inputs/JOB/image``, ``results/JOB/0.png``). On a local folder every put
is atomic and durable (temporary file, fsync, rename, fsync of the folder), so a crash leaves
the old bytes or the new ones, never half a PNG; object stores (``s3://``, ``gs://``, ... with
their fsspec driver installed) put whole objects atomically by themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._exceptions import ConfigError
from .._record import atomic_write_bytes

__all__ = ["ResultsStore"]

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def _check(key: str, *, prefix: bool = False) -> str:
    """``key`` if it is a relative path of safe segments (a trailing "/" only for prefixes).

    Keys come from deskgen's own code, never from users; checking them anyway keeps a bug from
    ever reading or deleting outside the store.
    """
    body = key[:-1] if prefix and key.endswith("/") else key
    parts = body.split("/")
    if not all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ValueError(
            f"not a results key: {key!r} (relative, segments of A-Z a-z 0-9 . _ -, no '..')"
        )
    return key


def _public_url(url: str) -> str:
    """``url`` without ``user:password@`` and without a query (which may hold a signed token)."""
    if "://" not in url:
        return url  # a folder path
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ResultsStore:
    """Bytes by key under ``url``: a folder path, ``file://...``, ``memory://...`` or any other
    fsspec URL whose driver is installed (``s3://`` needs s3fs, ``gs://`` gcsfs, ...)."""

    def __init__(self, url: str) -> None:
        import fsspec.core  # lazily: only the server needs it
        from fsspec.implementations.local import LocalFileSystem

        protocol = url.partition("://")[0] if "://" in url else "file"
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise ConfigError(
                f"The results store {protocol}:// needs its fsspec driver: install it "
                f"(e.g. pip install s3fs for s3://, gcsfs for gs://), or give a folder ({exc})"
            ) from None
        except ValueError as exc:
            if "protocol not known" not in str(exc).lower():
                raise ConfigError(
                    f"The results store {_public_url(url)} could not be opened "
                    f"({type(exc).__name__}): check the URL, or give a folder"
                ) from None
            raise ConfigError(
                f"The results store protocol {protocol}:// is unknown to fsspec: install the "
                "fsspec package that provides it (e.g. s3fs for s3://), or give a folder"
            ) from None
        self._fs: Any = fs
        self._root = str(root).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        if self._local:
            Path(self._root or "/").mkdir(parents=True, exist_ok=True)
        self._url = _public_url(url)

    @property
    def url(self) -> str:
        """Where the store is, safe to show and log: credentials and query stripped."""
        return self._url

    def _path(self, key: str, *, prefix: bool = False) -> str:
        return f"{self._root}/{_check(key, prefix=prefix)}"

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing what was there, atomically and durably."""
        path = self._path(key)
        if self._local:
            atomic_write_bytes(Path(path), data)
        else:
            self._fs.pipe_file(path, data)

    def get(self, key: str) -> bytes:
        """The bytes at ``key``; `KeyError` when there are none."""
        try:
            data: bytes = self._fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        return data

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds bytes (a folder-like prefix does not count)."""
        return bool(self._fs.isfile(self._path(key)))

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (e.g. ``inputs/JOB/``); nothing there is fine."""
        path = self._path(prefix, prefix=True).rstrip("/")
        try:
            if self._fs.exists(path):
                self._fs.rm(path, recursive=True)
        except FileNotFoundError:  # removed meanwhile (another worker, a lifecycle rule)
            pass
