"""`DeskMask`: defaults, normalised target names, refused values, JSON round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from deskgen.masks import DEFAULT_MASK_TARGETS, DEFAULT_SEGMENTATION_MODEL, DeskMask


def test_defaults() -> None:
    settings = DeskMask()
    assert settings.targets == DEFAULT_MASK_TARGETS
    assert {"desk", "table", "monitor", "lamp", "keyboard"} <= set(settings.targets)
    assert settings.surfaces == ("desk", "table", "countertop", "coffee table")
    assert settings.on_surface is True
    assert settings.model is None
    assert settings.revision is None
    assert (settings.grow, settings.blur, settings.min_area) == (16, 8, 0.002)
    assert settings.default_targets
    assert DEFAULT_SEGMENTATION_MODEL == "facebook/mask2former-swin-tiny-ade-semantic"


def test_targets_from_a_list_are_normalised() -> None:
    settings = DeskMask(targets=[" Desk ", "MONITOR", "desk", "crt   screen", "Monitor"])
    assert settings.targets == ("desk", "monitor", "crt screen")
    assert not settings.default_targets
    assert DeskMask(surfaces=["Desk", "desk"]).surfaces == ("desk",)
    assert DeskMask(surfaces=[]).surfaces == ()


def test_targets_given_equal_to_the_default_count_as_default() -> None:
    assert DeskMask(targets=list(DEFAULT_MASK_TARGETS)).default_targets


@pytest.mark.parametrize(
    "targets",
    [[], (), ["desk", "  "], [""], "desk", [1], None],
    ids=["empty-list", "empty-tuple", "blank", "empty-name", "str", "int", "none"],
)
def test_bad_targets_are_refused(targets: object) -> None:
    with pytest.raises(ValidationError):
        DeskMask(targets=targets)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("grow", 513),
        ("grow", -513),
        ("grow", 1.5),
        ("grow", "4"),
        ("grow", True),
        ("blur", -1),
        ("blur", 513),
        ("min_area", -0.1),
        ("min_area", 1.5),
        ("min_area", "0.1"),
        ("on_surface", "yes"),
        ("on_surface", 1),
        ("model", 3),
        ("colour", "red"),
    ],
)
def test_out_of_range_and_wrong_types_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        DeskMask(**{field: value})


def test_the_range_ends_are_accepted() -> None:
    DeskMask(grow=-512, blur=0, min_area=0.0)
    DeskMask(grow=512, blur=512, min_area=1.0)
    assert DeskMask(min_area=0).min_area == 0  # an int for a float, as JSON may give it


def test_settings_are_frozen() -> None:
    settings = DeskMask()
    with pytest.raises(ValidationError):
        settings.grow = 3


@pytest.mark.parametrize(
    "settings",
    [
        DeskMask(),
        DeskMask(
            targets=["desk", "monitor"],
            surfaces=["desk"],
            on_surface=False,
            model="some/model",
            revision="main",
            grow=-4,
            blur=0,
            min_area=0.01,
        ),
    ],
    ids=["defaults", "everything"],
)
def test_json_round_trip(settings: DeskMask) -> None:
    data = settings.model_dump(mode="json")
    assert isinstance(data["targets"], list)
    again = DeskMask.model_validate(json.loads(json.dumps(data)))
    assert again == settings
    assert again.default_targets == settings.default_targets
    assert DeskMask.model_validate_json(settings.model_dump_json()) == settings


def test_importing_masks_imports_nothing_heavy() -> None:
    code = (
        "import sys, deskgen.masks; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'diffusers') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
