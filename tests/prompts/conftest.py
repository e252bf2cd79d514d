from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def seed_prompts() -> dict[str, Any]:
    """The seed team's prompts and presets, verbatim (copied from shared/seed/prompts.json)."""
    data: dict[str, Any] = json.loads((DATA / "seed_prompts.json").read_text(encoding="utf-8"))
    return data
