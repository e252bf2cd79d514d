"""LoRA files: what a `LoraSpec` names, and what the file really is, read without loading it.

`inspect_lora` finds the file (a path, a folder plus ``weight_name``, or a hub repo plus
``weight_name``), checks its format by its bytes (a ``.safetensors`` name on a pickle file is
refused), reads the safetensors header (tensor names, shapes, metadata) without reading any
weight, and says which layout (kohya or diffusers/peft) and which base model the keys are for,
and which trigger words the metadata records. Loading into a pipeline builds on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._exceptions import ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadedLora",
    "LoraFile",
    "LoraSource",
    "LoraSpec",
    "as_lora_spec",
    "canonical_safetensors",
    "inspect_lora",
    "read_lora_tensors",
    "safetensors_header",
    "sniff_format",
]

LoraLayout = Literal["kohya", "diffusers", "peft", "unknown"]
"""``unknown``: a pickle file, until its tensors are read."""
LoraBase = Literal["sdxl", "sd1", "sd2", "unknown"]

_MAX_HEADER = 100 * 2**20
"""A safetensors header larger than this is refused (a LoRA's is a few hundred KB)."""


class LoraSpec(BaseModel):
    """One LoRA to apply: where it is, how strongly, under which name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """A ``.safetensors`` file, a folder, or a Hugging Face repo id (with ``weight_name``)."""
    weight_name: str | None = None
    """The file inside a folder or repo; ``None`` for a file path, or a folder/repo with one
    ``.safetensors`` file."""
    weight: float = Field(default=1.0, ge=-4.0, le=4.0)
    """How strongly it applies (diffusers' adapter weight; 0 turns it off)."""
    adapter_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The adapter's name in the pipeline; ``None``: the file's stem."""
    trigger_words: tuple[str, ...] | None = None
    """Words that call the LoRA's style, put at the front of prompts that use it; ``None``: those
    its metadata names (`LoraFile.trigger_words`), ``()``: none."""
    allow_pickle: bool = False
    """Also accept a pickle file (``.ckpt``, ``.pt``, ``.bin``): it can run code when loaded.
    Only for files you trust."""


class LoraFile(BaseModel):
    """What `inspect_lora` found in a LoRA file."""

    model_config = ConfigDict(frozen=True)

    path: Path
    format: Literal["safetensors", "pickle"]
    layout: LoraLayout
    base: LoraBase
    """The base model the keys (and metadata) are for."""
    keys: dict[str, list[int]]
    """Tensor name -> shape (safetensors only; empty for pickle files until loaded)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    trigger_words: tuple[str, ...] = ()
    """What the metadata names as trigger words: ``modelspec.trigger_phrase`` or
    ``ss_trigger_words``; else, from kohya's ``ss_tag_frequency``, the tags that are in every
    caption of a training folder (``ss_dataset_dirs`` gives the folders' image counts)."""
    suggested_trigger_words: tuple[str, ...] = ()
    """The most frequent tags of ``ss_tag_frequency`` (at most 3), never added by themselves:
    often generic caption words, sometimes the real trigger. Pass them as
    ``LoraSpec(trigger_words=...)`` if they are."""
    rank: int | None = None


class LoadedLora(BaseModel):
    """A LoRA loaded into a generator: what `DeskGenerator.loras` lists and results record."""

    model_config = ConfigDict(frozen=True)

    name: str
    """The adapter's name: what ``GenerationRequest.loras`` selects it by."""
    path: str
    """The file it was read from."""
    weight: float
    """Its weight: the default for requests that leave ``loras`` unset (in a result: the weight
    that request used)."""
    trigger_words: tuple[str, ...]
    """Put at the front of the prompt of requests that use it with a weight other than 0."""
    sha256: str
    """The file's SHA-256: which LoRA made an image, whatever it is called."""
    tensor_sha256: str | None = None
    """SHA-256 of the tensor data after the safetensors header: the LoRA hash A1111 writes in
    "Lora hashes" and civitai looks up (AutoV3); ``None`` for pickle files."""
    layout: LoraLayout
    base: LoraBase
    rank: int | None = None
    components: tuple[str, ...]
    """The pipeline modules it changes, e.g. ``["unet", "text_encoder"]``."""


LoraSource = LoraSpec | str | os.PathLike[str] | dict[str, Any]
"""A `LoraSpec`, a path, a hub file as ``"user/repo/file.safetensors"``, or LoraSpec's fields."""


def as_lora_spec(value: LoraSource) -> LoraSpec:
    """A `LoraSpec` from any `LoraSource`."""
    if isinstance(value, LoraSpec):
        return value
    if isinstance(value, dict):
        return LoraSpec.model_validate(value)
    path = os.fspath(value)
    parts = path.split("/")
    if (
        len(parts) == 3
        and all(re.fullmatch(r"[\w.-]+", part) for part in parts)
        and not path.startswith((".", "~"))
        and not Path(path).exists()
    ):
        return LoraSpec(path="/".join(parts[:2]), weight_name=parts[2])
    return LoraSpec(path=path)


def sniff_format(path: Path) -> Literal["safetensors", "pickle", "unknown"]:
    """A file's real format from its first bytes, whatever its name says."""
    with path.open("rb") as fh:
        head = fh.read(9)
    # safetensors first: its 8-byte header length may well start with the byte 0x80
    if len(head) == 9 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if 0 < length <= _MAX_HEADER and length <= path.stat().st_size - 8:
            return "safetensors"
    # torch.save's zip, or a raw pickle (PROTO opcode, protocol 2 to 5)
    if head[:4] == b"PK\x03\x04" or (
        len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5)
    ):
        return "pickle"
    return "unknown"


def _resolve(spec: LoraSpec) -> Path:
    local = Path(os.path.expanduser(spec.path))
    if local.is_file():
        return local
    if local.is_dir():
        if spec.weight_name is not None:
            target = local / spec.weight_name
            if not target.is_file():
                raise ModelNotFoundError(f"No file {spec.weight_name!r} in {spec.path!r}.")
            return target
        found = sorted(local.glob("*.safetensors"))
        if len(found) != 1:
            raise ModelNotFoundError(
                f"{spec.path!r} holds {len(found)} .safetensors files: name the LoRA with "
                "weight_name=..."
            )
        return found[0]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", spec.path) or spec.path.startswith((".", "~")):
        raise ModelNotFoundError(f"No LoRA file or folder at {spec.path!r}.")
    if spec.weight_name is None:
        raise ModelNotFoundError(
            f"{spec.path!r} is not a local file or folder; for a Hugging Face repo name the file "
            "with weight_name=..., e.g. LoraSpec(path='user/repo', weight_name='lora.safetensors')."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.path, spec.weight_name))
    except Exception as exc:  # offline, unknown repo or file, gated
        raise ModelNotFoundError(
            f"Could not get {spec.weight_name!r} from the Hugging Face repo {spec.path!r} "
            f"({type(exc).__name__}): download it once with `hf download {spec.path} "
            f"{spec.weight_name}` on a machine with network, or pass the local file."
        ) from exc


