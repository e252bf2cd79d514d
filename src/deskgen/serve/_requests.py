"""From an HTTP body (JSON, or a multipart form with files) to a checked `Submission`.

Field names are the OpenAI Images API's (``prompt``, ``n``, ``size``, ``response_format``,
``image``, ``mask``) plus deskgen's own (``seed``, ``steps``, ``strength``, ``negative_prompt``,
``loras``, ``mask="auto"``, ``references``, ...). Images come only from the request itself: an
uploaded file, or base64 / a ``data:`` URL in JSON; a text that names a file is refused, never
opened. Every image is decoded once here with deskgen's photo rules (formats, Pillow's bomb
limit, HEIC only with the extra), so a bad upload is a 400 before the job is queued.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from .._exceptions import DeskgenError, ImageInputError
from .._images import load_image
from .._models import GenerationRequest
from ._errors import ApiError, api_error

__all__ = ["ImageFields", "Submission", "parse_submission"]

ResponseFormat = Literal["b64_json", "url"]
ImageFields = ("image", "mask", "control_image", "references")

_TEXT = {"prompt", "negative_prompt", "long_prompt", "size", "response_format", "user"}
_TEXT |= {"webhook_url", "preset", "model", "output_format"}
_INT = {"n", "seed", "steps", "width", "height", "padding_mask_crop"}
_FLOAT = {"strength", "guidance_scale", "true_cfg_scale"}
_BOOL = {"keep_unmasked"}
_JSON = {"loras", "desk_mask", "trigger_words", "remove_words", "control_scale"}
_OPENAI_UNSUPPORTED = {
    "quality",
    "style",
    "background",
    "moderation",
    "output_compression",
    "input_fidelity",
    "partial_images",
    "stream",
}
_REQUEST_FIELDS = {"negative_prompt", "long_prompt", "trigger_words", "remove_words", "loras"}
_REQUEST_FIELDS |= {"desk_mask", "keep_unmasked", "padding_mask_crop", "control_scale"}
_REQUEST_FIELDS |= {"strength", "steps", "guidance_scale", "true_cfg_scale", "seed"}
_REQUEST_FIELDS |= {"width", "height", "prompt"}


class Submission(BaseModel):
    """A checked request: the `GenerationRequest` fields and the uploads' bytes."""

    model_config = ConfigDict(frozen=True)

    fields: dict[str, Any]
    uploads: dict[str, list[bytes]]
    response_format: ResponseFormat = "b64_json"
    webhook: str | None = None
    preset: str | None = None
    model: str | None = None

    def digest(self, kind: str) -> str:
        """Same body, same digest: what an ``Idempotency-Key`` is checked against."""
        body = {
            "kind": kind,
            "fields": self.fields,
            "uploads": {
                name: [hashlib.sha256(data).hexdigest() for data in files]
                for name, files in sorted(self.uploads.items())
            },
            "response_format": self.response_format,
            "webhook": self.webhook,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


_KEY = re.compile(r"\[([^\[\]]*)\]")


def _leaf(text: str) -> Any:
    """A bracketed form value: a number or ``true``/``false``/``null`` as JSON reads it, else
    the text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def form_fields(items: list[tuple[str, str]]) -> dict[str, Any]:
    """A form's text fields, with the bracket names the openai client writes for lists and
    objects in ``extra_body`` (``trigger_words[]=a``, ``desk_mask[targets][]=desk``,
    ``loras[][name]=x&loras[][weight]=0.8``) built back into lists and objects."""
    fields: dict[str, Any] = {}
    for key, text in items:
        name, _, rest = key.partition("[")
        path = _KEY.findall("[" + rest) if rest else []
        if not path:
            if name in fields:
                raise _bad(name, "given twice")
            fields[name] = text
        elif not isinstance(fields.get(name, []), (dict, list)):
            raise _bad(name, "given twice")
        else:  # items of a plain list stay text (trigger words); deeper values are typed
            _put(fields, name, path, text if path == [""] else _leaf(text), key)
    return fields


def _put(parent: dict[str, Any], name: str, path: list[str], value: Any, key: str) -> None:
    head, *tail = path
    if head == "":  # a list: append, or (``name[][k]``) fill its last object
        items = parent.setdefault(name, [])
        if not isinstance(items, list):
            raise _bad(name, f"{key}: mixes a list and an object")
        if not tail:
            items.append(value)
            return
        if not items or not isinstance(items[-1], dict) or tail[0] in items[-1]:
            items.append({})
        if tail[1:]:
            _put(items[-1], tail[0], tail[1:], value, key)
        else:
            _set(items[-1], tail[0], value, key)
        return
    node = parent.setdefault(name, {})
    if not isinstance(node, dict):
        raise _bad(name, f"{key}: mixes a list and an object")
    if tail:
        _put(node, head, tail, value, key)
    else:
        _set(node, head, value, key)


def _set(node: dict[str, Any], name: str, value: Any, key: str) -> None:
    if name in node:
        raise _bad(key, "given twice")
    node[name] = value


def _typed(name: str, value: Any, *, form: bool) -> Any:
    """A form's text as the field's type (JSON bodies are typed already)."""
    if not form or not isinstance(value, str):
        return value
    try:
        if name in _INT:
            return int(value)
        if name in _FLOAT:
            return float(value)
        if name in _BOOL:
            if value.lower() not in {"true", "false", "1", "0"}:
                raise ValueError
            return value.lower() in {"true", "1"}
        if name in _JSON:
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                if name in {"trigger_words", "remove_words"}:
                    return [value]
                raise
    except ValueError:
        raise _bad(name, f"{value[:40]!r} is not a valid value") from None
    return value


def _size(value: Any) -> tuple[int, int] | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and "x" in value:
        width, _, height = value.partition("x")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    raise _bad("size", f"{str(value)[:40]!r} is not WIDTHxHEIGHT (e.g. 1024x1024) or auto")


def _decode_text_image(name: str, value: Any) -> bytes:
    """An image given in JSON: base64 or a ``data:`` URL, never a path or a web address."""
    if not isinstance(value, str):
        raise _bad(name, "give the image as base64 or a data: URL (or upload it as a file)")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise _bad(name, "a data: URL must be base64 encoded")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(
            name,
            "not base64 image data; file names and URLs are not read: upload the file, or "
            "send its bytes as base64",
        ) from None


def _checked_image(name: str, data: bytes, *, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"{name}: the upload is {len(data) / 2**20:.1f} MiB, over this server's limit of "
            f"{max_bytes / 2**20:.0f} MiB: send a smaller image",
            param=name,
            code="image_too_large",
        )
    try:
        load_image(data)
    except DeskgenError as exc:
        err = api_error(exc)
        err.param, err.message = name, f"{name}: {err.message}"
        raise err from None
    return data


def _openai_mask(data: bytes) -> bytes:
    """OpenAI's masks mark the area to edit with transparent pixels; deskgen's are white
    there. A mask with transparent pixels is converted; any other is read as deskgen's."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if "A" not in img.getbands() and "transparency" not in img.info:
                return data
            alpha = img.convert("RGBA").getchannel("A")
    except Exception as exc:  # load_image has read it once: only odd files get here
        raise ImageInputError(f"mask: could not read it ({type(exc).__name__})") from None
    if alpha.getextrema()[0] == 255:  # an alpha channel, all opaque: a plain mask
        return data
    out = io.BytesIO()
    alpha.point(lambda a: 255 if a == 0 else 0).save(out, format="PNG")
    return out.getvalue()


def parse_submission(
    body: dict[str, Any],
    files: dict[str, list[bytes]],
    *,
    form: bool,
    max_bytes: int,
    max_images: int,
) -> Submission:
    """Check a request body (the fields) and its uploads (by field name)."""
    unknown = set(body) - _TEXT - _INT - _FLOAT - _BOOL - _JSON - {"mask", *ImageFields}
    for name in sorted(unknown & _OPENAI_UNSUPPORTED):
        raise _bad(name, "not supported by deskgen serve: leave it out")
    for name in sorted(unknown):
        raise _bad(name, "unknown field (see the deskgen serve guide for the accepted ones)")
    values = {name: _typed(name, value, form=form) for name, value in body.items()}
    if "prompt" not in values:
        raise _bad("prompt", "required: what the improved desk should look like")
    fields = {name: value for name, value in values.items() if name in _REQUEST_FIELDS}
    size = _size(values.get("size"))
    if size is not None:
        fields.setdefault("width", size[0])
        fields.setdefault("height", size[1])
    n = values.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_images:
        raise _bad("n", f"give 1 to {max_images} images per request")
    fields["num_images"] = n
    given_format = values.get("response_format") or "b64_json"
    if given_format not in ("b64_json", "url"):
        raise _bad("response_format", "give b64_json or url")
    response_format: ResponseFormat = "url" if given_format == "url" else "b64_json"
    if values.get("output_format") not in (None, "png"):
        raise _bad("output_format", "deskgen serve answers PNG images (with their record)")

    uploads: dict[str, list[bytes]] = {name: list(data) for name, data in files.items() if data}
    mask = values.get("mask")
    if mask == "auto":
        fields["mask"] = "auto"
    elif mask is not None:
        uploads.setdefault("mask", []).append(_decode_text_image("mask", mask))
    for name in ("image", "control_image", "references"):
        given = values.get(name)
        if given is None:
            continue
        items = given if isinstance(given, list) else [given]
        uploads.setdefault(name, []).extend(_decode_text_image(name, item) for item in items)
    if len(uploads.get("image", [])) > 1:  # the Images API's image[]: the rest are references
        first, *rest = uploads["image"]
        uploads["image"] = [first]
        uploads["references"] = rest + uploads.get("references", [])
    if len(uploads.get("mask", [])) > 1:
        raise _bad("mask", "give one mask")
    if "mask" in uploads and "image" not in uploads:
        raise _bad("mask", "a mask needs the photo it belongs to: add image")
    if fields.get("mask") == "auto" or "desk_mask" in fields:
        name = "mask" if fields.get("mask") == "auto" else "desk_mask"
        if "mask" in uploads:
            raise _bad(name, "give a mask image or mask=auto (desk_mask), not both")
        if "image" not in uploads:
            raise _bad(name, "a found mask is found in the photo: add image")
    for name, items in uploads.items():
        uploads[name] = [_checked_image(name, data, max_bytes=max_bytes) for data in items]
    if "mask" in uploads:
        try:
            uploads["mask"] = [_openai_mask(uploads["mask"][0])]
        except DeskgenError as exc:
            raise api_error(exc) from None

    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or "request"
        param = {"num_images": "n"}.get(param, param)
        raise _bad(param, error["msg"]) from None
    return Submission(
        fields=request.model_dump(mode="json", exclude_defaults=True),
        uploads=uploads,
        response_format=response_format,
        webhook=values.get("webhook_url"),
        preset=values.get("preset"),
        model=values.get("model"),
    )
