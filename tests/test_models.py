from __future__ import annotations

import pytest
from PIL import Image
from pydantic import ValidationError

from deskgen import GenerationRequest


def test_defaults() -> None:
    req = GenerationRequest(prompt="a desk")
    assert req.steps is None  # the backend's default, resolved in the result
    assert req.strength is None  # the backend's default, resolved in the result
    assert req.control_image is None and req.control_scale is None
    assert req.num_images == 1
    assert req.seed is None and req.width is None and req.guidance_scale is None
    assert req.mode == "txt2img"


def test_image_makes_img2img_and_is_never_serialised() -> None:
    req = GenerationRequest(prompt="a desk", image=Image.new("RGB", (8, 8)))
    assert req.mode == "img2img"
    assert "image" not in req.model_dump()
    assert '"image"' not in req.model_dump_json()
    assert "image=" not in repr(req)


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "x", "steps": 0},
        {"prompt": "x", "strength": 0.0},
        {"prompt": "x", "strength": 1.5},
        {"prompt": "x", "num_images": 0},
        {"prompt": "x", "num_images": 17},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "seed": 2**64},
        {"prompt": "x", "guidance_scale": -1},
        {"prompt": "x", "width": 4},
        {"prompt": "x", "unknown_field": 1},
        # strict: no lax coercion of bools, strings or floats into numbers
        {"prompt": "x", "steps": True},
        {"prompt": "x", "steps": "3"},
        {"prompt": "x", "steps": 3.0},
        {"prompt": "x", "seed": "42"},
        {"prompt": "x", "num_images": True},
        {"prompt": "x", "width": "512"},
        {"prompt": "x", "strength": "0.5"},
        {"prompt": "x", "guidance_scale": True},
        {"prompt": "x", "loras": {"walnut": "0.8"}},
        {"prompt": b"x"},
    ],
)
def test_invalid_requests(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(fields)


def test_round_trip_through_json() -> None:
    req = GenerationRequest(prompt="a desk", seed=3, steps=12, width=512, height=384)
    assert GenerationRequest.model_validate_json(req.model_dump_json()) == req


@pytest.mark.parametrize(
    "fields",
    [
        {"control_scale": 2.5},
        {"control_scale": [0.5, -0.1]},
        {"control_scale": []},
        {"control_image_sha256": ["abc"]},
    ],
)
def test_control_fields_are_checked(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(prompt="a desk", **fields)  # type: ignore[arg-type]


def test_control_image_is_never_serialised() -> None:
    req = GenerationRequest(
        prompt="a desk", control_image=[Image.new("RGB", (8, 8)), None], control_scale=[0.5, 1.0]
    )
    assert "control_image" not in req.model_dump()
    assert req.model_dump()["control_scale"] == [0.5, 1.0]


def test_lax_enum_and_int_floats_still_work() -> None:
    req = GenerationRequest.model_validate(
        {"prompt": "x", "long_prompt": "fit", "strength": 1, "guidance_scale": 5}
    )
    assert req.long_prompt == "fit" and req.strength == 1.0 and req.guidance_scale == 5.0


def test_the_facade_refuses_lax_values_and_an_empty_model() -> None:
    from deskgen import ConfigError, DeskGenerator, InvalidRequestError

    from . import fakes  # noqa: F401  (registers the fake backend)

    gen = DeskGenerator("fake")
    with pytest.raises(InvalidRequestError, match="steps"):
        gen.generate(prompt="a desk", steps=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="steps"):
        gen.generate(prompt="a desk", steps="3")  # type: ignore[arg-type]
    for model in ("", "  "):
        with pytest.raises(ConfigError, match="model"):
            DeskGenerator("fake", model=model)
    with pytest.raises(ConfigError, match="fail_on_load"):
        DeskGenerator("fake", fail_on_load="yes")


def test_numpy_numbers_and_tuples_are_taken() -> None:
    np = pytest.importorskip("numpy")
    req = GenerationRequest(
        prompt="x",
        seed=np.int64(3),
        width=np.int32(512),
        strength=np.float32(0.5),
        control_scale=(0.5, 0.8),  # type: ignore[arg-type]
        trigger_words=("topview",),  # type: ignore[arg-type]
    )
    assert (req.seed, req.width, req.control_scale, req.trigger_words) == (
        3,
        512,
        [0.5, 0.8],
        ["topview"],
    )
    assert type(req.seed) is int and type(req.width) is int


def test_text_is_read_only_where_all_values_are_text() -> None:
    """The command line's values are text: `model_validate_strings` reads them as numbers."""
    req = GenerationRequest.model_validate_strings(
        {"prompt": "x", "steps": "3", "seed": "42", "strength": "0.5"}
    )
    assert (req.steps, req.seed, req.strength) == (3, 42, 0.5)
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate_strings({"prompt": "x", "steps": "three"})
