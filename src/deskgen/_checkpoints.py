"""Training checkpoints: written durably, verified before a resume trusts them.

```text
OUT/checkpoints/step-NNNNNN/
  adapter.safetensors   the LoRA weights ("unet.<peft key>", "text_encoder.<peft key>", ...)
  state.pt              optimizer, schedule, scaler, random states, place in the data
  checksums.json        SHA-256 of both, written last
```

Each file is written through `atomic_write` (fsynced) into a temporary folder, which is fsynced,
renamed to ``step-NNNNNN`` and its parent fsynced: after a crash or a power loss a checkpoint
folder is whole or absent. A checkpoint is only trusted once it loads completely and matches its
checksums; `newest_good` skips damaged ones (a disk that lied about a flush, a copy cut short).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._exceptions import ModelLoadError
from ._record import _fsync_dir, atomic_write_bytes

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "DamagedCheckpointError",
    "Resumable",
    "list_checkpoints",
    "load_checkpoint",
    "newest_good",
    "save_checkpoint",
]

FORMAT = 1
"""Version of the checkpoint layout."""
ADAPTER = "adapter.safetensors"
STATE = "state.pt"
CHECKSUMS = "checksums.json"
_STATE_KEYS = (
    "format",
    "config",
    "step",
    "epoch",
    "next_batch",
    "optimizer",
    "schedule",
    "scaler",
    "generator",
    "rng",
    "loss_before",
    "data",
    "total_steps",
)


class DamagedCheckpointError(Exception):
    """A checkpoint folder whose files are missing, cut short or changed (the message: why)."""


@dataclass
class Resumable:
    """The newest checkpoint that verified, loaded, and the newer ones that did not."""

    folder: Path
    adapter: dict[str, torch.Tensor]
    state: dict[str, Any]
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    """(folder, why) of each newer checkpoint that was skipped, newest first."""


def list_checkpoints(out: Path) -> list[Path]:
    """The ``step-NNNNNN`` folders in ``OUT/checkpoints``, oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def save_checkpoint(folder: Path, adapter: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write a checkpoint to ``folder`` (replacing one there) durably: see the module."""
    import torch
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {ADAPTER: save(adapter), STATE: buffer.getvalue()}
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files[CHECKSUMS] = json.dumps(sums, indent=2).encode("utf-8")
    parent = folder.parent
    if not parent.is_dir():
        parent.mkdir(parents=True)
        _fsync_dir(parent.parent)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():  # the checksums last: they vouch for the others
        atomic_write_bytes(tmp / name, data)  # fsyncs the file, then the folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _fsync_dir(parent)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter tensors and the state of a checkpoint, read completely and checked.

    Raises:
        DamagedCheckpointError: a file is missing, does not match ``checksums.json``, or does
            not load (checkpoints written before ``checksums.json`` existed are only loaded).
    """
    import torch
    from safetensors.torch import load

    sums: dict[str, Any] = {}
    if (folder / CHECKSUMS).is_file():
        try:
            sums = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedCheckpointError(f"{CHECKSUMS} is unreadable ({_short(exc)})") from exc
        if not isinstance(sums, dict):
            raise DamagedCheckpointError(f"{CHECKSUMS} holds no checksums")
    data: dict[str, bytes] = {}
    for name in (ADAPTER, STATE):
        try:
            data[name] = (folder / name).read_bytes()
        except OSError as exc:
            raise DamagedCheckpointError(
                f"{name} is missing or unreadable ({_short(exc)})"
            ) from exc
        if name in sums and hashlib.sha256(data[name]).hexdigest() != sums[name]:
            raise DamagedCheckpointError(
                f"{name} does not match its checksum ({len(data[name])} bytes): cut short or "
                "changed since it was written"
            )
    try:
        adapter = load(data[ADAPTER])
    except Exception as exc:  # safetensors' SafetensorError, or anything a bad file raises
        raise DamagedCheckpointError(f"{ADAPTER} does not load ({_short(exc)})") from exc
    try:
        state = torch.load(io.BytesIO(data[STATE]), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's RuntimeError for a cut zip, UnpicklingError...
        raise DamagedCheckpointError(f"{STATE} does not load ({_short(exc)})") from exc
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f"{STATE} holds no checkpoint state")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise DamagedCheckpointError(f"{STATE} lacks {', '.join(missing)}")
    return adapter, state


def newest_good(out: Path) -> Resumable | None:
    """The newest checkpoint in ``OUT/checkpoints`` that verifies; ``None`` when there is none.

    Raises:
        ModelLoadError: there are checkpoints, but every one of them is damaged.
    """
    damaged: list[tuple[Path, str]] = []
    for folder in reversed(list_checkpoints(out)):
        try:
            adapter, state = load_checkpoint(folder)
        except DamagedCheckpointError as exc:
            damaged.append((folder, str(exc)))
            continue
        return Resumable(folder=folder, adapter=adapter, state=state, damaged=damaged)
    if not damaged:
        return None
    reasons = "; ".join(f"{folder.name}: {why}" for folder, why in damaged)
    raise ModelLoadError(
        f"Every checkpoint in {str(out / 'checkpoints')!r} is damaged, so there is nothing to "
        f"resume from ({reasons}). Delete the folder {str(out / 'checkpoints')!r} or pass "
        "resume=False to start over (the damaged checkpoints are then replaced)."
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