def safetensors_header(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Tensor name -> shape, and the metadata, of a safetensors file (no weight is read)."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"{str(path)!r} has a damaged safetensors header ({exc}): download it again."
            ) from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{str(path)!r} has a damaged safetensors header: download it again.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(e, dict) for e in header.values()):
        raise ModelLoadError(f"{str(path)!r} has a damaged safetensors header: download it again.")
    keys = {name: list(entry.get("shape", [])) for name, entry in header.items()}
    return keys, {str(k): str(v) for k, v in metadata.items()}


def _layout(keys: dict[str, list[int]]) -> LoraLayout:
    names = list(keys)
    if any(n.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for n in names):
        return "kohya"
    if any(".lora_A." in n or ".lora_B." in n for n in names):
        return "peft"
    return "diffusers"


def _base(keys: dict[str, list[int]], metadata: dict[str, str]) -> LoraBase:
    version = metadata.get("ss_base_model_version", "") + metadata.get("modelspec.architecture", "")
    version = version.lower()
    if "xl" in version:
        return "sdxl"
    if "v2" in version or "sd-2" in version or "sd2" in version:
        return "sd2"
    if "v1" in version or "sd-1" in version or "sd1" in version:
        return "sd1"
    names = list(keys)
    if any(n.startswith(("lora_te2_", "text_encoder_2.", "te2")) for n in names):
        return "sdxl"
    # the down projection of cross-attention keys/values reads the text width: 2048 for SDXL,
    # 1024 for SD 2.x, 768 for SD 1.x
    downs = ("lora_down.weight", "lora.down.weight", "lora_A.weight")
    widths = {
        shape[-1]
        for name, shape in keys.items()
        if re.search(r"attn2[._]to_[kv]", name) and name.endswith(downs) and shape
    }
    for width, base in ((2048, "sdxl"), (1024, "sd2"), (768, "sd1")):
        if width in widths:
            return base  # type: ignore[return-value]
    return "unknown"


