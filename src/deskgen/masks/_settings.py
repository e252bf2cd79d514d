"""`DeskMask`: what to find in a desk photo (the desk and what stands on it) and how to shape
the mask (grown, feathered), with the models that find it: a closed-set segmentation model, or
(the open-vocabulary route) a Grounding DINO detector and SAM. Pure pydantic: nothing heavy is
imported here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_BOX_THRESHOLD",
    "DEFAULT_DETECTOR_MODEL",
    "DEFAULT_MASK_TARGETS",
    "DEFAULT_SAM_MODEL",
    "DEFAULT_SEGMENTATION_MODEL",
    "DEFAULT_SURFACES",
    "DEFAULT_TEXT_THRESHOLD",
    "DeskMask",
    "MaskRoute",
]

DEFAULT_SEGMENTATION_MODEL = "facebook/mask2former-swin-tiny-ade-semantic"
"""The model `DeskMask` uses unless told otherwise: Mask2Former with a Swin-Tiny backbone
trained on ADE20K's 150 closed-set classes. Light (Swin-Tiny, about 47M parameters: quick
on a GPU, usable on a CPU), and ADE20K names what a desk photo holds: desk, table,
countertop, computer, monitor, screen, crt screen, lamp, book, bottle, vase, plant, box."""

DEFAULT_DETECTOR_MODEL = "IDEA-Research/grounding-dino-tiny"
"""The detector of the open-vocabulary route unless told otherwise: Grounding DINO with a
Swin-T backbone and a BERT text encoder (about 172M parameters), which finds boxes for any
phrase ("cables", "keyboard", "mug"); SAM (`DEFAULT_SAM_MODEL`) turns each box into a mask."""

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
"""The box-to-mask model of the open-vocabulary route unless told otherwise: Segment Anything
with a ViT-B image encoder (about 94M parameters; ``facebook/sam-vit-large`` and
``facebook/sam-vit-huge`` are finer and slower)."""

DEFAULT_BOX_THRESHOLD = 0.3
"""`DeskMask.box_threshold`'s default: a little under the 0.35 of Grounding DINO's own demo
(desk clutter is small and often partly hidden); lower finds more, and more wrongly."""

DEFAULT_TEXT_THRESHOLD = 0.25
"""`DeskMask.text_threshold`'s default, as in Grounding DINO's own demo."""

MaskRoute = Literal["closed-set", "open-vocabulary"]
"""How `DeskMask` finds its targets: a closed-set segmentation model's classes, or any phrase
with a zero-shot detector and SAM."""

DEFAULT_MASK_TARGETS: tuple[str, ...] = (
    "desk",
    "table",
    "computer",
    "monitor",
    "screen",
    "crt screen",
    "lamp",
    "book",
    "bottle",
    "vase",
    "plant",
    "box",
    "keyboard",
    "mouse",
    "cables",
)
"""What ``mask="auto"`` changes: the desk (or table) and what usually stands on it. On the
closed-set route, names a model has no class for ("keyboard", "mouse" and "cables" are not
ADE20K classes) are skipped when the targets are left at this default; the model finds them as
part of the desk, if at all. On the open-vocabulary route every name is looked for."""

DEFAULT_SURFACES: tuple[str, ...] = ("desk", "table", "countertop", "coffee table")
"""The target names that are surfaces things stand on; every other target is an object."""


def _names(value: Any, *, field: str, empty: bool) -> Any:
    """A list or tuple of names, lower-cased, stripped, without duplicates, in order."""
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple):
        return value  # strict validation words the type error
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{field} are names (str), not {type(item).__name__}: {item!r}")
        name = " ".join(item.split()).lower()
        if not name:
            raise ValueError(f"{field} must not hold a blank name: {value!r}")
        if name not in names:
            names.append(name)
    if not names and not empty:
        raise ValueError(f"{field} must name at least one thing to find, e.g. ['desk']")
    return tuple(names)


class DeskMask(BaseModel):
    """How to find the desk and what stands on it in a photo, as an edit mask (white: change,
    black: keep) that `deskgen.masks.find_desk_mask` makes, by one of two routes.

    ``route="closed-set"`` (the default): a semantic-segmentation model labels every pixel with
    one of its classes. Targets are matched by name, case-insensitively, against the model's
    class names (``config.id2label``); a class name such as ``"windowpane, window"`` or
    ``"screen, silver screen"`` names several synonyms (split on ``,`` and ``;``), any of which
    matches. Names you give that the model has no class for are refused (`ConfigError`, listing
    the classes it knows). Left at `DEFAULT_MASK_TARGETS` (not given, or given equal to it, as a
    replayed record does), the default names the model lacks are skipped instead.

    ``route="open-vocabulary"``: targets are free text. A Grounding DINO detector (``model``)
    finds boxes for the phrases, each box labelled with the phrase it scored highest; SAM
    (``sam_model``) turns each box into a mask, and each target's region is the union of its
    boxes' masks. What follows (surfaces, ``min_area``, ``grow``, ``blur``) is the same.

    ```python
    DeskMask()                                       # the desk and what stands on it
    DeskMask(targets=["desk", "monitor"], grow=24)   # only those, a wider margin
    DeskMask(targets=["lamp"], on_surface=False)     # every lamp in the room
    DeskMask(route="open-vocabulary", targets=["desk", "cables", "keyboard", "mug"])
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    targets: tuple[str, ...] = Field(default=DEFAULT_MASK_TARGETS)
    """What to change: the model's class names (closed-set route) or any phrases
    (open-vocabulary route), as a list or tuple (lower-cased, stripped, duplicates dropped,
    order kept). Surfaces (`surfaces`) and the objects standing on them."""
    surfaces: tuple[str, ...] = Field(default=DEFAULT_SURFACES)
    """Which target names are surfaces (desk, table...); every other target is an object.
    Names here that are not targets play no part (they are not checked against the model)."""
    on_surface: bool = True
    """Keep an object only where it touches a surface found in the photo: the monitor on the
    desk, not the floor lamp across the room. Ignored (objects are kept wherever found) when
    no target is a surface."""
    route: MaskRoute = "closed-set"
    """``"closed-set"``: a segmentation model's classes (``model``). ``"open-vocabulary"``: any
    phrase, with a Grounding DINO detector (``model``) and SAM (``sam_model``): slower (two
    models, the larger about 172M parameters), but "cables", "keyboard" and "mouse" work."""
    model: str | None = None
    """A hub id or a folder saved with ``save_pretrained``. On the closed-set route the
    segmentation model: a transformers semantic-segmentation model (SegFormer, UperNet, BEiT,
    DPT...) or a Mask2Former/MaskFormer; ``None``: `DEFAULT_SEGMENTATION_MODEL`. On the
    open-vocabulary route the detector: a Grounding DINO (or MM Grounding DINO) model;
    ``None``: `DEFAULT_DETECTOR_MODEL`."""
    revision: str | None = None
    """``model``'s hub revision (a branch, tag or commit); ``None``: the default branch. SAM is
    read from its default branch."""
    sam_model: str | None = None
    """Open-vocabulary route only: the SAM model that turns boxes into masks (a hub id or a
    folder of a transformers ``SamModel``); ``None``: `DEFAULT_SAM_MODEL`."""
    box_threshold: float = Field(default=DEFAULT_BOX_THRESHOLD, ge=0.0, le=1.0)
    """Open-vocabulary route only: the detector's boxes scoring at most this are dropped (a
    box's score: its highest token probability). Lower finds more, and more wrongly."""
    text_threshold: float = Field(default=DEFAULT_TEXT_THRESHOLD, ge=0.0, le=1.0)
    """Open-vocabulary route only: a box is labelled with the target phrase holding its most
    probable token, if that probability is over this; boxes with none are dropped."""
    grow: int = Field(default=16, ge=-512, le=512)
    """Pixels of the photo to grow the found region by (a square neighbourhood), so the new
    desk may be a little larger than the old one; negative shrinks it."""
    blur: int = Field(default=8, ge=0, le=512)
    """Width in pixels of the soft edge, centred on the grown region's edge: fully white
    ``blur/2`` pixels inside it, fully black ``blur/2`` pixels outside. ``0``: a hard edge."""
    min_area: float = Field(default=0.002, ge=0.0, le=1.0)
    """Found regions (connected parts) smaller than this fraction of the photo are dropped, as
    the speckle a segmentation model leaves."""

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        return _names(value, field="targets", empty=False)

    @field_validator("surfaces", mode="before")
    @classmethod
    def _surfaces(cls, value: Any) -> Any:
        return _names(value, field="surfaces", empty=True)

    @model_validator(mode="after")
    def _route_fields(self) -> DeskMask:
        if self.route == "closed-set":
            given = [
                name
                for name, default in (
                    ("sam_model", None),
                    ("box_threshold", DEFAULT_BOX_THRESHOLD),
                    ("text_threshold", DEFAULT_TEXT_THRESHOLD),
                )
                if getattr(self, name) != default
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} belong to route='open-vocabulary' (a Grounding DINO "
                    "detector and SAM); the closed-set route (a segmentation model's classes) "
                    "has no use for them: set route='open-vocabulary' or leave them out"
                )
        else:
            marked = [name for name in self.targets if "." in name or "?" in name]
            if marked:
                raise ValueError(
                    "on the open-vocabulary route targets are phrases without '.' or '?' (the "
                    f"detector's prompt separates phrases with them): {marked!r}"
                )
        return self

    @property
    def default_targets(self) -> bool:
        """Whether the targets are `DEFAULT_MASK_TARGETS` (names the model lacks are skipped)."""
        return "targets" not in self.model_fields_set or self.targets == DEFAULT_MASK_TARGETS
