"""`DeskDescription`: what a vision model saw on the desk photo, and the makeover spec from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._spec import DeskSpec

__all__ = ["DESCRIBE_INSTRUCTION", "DescriptionFields", "DeskDescription"]

DESCRIBE_INSTRUCTION = (
    "explain details of this desk photo: the items on and around the desk, which main "
    "furniture and devices a makeover should keep, which clutter it should clear, the style, "
    "the lighting, how cluttered it is, the main colours and the room around it."
)
"""The seed team's "explain details" request, made specific enough for a structured answer."""


def _bare(item: str) -> str:
    words = item.strip().split(" ", 1)
    return words[1] if len(words) == 2 and words[0].lower() in ("a", "an", "the") else item


class DescriptionFields(BaseModel):
    """The structured fields of a `DeskDescription` (what vision models are asked to fill)."""

    model_config = ConfigDict(extra="forbid")

    summary: str
    """One or two sentences about the whole scene."""
    items: list[str] = Field(default_factory=list)
    """Everything on and around the desk, e.g. "27-inch monitor on a stand"."""
    keep: list[str] = Field(default_factory=list)
    """The main furniture and devices worth keeping in a makeover (no articles: "monitor")."""
    remove: list[str] = Field(default_factory=list)
    """Clutter a makeover should clear, e.g. "tangled cables", "loose papers"."""
    style: str
    """The current style, e.g. "plain office furniture"."""
    lighting: str
    clutter: Literal["none", "low", "medium", "high"]
    colours: list[str] = Field(default_factory=list)
    room: str
    """The surroundings to keep, e.g. "a bright open-plan office with windows"."""


class DeskDescription(DescriptionFields):
    """A structured description of a desk photo (from ``gen.describe(photo)``)."""

    text: str = ""
    """The model's own answer to the instruction, in its words, where it gave one apart from
    the fields (``janus``: its "explain details" answer); empty for ``openai``, whose answer is
    the fields themselves."""

    def to_spec(self, **overrides: Any) -> DeskSpec:
        """A makeover `DeskSpec` that keeps the room and the main items and clears the clutter.

        ``overrides`` set any `DeskSpec` field (e.g. ``style="japandi"``, ``add=[...]``).
        """
        avoid = [*self.remove]
        if self.clutter in ("medium", "high") and "clutter" not in avoid:
            avoid.append("clutter")
        fields: dict[str, Any] = {
            "subject": f"a realistic photo of a tidy, improved desk setup in {self.room}",
            "keep": [_bare(k) for k in self.keep[:4]],
            "lighting": self.lighting,
            "palette": self.colours[:3],
            "avoid": avoid,
        }
        fields.update(overrides)
        return DeskSpec.model_validate(fields)