def _trigger_words(metadata: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(trigger words, suggested trigger words) from the metadata."""
    for key in ("modelspec.trigger_phrase", "ss_trigger_words", "trigger_words"):
        if metadata.get(key, "").strip():
            return tuple(w.strip() for w in metadata[key].split(",") if w.strip()), ()
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
        dirs = json.loads(metadata.get("ss_dataset_dirs") or "{}")
    except json.JSONDecodeError:
        return (), ()
    if not isinstance(folders, dict) or not isinstance(dirs, dict):
        return (), ()
    counts: Counter[str] = Counter()
    everywhere: Counter[str] = Counter()
    for folder, tags in folders.items():
        if not isinstance(tags, dict):
            continue
        images = (
            dirs.get(folder, {}).get("img_count") if isinstance(dirs.get(folder), dict) else None
        )
        for tag, count in tags.items():
            if not str(tag).strip() or not isinstance(count, int):
                continue
            counts[str(tag).strip()] += count
            if isinstance(images, int) and images > 0 and count >= images:
                everywhere[str(tag).strip()] += count
    triggers = tuple(tag for tag, _ in everywhere.most_common())
    return triggers, tuple(tag for tag, _ in counts.most_common(3))


def _rank(keys: dict[str, list[int]]) -> int | None:
    for name, shape in keys.items():
        if (name.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight"))) and shape:
            return int(shape[0])
    return None


def inspect_lora(spec: LoraSource) -> LoraFile:
    """Find and read the header of the LoRA ``spec`` names; nothing is loaded into a model.

    Raises:
        ModelNotFoundError: no such file, folder, or repo file.
        ModelLoadError: a pickle file without ``allow_pickle=True`` (whatever its name), or a
            file that is neither safetensors nor pickle, or a damaged header.
    """
    spec = as_lora_spec(spec)
    path = _resolve(spec)
    kind = sniff_format(path)
    if kind == "unknown":
        raise ModelLoadError(
            f"{str(path)!r} is not a safetensors file (nor a PyTorch pickle): it may be "
            "incomplete or another kind of file; download it again."
        )
    if kind == "pickle":
        if not spec.allow_pickle:
            named = " despite its .safetensors name" if path.suffix == ".safetensors" else ""
            raise ModelLoadError(
                f"{str(path)!r} is a pickle file{named}: loading one can run code. Use a "
                ".safetensors version of this LoRA, or pass LoraSpec(..., allow_pickle=True) if "
                "you trust the file."
            )
        return LoraFile(path=path, format="pickle", layout="unknown", base="unknown", keys={})
    keys, metadata = safetensors_header(path)
    triggers, suggested = _trigger_words(metadata)
    if not keys:
        raise ModelLoadError(f"{str(path)!r} holds no tensors: it is not a LoRA.")
    return LoraFile(
        path=path,
        format="safetensors",
        layout=_layout(keys),
        base=_base(keys, metadata),
        keys=keys,
        metadata=metadata,
        trigger_words=triggers,
        suggested_trigger_words=suggested,
        rank=_rank(keys),
    )


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its header's JSON in sorted key order: safetensors
    writes the metadata in an order that changes from run to run, so the same tensors and
    metadata would otherwise give files of other SHA-256 digests."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def read_lora_tensors(
    info: LoraFile,
) -> tuple[dict[str, torch.Tensor], tuple[str, str | None], LoraFile]:
    """The tensors of an inspected LoRA file (on the CPU); the file's SHA-256 and that of its
    tensor data (A1111's LoRA hash; ``None`` for pickle files); and ``info`` completed from the
    tensors (a pickle file's layout, base and rank are known only now).

    A pickle file (only inspected with ``allow_pickle=True``) is read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

    Raises:
        ModelLoadError: the file can't be read or holds something other than tensors.
    """
    import torch

    data = info.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    tensor_digest = None
    if info.format == "safetensors":  # A1111's addnet hash: the bytes after the header
        (length,) = struct.unpack("<Q", data[:8])
        tensor_digest = hashlib.sha256(data[8 + length :]).hexdigest()
    try:
        if info.format == "safetensors":
            from safetensors.torch import load as load_safetensors

            tensors: dict[str, Any] = load_safetensors(data)
        else:
            import io

            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
                loaded = loaded["state_dict"]
            if not isinstance(loaded, dict):
                raise ModelLoadError(
                    f"{str(info.path)!r} holds a {type(loaded).__name__}, not a LoRA's tensors."
                )
            tensors = loaded
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors' and torch's own errors
        raise ModelLoadError(
            f"Could not read the LoRA {str(info.path)!r} ({type(exc).__name__}: {exc}): the file "
            "is damaged or not a LoRA; download it again."
        ) from exc
    kept = {str(k): v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if not kept:
        raise ModelLoadError(f"{str(info.path)!r} holds no tensors: it is not a LoRA.")
    if info.format == "pickle":
        keys = {name: list(tensor.shape) for name, tensor in kept.items()}
        info = info.model_copy(
            update={
                "keys": keys,
                "layout": _layout(keys),
                "base": _base(keys, {}),
                "rank": _rank(keys),
            }
        )
    return kept, (digest, tensor_digest), info
