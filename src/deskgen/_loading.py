"""Loading weights, shared by every backend that loads them (diffusers pipelines, Janus,
ControlNets, depth models, LoRA training): where the weights come from, what a model index
names, and what the libraries raise, mapped to deskgen's errors in one place (as httpx's
``map_exceptions``).

```python
local, source = weights_source(name, what="ControlNet", hint="pass a folder saved with ...")
with map_load_errors(name, local=local, offline=options.local_files_only):
    model = ControlNetModel.from_pretrained(source, use_safetensors=use_safetensors(False))
```

Nothing here imports torch, diffusers or transformers before it is called.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._exceptions import DeskgenError, ModelLoadError, ModelNotFoundError
from ._hub import is_local
from ._hub import offline as _offline

__all__ = [
    "MISSING_SAFETENSORS",
    "component_class",
    "is_module_entry",
    "load_error",
    "map_load_errors",
    "missing_hub_message",
    "read_model_index",
    "use_safetensors",
    "weights_source",
]

MISSING_SAFETENSORS = re.compile(
    r"Could not find the necessary `safetensors` weights|no file named \S+\.safetensors"
)
"""diffusers' and transformers' words for "no safetensors file" (not for a corrupt one)."""

_NOT_ON_HUB = ("cache", "connect", "gated", "401", "403", "not a valid model identifier")


def use_safetensors(allow_pickle: bool) -> bool | None:
    """``from_pretrained``'s ``use_safetensors``: safetensors only unless the caller opts in."""
    return None if allow_pickle else True


def component_class(entry: Any, *, name: str) -> Any:
    """The class a model index entry ``[library, class]`` names, from diffusers or transformers
    only (a folder's JSON must not make deskgen import any module it likes).

    Raises:
        ModelLoadError: another library, or no such class in it.
    """
    library, class_name = [*entry, None, None][:2] if isinstance(entry, list) else (None, None)
    if library not in ("diffusers", "transformers") or not isinstance(class_name, str):
        raise ModelLoadError(
            f"The model index names {entry!r} for {name!r}: deskgen loads components of the "
            "diffusers and transformers libraries only."
        )
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(
            f"{library} has no class {class_name!r} (component {name!r}): update {library}, or "
            "the folder was saved by a newer version."
        )
    return cls


def is_module_entry(entry: Any) -> bool:
    """Whether a model index entry ``[library, class]`` is a torch module (has weights)."""
    import torch

    try:
        cls = component_class(entry, name="?")
    except ModelLoadError:
        return False
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def weights_source(name: str, *, what: str, hint: str) -> tuple[bool, str]:
    """``(local, source)`` for a hub id or a folder of one model (``source`` is what
    ``from_pretrained`` takes: the expanded folder, or the id). A folder must hold a
    ``config.json``; ``what`` and ``hint`` word the error otherwise.

    Raises:
        ModelNotFoundError: "No {what} folder with a config.json at ...: {hint}"
    """
    local = is_local(name)
    source = os.path.expanduser(name) if local else name
    if local and not os.path.isfile(os.path.join(source, "config.json")):
        raise ModelNotFoundError(f"No {what} folder with a config.json at {name!r}: {hint}")
    return local, source


def missing_hub_message(model: str, exc: BaseException, *, offline: bool = False) -> str:
    """How to get ``model`` when the Hub can't give it: the download command, the licence page
    for gated repos, and the first line of what went wrong."""
    why = (
        "is not in the local Hugging Face cache and downloads are off "
        "(HF_HUB_OFFLINE=1 or local_files_only=True)"
        if offline or _offline()
        else "could not be fetched from the Hugging Face Hub (wrong id, gated or private "
        "repo without a token, or no network)"
    )
    return (
        f"Model {model!r} {why}. Download it once on a machine with network "
        f"(`hf download {model}`; a gated repo needs its licence accepted at "
        f"https://huggingface.co/{model} and `hf auth login` first) and point HF_HOME "
        "at that cache, or pass the path of a local folder saved with save_pretrained(). "
        f"Details: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    )


def load_error(
    model: str,
    exc: BaseException,
    *,
    local: bool,
    what: str = "",
    variant: str | None = None,
    offline: bool = False,
    remote_missing: bool = False,
) -> DeskgenError:
    """The deskgen error for what a ``from_pretrained``/``load_config`` of ``model`` raised:
    no safetensors file (the ``allow_pickle`` hint), not on the Hub or not cached (how to get
    it), else a load failure. ``what`` names the part ("the ControlNet"); ``remote_missing``:
    every error of a hub id means it can't be fetched (config reads)."""
    name = f"{what} {model!r}" if what else repr(model)
    text = str(exc)
    first = text.splitlines()[0] if text else repr(exc)
    if not isinstance(exc, (OSError, ValueError)):  # torch / safetensors: corrupt, truncated
        return ModelLoadError(
            f"Could not load {name} ({type(exc).__name__}: {exc}). If the files are "
            "incomplete, delete them and download again."
        )
    if MISSING_SAFETENSORS.search(text):
        which = f" for variant {variant!r}" if variant else ""
        return ModelLoadError(
            f"{name[0].upper()}{name[1:]} has no safetensors weights{which}. "
            "deskgen loads safetensors only by default because pickle files can run code; "
            "pass allow_pickle=True if you trust this checkpoint, or convert it to "
            f"safetensors. Details: {first}"
        )
    if not local and (remote_missing or any(word in text.lower() for word in _NOT_ON_HUB)):
        return ModelNotFoundError(missing_hub_message(model, exc, offline=offline))
    return ModelLoadError(
        f"Could not load {name}: {first}. If a weight file is corrupt or incomplete, delete it "
        "and download it again."
    )


@contextlib.contextmanager
def map_load_errors(
    model: str,
    *,
    local: bool,
    what: str = "",
    variant: str | None = None,
    offline: bool = False,
    remote_missing: bool = False,
) -> Iterator[None]:
    """Raise `load_error`'s deskgen error for whatever loading ``model`` raises inside
    (deskgen's own errors pass through)."""
    try:
        yield
    except DeskgenError:
        raise
    except Exception as exc:
        raise load_error(
            model,
            exc,
            local=local,
            what=what,
            variant=variant,
            offline=offline,
            remote_missing=remote_missing,
        ) from exc


def read_model_index(
    model: str,
    *,
    local: bool,
    example: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """A diffusers pipeline's ``model_index.json``, from a folder or the Hub (``example``: a
    hub id for the "no such folder" message).

    Raises:
        ModelNotFoundError: no such folder, or the Hub can't give it.
        ModelLoadError: a folder without a (valid) ``model_index.json``.
    """
    if local:
        folder = Path(os.path.expanduser(model))
        if not folder.exists():
            raise ModelNotFoundError(
                f"No model folder at {model!r}. Pass an existing folder saved with "
                f"save_pretrained(), or a Hugging Face hub id such as {example!r}."
            )
        index = folder / "model_index.json"
        if not index.is_file():
            hint = (
                " Single-file checkpoints (.safetensors/.ckpt) are not supported: convert "
                "them to the diffusers layout first (diffusers' from_single_file + "
                "save_pretrained)."
                if folder.is_file()
                else ""
            )
            raise ModelLoadError(
                f"{model!r} is not a diffusers pipeline folder (no model_index.json).{hint}"
            )
        try:
            data: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"{str(index)!r} is not valid JSON ({exc}): the folder is damaged; save or "
                "download the model again."
            ) from exc
        return data
    from diffusers import DiffusionPipeline

    with map_load_errors(model, local=False, offline=local_files_only, remote_missing=True):
        config = DiffusionPipeline.load_config(
            model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    return dict(config)
