"""The typed requests and results that cross deskgen's public API."""

from __future__ import annotations

import base64
import html
import io
import operator
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from PIL import Image
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._controls import Control
from ._images import ImageInfo, ImageInput
from ._lora import LoadedLora
from .masks._settings import DeskMask
from .prompts._report import LongPromptMode, PromptReport

__all__ = [
    "CancelFlag",
    "GenerationRequest",
    "GenerationResult",
    "Mode",
    "PeakMemory",
    "StepCallback",
    "StepProgress",
    "Timings",
]

Mode = Literal["txt2img", "img2img", "edit", "inpaint"]
"""What a result was made by: text alone, the photo re-noised (img2img), the photo edited
by an instruction (``edit``: instruction-editing models, the room kept), or only the masked
part of the photo redrawn (``inpaint``: the room outside the mask is the photo's own)."""

MAX_SEED = 2**64 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _whole_number(value: Any, info: ValidationInfo) -> Any:
    """Counts, sizes and seeds: an int or what is exactly one (numpy integers), never a bool,
    a text or a float (``steps=True``, ``steps="3"`` and ``width=512.0`` are refused). Text is
    read only where all values are text (``model_validate_strings``: the command line)."""
    if str(info.mode) == "string" and isinstance(value, str):  # typed python|json, is "string"
        return value
    if isinstance(value, (bool, str, bytes, float)):
        raise ValueError(f"{value!r} is not a whole number: give an int")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{value!r} is not a whole number: give an int") from None


def _number(value: Any, info: ValidationInfo) -> Any:
    """Scales and strengths: any real number (ints, numpy floats), never a bool or a text (but
    in ``model_validate_strings``, as `_whole_number`)."""
    if str(info.mode) == "string" and isinstance(value, str):  # typed python|json, is "string"
        return value
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{value!r} is not a number: give a float")
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_number)]


