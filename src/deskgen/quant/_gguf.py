"""GGUF files: where one is (a local path or a file on the Hugging Face Hub) and what its
header says (each tensor's name, shape, type and bytes), read without loading a weight. The
memory planner sizes a GGUF denoiser from it; the diffusers backends check a file fits the
model with it before loading (`deskgen.backends.diffusers._gguf`).

Nothing here imports gguf or huggingface_hub before it is called.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError, ModelLoadError, ModelNotFoundError
from .._hub import is_local
from ._weights import check_gguf

__all__ = [
    "GGUF_MAGIC",
    "GGUFFile",
    "GGUFTensor",
    "gguf_label",
    "read_gguf",
    "resolve_gguf",
]

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""

UNQUANTIZED = frozenset({"F32", "F16"})
"""The types diffusers loads as ordinary tensors (cast to the model's dtype); every other type
(BF16 included) stays in its blocks and is dequantized layer by layer as it runs."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, as its header describes it."""

    name: str
    shape: tuple[int, ...]
    """In torch's order (the header's is reversed)."""
    type: str
    """``Q8_0``, ``Q4_K``, ``F16``..."""
    elements: int
    bytes: int

    @property
    def quantized(self) -> bool:
        """Kept in its blocks when loaded (diffusers' ``GGUFParameter``)."""
        return self.type not in UNQUANTIZED


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's header: its architecture and tensors."""

    path: Path
    architecture: str | None
    """``general.architecture`` (``flux``, ``qwen_image``, ``sdxl``, ``llama``...)."""
    tensors: tuple[GGUFTensor, ...]

    @property
    def tensor_bytes(self) -> int:
        """The bytes of all its tensors (the file, less its header)."""
        return sum(t.bytes for t in self.tensors)

    def loaded_bytes(self, width: int) -> int:
        """What the tensors occupy loaded by diffusers in a dtype of ``width`` bytes: quantized
        ones as stored, F32/F16 ones cast to the dtype."""
        return sum(t.bytes if t.quantized else t.elements * width for t in self.tensors)


def gguf_label(tensors: tuple[GGUFTensor, ...] | list[GGUFTensor]) -> str:
    """The file's weight types as the memory report words them: the quantized types by how
    many weights they hold (``Q4_K/Q6_K``), else its float type."""
    counts: Counter[str] = Counter()
    for tensor in tensors:
        if tensor.quantized:
            counts[tensor.type] += tensor.elements
    if not counts:
        counts.update({t.type: t.elements for t in tensors})
    return "/".join(name for name, _ in counts.most_common(2)) or "empty"


def _hub_parts(file: str) -> tuple[str, str]:
    owner, repo, name = file.strip("/").split("/", 2)
    return f"{owner}/{repo}", name


def resolve_gguf(
    file: str,
    *,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    download: bool = True,
) -> Path:
    """The local path of ``file``: a path (``~`` expanded), or a hub file
    ``owner/repo/name.gguf`` downloaded to the Hugging Face cache (with ``download=False``, or
    offline, only if it is there already).

    Raises:
        ModelNotFoundError: no such local file, or the Hub can't give it (how to get it).
    """
    if is_local(file, subfolder=True):
        path = Path(os.path.expanduser(file))
        if not path.is_file():
            raise ModelNotFoundError(
                f"No GGUF file at {file!r}: give the path of a .gguf file, or a file on the "
                "Hugging Face Hub as 'owner/repo/name.gguf'."
            )
        return path
    repo, name = _hub_parts(file)
    how = (
        f"Download it once (`hf download {repo} {name}`) and point HF_HOME at that cache, or "
        "give the local path of the .gguf file."
    )
    if not download:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if not isinstance(cached, str):
            raise ModelNotFoundError(f"The GGUF file {file!r} is not in the local cache. {how}")
        return Path(cached)
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=local_files_only)
        )
    except Exception as exc:  # huggingface_hub's: no such repo or file, gated, offline...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"The GGUF file {name!r} of {repo!r} could not be fetched (wrong repo or file name, "
            f"a gated repo without a token, or no network / offline and not cached). {how} "
            f"Details: {first}"
        ) from exc


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """The header of the GGUF file at ``path`` (the tensors are mapped, not read).

    Raises:
        MissingDependencyError: the gguf package is not installed (the ``gguf`` extra).
        ModelLoadError: not a GGUF file, or a damaged one.
    """
    check_gguf()
    target = Path(path)
    try:
        with target.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelNotFoundError(f"Can't read the GGUF file {str(target)!r}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{str(target)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}): "
            "give a .gguf file (e.g. one of city96's or QuantStack's conversions); a "
            ".safetensors checkpoint is not one."
        )
    from gguf import GGUFReader

    try:
        reader = GGUFReader(target, "r")
        tensors = tuple(
            GGUFTensor(
                name=str(t.name),
                shape=tuple(int(d) for d in reversed(t.shape.tolist())),
                type=t.tensor_type.name,
                elements=int(t.n_elements),
                bytes=int(t.n_bytes),
            )
            for t in reader.tensors
        )
        field = reader.get_field("general.architecture")
        architecture = None
        if field is not None and field.data:
            architecture = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    except Exception as exc:  # gguf's: truncated or corrupt header, unknown types
        raise ModelLoadError(
            f"{str(target)!r} is a damaged GGUF file ({type(exc).__name__}: {exc}): download or "
            "convert it again."
        ) from exc
    if not tensors:
        raise ConfigError(f"{str(target)!r} holds no tensors: it is not a model's GGUF file.")
    return GGUFFile(path=target, architecture=architecture, tensors=tensors)
