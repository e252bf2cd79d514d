from __future__ import annotations

from typing import Any

from deskgen.prompts import chunk_prompt, count_tokens


def test_the_seed_long_prompt_is_two_chunks_and_loses_nothing(
    seed_prompts: dict[str, Any],
) -> None:
    text = seed_prompts["long_description"]
    chunks = chunk_prompt(text)
    assert len(chunks) == 2
    assert all(c.tokens <= 75 for c in chunks)
    assert sum(c.tokens for c in chunks) == count_tokens(text, special=False) == 126
    # the chunks are exact spans of the text, in order, and cover all of it
    joined = " ".join(c.text for c in chunks)
    assert joined.split() == text.split()


def test_splits_after_a_comma_within_reach() -> None:
    words = ["word"] * 70 + [","] + ["tail"] * 10
    text = " ".join(words).replace(" ,", ",")
    chunks = chunk_prompt(text)
    assert chunks[0].text.endswith(",")
    assert chunks[1].text.startswith("tail")


def test_never_splits_inside_a_word() -> None:
    # "photorealistically" is several BPE tokens; put it across the 75-token boundary
    text = " ".join(["desk"] * 74 + ["photorealistically", "lamp"])
    chunks = chunk_prompt(text)
    assert chunks[0].tokens == 74
    assert chunks[1].text.startswith("photorealistically")


def test_break_starts_a_new_chunk() -> None:
    chunks = chunk_prompt("a tidy desk BREAK warm light, plants")
    assert [c.text for c in chunks] == ["a tidy desk", "warm light, plants"]
    assert [c.text for c in chunk_prompt("BREAK a desk BREAK")] == ["a desk"]
    assert chunk_prompt("lowercase break is a word")[0].text == "lowercase break is a word"


def test_empty_prompt_is_one_empty_chunk() -> None:
    assert [(c.text, c.tokens) for c in chunk_prompt("")] == [("", 0)]
