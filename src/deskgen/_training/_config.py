"""The settings of a LoRA training run and what it reports: `LoraTrainingConfig` (with its
validation), `TrainingProgress`, `TrainingResult`, and the digest a resumed run must match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._exceptions import ConfigError


class LoraTrainingConfig(BaseModel):
    """Everything that decides a LoRA training run (recorded in the LoRA's metadata)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """The base pipeline (SDXL or SD 1.x/2.x): hub id or local folder (not empty: that would be
    the current folder)."""
    data: str
    """An imagefolder: ``metadata.jsonl`` (``file_name`` and a caption per line) at its top or in
    its ``train/`` folder, as `generate_dataset` writes."""
    out: str
    """Output folder: the LoRA, ``loss.jsonl``, ``checkpoints/``."""
    name: str = Field(default="deskgen_lora", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """File stem of the LoRA (``OUT/NAME.safetensors``) and its adapter name when loaded."""
    rank: int = Field(default=16, ge=1, le=1024)
    alpha: float | None = Field(default=None, gt=0)
    """LoRA alpha (scale ``alpha / rank``); ``None``: the rank, as diffusers' script."""
    target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    """UNet modules to adapt (peft's ``target_modules``)."""
    train_text_encoders: bool = False
    """Also adapt the CLIP encoders' ``q/k/v/out_proj``."""
    learning_rate: float = Field(default=1e-4, gt=0)
    text_encoder_learning_rate: float | None = Field(default=None, gt=0)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"
    ] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps in all; ``None``: ``epochs`` passes over the data."""
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    resolution: int | None = Field(default=None, ge=64)
    """Side of the square training area in pixels; ``None``: the model's native size."""
    buckets: bool = True
    """Aspect-ratio buckets of about ``resolution**2`` pixels; ``False``: square crops."""
    center_crop: bool = True
    """Crop the middle of each image to its bucket; ``False``: a random crop."""
    random_flip: bool = False
    seed: int = Field(default=0, ge=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """``auto``: bf16 on GPUs that have it, fp16 on other GPUs, none on the CPU."""
    device: str = "auto"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    snr_gamma: float | None = Field(default=None, gt=0)
    """Min-SNR loss weighting (5.0 is the paper's choice); ``None``: plain MSE."""
    noise_offset: float = Field(default=0.0, ge=0)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    """``None``: the model's scheduler's."""
    adam_weight_decay: float = Field(default=1e-2, ge=0)
    caption_column: str = "caption"
    trigger_words: list[str] = Field(default_factory=list)
    """Recorded in the LoRA's metadata (`DeskGenerator.load_lora` adds them to prompts); put them
    in the captions too (`DatasetPlan.caption_prefix`)."""
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = Field(default=500, ge=1)
    """Save a checkpoint every this many steps (and at the end); ``None``: only at the end."""
    keep_checkpoints: int | None = Field(default=3, ge=1)
    """Older checkpoints are deleted; ``None`` keeps them all."""
    resume: bool = True
    """Continue from the latest checkpoint in ``out`` that verifies, when there is one."""
    variant: str | None = None
    revision: str | None = None
    local_files_only: bool = False
    vae: str | None = None
    """A VAE to use instead of the model's, e.g. ``madebyollin/sdxl-vae-fp16-fix``."""

    @field_validator("model")
    @classmethod
    def _named(cls, model: str) -> str:
        return _named_model(model)

    @model_validator(mode="after")
    def _check(self) -> LoraTrainingConfig:
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the UNet modules to adapt")
        return self


def _named_model(model: str) -> str:
    """``model``, or a `ConfigError` (a ``ValueError``: pydantic's error in the config) when
    it is blank: ``""`` would read ``./model_index.json``, the current folder."""
    if not model.strip():
        raise ConfigError("The model name is empty: give a hub id or a pipeline folder.")
    return model


class TrainingProgress(BaseModel):
    """Handed to ``on_step`` after every optimizer step."""

    model_config = ConfigDict(frozen=True)

    step: int
    total_steps: int
    epoch: int
    loss: float
    """Mean loss over the step's micro-batches."""
    learning_rate: float
    elapsed: float


class TrainingResult(BaseModel):
    lora: Path
    """The trained LoRA (``OUT/NAME.safetensors``)."""
    steps: int
    epochs: int
    images: int
    resumed_from: int | None
    """The checkpoint step the run continued from."""
    loss_before: float
    """Loss with fixed noise and timesteps on (up to 8 batches of) the data, before training."""
    loss_after: float
    """The same measure after training: lower when the LoRA learned the data."""
    loss_log: Path
    checkpoints: list[Path]
    seconds: float
    warnings: list[str] = Field(default_factory=list)


def _config_digest(config: LoraTrainingConfig) -> str:
    """What a resumed run must share with the checkpoint's (not where or how long it runs)."""
    import hashlib

    keep = config.model_dump(
        exclude={
            "out",
            "resume",
            "max_steps",
            "epochs",
            "checkpoint_every",
            "keep_checkpoints",
            "device",
            "local_files_only",
            "name",
            "trigger_words",
        }
    )
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
