"""`SQLiteJobStore` only: its file. The `JobStore` contract, shared with Redis, is in
test_stores.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from deskgen.serve import SQLiteJobStore
from deskgen.serve._jobs import NewJob


def test_the_file_and_its_folder_are_created_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    assert not store.shared  # one server owns it
    store.create(NewJob(id="j1", owner="a", fields={"prompt": "a desk"}))
    store.close()
    assert path.is_file()
    store = SQLiteJobStore(path)
    assert store.get("j1").status == "queued"  # type: ignore[union-attr]
    assert [event.type for event in store.events("j1")] == ["queued"]
    store.close()
