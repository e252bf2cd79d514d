from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deskgen import ModelNotFoundError
from deskgen.prompts import EncoderFamily, count_tokens, sequence_length_for
from deskgen.testing import make_tiny_tokenizer


def test_clip_counts_match_the_seed(seed_prompts: dict[str, Any]) -> None:
    expected = seed_prompts["clip_input_ids_including_bos_eos"]
    assert count_tokens(seed_prompts["long_description"]) == expected["long_description"] == 128
    assert count_tokens(seed_prompts["clean_desk"]) == expected["clean_desk"]
    assert count_tokens(seed_prompts["photo_instruction"]) == expected["photo_instruction"]
    photo_default = seed_prompts["negative_presets"]["photo_default"]
    assert count_tokens(photo_default) == expected["negative_presets.photo_default"]


def test_special_tokens_are_optional() -> None:
    assert count_tokens("a photo of a cat") == 7
    assert count_tokens("a photo of a cat", special=False) == 5
    assert count_tokens("", encoder=EncoderFamily.CLIP) == 2


def test_no_overlength_warning_while_counting(
    seed_prompts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    count_tokens(seed_prompts["long_description"])
    assert "longer than the specified maximum" not in caplog.text


@pytest.mark.parametrize(("kind", "specials"), [("t5", 1), ("llama", 1)])
def test_t5_and_llama_from_a_folder_or_object(kind: str, specials: int, tmp_path: Path) -> None:
    tok = make_tiny_tokenizer(kind, tmp_path / kind)  # type: ignore[arg-type]
    text = "a clean desk with a lamp"
    with_specials = count_tokens(text, encoder=str(tmp_path / kind))
    assert with_specials == count_tokens(text, encoder=tok)
    assert with_specials == count_tokens(text, encoder=tok, special=False) + specials


def test_family_without_a_cached_tokenizer_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from deskgen.prompts import _tokenizers

    _tokenizers._load_tokenizer.cache_clear()
    with pytest.raises(ModelNotFoundError, match="hf download google/t5-v1_1-xxl"):
        count_tokens("a desk", encoder="t5")


def test_sequence_length_follows_the_real_count() -> None:
    tok = make_tiny_tokenizer("t5")
    short = "a desk"
    long = " ".join(["a clean modern desk with a lamp"] * 40)  # ~280 tokens
    assert sequence_length_for([short], tok, model_max=512) == (128, len(tok(short).input_ids))
    length, longest = sequence_length_for([short, long], tok, model_max=512)
    assert length == longest == len(tok(long).input_ids) > 128
    capped, longest = sequence_length_for([long], tok, model_max=200)
    assert capped == 200 < longest
