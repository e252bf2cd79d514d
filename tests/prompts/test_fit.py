from __future__ import annotations

from typing import Any

from deskgen.prompts import count_tokens, fit_phrases
from deskgen.prompts._fit import join_phrases, split_phrases


def test_fit_drops_whole_phrases_from_the_end(seed_prompts: dict[str, Any]) -> None:
    text = seed_prompts["long_description"]
    result = fit_phrases(text, count=count_tokens, budget=77)
    assert result.fits
    assert count_tokens(result.text) <= 77
    assert result.text.startswith("A modern office workspace featuring a large monitor")
    assert result.dropped[-1] == "or visual content analysis"
    for phrase in result.dropped:
        assert phrase in text  # exactly as written
        assert phrase not in result.text
    kept_words = result.text.replace(",", " ").replace(".", " ").split()
    assert all(word in text for word in kept_words)  # no cut words


def test_a_prompt_that_fits_is_untouched() -> None:
    result = fit_phrases("a tidy desk, warm light", count=count_tokens, budget=77)
    assert (result.text, result.dropped, result.fits) == ("a tidy desk, warm light", [], True)


def test_priorities_choose_what_goes() -> None:
    text = "alpha desk, bravo lamp, charlie plant"
    result = fit_phrases(text, count=lambda t: len(t.split()), budget=4, priorities=[1, 3, 2])
    assert result.dropped == ["alpha desk"]
    assert result.text == "bravo lamp, charlie plant"


def test_unfittable_keeps_the_most_important_phrase() -> None:
    result = fit_phrases("one two three, four", count=lambda t: len(t.split()), budget=2)
    assert not result.fits
    assert result.text == "one two three"


def test_phrases_and_sentence_ends_survive_rejoining() -> None:
    text = "A desk, a lamp. A plant; a mug! Done"
    phrases = split_phrases(text)
    assert [p.text for p in phrases] == ["A desk", "a lamp", "A plant", "a mug", "Done"]
    assert join_phrases(phrases) == text
    assert join_phrases([phrases[0], phrases[2]]) == "A desk. A plant!"


def test_a_comma_closing_a_quote_does_not_split(seed_prompts: dict[str, Any]) -> None:
    phrases = [p.text for p in split_phrases(seed_prompts["long_description"])]
    assert any("'Please do not touch the screens,' suggesting" in p for p in phrases)