class GenerationRequest(BaseModel):
    """Everything that decides one generation, independent of backend and weights.

    ``None`` means "the backend's default": the result carries the resolved request
    (``result.request``), with the seed, size and guidance scale actually used, so it can be
    replayed exactly.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prompt: str = Field(min_length=1, strict=True)
    """What the improved desk should look like."""
    negative_prompt: str | None = Field(default=None, strict=True)
    """What to keep out of the image: text, or a preset reference such as
    ``"preset:photo_default"``, ``"preset:default"`` (the backend's preset) or
    ``"preset:sdxl_default, text"``. ``None``: no negative prompt (as diffusers)."""
    long_prompt: LongPromptMode | None = None
    """What to do with a prompt over a text encoder's limit: ``chunk``, ``fit``, ``truncate``
    or ``error``; ``None`` is the backend's default (``chunk`` for sd/sdxl)."""
    trigger_words: list[str] = Field(default_factory=list)
    """LoRA trigger words to put at the front of the prompt (those it lacks)."""
    remove_words: list[str] = Field(default_factory=list)
    """Words or phrases to take out of the prompt (case-insensitive, whole words), e.g. an
    unwanted LoRA trigger such as ``"3D 0ff1c3"``."""
    loras: dict[str, Number] | None = None
    """LoRA adapters to use, by adapter name, with their weights; adapters left out are off
    (``{}``: none). ``None`` is every adapter loaded into the generator at its own weight.
    Results record the weights used."""
    lora_sha256: dict[str, str] | None = None
    """Digests of the LoRA files a request was made with, by adapter name (set in results and
    records): a replay warns when an adapter of that name is now another file."""
    image: SkipValidation[ImageInput | None] = Field(default=None, exclude=True, repr=False)
    """The user's desk photo (path, bytes, binary file or PIL image): img2img when given.

    Never serialised: records keep a digest of it (`GenerationResult.input_image`)."""
    mask: SkipValidation[ImageInput | DeskMask | Literal["auto"] | None] = Field(
        default=None, exclude=True, repr=False
    )
    """Where to change the photo, the rest kept as it is: ``"auto"`` (the desk and what stands
    on it, found by a segmentation model: `DeskMask`), a `DeskMask` (which objects, grown and
    feathered by how much), or a mask image (path, bytes, file or PIL image; white marks the
    area to change, black the area to keep; the photo's size or aspect ratio). ``"auto"`` and a
    `DeskMask` are moved to `desk_mask`. Never serialised: records keep the digest."""
    desk_mask: DeskMask | None = None
    """The settings the mask is found with (``mask="auto"``, ``mask=DeskMask(...)``): kept in
    results and records, so a replay finds the same mask in the same photo again."""
    mask_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Digest of the mask a request was made with (of a found mask: of its pixels); like
    `image_sha256`, replays refuse to run without a mask."""
    keep_unmasked: bool = Field(default=True, strict=True)
    """With a mask: outside it, the images are the photo's own pixels exactly, at the photo's
    size and orientation (the feathered edge is the only blend). ``False``: the pipeline's raw
    output, at the generated size."""
    padding_mask_crop: WholeNumber | None = Field(default=None, ge=0, le=4096)
    """With a mask, on the diffusers backends: redraw only the mask's box grown by this many
    pixels, at the full generation size, then paste it back (A1111's "Inpaint area: Only
    masked"): more detail on a small desk. ``None``: the whole picture."""
    image_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Digest of the photo this request was made from (`ImageInfo.sha256`), set in results and
    records. When set, `generate` refuses to run without a photo (so a replayed makeover can't
    silently turn into txt2img) and warns when the photo differs."""
    control_image: SkipValidation[ImageInput | list[ImageInput | None] | None] = Field(
        default=None, exclude=True, repr=False
    )
    """``sdxl-controlnet`` only: control images to use as they are instead of computing them
    from the photo: one image, or one per control (``None`` entries are computed). Resized to
    the output size. Never serialised."""
    references: SkipValidation[list[ImageInput] | None] = Field(
        default=None, exclude=True, repr=False
    )
    """Reference images besides the photo (the lamp to put on the desk, a style to follow), for
    backends that take them (``qwen-image-edit`` with an Edit Plus model; ``openai``'s edits).
    Read like photos (safe, upright, no metadata). Never serialised: records keep digests."""
    reference_sha256: list[str] | None = None
    """Digests of the reference images a request was made with; replays refuse to run without
    them and warn when they differ."""
    control_image_sha256: list[str | None] | None = None
    """Digests of the given control images (``None`` where computed); replays refuse to run
    without them."""
    control_scale: Number | list[Number] | None = None
    """``sdxl-controlnet`` only: conditioning scale of every control, or one per control;
    ``None`` is each `Control`'s own ``scale``."""
    strength: Number | None = Field(default=None, gt=0.0, le=1.0)
    """img2img only: how far to move from the photo (1.0 ignores it). Runs
    ``int(steps * strength)`` denoising steps. ``None`` is the backend's default (0.6 for
    sd/sdxl, 0.8 for sdxl-controlnet, whose ControlNet holds the structure)."""
    steps: WholeNumber | None = Field(default=None, ge=1, le=1000)
    """Length of the denoising schedule; ``None`` is the backend's default (30 for sd/sdxl,
    each HiDream edition's own), resolved in the result."""
    guidance_scale: Number | None = Field(default=None, ge=0.0, le=100.0)
    """Classifier-free guidance; ``None`` is the backend's default (sdxl 5.0, sd 7.5). On
    guidance-distilled models (``flux-kontext``) the guidance the model was distilled to follow,
    one branch per step."""
    true_cfg_scale: Number | None = Field(default=None, ge=0.0, le=100.0)
    """Guidance-distilled models only (backends whose profile has ``true_cfg``:
    ``flux-kontext``): real classifier-free guidance against the negative prompt, on top of
    ``guidance_scale`` (over 1 with a negative prompt: two branches per step, twice the time).
    ``None``: 1.0, off."""
    seed: WholeNumber | None = Field(default=None, ge=0, le=MAX_SEED)
    """Seed of the first image; image ``i`` uses ``seed + i``. ``None`` picks one at random."""
    num_images: WholeNumber = Field(default=1, ge=1, le=16)
    width: WholeNumber | None = Field(default=None, ge=8, le=8192)
    """Output width; ``None`` is the model's native size, or the photo's aspect at that size."""
    height: WholeNumber | None = Field(default=None, ge=8, le=8192)

    @model_validator(mode="before")
    @classmethod
    def _found_mask(cls, data: Any) -> Any:
        """``mask="auto"`` and ``mask=DeskMask(...)`` are settings, kept as `desk_mask`."""
        if not isinstance(data, dict):
            return data
        mask = data.get("mask")
        if isinstance(mask, str) and mask == "auto":
            mask = DeskMask()
        if isinstance(mask, DeskMask):
            if data.get("desk_mask") not in (None, mask):
                raise ValueError("give mask=DeskMask(...) or desk_mask=..., not both")
            data = {**data, "mask": None, "desk_mask": mask}
        elif mask is not None and data.get("desk_mask") is not None:
            raise ValueError(
                "a mask image and desk_mask settings: give one (desk_mask finds the mask)"
            )
        return data

    @field_validator("reference_sha256")
    @classmethod
    def _reference_digests(cls, value: list[str] | None) -> list[str] | None:
        for digest in value or []:
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"{digest!r} is not a SHA-256 hex digest")
        return value

    @field_validator("control_image_sha256")
    @classmethod
    def _digests(cls, value: list[str | None] | None) -> list[str | None] | None:
        for digest in value or []:
            if digest is not None and not _SHA256.fullmatch(digest):
                raise ValueError(f"{digest!r} is not a SHA-256 hex digest")
        return value

    @field_validator("control_scale")
    @classmethod
    def _scales(cls, value: float | list[float] | None) -> float | list[float] | None:
        scales = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not value:
            raise ValueError("give at least one scale, or None for the controls' own")
        for scale in scales:
            if not 0.0 <= scale <= 2.0:
                raise ValueError(f"control scale {scale} is outside 0..2")
        return value

    @field_validator("lora_sha256")
    @classmethod
    def _lora_digests(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for digest in (value or {}).values():
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"{digest!r} is not a SHA-256 hex digest")
        return value

    @field_validator("loras")
    @classmethod
    def _lora_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, weight in (value or {}).items():
            if not -4.0 <= weight <= 4.0:
                raise ValueError(f"LoRA {name!r} weight {weight} is outside -4..4")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank: describe the desk you want")
        return value

    @property
    def masked(self) -> bool:
        """Whether only part of the photo is to change (a mask image or `desk_mask`)."""
        return self.mask is not None or self.desk_mask is not None

    @property
    def mode(self) -> Mode:
        if self.image is None:
            return "txt2img"
        return "inpaint" if self.masked else "img2img"


class StepProgress(BaseModel):
    """Handed to a progress callback after every denoising step."""

    model_config = ConfigDict(frozen=True)

    step: int
    """Steps finished so far (1-based)."""
    total_steps: int
    """Denoising steps this request runs (for img2img, ``int(steps * strength)``)."""
    elapsed: float
    """Seconds since the request started."""


class StepCallback(Protocol):
    def __call__(self, progress: StepProgress, /) -> None: ...


class CancelFlag(Protocol):
    """Anything with ``is_set()``, e.g. `threading.Event`; checked between steps."""

    def is_set(self) -> bool: ...


class Timings(BaseModel):
    """Seconds spent in each phase. ``load`` is the generator's one-off weight loading."""

    load: float
    control: float = 0.0
    """Computing control images from the photo: edges, depth (ControlNet backends)."""
    mask: float = 0.0
    """Finding the desk mask in the photo (``mask="auto"``, `DeskMask`)."""
    encode: float
    """Text encoding (prompt and negative prompt)."""
    denoise: float
    """Latent preparation (incl. encoding the photo for img2img) and the denoising loop."""
    decode: float
    """VAE decoding and post-processing to images."""
    total: float
    """The whole request, from the call to the returned result (``load`` excluded)."""


class PeakMemory(BaseModel):
    """Peak memory while the request ran."""

    bytes: int
    kind: Literal["cuda_allocated", "process_rss"]
    """``cuda_allocated``: torch's CUDA allocator peak; ``process_rss``: resident RAM of the
    whole process (sampled), on CPU and MPS."""

    @property
    def gib(self) -> float:
        return self.bytes / 2**30


class GenerationResult(BaseModel):
    """Images and the full record of how they were made."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    images: list[SkipValidation[Image.Image]] = Field(exclude=True, repr=False)
    seeds: list[int]
    """The seed of each image: ``generate(request, seed=seeds[i], num_images=1)`` redoes image i."""
    request: GenerationRequest
    """The resolved request: every default replaced by the value used."""
    backend: str
    model: str
    mode: Mode
    width: int
    height: int
    denoising_steps: int
    """Steps the model actually ran (img2img runs ``int(steps * strength)``)."""
    scheduler: str
    device: str
    dtype: str
    timings: Timings
    peak_memory: PeakMemory
    warnings: list[str] = Field(default_factory=list)
    input_image: ImageInfo | None = None
    prompt_report: PromptReport | None = None
    """Per text encoder: tokens, limit, chunks and any text not encoded."""
    cost_usd: float | None = None
    """Estimated price in US dollars, for paid APIs (from a price table; see the backend)."""
    revised_prompts: list[str] = Field(default_factory=list)
    """The prompts as the service rewrote them (DALL-E 3 does), one per image."""
    controls: list[Control] = Field(default_factory=list)
    """``sdxl-controlnet``: each control as used (ControlNet, scale, steps range)."""
    control_images: list[SkipValidation[Image.Image]] = Field(
        default_factory=list, exclude=True, repr=False
    )
    """``sdxl-controlnet``: the control image each ControlNet saw, at the output size, in the
    order of `controls` (edges, depth maps): look at them when a makeover goes wrong."""
    loras: list[LoadedLora] = Field(default_factory=list)
    """The LoRA adapters the request used, each with the weight it used and its file's digest."""
    mask: SkipValidation[Image.Image | None] = Field(default=None, exclude=True, repr=False)
    """The mask used (grey-scale, the photo's size: white changed, black kept, grey the
    feathered edge), found or given; ``None`` without one. `save` writes it on request."""
    photo: SkipValidation[Image.Image | None] = Field(default=None, exclude=True, repr=False)
    """The photo as read (upright, RGB, no metadata): the "before" of `before_after`."""
    scheduler_settings: dict[str, Any] = Field(default_factory=dict)
    """What was set over the model's own scheduler config (a speed preset's, e.g.
    ``{"use_karras_sigmas": True}``, ``{"timestep_spacing": "trailing"}``) and sampler
    arguments such as TCD's ``eta``; empty: the model's scheduler as configured."""
    deskgen_version: str
    created_at: datetime

    @property
    def image(self) -> Image.Image:
        """The first image."""
        return self.images[0]

    def before_after(self, index: int = 0, *, labels: bool = True) -> Image.Image:
        """The photo and image ``index`` side by side at the photo's height, captioned
        "before" and "after" unless ``labels=False``.

        Raises:
            InvalidRequestError: the result was made without a photo (txt2img).
        """
        from ._exceptions import InvalidRequestError
        from .masks import before_after

        if self.photo is None:
            raise InvalidRequestError(
                "This result was made from a prompt alone: there is no photo to show as "
                "'before'. Pass image=... to generate a makeover of a photo."
            )
        return before_after(self.photo, self.images[index], labels=labels)

    def record(self, index: int = 0) -> dict[str, Any]:
        """The JSON-ready generation record of image ``index`` (what `save` embeds)."""
        from ._record import build_record

        return build_record(self, index)

    def save(
        self, path: str | os.PathLike[str], *, index: int | None = None, mask: bool = False
    ) -> list[Path]:
        """Write PNGs atomically, each with its generation record embedded.

        One image goes to ``path``; several go to ``stem-0.png``, ``stem-1.png``, ... unless
        ``index`` picks one. ``mask=True`` also writes the mask used beside them, as
        ``stem.mask.png`` (refused without one). Returns the paths written.
        """
        from ._record import save_result

        return save_result(self, Path(path), index=index, mask=mask)

    def _repr_html_(self) -> str:
        thumbs = []
        for img, seed in zip(self.images, self.seeds, strict=True):
            thumb = img.copy()
            thumb.thumbnail((256, 256))
            buf = io.BytesIO()
            thumb.save(buf, format="PNG")
            data = base64.b64encode(buf.getvalue()).decode()
            thumbs.append(
                f'<figure style="display:inline-block;margin:4px">'
                f'<img src="data:image/png;base64,{data}"/>'
                f"<figcaption>seed {seed}</figcaption></figure>"
            )
        facts = [
            ("backend", f"{self.backend} ({self.mode})"),
            ("model", self.model),
            ("size", f"{self.width}x{self.height}, {self.denoising_steps} steps"),
            ("device", f"{self.device} / {self.dtype}"),
            ("time", f"{self.timings.total:.2f} s (load {self.timings.load:.2f} s)"),
            ("peak memory", f"{self.peak_memory.gib:.2f} GiB ({self.peak_memory.kind})"),
        ]
        facts += [("warning", w) for w in self.warnings]
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in facts
        )
        prompt = html.escape(self.request.prompt)
        return f"<div>{''.join(thumbs)}<p><i>{prompt}</i></p><table>{rows}</table></div>"
