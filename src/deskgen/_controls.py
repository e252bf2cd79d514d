"""`Control`: one ControlNet of the ``sdxl-controlnet`` backend and what it is shown.

A control keeps one kind of structure of the desk photo while the prompt restyles the rest:

- ``canny``: the photo's edges (OpenCV's Canny detector): desk edge, monitor, window frame.
- ``depth``: the photo's depth map (a transformers depth-estimation model): where things are.
- ``image``: no preprocessing: the request's ``control_image`` (a pose, a line drawing, a
  segmentation...), or the photo itself as is (tile or recolour ControlNets).

This module imports nothing heavy; the images are computed in
`deskgen.backends.diffusers.sdxl_controlnet`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DEFAULT_CONTROLNETS",
    "DEFAULT_DEPTH_MODEL",
    "Control",
    "ControlKind",
]

ControlKind = Literal["canny", "depth", "image"]

DEFAULT_CONTROLNETS: dict[str, str] = {
    "canny": "diffusers/controlnet-canny-sdxl-1.0",
    "depth": "diffusers/controlnet-depth-sdxl-1.0",
}
"""The ControlNet each kind loads when none is named: diffusers' SDXL canny and depth models."""

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
"""The depth estimator of ``depth`` controls: Depth Anything V2 Small (Apache-2.0, 25M
parameters, safetensors), relative inverse depth like the MiDaS maps SDXL depth ControlNets
were trained on."""


class Control(BaseModel):
    """One ControlNet and how its control image is made and weighted.

    ```python
    DeskGenerator(
        "sdxl-controlnet",
        control=[Control(kind="canny", scale=0.5), Control(kind="depth", scale=0.3, end=0.8)],
    )
    ```
    The defaults suit desk makeovers (see the ControlNet guide): strong enough to keep the
    room, the desk edge and the monitor where they are, loose enough to drop the clutter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ControlKind
    """How the control image is made from the photo (``canny``, ``depth``) or taken as is
    (``image``)."""
    controlnet: str | None = None
    """Hub id or local folder of the ControlNet; ``None``: `DEFAULT_CONTROLNETS` for the kind
    (an ``image`` control must name one)."""
    scale: float = Field(default=0.5, ge=0.0, le=2.0)
    """``controlnet_conditioning_scale``: how strongly the control steers. 0.5, as the
    diffusers SDXL ControlNet model cards advise: at 1.0 the edges of the old clutter come back
    as new clutter. A request's ``control_scale`` overrides it."""
    start: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of the denoising steps after which the control starts to act."""
    end: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of the denoising steps after which the control stops (e.g. 0.8 leaves the
    last fifth free to refine details)."""
    low_threshold: int = Field(default=100, ge=0, le=10_000)
    """Canny only: gradients below this are never edges."""
    high_threshold: int = Field(default=200, ge=0, le=10_000)
    """Canny only: gradients above this are always edges. Raise both to drop weak edges
    (cables, paper texture) and keep the strong ones (desk edge, monitor)."""

    @model_validator(mode="after")
    def _check(self) -> Control:
        if self.start >= self.end:
            raise ValueError(
                f"start={self.start} must be below end={self.end}: the control acts between "
                "these fractions of the denoising steps"
            )
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"low_threshold={self.low_threshold} is above high_threshold="
                f"{self.high_threshold}; swap them"
            )
        if self.kind != "canny" and self.model_fields_set & {"low_threshold", "high_threshold"}:
            raise ValueError(
                f"low_threshold/high_threshold apply to canny controls only, not {self.kind!r}"
            )
        if self.kind == "image" and self.controlnet is None:
            raise ValueError(
                "an 'image' control needs controlnet=... (hub id or folder): deskgen has no "
                "default ControlNet for images it does not make itself"
            )
        return self

    @property
    def controlnet_id(self) -> str:
        """The ControlNet this control loads (its own, or the kind's default)."""
        return self.controlnet or DEFAULT_CONTROLNETS[self.kind]
