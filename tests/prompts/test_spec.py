from __future__ import annotations

import pytest
from pydantic import ValidationError

from deskgen import DeskItem, DeskSpec, GenerationRequest
from deskgen.prompts import Priority, count_tokens


def _spec(**kw: object) -> DeskSpec:
    base: dict[str, object] = {
        "style": "minimalist scandinavian",
        "palette": ["white oak", "sage green"],
        "lighting": "soft natural daylight",
        "mood": "calm and focused",
        "add": [
            DeskItem(what="a minimalist LED desk lamp on the left", priority="high"),
            "a sleek wireless charger pad beside the laptop",
            DeskItem(what="a small potted plant", priority=Priority.LOW),
        ],
        "keep": ["monitor", "window view"],
        "avoid": ["visible cables", "clutter"],
        "extra": ["photorealistic", "high detail"],
    }
    base.update(kw)
    return DeskSpec.model_validate(base)


def test_renders_everything_when_it_fits() -> None:
    rendered = _spec().render(backend="sdxl")
    assert rendered.dropped == []
    assert rendered.prompt.startswith(
        "a realistic photo of a desk setup, minimalist scandinavian style, keep the existing "
        "monitor, keep the existing window view, a minimalist LED desk lamp on the left"
    )
    assert rendered.tokens == count_tokens(rendered.prompt) <= rendered.budget == 77
    assert rendered.negative_prompt is not None
    assert rendered.negative_prompt.startswith("visible cables, clutter, blurry")  # sdxl preset


def test_tight_budget_keeps_the_highest_priority() -> None:
    rendered = _spec().render(backend="sdxl", max_tokens=30)
    assert count_tokens(rendered.prompt) <= 30
    assert rendered.prompt.startswith("a realistic photo of a desk setup")
    assert "high detail" in rendered.dropped
    assert "a small potted plant" in rendered.dropped
    assert "minimalist scandinavian style" in rendered.prompt
    # output keeps the natural order, not the priority order
    assert rendered.prompt.index("style") < rendered.prompt.index("keep the existing")


def test_sd_uses_its_own_preset_and_none_means_none() -> None:
    rendered = _spec(avoid=[]).render(backend="sd")
    assert rendered.negative_prompt is not None and rendered.negative_prompt.endswith("cloned")
    assert _spec(avoid=[], negative_preset=None).render(backend="sd").negative_prompt is None


def test_request_helper() -> None:
    req = _spec().render(backend="sdxl").request(seed=3, steps=4)
    assert isinstance(req, GenerationRequest)
    assert req.seed == 3 and req.prompt.startswith("a realistic photo")


def test_validation() -> None:
    with pytest.raises(ValidationError):
        DeskSpec.model_validate({"colour": "red"})
    with pytest.raises(ValidationError):
        DeskItem(what="", priority="high")
    assert DeskItem(what="lamp", priority="must").priority is Priority.MUST


def test_a_description_becomes_a_makeover_spec() -> None:
    from deskgen import DeskDescription

    description = DeskDescription(
        summary="A messy desk.",
        items=["a monitor", "papers"],
        keep=["the monitor", "an oak desk"],
        remove=["papers"],
        style="office",
        lighting="dim lamp light",
        clutter="medium",
        colours=["grey", "oak", "white", "red"],
        room="a small bedroom",
    )
    spec = description.to_spec(mood="calm")
    assert spec.keep == ["monitor", "oak desk"]
    assert spec.avoid == ["papers", "clutter"]
    assert spec.palette == ["grey", "oak", "white"]
    assert spec.mood == "calm" and spec.subject.endswith("in a small bedroom")
    tidy = description.model_copy(update={"clutter": "low", "remove": []}).to_spec()
    assert tidy.avoid == []
