from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def seed_prompts() -> dict[str, Any]:
    """The seed team's prompts and presets, verbatim (copied from shared/seed/prompts.json)."""
    data: dict[str, Any] = json.loads((DATA / "seed_prompts.json").read_text(encoding="utf-8"))
    return data


class HubCache:
    """A Hugging Face cache folder in a test's tmp_path, as `hf download` leaves it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, repo: str, folder: Path, *, subfolder: str = "") -> Path:
        """Put ``folder``'s files into the cache as ``repo`` (in ``subfolder``)."""
        import shutil

        revision = "0" * 40
        entry = self.root / f"models--{repo.replace('/', '--')}"
        snapshot = entry / "snapshots" / revision
        shutil.copytree(folder, snapshot / subfolder if subfolder else snapshot)
        (entry / "refs").mkdir(parents=True, exist_ok=True)
        (entry / "refs" / "main").write_text(revision)
        return snapshot


class NetworkUsed(BaseException):
    """Raised by a name lookup in a test without network (a BaseException: no retry loop
    catches it, so a test that reaches the network fails at once instead of waiting)."""


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubCache]:
    """An empty Hugging Face cache, not offline (HF_HUB_OFFLINE unset) and no network: any
    name lookup raises `NetworkUsed`. Tokenizers loaded earlier are forgotten."""
    import socket

    from huggingface_hub import constants

    from deskgen.prompts import _tokenizers

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise NetworkUsed(f"network used: getaddrinfo{args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    _tokenizers._load_tokenizer.cache_clear()
    yield HubCache(root)
    _tokenizers._load_tokenizer.cache_clear()
