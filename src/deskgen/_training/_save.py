"""What a run writes besides tensors: the LoRA's metadata, the JSON-lines loss log (and its
truncation on resume), and Python's random state in a form a checkpoint can hold."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._record import atomic_write_bytes
from ._config import LoraTrainingConfig, TrainingProgress

if TYPE_CHECKING:
    from ._trainer import _Trainer


def _metadata(
    config: LoraTrainingConfig, trainer: _Trainer, steps: int, before: float, after: float
) -> dict[str, str]:
    from .._record import public_model_name
    from .._version import __version__

    alpha = config.alpha if config.alpha is not None else config.rank
    args = config.model_dump(mode="json", exclude={"data", "out"})
    args["model"] = public_model_name(config.model)
    if config.vae is not None:
        args["vae"] = public_model_name(config.vae)
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": trainer.base_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": config.name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ss_base_model_version": "sdxl_base_v1-0" if trainer.family == "sdxl" else "sd_v1",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{alpha:g}",
        "deskgen.version": __version__,
        "deskgen.base_model": public_model_name(config.model),
        "deskgen.training": json.dumps(args, sort_keys=True),
        "deskgen.steps": str(steps),
        "deskgen.images": str(len(trainer.samples)),
        "deskgen.loss_before": f"{before:.6f}",
        "deskgen.loss_after": f"{after:.6f}",
    }
    if trainer.family == "sd" and trainer.base_architecture.startswith("stable-diffusion-v2"):
        metadata["ss_base_model_version"] = "sd_v2"
    if config.trigger_words:
        metadata["modelspec.trigger_phrase"] = ", ".join(config.trigger_words)
    return metadata


def _append_log(path: Path, report: TrainingProgress) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(report.model_dump_json() + "\n")


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    text = "".join(f"{line}\n" for line in kept).encode("utf-8")
    atomic_write_bytes(path, text)


def _plain_random_state(state: Any) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _as_random_state(state: Any) -> Any:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
