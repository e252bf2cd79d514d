"""API keys of ``deskgen serve``: the key file (hashes only, 0600), its errors, the rate limiter."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from deskgen._exceptions import ConfigError
from deskgen.serve._keys import ApiKey, KeyRing, RateLimiter, hash_key, new_key, remove_key

HASH = "ab" * 32
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_key_then_load_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.toml"
    token = new_key(path, name="team-a", requests_per_minute=60, max_concurrent_jobs=4)
    other = new_key(path, name="ci.bot")
    assert token.startswith("dg-") and len(token) > 40 and token != other
    ring = KeyRing.load(path)
    assert len(ring) == 2 and ring.names == ("ci.bot", "team-a")
    key = ring.authenticate(token)
    assert key == ApiKey(
        name="team-a", sha256=hash_key(token), requests_per_minute=60, max_concurrent_jobs=4
    )
    assert ring.authenticate(other) == ApiKey(name="ci.bot", sha256=hash_key(other))
    assert ring.authenticate(token + "x") is None
    assert ring.authenticate(token[:-1]) is None
    assert ring.authenticate("") is None
    assert ring.authenticate("dg-\udcff") is None  # a lone surrogate hashes, it doesn't raise
    assert token not in repr(ring) and token not in repr(key)


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("dg-abc") == hashlib.sha256(b"dg-abc").hexdigest()
    assert hash_key("é") == hashlib.sha256("é".encode()).hexdigest()


def test_the_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    token = new_key(path, name="team-a")
    text = path.read_text()
    assert token not in text and token[3:] not in text
    assert hash_key(token) in text
    assert text.startswith("# deskgen serve API keys: only hashes are stored")
    if sys.platform != "win32":
        assert _mode(path) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "keys.toml"]  # no temporary left


@POSIX
def test_an_open_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("")
    os.chmod(path, 0o644)
    new_key(path, name="team-a")
    assert _mode(path) == 0o600
    os.chmod(path, 0o644)
    remove_key(path, name="team-a")
    assert _mode(path) == 0o600


def test_new_key_keeps_other_entries_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        f'# ours\n[keys.old]  # the first one\nsha256 = "{HASH}"\nmax_concurrent_jobs = 2'
    )
    token = new_key(path, name="new")
    text = path.read_text()
    assert text.startswith("# ours\n[keys.old]  # the first one\n")
    ring = KeyRing.load(path)
    assert ring.names == ("new", "old")
    key = ring.authenticate(token)
    assert key is not None and key.name == "new"


def test_new_key_rewrites_a_file_it_cannot_append_to(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'keys = {{ old = {{ sha256 = "{HASH}", requests_per_minute = 5 }} }}\n')
    token = new_key(path, name="new")
    ring = KeyRing.load(path)
    assert ring.names == ("new", "old")
    assert ring.authenticate(token) is not None
    text = path.read_text()
    assert f'[keys.old]\nsha256 = "{HASH}"\nrequests_per_minute = 5\n' in text


def test_a_duplicate_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    new_key(path, name="team-a")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"'team-a' already.*deskgen keys remove team-a"):
        new_key(path, name="team-a")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "bad name"}, "name must be 1-64 letters"),
        ({"name": "-x"}, "name must be"),
        ({"name": "a" * 65}, "name must be"),
        ({"name": "a", "requests_per_minute": 0}, "requests_per_minute must be a whole number"),
        ({"name": "a", "max_concurrent_jobs": -1}, "max_concurrent_jobs must be a whole number"),
        ({"name": "a", "requests_per_minute": True}, "requests_per_minute must be"),
    ],
)
def test_new_key_refuses_bad_values(tmp_path: Path, kwargs: dict[str, object], words: str) -> None:
    path = tmp_path / "keys.toml"
    with pytest.raises(ConfigError, match=words):
        new_key(path, **kwargs)  # type: ignore[arg-type]
    assert not path.exists()


def test_remove_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    gone = new_key(path, name="team-a")
    kept = new_key(path, name="team-b", requests_per_minute=2)
    remove_key(path, name="team-a")
    ring = KeyRing.load(path)
    assert ring.names == ("team-b",)
    assert ring.authenticate(gone) is None
    assert ring.authenticate(kept) == ApiKey(
        name="team-b", sha256=hash_key(kept), requests_per_minute=2
    )
    with pytest.raises(ConfigError, match=r"no key named 'team-a' \(it has: team-b\)"):
        remove_key(path, name="team-a")
    remove_key(path, name="team-b")
    assert len(KeyRing.load(path)) == 0
    with pytest.raises(ConfigError, match="No key file"):
        remove_key(tmp_path / "missing.toml", name="team-b")


TOKEN = "dg-" + "S3cr3t" * 7  # what a user may paste into the file by mistake


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[keys.team-a\n", r"not valid TOML.*line 1"),
        (f'[keys.team-a]\nsha256 = "{HASH}"\n{TOKEN[3:]}\n', r"not valid TOML.*line 3"),
        (f'[keys.team-a]\nsha256 = "{HASH}"\nrpm = 5\n', r"'team-a'.*unknown field 'rpm'"),
        (f'[keys.team-a]\nsha256 = "{TOKEN}"\n', r"'team-a'.*sha256 must be 64 lowercase hex"),
        (f'[keys.team-a]\nsha256 = "{HASH.upper()}"\n', r"'team-a'.*sha256 must be"),
        (f'[keys.team-a]\ntoken = "{TOKEN}"\n', r"'team-a'.*sha256 is missing.*unknown field"),
        (
            f'[keys.team-a]\nsha256 = "{HASH}"\nrequests_per_minute = "60"\n',
            r"'team-a'.*requests_per_minute must be a whole number",
        ),
        (
            f'[keys.team-a]\nsha256 = "{HASH}"\nmax_concurrent_jobs = 0\n',
            r"'team-a'.*max_concurrent_jobs must be",
        ),
        (f'[keys."bad name"]\nsha256 = "{HASH}"\n', r"'bad name'.*name must be"),
        (f'[keys.team-a]\nname = "x"\nsha256 = "{HASH}"\n', r"'team-a'.*no name field"),
        (f'[keys]\nteam-a = "{TOKEN}"\n', r"'team-a'.*\[keys.team-a\] table"),
        (f'[key.team-a]\nsha256 = "{HASH}"\n', r"only \[keys.NAME\] tables"),
        (f'keys = "{TOKEN}"\n', r"only \[keys.NAME\] tables"),
    ],
)
def test_bad_files_say_what_to_fix_without_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        KeyRing.load(path)
    assert TOKEN not in str(info.value) and TOKEN[3:] not in str(info.value)
    with pytest.raises(ConfigError, match=words):  # new_key refuses to add to a bad file
        new_key(path, name="other")
    assert path.read_text() == text


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No key file .*deskgen keys new NAME --keys"):
        KeyRing.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="Cannot read the key file"):
        KeyRing.load(tmp_path)  # a folder
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[keys]")
    with pytest.raises(ConfigError, match="Cannot read the key file"):
        KeyRing.load(tmp_path / "bin.toml")


def test_keyring_refuses_twins() -> None:
    with pytest.raises(ConfigError, match="'a' and 'b' have the same sha256"):
        KeyRing([ApiKey(name="a", sha256=HASH), ApiKey(name="b", sha256=HASH)])
    with pytest.raises(ConfigError, match="Two keys are named 'a'"):
        KeyRing([ApiKey(name="a", sha256=HASH), ApiKey(name="a", sha256="cd" * 32)])
    assert len(KeyRing([])) == 0 and KeyRing([]).authenticate("dg-x") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_burst_refusal_and_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    key = ApiKey(name="a", sha256=HASH, requests_per_minute=3)  # a token every 20 s
    assert [limiter.acquire(key) for _ in range(3)] == [None, None, None]  # the burst
    assert limiter.acquire(key) == pytest.approx(20.0)
    clock.now += 5
    assert limiter.acquire(key) == pytest.approx(15.0)  # a refusal takes nothing
    clock.now += 15
    assert limiter.acquire(key) is None
    assert limiter.acquire(key) == pytest.approx(20.0)
    clock.now += 3600  # refills to the burst, no further
    assert [limiter.acquire(key) for _ in range(4)][-2:] == [None, pytest.approx(20.0)]


def test_rate_limiter_buckets_are_per_key_and_unlimited_keys_pass() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    a = ApiKey(name="a", sha256=HASH, requests_per_minute=1)
    b = ApiKey(name="b", sha256="cd" * 32, requests_per_minute=120)
    free = ApiKey(name="free", sha256="ef" * 32)
    assert limiter.acquire(a) is None
    assert limiter.acquire(a) == pytest.approx(60.0)
    assert all(limiter.acquire(b) is None for _ in range(120))
    retry = limiter.acquire(b)
    assert retry is not None and retry > 0 and retry == pytest.approx(0.5)
    assert all(limiter.acquire(free) is None for _ in range(10_000))
    clock.now -= 100  # a clock that steps back gives nothing back nor takes any
    assert limiter.acquire(a) == pytest.approx(60.0)


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(FakeClock())
    key = ApiKey(name="a", sha256=HASH, requests_per_minute=50)
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(25):
            ok = limiter.acquire(key) is None
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 200 and sum(allowed) == 50
