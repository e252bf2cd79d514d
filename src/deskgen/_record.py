"""Generation records embedded in PNG files, and atomic writes.

Each saved PNG carries two text chunks:

- ``parameters``: the A1111 "infotext" (prompt, ``Negative prompt:`` line, then
  ``Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: ..``), which A1111, ComfyUI, civitai
  and most image viewers read;
- ``deskgen``: deskgen's full record as JSON, from which `read_record` rebuilds the request.

Nothing from the input photo's metadata is ever written.
"""

from __future__ import annotations

import functools
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import ValidationError

from ._exceptions import InvalidRequestError, RecordError

if TYPE_CHECKING:
    from ._models import GenerationRequest, GenerationResult

__all__ = [
    "RECORD_KEY",
    "atomic_write",
    "atomic_write_bytes",
    "build_record",
    "png_path",
    "public_model_name",
    "read_record",
    "save_result",
]

RECORD_KEY = "deskgen"
RECORD_FORMAT = 1

# diffusers scheduler class -> A1111 sampler name (the common ones; others keep their class name)
_SAMPLERS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``.

    Readers see the old file or the whole new one, never a partial one; a failure leaves no
    temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files: give the file the mode a plain open() would (or keep the
        # mode of the file it replaces), so a web server can still serve it
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of ``data`` as a whole."""

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)


def public_model_name(model: str) -> str:
    """What records say about the model: hub ids as they are, local folders by name only, so
    saved images don't reveal the machine's paths (user names, project folders)."""
    expanded = os.path.expanduser(model)
    if os.path.isabs(expanded) or model.startswith((".", "~")) or os.path.exists(expanded):
        return Path(expanded).name or model
    return model


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_record(result: GenerationResult, index: int) -> dict[str, Any]:
    """The record of one image: its own seed and ``num_images=1`` so it replays alone."""
    seed = result.seeds[index]
    request = result.request.model_copy(update={"seed": seed, "num_images": 1})
    return {
        "format": RECORD_FORMAT,
        "deskgen_version": result.deskgen_version,
        "backend": result.backend,
        "model": public_model_name(result.model),
        "mode": result.mode,
        "request": request.model_dump(mode="json"),
        "image_index": index,
        "batch_seeds": result.seeds,
        "width": result.width,
        "height": result.height,
        "denoising_steps": result.denoising_steps,
        "scheduler": result.scheduler,
        "scheduler_settings": result.scheduler_settings,
        "device": result.device,
        "dtype": result.dtype,
        "timings": result.timings.model_dump(mode="json"),
        "peak_memory": result.peak_memory.model_dump(mode="json"),
        "input_image": (result.input_image.model_dump(mode="json") if result.input_image else None),
        "prompt_report": (
            result.prompt_report.model_dump(mode="json") if result.prompt_report else None
        ),
        "controls": [
            control.model_dump(mode="json")
            | {"controlnet": public_model_name(control.controlnet_id)}
            for control in result.controls
        ],
        "loras": [
            {
                "name": lora.name,
                "file": Path(lora.path).name,
                "weight": lora.weight,
                "sha256": lora.sha256,
                "tensor_sha256": lora.tensor_sha256,
                "trigger_words": list(lora.trigger_words),
            }
            for lora in result.loras
        ],
        "request_cost_usd": result.cost_usd,
        "revised_prompt": (
            result.revised_prompts[index] if index < len(result.revised_prompts) else None
        ),
        "warnings": result.warnings,
        "created_at": result.created_at.isoformat(),
    }


def a1111_parameters(result: GenerationResult, index: int) -> str:
    """The A1111 infotext of image ``index``: the texts as encoded (trigger words applied,
    presets resolved, ``fit`` applied), so A1111, civitai and viewers show what the model saw."""
    req = result.request
    report = result.prompt_report
    prompt = report.prompt if report is not None else req.prompt
    negative = report.negative_prompt if report is not None else req.negative_prompt
    # A1111 writes the LoRAs used into the prompt as <lora:FILE STEM:weight> tags
    tags = " ".join(f"<lora:{Path(lora.path).stem}:{lora.weight:g}>" for lora in result.loras)
    lines = [f"{prompt} {tags}" if tags else prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    fields = [
        ("Steps", str(req.steps)),
        ("Sampler", _SAMPLERS.get(result.scheduler, result.scheduler)),
        *(
            [("Schedule type", "Karras")]  # A1111 1.9+ writes the sigma schedule apart
            if result.scheduler_settings.get("use_karras_sigmas")
            else []
        ),
        ("CFG scale", f"{req.guidance_scale:g}" if req.guidance_scale is not None else "default"),
        ("Seed", str(result.seeds[index])),
        ("Size", f"{result.width}x{result.height}"),
        ("Model", public_model_name(result.model)),
    ]
    if result.mode in ("img2img", "inpaint") and req.strength is not None:
        fields.append(("Denoising strength", f"{req.strength:g}"))
    if result.mode == "inpaint" or result.mask is not None:
        # A1111's img2img inpaint fields, as its processing writes them
        blur = req.desk_mask.blur if req.desk_mask is not None else 0
        fields.append(("Mask blur", str(blur)))
        if req.padding_mask_crop is not None:
            fields.append(("Inpaint area", "Only masked"))
            fields.append(("Masked area padding", str(req.padding_mask_crop)))
        else:
            fields.append(("Inpaint area", "Whole picture"))
    for i, control in enumerate(result.controls):
        # A1111's ControlNet extension writes one "ControlNet i" field per unit
        fields.append(
            (
                f"ControlNet {i}",
                f"Module: {control.kind}, Model: {public_model_name(control.controlnet_id)}, "
                f"Weight: {control.scale:g}, Guidance Start: {control.start:g}, "
                f"Guidance End: {control.end:g}",
            )
        )
    if result.loras:
        # A1111's "Lora hashes": file stem and the first 12 hex digits of the tensor data's
        # SHA-256 (A1111's addnet hash, civitai's AutoV3)
        hashes = ", ".join(
            f"{Path(lora.path).stem}: {(lora.tensor_sha256 or lora.sha256)[:12]}"
            for lora in result.loras
        )
        fields.append(("Lora hashes", hashes))
    fields.append(("Version", f"deskgen {result.deskgen_version}"))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def _quote(value: str) -> str:
    # A1111 quotes values that contain its separators
    return json.dumps(value) if ("," in value or ":" in value) else value


def _write_png(image: Image.Image, info: PngImagePlugin.PngInfo, fh: IO[bytes]) -> None:
    image.save(fh, format="PNG", pnginfo=info)


def _png_info(result: GenerationResult, index: int) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(result, index))
    info.add_text(RECORD_KEY, json.dumps(build_record(result, index), ensure_ascii=False))
    return info


def png_bytes(result: GenerationResult, index: int) -> bytes:
    """Image ``index`` as the PNG `GenerationResult.save` writes (its record in text chunks)."""
    out = io.BytesIO()
    _write_png(result.images[index], _png_info(result, index), out)
    return out.getvalue()


_OTHER_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".jxl"}
)


def png_path(path: Path) -> Path:
    """``path`` as the PNG that `GenerationResult.save` writes: ``.png`` is appended unless the
    name ends in it; another image format's suffix is refused (the record lives in PNG chunks)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        return path
    if suffix in _OTHER_IMAGE_SUFFIXES:
        raise RecordError(
            f"Cannot save {str(path)!r}: deskgen writes PNG files (the generation record lives "
            "in PNG text chunks). Use a .png path, or convert the saved PNG yourself."
        )
    return path.with_name(path.name + ".png")


def save_result(
    result: GenerationResult, path: Path, *, index: int | None, mask: bool = False
) -> list[Path]:
    if index is not None and not 0 <= index < len(result.images):
        raise IndexError(f"index {index} out of range for {len(result.images)} image(s)")
    if mask and result.mask is None:
        raise InvalidRequestError(
            "This result was made without a mask: there is none to save. Leave out mask=True "
            "(--save-mask), or generate with mask='auto' or a mask image."
        )
    indices = [index] if index is not None else list(range(len(result.images)))
    path = png_path(path)
    written = []
    for i in indices:
        target = path
        if len(indices) > 1:
            target = path.with_name(f"{path.stem}-{i}{path.suffix}")
        info = _png_info(result, i)
        atomic_write(target, functools.partial(_write_png, result.images[i], info))
        written.append(target)
    if mask and result.mask is not None:
        target = path.with_name(f"{path.stem}.mask.png")
        atomic_write(target, functools.partial(_write_png, result.mask, PngImagePlugin.PngInfo()))
        written.append(target)
    return written


def read_png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks of a PNG, read from its header: no pixel is decoded.

    deskgen writes its chunks before the image data, where ``Image.open`` finds them.
    """
    try:
        with Image.open(path, formats=("PNG",)) as img:
            return {k: v for k, v in img.info.items() if isinstance(v, str)}
    except FileNotFoundError as exc:
        raise RecordError(f"No file at {os.fspath(path)!r}.") from exc
    except Image.DecompressionBombError as exc:
        raise RecordError(f"{os.fspath(path)!r} claims a size past the bomb limit.") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RecordError(
            f"{os.fspath(path)!r} is not a readable PNG ({exc}); deskgen records live in PNG "
            "files it saved."
        ) from exc


def read_record_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole embedded record (JSON) of a PNG written by deskgen."""
    text = read_png_text(path).get(RECORD_KEY)
    if text is None:
        raise RecordError(
            f"{os.fspath(path)!r} has no deskgen record: it was not saved by "
            "GenerationResult.save(), or a tool stripped its text chunks."
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"The deskgen record in {os.fspath(path)!r} is not valid JSON.") from exc
    except RecursionError:  # JSON nested past Python's recursion limit: no record of ours
        raise RecordError(
            f"The deskgen record in {os.fspath(path)!r} is nested too deeply to be a deskgen "
            "record (it was made or edited by another program)."
        ) from None
    if not isinstance(data, dict) or "request" not in data:
        raise RecordError(f"The deskgen record in {os.fspath(path)!r} has no request.")
    return data


def read_record(path: str | os.PathLike[str]) -> GenerationRequest:
    """The request embedded in a PNG saved by deskgen, ready to generate the image again.

    The photo, mask and control images of a request are never stored: pass them again,
    ``gen.generate(read_record(p), image="desk.jpg")``; the digests in the record
    (``image_sha256``, `GenerationResult.input_image`) let you check they are the same.

    Raises:
        RecordError: no readable record, or one that names input files (``image``, ``mask``,
            ``control_image``: deskgen never writes them, so the file was edited to make a
            replay read a file of the editor's choosing).
    """
    from ._models import GenerationRequest

    data = read_record_data(path)
    request = data["request"]
    if isinstance(request, dict):
        input_fields = _input_fields()
        inputs = sorted(k for k, v in request.items() if k in input_fields and v is not None)
        if inputs:
            raise RecordError(
                f"The deskgen record in {os.fspath(path)!r} names input files "
                f"({', '.join(inputs)}), which deskgen never writes into a record: the file was "
                "edited. It is refused; replay a record saved by deskgen, and pass the photo, "
                "mask or control images yourself (image=..., mask=..., control_image=...)."
            )
        # fields from a newer deskgen are ignored, not fatal
        request = {
            k: v
            for k, v in request.items()
            if k in GenerationRequest.model_fields and k not in input_fields
        }
    try:
        return GenerationRequest.model_validate(request)
    except ValidationError as exc:
        raise RecordError(f"The deskgen record in {os.fspath(path)!r} is invalid: {exc}") from exc
    except RecursionError:
        raise RecordError(
            f"The deskgen record in {os.fspath(path)!r} is nested too deeply to be a deskgen "
            "record."
        ) from None


def _input_fields() -> frozenset[str]:
    """The request fields that are the caller's inputs (photo, mask, control images): those
    never serialised (``exclude=True``), so never read back from a record either."""
    from ._models import GenerationRequest

    return frozenset(
        name for name, field in GenerationRequest.model_fields.items() if field.exclude
    )
