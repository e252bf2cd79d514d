"""``openai``: DALL-E and GPT image models through the official ``openai`` client.

Text to image with ``images.generate``; a makeover of the user's desk photo with ``images.edit``
(GPT image models, and ``dall-e-2`` with a square PNG made for it). The client's own retries are
the only retries (``max_retries``, ``Retry-After`` honoured); its exceptions are translated into
deskgen's `ServiceError` tree at this boundary. The API key is a `SecretStr`: it never appears in
repr, logs, errors or records, and is scrubbed from every exception that leaves the backend (and
what it chains) when a server echoes it. Needs the ``openai`` extra, not torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from .._exceptions import (
    ConfigError,
    ContentPolicyError,
    InvalidOutputError,
    InvalidRequestError,
    ServiceError,
    UnsupportedOperationError,
)
from .._registry import register_backend
from .._secrets import scrub_exception
from ..prompts import LongPromptMode, character_limit, resolve_negative_prompt
from ._base import Backend, BackendOptions, BackendOutput, Job
from ._openai_errors import malformed_answer, translate_openai_error
from ._openai_prices import (
    IMAGE_PRICES_DATE,
    IMAGE_PRICES_SOURCE,
    IMAGE_PRICES_USD,
    price_per_image,
)
from ._profile import BackendProfile

if TYPE_CHECKING:
    from PIL import Image

    from .._models import GenerationRequest
    from ..prompts import DeskDescription

__all__ = [
    "IMAGE_PRICES_DATE",
    "IMAGE_PRICES_SOURCE",
    "IMAGE_PRICES_USD",
    "OpenAIBackend",
    "OpenAIOptions",
]

_RETIRED = {
    "gpt-image-1": "shut down on 2026-10-23",
    "dall-e-2": "retired on 2026-05-12",
    "dall-e-3": "retired on 2026-05-12",
}
"""Models OpenAI no longer serves (openai-python's model list); OpenAI-compatible servers may."""

_FLEXIBLE_SIZES = re.compile(r"^gpt-image-2(\.5-(sunburst|flare))?(-\d{4}-\d{2}-\d{2})?$")
"""GPT image models that take any WxH on a 16-pixel grid, aspect 1:3 to 3:1, up to 3840x2160."""

_SIZES: dict[str, tuple[str, ...]] = {
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("1024x1024", "512x512", "256x256"),
    "gpt-image": ("1024x1024", "1536x1024", "1024x1536", "auto"),
}
_MAX_IMAGES = {"dall-e-3": 1, "dall-e-2": 10, "gpt-image": 10}


def _family(model: str) -> str:
    if model.startswith("gpt-image"):
        return "gpt-image"
    if model in ("dall-e-2", "dall-e-3"):
        return model
    return "gpt-image"  # newer image models follow the GPT image API shape


MAX_REFERENCES = 15
"""Reference images besides the photo: GPT image edits take up to 16 images in all."""


class OpenAIOptions(BackendOptions):
    """Options of the ``openai`` backend."""

    api_key: SecretStr | None = None
    """Defaults to ``OPENAI_API_KEY``. Held as a secret: never shown or saved."""
    base_url: str | None = None
    """An OpenAI-compatible server; defaults to ``OPENAI_BASE_URL`` or OpenAI's API."""
    organization: str | None = None
    timeout: float = Field(default=600.0, gt=0)
    """Seconds per HTTP request (the client's default); connecting gets at most 5 s."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """The client's retries for 408/409/429/5xx and connection errors (with back-off)."""
    size: str | None = None
    """The size to ask for when the request gives no width/height, e.g. ``"auto"`` (GPT image
    models) or ``"1792x1024"``; by default the allowed size closest to the photo's aspect."""
    quality: str | None = None
    """``standard``/``hd`` (dall-e-3), ``low``/``medium``/``high``/``auto`` (GPT image), plus
    ``xhigh``/``max`` on ``gpt-image-2.5-*``; checked when the generator is created."""
    style: Literal["vivid", "natural"] | None = None
    """dall-e-3 only."""
    background: Literal["transparent", "opaque", "auto"] | None = None
    """GPT image models only."""
    output_format: Literal["png", "jpeg", "webp"] | None = None
    """GPT image models only."""
    input_fidelity: Literal["high", "low"] | None = None
    """GPT image edits: how closely to keep the photo's details (faces, objects, layout)."""
    describe_model: str = "gpt-5.4-mini"
    """The vision chat model `describe` asks (structured outputs)."""
    prices: dict[str, float] = Field(default_factory=dict)
    """Your own prices, over `IMAGE_PRICES_USD` (OpenAI's, as of `IMAGE_PRICES_DATE`):
    ``{"model|quality|size": dollars per image}``, or ``"model|quality|*"`` for every size."""

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return SecretStr(value) if isinstance(value, str) else value


def _parse_size(size: str) -> tuple[int, int] | None:
    """``WxH`` as the flexible GPT image models take it, or None when it breaks their rules."""
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if not match:
        return None
    w, h = int(match.group(1)), int(match.group(2))
    ok = (
        w % 16 == 0
        and h % 16 == 0
        and 1 / 3 <= w / h <= 3
        and max(w, h) <= 3840
        and w * h <= 3840 * 2160
    )
    return (w, h) if ok else None


def _downscaled(photo: Image.Image, longest: int = 2048) -> Image.Image:
    """A copy at most ``longest`` pixels on its longer side (the photo itself is kept)."""
    copy = photo.copy()
    copy.thumbnail((longest, longest))
    return copy


def _with_negative(prompt: str, negative: str | None) -> str:
    """The Images API has no negative prompt: it is asked for in words."""
    return f"{prompt}\n\nAvoid: {negative}." if negative else prompt


@register_backend("openai")
class OpenAIBackend(Backend):
    """DALL-E 2/3 and GPT image models (``gpt-image-1`` and later) on OpenAI's Images API."""

    description: ClassVar[str] = "OpenAI Images API (DALL-E, GPT image): txt2img and photo edits"
    extra: ClassVar[str] = "openai"
    requirements: ClassVar[tuple[str, ...]] = ("openai",)
    default_model: ClassVar[str | None] = "gpt-image-2.5-flare"
    profile: ClassVar[BackendProfile] = BackendProfile(
        # photo requests are edits (images.edit), reported as img2img results as they always
        # were; with a mask (transparent where to edit), as inpaint results
        modes=("txt2img", "img2img", "edit", "inpaint"),
        masks=True,
        references=MAX_REFERENCES,
        describes=True,
    )
    options_class: ClassVar[type[BackendOptions]] = OpenAIOptions
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.ERROR

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, OpenAIOptions)
        self.opts: OpenAIOptions = options
        key = options.api_key.get_secret_value() if options.api_key else None
        key = key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ConfigError(
                "No OpenAI API key: set OPENAI_API_KEY or pass api_key=... (for an "
                "OpenAI-compatible server without keys, pass any placeholder)."
            )
        import openai

        self._key = SecretStr(key)  # scrubbed from every error that leaves the backend
        self._client: Any = openai.OpenAI(
            api_key=key,
            base_url=options.base_url,
            organization=options.organization,
            timeout=openai.Timeout(options.timeout, connect=min(5.0, options.timeout)),
            max_retries=options.max_retries,
        )
        self._family = _family(options.model)
        self._flexible = bool(_FLEXIBLE_SIZES.match(options.model))
        if options.size is not None and not (
            options.size in _SIZES[self._family]
            or (self._flexible and _parse_size(options.size) is not None)
        ):
            raise ConfigError(
                f"size={options.size!r}: {options.model} takes {', '.join(_SIZES[self._family])}"
                + (
                    " or any WxH on a 16-pixel grid (1:3 to 3:1, up to 3840x2160)."
                    if self._flexible
                    else "."
                )
            )
        self._check_options()
        self._closed = threading.Event()
        self._in_flight = 0
        self._flight_lock = threading.Lock()

    def _check_options(self) -> None:
        """Refuse option combinations the API would reject, before any (paid) call."""
        o = self.opts
        qualities = {
            "dall-e-3": ("standard", "hd"),
            "dall-e-2": ("standard",),
            "gpt-image": ("low", "medium", "high", "auto")
            + (("xhigh", "max") if o.model.startswith("gpt-image-2.5") else ()),
        }[self._family]
        if o.quality is not None and o.quality not in qualities:
            raise ConfigError(f"quality={o.quality!r}: {o.model} takes {', '.join(qualities)}.")
        if o.background == "transparent" and o.output_format == "jpeg":
            raise ConfigError("A transparent background needs output_format 'png' or 'webp'.")
        if o.input_fidelity is not None:
            if self._flexible or self._family != "gpt-image":
                raise ConfigError(
                    f"{o.model} takes no input_fidelity (gpt-image-1.5 and gpt-image-1-mini do)."
                )
            if o.model.startswith("gpt-image-1-mini") and o.input_fidelity != "low":
                raise ConfigError("gpt-image-1-mini takes only input_fidelity='low'.")

    @property
    def device(self) -> str:
        return "api"

    @property
    def dtype(self) -> str:
        return "n/a"

    def prompt_character_limit(self) -> int | None:
        return character_limit(self.opts.model)

    def prompt_character_counter(self, request: GenerationRequest) -> Callable[[str], int]:
        # the negative prompt is sent inside the prompt ("Avoid: ..."), so it counts too
        negative, _ = resolve_negative_prompt(
            request.negative_prompt, backend_default=self.default_negative_preset
        )
        return lambda prompt: len(_with_negative(prompt, negative))

    # -- requests ----------------------------------------------------------------------------

    def _size(self, job: Job) -> str:
        sizes = _SIZES[self._family]
        req = job.request
        if req.width is not None or req.height is not None:
            size = f"{req.width}x{req.height}"
            if size in sizes or (self._flexible and _parse_size(size) is not None):
                return size
            grid = " or any WxH on a 16-pixel grid, 1:3 to 3:1, up to 3840x2160"
            raise InvalidRequestError(
                f"{self.opts.model} makes {', '.join(s for s in sizes if s != 'auto')}"
                f"{grid if self._flexible else ''} images, not {size}: pass one of those as "
                "width/height, or neither."
            )
        if self.opts.size is not None:
            return self.opts.size
        if job.photo is None:
            return sizes[0]
        aspect = job.photo.width / job.photo.height
        if self._flexible:  # the photo's own aspect at about a megapixel
            from .._images import fit_size

            aspect = min(max(aspect, 1 / 3), 3.0)
            w, h = fit_size(aspect, native=(1024, 1024), multiple=16)
            return f"{w}x{h}"
        fixed = [s for s in sizes if s != "auto"]
        return min(fixed, key=lambda s: abs(int(s.split("x")[0]) / int(s.split("x")[1]) - aspect))

    def _ignored(self, job: Job) -> list[str]:
        req = job.request
        given = req.model_fields_set
        notes = [
            f"{name}={getattr(req, name)!r} has no effect on {self.opts.model}."
            for name in ("steps", "guidance_scale")
            if name in given
        ]
        if "strength" in given and job.photo is not None:
            notes.append(f"strength has no effect on {self.opts.model} edits.")
        notes.append(
            f"{self.opts.model} takes no seed: the seeds are recorded, but the images can't be "
            "reproduced from them."
        )
        if self.opts.model in _RETIRED:
            notes.append(
                f"OpenAI lists {self.opts.model} as {_RETIRED[self.opts.model]}; use "
                f"{self.default_model} (fine on OpenAI-compatible servers that still serve it)."
            )
        return notes

    def _photo_file(self, photo: Image.Image, size: str) -> tuple[str, bytes, str]:
        from .._images import prepare_image

        if self._family == "dall-e-2":  # one square RGBA PNG under 4 MB
            side = int(size.split("x")[0])
            square = prepare_image(photo, (side, side)).convert("RGBA")
            buf = io.BytesIO()
            # at most 1024x1024 with an opaque alpha: ~3 MiB of colour even for pure noise,
            # so always under dall-e-2's 4 MB (a test checks the worst case)
            square.save(buf, format="PNG", optimize=True)
            return ("desk.png", buf.getvalue(), "image/png")
        buf = io.BytesIO()
        photo.save(buf, format="PNG")  # a fresh image: no EXIF, GPS or other metadata
        if buf.tell() > 40 * 2**20:
            buf = io.BytesIO()
            photo.save(buf, format="JPEG", quality=92)
            return ("desk.jpg", buf.getvalue(), "image/jpeg")
        return ("desk.png", buf.getvalue(), "image/png")

    def _reference_file(self, image: Image.Image, index: int) -> tuple[str, bytes, str]:
        """A reference image as the edit endpoint takes it: a fresh PNG (no metadata)."""
        name, data, kind = self._photo_file(_downscaled(image), "auto")
        return (name.replace("desk", f"reference-{index}"), data, kind)

    def _mask_file(
        self, mask: Image.Image, photo: Image.Image, size: str
    ) -> tuple[str, bytes, str]:
        """OpenAI's mask: a PNG the size of the image sent, transparent where to edit."""
        from PIL import Image as PILImage

        from .._images import prepare_image

        if self._family == "dall-e-2":
            side = int(size.split("x")[0])
            target = (side, side)
        else:
            target = photo.size  # the photo as `_photo_file` sends it
        grey = prepare_image(mask.convert("RGB"), target).convert("L")
        rgba = PILImage.new("RGBA", target, (0, 0, 0, 255))
        rgba.putalpha(grey.point(lambda v: 0 if v >= 128 else 255))  # white: change -> clear
        buf = io.BytesIO()
        rgba.save(buf, format="PNG", optimize=True)
        if buf.tell() >= 4 * 2**20:  # two-level alpha on one colour: not reachable in practice
            raise InvalidRequestError("The mask PNG is over OpenAI's 4 MB limit.")
        return ("mask.png", buf.getvalue(), "image/png")

    def _params(self, job: Job, size: str, n: int) -> dict[str, Any]:
        plan = job.prompt
        prompt = _with_negative(plan.prompt, plan.negative_prompt)
        params: dict[str, Any] = {"model": self.opts.model, "prompt": prompt, "n": n}
        if size != "auto" or self._family == "gpt-image":
            params["size"] = size
        if self.opts.quality:
            params["quality"] = self.opts.quality
        if self._family == "dall-e-3" and self.opts.style:
            params["style"] = self.opts.style
        if self._family == "gpt-image":
            for name in ("background", "output_format"):
                if getattr(self.opts, name):
                    params[name] = getattr(self.opts, name)
        else:
            params["response_format"] = "b64_json"  # URLs expire after an hour
        return params

    def _decode(self, data: Any) -> tuple[Image.Image, str | None]:
        from .._images import load_image

        b64 = getattr(data, "b64_json", None)
        url = getattr(data, "url", None)
        if b64:
            if isinstance(b64, str) and b64.startswith("data:") and "," in b64:
                b64 = b64.split(",", 1)[1]  # a data URL, as some compatible servers send
            try:
                raw = base64.b64decode(b64)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise malformed_answer("has image data that is not base64", exc) from exc
        elif url:
            raw = self._download(url)
        else:
            raise InvalidOutputError(
                "The image service answered without image data (no b64_json or url)."
            )
        try:
            image, _ = load_image(raw)
        except Exception as exc:
            raise InvalidOutputError(f"The image service sent an unreadable image: {exc}") from exc
        return image, getattr(data, "revised_prompt", None)

    def _download(self, url: str) -> bytes:
        """Fetch a URL answer at once: OpenAI's image URLs expire after an hour."""
        import urllib.request

        if not url.startswith(("https://", "http://")):
            raise InvalidOutputError(f"The image service sent a URL deskgen won't fetch: {url!r}")
        try:
            with urllib.request.urlopen(url, timeout=self.opts.timeout) as response:  # noqa: S310
                return bytes(response.read(100 * 2**20 + 1))
        except Exception as exc:
            raise ServiceError(f"Could not download the generated image: {exc}") from exc

    def generate(self, job: Job) -> BackendOutput:
        self._enter()
        try:
            return self._generate(job)
        except Exception as exc:  # the API key, as a proxy may echo it, never leaves
            scrub_exception(exc, [self._key])
            raise
        finally:
            self._leave()

    def _generate(self, job: Job) -> BackendOutput:
        import openai

        req = job.request
        mode: Literal["txt2img", "img2img", "inpaint"] = (
            "txt2img" if job.photo is None else "inpaint" if job.mask is not None else "img2img"
        )
        if req.padding_mask_crop is not None:
            raise UnsupportedOperationError(
                "OpenAI's image edits redraw the whole picture around the mask: leave out "
                "padding_mask_crop (it is for the diffusers backends' inpainting)."
            )
        if job.photo is not None and self._family == "dall-e-3":
            raise InvalidRequestError(
                f"dall-e-3 cannot edit a photo. Use model='{self.default_model}' (or another GPT "
                "image model) for a "
                "makeover of the photo, or leave out the image for text to image."
            )
        if job.references and self._family != "gpt-image":
            raise InvalidRequestError(
                f"{self.opts.model} edits one image: reference images need a GPT image model "
                f"(model='{self.default_model}'), whose edits take up to {MAX_REFERENCES + 1}."
            )
        size = self._size(job)
        per_call = _MAX_IMAGES[self._family]
        warnings = self._ignored(job)
        if req.num_images > per_call:
            warnings.append(
                f"{self.opts.model} makes {per_call} image(s) per request: "
                f"{-(-req.num_images // per_call)} requests were made."
            )
        images: list[Image.Image] = []
        revised: list[str] = []
        start = time.perf_counter()
        remaining = req.num_images
        # the models work below 2048 px: smaller uploads, and smaller retries
        photo = _downscaled(job.photo) if job.photo is not None else None
        photo_file = self._photo_file(photo, size) if photo is not None else None
        # the references follow the photo: the edit endpoint's extra images, in order
        reference_files = [
            self._reference_file(ref, i) for i, ref in enumerate(job.references, start=1)
        ]
        mask_file = None
        if job.mask is not None:
            assert photo is not None
            mask_file = self._mask_file(job.mask, photo, size)
        while remaining:
            job.check_cancel()  # before each (paid) request, never after one
            n = min(per_call, remaining)
            params = self._params(job, size, n)
            try:
                if photo_file is not None:
                    if self._family == "gpt-image" and self.opts.input_fidelity:
                        params["input_fidelity"] = self.opts.input_fidelity
                    params.pop("style", None)
                    if mask_file is not None:
                        params["mask"] = mask_file
                    image: Any = [photo_file, *reference_files] if reference_files else photo_file
                    response = self._client.images.edit(image=image, **params)
                else:
                    response = self._client.images.generate(**params)
            except openai.OpenAIError as exc:
                raise translate_openai_error(exc, retries=self.opts.max_retries) from exc
            except json.JSONDecodeError as exc:  # a 200 whose body is cut short, or not JSON
                raise malformed_answer("is not valid JSON", exc) from exc
            data = getattr(response, "data", None)
            if not isinstance(data, list):
                found = "nothing" if data is None else f"a {type(data).__name__}"
                raise malformed_answer(f"has no list of images under 'data' ({found} there)")
            if len(data) < n:
                raise InvalidOutputError(
                    f"The image service returned {len(data)} image(s) where {n} were asked for."
                )
            for item in data[:n]:
                image, revised_prompt = self._decode(item)
                images.append(image)
                if revised_prompt:
                    revised.append(revised_prompt)
            remaining -= n
            if remaining:
                job.on_step(req.num_images - remaining, req.num_images)
        elapsed = time.perf_counter() - start
        quality = self.opts.quality or ("standard" if self._family != "gpt-image" else "medium")
        price = price_per_image(self.opts.model, quality, size, self.opts.prices, warnings)
        width, height = images[0].size
        resolved = req.model_copy(update={"width": width, "height": height})
        return BackendOutput(
            images=images,
            seeds=job.seeds,
            request=resolved,
            mode=mode,
            width=width,
            height=height,
            denoising_steps=0,
            scheduler=self.opts.model,
            encode_seconds=0.0,
            denoise_seconds=elapsed,
            decode_seconds=0.0,
            warnings=warnings,
            cost_usd=price * req.num_images if price is not None else None,
            revised_prompts=revised,
        )

    def describe(self, photo: Image.Image, *, instruction: str) -> DeskDescription:
        """Ask the vision chat model to "explain details" of the photo, as a `DeskDescription`
        (structured outputs: the answer is validated against the model's JSON schema)."""
        self._enter()
        try:
            return self._describe(photo, instruction=instruction)
        except Exception as exc:
            scrub_exception(exc, [self._key])
            raise
        finally:
            self._leave()

    def _describe(self, photo: Image.Image, *, instruction: str) -> DeskDescription:
        import openai

        from ..prompts import DeskDescription
        from ..prompts._description import DescriptionFields

        image = _downscaled(photo)  # the vision models' own limit; no metadata is sent
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        data_url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        messages: list[dict[str, Any]] = [
            {
                "role": "system",
                "content": "You describe photos of desks for a desk makeover service. Be "
                "concrete and factual, and answer in English.",
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": instruction},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            },
        ]
        try:
            completion = self._client.chat.completions.parse(
                model=self.opts.describe_model,
                messages=messages,
                response_format=DescriptionFields,
            )
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc, retries=self.opts.max_retries) from exc
        except json.JSONDecodeError as exc:  # a 200 whose body is cut short, or not JSON
            raise malformed_answer("is not valid JSON", exc) from exc
        except ValueError as exc:  # an answer that does not match the schema
            raise InvalidOutputError(
                f"The service's description did not match DeskDescription: {exc}"
            ) from exc
        except (AttributeError, TypeError, KeyError, IndexError) as exc:  # the client's parsing
            raise malformed_answer("is not a chat completion", exc) from exc
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise malformed_answer("is a chat completion with no choices")
        message = choices[0].message
        if getattr(message, "refusal", None):
            raise ContentPolicyError(
                f"The service refused to describe the photo: {message.refusal}"
            )
        parsed = getattr(message, "parsed", None)
        if not isinstance(parsed, DescriptionFields):
            raise InvalidOutputError("The service answered without a description.")
        return DeskDescription(**parsed.model_dump())

    def _enter(self) -> None:
        with self._flight_lock:
            if self._closed.is_set():
                from .._exceptions import GeneratorClosedError

                raise GeneratorClosedError("This generator was closed; create a new DeskGenerator.")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._flight_lock:
            self._in_flight -= 1
            last = self._in_flight == 0 and self._closed.is_set()
        if last:
            self._client.close()

    def close(self) -> None:
        """Stop taking requests; the HTTP client closes when running ones have finished."""
        with self._flight_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            idle = self._in_flight == 0
        if idle:
            self._client.close()
