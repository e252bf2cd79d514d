"""`form_fields`: the bracketed form names the openai client writes for ``extra_body``."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from deskgen.serve._errors import ApiError
from deskgen.serve._requests import form_fields


def test_brackets_build_lists_objects_and_lists_of_objects() -> None:
    fields = form_fields(
        [
            ("prompt", "a desk"),
            ("trigger_words[]", "deskstyle"),
            ("trigger_words[]", "1"),  # list items stay text
            ("desk_mask[targets][]", "desk"),
            ("desk_mask[targets][]", "monitor"),
            ("desk_mask[grow]", "4"),
            ("desk_mask[blur]", "1.5"),
            ("loras[][name]", "a"),
            ("loras[][weight]", "0.8"),
            ("loras[][name]", "b"),
            ("loras[][weight]", "1"),
        ]
    )
    assert fields == {
        "prompt": "a desk",
        "trigger_words": ["deskstyle", "1"],
        "desk_mask": {"targets": ["desk", "monitor"], "grow": 4, "blur": 1.5},
        "loras": [{"name": "a", "weight": 0.8}, {"name": "b", "weight": 1}],
    }


@pytest.mark.parametrize(
    "items",
    [
        [("prompt", "a"), ("prompt", "b")],
        [("desk_mask[grow]", "1"), ("desk_mask[grow]", "2")],
        [("desk_mask", "{}"), ("desk_mask[grow]", "2")],
        [("loras[]", "a"), ("loras[x]", "b")],
        [("trigger_words", "x"), ("trigger_words[]", "a")],  # was a 500 (AttributeError)
        [("desk_mask[k]", "v"), ("desk_mask[]", "y")],
    ],
)
def test_a_field_given_twice_or_two_ways_is_400(items: list[tuple[str, str]]) -> None:
    with pytest.raises(ApiError) as caught:
        form_fields(items)
    assert caught.value.status == 400
