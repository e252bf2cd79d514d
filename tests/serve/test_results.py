"""`ResultsStore` on a local folder and on fsspec's in-memory filesystem."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deskgen._exceptions import ConfigError
from deskgen.serve._results import ResultsStore


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://deskgen-test-{uuid.uuid4().hex}/store"
    yield url
    import fsspec

    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory:/")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _roundtrip(store: ResultsStore) -> None:
    assert not store.exists("results/J1/0.png")
    store.put("results/J1/0.png", b"png-0")
    store.put("results/J1/1.png", b"png-1")
    store.put("inputs/J1/image", b"photo")
    store.put("inputs/J10/image", b"other job")
    assert store.exists("results/J1/0.png")
    assert not store.exists("results/J1")  # a prefix is not a key
    assert store.get("results/J1/0.png") == b"png-0"
    store.put("results/J1/0.png", b"replaced")
    assert store.get("results/J1/0.png") == b"replaced"

    store.delete_prefix("inputs/J1/")
    assert not store.exists("inputs/J1/image")
    assert store.get("inputs/J10/image") == b"other job"  # J10 is not under J1/
    store.delete_prefix("inputs/J1/")  # absent: no error
    store.delete_prefix("inputs/NEVER/")
    with pytest.raises(KeyError):
        store.get("inputs/J1/image")
    with pytest.raises(KeyError):
        store.get("results/J2/0.png")


def test_local_folder(tmp_path: Path) -> None:
    root = tmp_path / "results"
    store = ResultsStore(str(root))
    assert root.is_dir()
    _roundtrip(store)
    assert (root / "results" / "J1" / "0.png").read_bytes() == b"replaced"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["inputs/J10/image", "results/J1/0.png", "results/J1/1.png"]  # no temp files
    assert store.url == str(root)


def test_file_url(tmp_path: Path) -> None:
    store = ResultsStore((tmp_path / "r").as_uri())
    store.put("results/J/0.png", b"x")
    assert (tmp_path / "r" / "results" / "J" / "0.png").read_bytes() == b"x"


def test_local_put_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(str(tmp_path))
    store.put("results/J/0.png", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk gone"):
        store.put("results/J/0.png", b"new")
    assert store.get("results/J/0.png") == b"old"  # the old bytes, whole
    assert [p.name for p in (tmp_path / "results" / "J").iterdir()] == ["0.png"]


def test_memory_url(memory_url: str) -> None:
    store = ResultsStore(memory_url)
    _roundtrip(store)
    assert store.url == memory_url
    assert ResultsStore(memory_url).get("results/J1/1.png") == b"png-1"  # same filesystem


def test_unknown_protocol() -> None:
    with pytest.raises(ConfigError, match=r"nosuchfs://.*install"):
        ResultsStore("nosuchfs://bucket/x")


def test_missing_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec.core

    def no_driver(url: str) -> None:
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_driver)
    with pytest.raises(ConfigError, match=r"s3://.*s3fs") as info:
        ResultsStore("s3://KEYID:SECRET@bucket/x")
    assert "SECRET" not in str(info.value)


def test_url_hides_credentials(memory_url: str) -> None:
    from deskgen.serve._results import _public_url

    assert _public_url("s3://KEYID:SECRET@bucket/x?token=abc") == "s3://bucket/x"
    assert _public_url("http://user:pw@host:8080/x") == "http://host:8080/x"
    assert _public_url("/srv/results") == "/srv/results"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../x",
        "results/../../x",
        "results/./x",
        "results//x",
        "results/J/0.png/",
        "results/J/a b.png",
        "results\\J\\0.png",
        "results/J/ü.png",
    ],
)
def test_bad_keys_refused(tmp_path: Path, key: str) -> None:
    store = ResultsStore(str(tmp_path))
    with pytest.raises(ValueError, match="not a results key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="not a results key"):
        store.get(key)
    with pytest.raises(ValueError, match="not a results key"):
        store.exists(key)


@pytest.mark.parametrize("prefix", ["", "/", "../", "inputs/../"])
def test_bad_prefixes_refused(tmp_path: Path, prefix: str) -> None:
    store = ResultsStore(str(tmp_path / "r"))
    store.put("inputs/J/image", b"x")
    with pytest.raises(ValueError, match="not a results key"):
        store.delete_prefix(prefix)
    assert store.exists("inputs/J/image")
