from __future__ import annotations

from typing import Any

import pytest

from deskgen import InvalidRequestError
from deskgen.prompts import (
    apply_trigger_words,
    list_negative_presets,
    register_negative_preset,
    resolve_negative_prompt,
)


def test_the_seed_presets_verbatim(seed_prompts: dict[str, Any]) -> None:
    presets = list_negative_presets()
    for name, text in seed_prompts["negative_presets"].items():
        assert presets[name] == text


def test_references() -> None:
    text, preset = resolve_negative_prompt("preset:controlnet_short", backend_default=None)
    assert (text, preset) == ("low quality, bad quality, sketches", "controlnet_short")
    text, preset = resolve_negative_prompt(
        "preset:controlnet_short, watermark", backend_default=None
    )
    assert text == "low quality, bad quality, sketches, watermark"
    text, preset = resolve_negative_prompt("preset:default", backend_default="sdxl_default")
    assert preset == "sdxl_default" and text is not None and text.startswith("blurry")
    assert resolve_negative_prompt("plain, words", backend_default=None) == ("plain, words", None)
    assert resolve_negative_prompt(None, backend_default="sdxl_default") == (None, None)


def test_unknown_and_missing_defaults() -> None:
    with pytest.raises(InvalidRequestError, match="Known presets: controlnet_short"):
        resolve_negative_prompt("preset:nope", backend_default=None)
    with pytest.raises(InvalidRequestError, match="no default preset"):
        resolve_negative_prompt("preset:default", backend_default=None)


def test_register() -> None:
    register_negative_preset("test_only_preset", "neon, glare", replace=True)
    assert resolve_negative_prompt("preset:test_only_preset", backend_default=None)[0] == (
        "neon, glare"
    )
    with pytest.raises(ValueError, match="exists"):
        register_negative_preset("test_only_preset", "other")
    with pytest.raises(ValueError, match="reserved"):
        register_negative_preset("default", "x")
    with pytest.raises(ValueError, match="Invalid preset name"):
        register_negative_preset("Bad Name", "x")


def test_trigger_words_are_added_in_front_once() -> None:
    text, added, removed = apply_trigger_words("a tidy desk", add=["desk topview", "a tidy desk"])
    assert text == "desk topview, a tidy desk"
    assert added == ["desk topview"] and removed == []


def test_the_seed_removed_trigger_word() -> None:
    prompt = "3D 0ff1c3, a bright office desk, 3d 0FF1C3 render, plants"
    text, added, removed = apply_trigger_words(prompt, remove=["3D 0ff1c3"])
    assert text == "a bright office desk, render, plants"
    assert removed == ["3D 0ff1c3"] and added == []
    untouched, _, removed = apply_trigger_words("a 3D0ff1c3x desk", remove=["3D 0ff1c3"])
    assert untouched == "a 3D0ff1c3x desk" and removed == []
