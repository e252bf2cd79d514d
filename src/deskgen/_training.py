"""LoRA fine-tuning of SDXL (and SD 1.x/2.x) on an imagefolder: the seed's step 3.

`train_lora` follows diffusers' own ``train_text_to_image_lora_sdxl.py`` for what is learned:
peft LoRA layers (gaussian A, zero B) on the UNet's attention projections and optionally the
CLIP encoders', frozen base weights, latents from the VAE times its scaling factor, uniform
timesteps, the scheduler's ``add_noise``, SDXL's text-time conditioning (original size, crop
top-left, target size; penultimate hidden states of both encoders, pooled output of the second),
the MSE to the noise (or to the velocity for v-prediction models), optional min-SNR weighting
and noise offset, AdamW, gradient clipping, diffusers' learning-rate schedules.

Around it, what a long run needs: aspect-ratio buckets, latents (one posterior sample per
image, seeded) and caption embeddings computed once and kept in RAM, gradient accumulation,
mixed precision on GPUs (bf16/fp16 autocast, fp32 LoRA weights, gradient scaling for fp16),
checkpoints that resume exactly (LoRA, optimizer, schedule, scaler, random state, position in
the data; refused when the data or the settings changed), a JSON-lines loss log, a fixed-noise
loss before and after, and a ``.safetensors`` LoRA that diffusers' ``load_lora_weights`` and
`DeskGenerator.load_lora` load, with metadata (base model, rank, trigger words, the training
arguments).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._checkpoints import FORMAT, Resumable, list_checkpoints, newest_good, save_checkpoint
from ._dataset import METADATA, SPLIT, _row, inside
from ._exceptions import ConfigError, DeskgenError, ModelLoadError
from ._lora import canonical_safetensors
from ._quiet import quiet_logs
from ._record import atomic_write_bytes

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["LoraTrainingConfig", "TrainingProgress", "TrainingResult", "train_lora"]


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


@dataclass
class _Sample:
    path: Path
    caption: str
    size: tuple[int, int]
    """(width, height) of the image file."""
    bucket: tuple[int, int] = (0, 0)


def _read_data(config: LoraTrainingConfig) -> list[_Sample]:
    from ._images import load_image

    root = Path(os.path.expanduser(config.data))
    for folder in (root, root / SPLIT):
        if (folder / METADATA).is_file():
            break
    else:
        raise ConfigError(
            f"No {METADATA} in {config.data!r} or its {SPLIT}/ folder: give an imagefolder with "
            'a line {"file_name": ..., "caption": ...} per image (deskgen dataset writes one).'
        )
    samples = []
    with (folder / METADATA).open("rb") as fh:  # bytes: a line may be cut inside a character
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = _row(line)
            if row is None:
                continue  # cut short by an interrupted dataset run (skipped as the dataset does)
            name, caption = row.get("file_name"), row.get(config.caption_column)
            if not isinstance(name, str) or not isinstance(caption, str):
                raise ConfigError(
                    f"{folder / METADATA}:{number} has no file_name or no "
                    f"{config.caption_column!r} text: every line needs both."
                )
            path = inside(folder, name)
            if path is None:
                raise ConfigError(
                    f"{folder / METADATA}:{number} names {name!r}, outside the dataset folder: "
                    "file_name must be a path inside it."
                )
            if not path.is_file():
                continue  # an image the dataset run did not finish
            image, _ = load_image(path)  # as training will see it: EXIF-rotated, RGB
            samples.append(_Sample(path=path, caption=caption, size=image.size))
    if not samples:
        raise ConfigError(f"{folder / METADATA} lists no existing image: nothing to train on.")
    return samples


def _buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution**2`` pixels, sides multiples of ``multiple``,
    aspect ratios from 1:4 to 4:1."""
    area = resolution * resolution
    found = set()
    width = multiple
    while width <= resolution * 4:
        height = max(multiple, int(area / width) // multiple * multiple)
        if 0.25 <= width / height <= 4.0:
            found.add((width, height))
        width += multiple
    return sorted(found)


def _nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def _prepare(
    image: Image.Image, bucket: tuple[int, int], *, center: bool, flip: bool, rng: random.Random
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Resize ``image`` to cover ``bucket``, flip it if asked, and crop it, as diffusers' script
    does: the crop, the image's original (height, width) and the crop's top-left (top, left)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    width, height = bucket
    original = (image.height, image.width)
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        PILImage.Resampling.BILINEAR,
    )
    if flip:
        resized = ImageOps.mirror(resized)
    spare_x, spare_y = resized.width - width, resized.height - height
    if center:
        left, top = spare_x // 2, spare_y // 2
    else:
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    return resized.crop((left, top, left + width, top + height)), original, (top, left)


class _Trainer:
    def __init__(self, config: LoraTrainingConfig) -> None:
        import torch

        from ._device import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        precision = config.mixed_precision
        if precision == "auto":
            if self.device.startswith("cuda"):
                major, _ = torch.cuda.get_device_capability(torch.device(self.device))
                precision = "bf16" if major >= 8 else "fp16"
            else:
                precision = "no"
        if precision != "no" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"mixed_precision={precision!r} needs a CUDA GPU (device is {self.device!r}): "
                "use mixed_precision='no' or 'auto'."
            )
        self.precision = precision
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            precision
        ]
        self.samples = _read_data(config)
        self._load_model()
        self.warnings: list[str] = []
        limit = int(self.tokenizers[0].model_max_length)
        long = sum(len(self.tokenizers[0](s.caption).input_ids) > limit for s in self.samples)
        if long:
            self.warnings.append(
                f"{long} of {len(self.samples)} captions are longer than the text encoders' "
                f"{limit} tokens and were cut there, as diffusers' training script does: "
                "shorten them (prompts rendered from a DeskSpec fit)."
            )
        self._latents: dict[tuple[int, bool], tuple[Any, Any]] = {}
        self._embeds: dict[str, tuple[Any, Any]] = {}

    # -- model ------------------------------------------------------------------------------

    def _load_model(self) -> None:
        import torch
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        from ._registry import get_backend_class
        from .backends._diffusers import DiffusersOptions

        config = self.config
        family = _family(config)
        backend_cls = get_backend_class(family)
        options = DiffusersOptions(
            model=config.model,
            device=self.device,
            dtype={"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision],
            variant=config.variant,
            revision=config.revision,
            local_files_only=config.local_files_only,
            vae=config.vae,
        )
        backend: Any = backend_cls(options)  # deskgen's checked loading path
        pipe = backend.pipeline
        self.family = family
        self.pipeline_class = type(pipe)
        self.base_architecture = _architecture(pipe, family)
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoders = [
            e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None
        ]
        self.tokenizers = [
            t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None
        ]
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        if config.prediction_type is not None:
            self.scheduler.register_to_config(prediction_type=config.prediction_type)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.native = int(self.unet.config.sample_size) * self.vae_scale_factor
        for module in (self.unet, self.vae, *self.text_encoders):
            module.requires_grad_(False)
        # SDXL's VAE overflows in float16: diffusers' script keeps it in float32
        if getattr(self.vae.config, "force_upcast", False) and self.precision != "no":
            with quiet_logs():  # "modules to keep in float32": all of it
                self.vae.to(dtype=torch.float32)
        # peft annotates lora_alpha as int; a float (kohya's alphas) scales the same
        alpha: Any = config.alpha if config.alpha is not None else config.rank
        self.unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=alpha,
                init_lora_weights="gaussian",
                target_modules=config.target_modules,
            )
        )
        if config.train_text_encoders:
            from peft import inject_adapter_in_model

            for encoder in self.text_encoders:
                # as diffusers' add_adapter does (transformers' own needs a newer peft)
                text_config = LoraConfig(
                    r=config.rank,
                    lora_alpha=alpha,
                    init_lora_weights="gaussian",
                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                )
                inject_adapter_in_model(text_config, encoder, "default")
                encoder.peft_config = {"default": text_config}
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoders:
                for encoder in self.text_encoders:
                    encoder.gradient_checkpointing_enable()
        self.trained = [self.unet, *(self.text_encoders if config.train_text_encoders else [])]
        for module in self.trained:  # LoRA weights train in float32 whatever the base's dtype
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()

    # -- data -------------------------------------------------------------------------------

    def assign_buckets(self) -> None:
        resolution = self.config.resolution or self.native
        multiple = self.vae_scale_factor * 8
        resolution = max(multiple, resolution // multiple * multiple)
        self.resolution = resolution
        if self.config.buckets:
            buckets = _buckets(resolution, multiple)
            for sample in self.samples:
                sample.bucket = _nearest_bucket(sample.size, buckets)
        else:
            for sample in self.samples:
                sample.bucket = (resolution, resolution)

    def data_digest(self) -> str:
        """What the data is, for resuming: every image's file, size and caption, in order."""
        import hashlib

        rows = [[s.path.name, list(s.size), s.caption] for s in self.samples]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch: same-bucket images, shuffled by ``(seed, epoch)``."""
        rng = random.Random(f"{self.config.seed}-{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, sample in enumerate(self.samples):
            by_bucket.setdefault(sample.bucket, []).append(index)
        batches = []
        for bucket in sorted(by_bucket):
            indices = by_bucket[bucket]
            rng.shuffle(indices)
            size = self.config.batch_size
            batches += [indices[i : i + size] for i in range(0, len(indices), size)]
        rng.shuffle(batches)
        return batches

    def _latent(self, index: int, flip: bool, rng: random.Random) -> tuple[Any, Any]:
        """The image's latents (a sample of the VAE's posterior, seeded per image) and its SDXL
        time ids; kept when the crop is fixed (centre crops)."""
        import numpy as np
        import torch

        from ._images import load_image

        cache = self.config.center_crop
        if cache and (index, flip) in self._latents:
            return self._latents[(index, flip)]
        sample = self.samples[index]
        image, _ = load_image(sample.path)
        crop, original, top_left = _prepare(
            image, sample.bucket, center=self.config.center_crop, flip=flip, rng=rng
        )
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0)
        pixels = pixels.permute(2, 0, 1)[None].to(self.device, dtype=self.vae.dtype)
        generator = torch.Generator().manual_seed(
            (self.config.seed * 1_000_003 + index * 2 + int(flip)) % 2**63
        )
        with torch.no_grad():
            posterior = self.vae.encode(pixels).latent_dist
            latents = posterior.sample(generator=generator)
        latents = (latents * self.vae.config.scaling_factor).float()[0]
        time_ids = torch.tensor(
            [*original, *top_left, sample.bucket[1], sample.bucket[0]], dtype=torch.float32
        )
        if cache:  # kept in RAM, not on the GPU: a big dataset's latents add up
            self._latents[(index, flip)] = (latents.cpu(), time_ids)
        return latents, time_ids

    def _encode(self, captions: list[str], *, train: bool) -> tuple[Any, Any]:
        """Prompt embeddings (and SDXL's pooled ones) as diffusers' training script makes them."""
        import torch

        cacheable = not train
        if cacheable and all(c in self._embeds for c in captions):
            pairs = [self._embeds[c] for c in captions]
        else:
            pairs = []
            for caption in captions:
                if cacheable and caption in self._embeds:
                    pairs.append(self._embeds[caption])
                    continue
                with torch.set_grad_enabled(train and torch.is_grad_enabled()):
                    pair = self._encode_one(caption)
                if cacheable:  # in RAM (an SDXL caption is 77 x 2048 floats)
                    pair = (pair[0].detach(), None if pair[1] is None else pair[1].detach())
                    self._embeds[caption] = (
                        pair[0].cpu(),
                        None if pair[1] is None else pair[1].cpu(),
                    )
                pairs.append(pair)
        embeds = torch.stack([p[0].to(self.device) for p in pairs])
        pooled = (
            torch.stack([p[1].to(self.device) for p in pairs]) if pairs[0][1] is not None else None
        )
        return embeds, pooled

    def _encode_one(self, caption: str) -> tuple[Any, Any]:
        import torch

        if self.family == "sd":
            ids = self._tokens(self.tokenizers[0], caption)
            return self.text_encoders[0](ids)[0][0].float(), None
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            output = encoder(self._tokens(tokenizer, caption), output_hidden_states=True)
            pooled = output[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
            hidden.append(output.hidden_states[-2])
        assert pooled is not None
        return torch.cat(hidden, dim=-1)[0].float(), pooled[0].float()

    def _tokens(self, tokenizer: Any, caption: str) -> Any:
        return tokenizer(
            caption,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    # -- one step ---------------------------------------------------------------------------

    def loss(self, batch: list[int], generator: torch.Generator, rng: random.Random) -> Any:
        import torch
        import torch.nn.functional as F
        from diffusers.training_utils import compute_snr

        config = self.config
        pairs = []
        for index in batch:
            flip = config.random_flip and rng.random() < 0.5
            pairs.append(self._latent(index, flip, rng))
        latents = torch.stack([p[0].to(self.device) for p in pairs])  # cached ones are in RAM
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if config.noise_offset:
            offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
            noise = noise + config.noise_offset * offset.to(self.device)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator)
        timesteps = timesteps.to(self.device).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        embeds, pooled = self._encode(
            [self.samples[i].caption for i in batch], train=config.train_text_encoders
        )
        kwargs: dict[str, Any] = {}
        if pooled is not None:
            time_ids = torch.stack([p[1] for p in pairs]).to(self.device)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        with torch.autocast(
            device_type=self.device.split(":")[0],
            dtype=self.weight_dtype,
            enabled=self.precision != "no",
        ):
            prediction = self.unet(
                noisy.to(self.weight_dtype),
                timesteps,
                embeds.to(self.weight_dtype),
                **{
                    k: {n: t.to(self.weight_dtype) for n, t in v.items()} for k, v in kwargs.items()
                },
            ).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if config.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        snr = compute_snr(self.scheduler, timesteps)
        weights = torch.stack([snr, config.snr_gamma * torch.ones_like(timesteps)], dim=1)
        weights = weights.min(dim=1)[0]
        if self.scheduler.config.prediction_type == "epsilon":
            weights = weights / snr
        else:
            weights = weights / (snr + 1)
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
        per_sample = per_sample.mean(dim=list(range(1, per_sample.ndim)))
        return (per_sample * weights).mean()

    def fixed_loss(self) -> float:
        """Loss with noise and timesteps fixed by the seed over up to 8 batches: comparable
        before and after training."""
        import torch

        generator = torch.Generator().manual_seed(self.config.seed + 1)
        rng = random.Random(self.config.seed + 1)
        batches = self.epoch_batches(-1)[:8]
        total = 0.0
        with torch.no_grad():
            for batch in batches:
                total += float(self.loss(batch, generator, rng))
        return total / len(batches)

    # -- saving -----------------------------------------------------------------------------

    def lora_state(self) -> dict[str, dict[str, Any]]:
        """peft state dicts of the trained modules, by pipeline component name."""
        from peft.utils import get_peft_model_state_dict

        names = ["unet", "text_encoder", "text_encoder_2"]
        return {
            name: {
                k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(m).items()
            }
            for name, m in zip(names, self.trained, strict=False)
        }

    def load_lora_state(self, state: dict[str, Any]) -> None:
        from peft.utils import set_peft_model_state_dict

        names = ["unet", "text_encoder", "text_encoder_2"]
        for name, module in zip(names, self.trained, strict=False):
            part = {
                k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")
            }
            result = set_peft_model_state_dict(module, part)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ModelLoadError(
                    f"The checkpoint's {name} LoRA does not fit this run ({unexpected[:2]}...)."
                )

    def save_lora(self, path: Path, metadata: dict[str, str]) -> None:
        """The LoRA in diffusers' format (``save_lora_weights``) plus deskgen's metadata."""
        import tempfile

        from diffusers.utils import convert_state_dict_to_diffusers
        from safetensors.torch import load_file, save

        state = self.lora_state()
        layers: dict[str, Any] = {}
        adapter_metadata: dict[str, Any] = {}
        for name, module in zip(state, self.trained, strict=False):
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state[name])
            adapter_metadata[f"{name}_lora_adapter_metadata"] = module.peft_config[
                "default"
            ].to_dict()
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            self.pipeline_class.save_lora_weights(
                tmp, **layers, **adapter_metadata, weight_name="lora.safetensors"
            )
            written = Path(tmp) / "lora.safetensors"
            tensors = load_file(str(written))
            from safetensors import safe_open

            with safe_open(str(written), framework="pt") as fh:
                merged = dict(fh.metadata() or {})
        merged.update(metadata)
        data = canonical_safetensors(save(tensors, metadata=merged))
        atomic_write_bytes(path, data)


def _device_of(config: LoraTrainingConfig) -> str:
    from ._device import resolve_device

    return resolve_device(config.device)


def _family(config: LoraTrainingConfig) -> Literal["sdxl", "sd"]:
    """Whether ``config.model`` is an SDXL or an SD 1.x/2.x pipeline, from its model index."""
    from ._hub import is_local
    from .backends._diffusers import missing_hub_message

    source = os.path.expanduser(_named_model(config.model))  # a copy skips the validator
    if is_local(config.model):
        index_path = Path(source) / "model_index.json"
        if not index_path.is_file():
            raise ModelLoadError(
                f"{config.model!r} is not a diffusers pipeline folder (no model_index.json)."
            )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{str(index_path)!r} is not valid JSON: {exc}") from exc
    else:
        from diffusers import DiffusionPipeline

        try:
            index = DiffusionPipeline.load_config(
                config.model, revision=config.revision, local_files_only=config.local_files_only
            )
        except (OSError, ValueError) as exc:
            from ._exceptions import ModelNotFoundError

            raise ModelNotFoundError(missing_hub_message(config.model, exc)) from exc
    from .backends.sd import SDBackend
    from .backends.sdxl import SDXLBackend

    name = str(index.get("_class_name", ""))
    if name in SDXLBackend.accepted_pipelines:
        return "sdxl"
    if name in SDBackend.accepted_pipelines:
        return "sd"
    raise ModelLoadError(
        f"{config.model!r} is a {name or 'non-diffusers'} model: train_lora trains LoRAs for SDXL "
        "and SD 1.x/2.x pipelines."
    )


def _architecture(pipe: Any, family: str) -> str:
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base/lora"
    if getattr(pipe.unet.config, "cross_attention_dim", 768) != 1024:
        return "stable-diffusion-v1/lora"
    if pipe.scheduler.config.get("prediction_type") == "v_prediction":
        return "stable-diffusion-v2-768-v/lora"
    return "stable-diffusion-v2-512/lora"


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


def train_lora(
    config: LoraTrainingConfig,
    *,
    progress: bool = True,
    on_step: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Train a LoRA on ``config.data`` and write ``OUT/NAME.safetensors`` (see the module).

    With ``config.resume`` and a checkpoint in ``OUT/checkpoints``, the run continues from the
    latest one that verifies exactly as if it had not stopped (a damaged newer one is skipped,
    with a warning in the result). ``on_step`` is called after every optimizer step; an
    exception it raises stops training (checkpoints already written stay).

    Raises:
        ConfigError: no usable data, a checkpoint from other settings, or mixed precision
            without a GPU.
        ModelLoadError: every checkpoint in ``OUT/checkpoints`` is damaged.
        ModelNotFoundError, ModelLoadError, ModelMismatchError: the base model (as for
            `DeskGenerator`).
        OutOfMemoryError: the GPU (or the CPU's allocator) ran out of memory while training;
            the message says what to lower.
        MissingDependencyError: the ``local`` extra is not installed.
    """
    from ._registry import get_backend_class

    get_backend_class("sdxl")  # raises MissingDependencyError without the local extra
    try:
        return _train(config, progress=progress, on_step=on_step)
    except DeskgenError:
        raise
    except Exception as exc:
        from ._device import resolve_device
        from .backends._request_memory import is_out_of_memory, out_of_memory_error

        if is_out_of_memory(exc):
            raise out_of_memory_error(
                exc,
                device=resolve_device(config.device),
                what="while training",
                hint="Lower batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), the resolution, or turn on gradient_checkpointing.",
            ) from exc
        raise


def _train(
    config: LoraTrainingConfig,
    *,
    progress: bool,
    on_step: Callable[[TrainingProgress], None] | None,
) -> TrainingResult:
    import torch
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out = Path(os.path.expanduser(config.out))
    out.mkdir(parents=True, exist_ok=True)
    # verified before the model loads: all of them damaged is an error at once
    resume: Resumable | None = newest_good(out) if config.resume else None
    devices = [torch.device(d).index or 0 for d in [_device_of(config)] if d.startswith("cuda")]
    with torch.random.fork_rng(devices=devices):  # the caller's random state stays as it was
        torch.manual_seed(config.seed)  # the LoRA's gaussian initialisation
        trainer = _Trainer(config)
    trainer.assign_buckets()

    batches_per_epoch = len(trainer.epoch_batches(0))
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    groups: list[dict[str, Any]] = [
        {"params": [p for p in trainer.unet.parameters() if p.requires_grad]}
    ]
    if config.train_text_encoders:
        groups.append(
            {
                "params": [
                    p for e in trainer.text_encoders for p in e.parameters() if p.requires_grad
                ],
                "lr": config.text_encoder_learning_rate or config.learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, weight_decay=config.adam_weight_decay
    )
    schedule = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.precision == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    digest = _config_digest(config)
    data_digest = trainer.data_digest()

    step, epoch, next_batch, resumed_from = 0, 0, 0, None
    loss_before: float | None = None
    if resume is not None:
        latest, state = resume.folder, resume.state
        for folder, why in resume.damaged:
            trainer.warnings.append(
                f"The checkpoint {str(folder)!r} is damaged ({why}): resumed from "
                f"{latest.name} instead; the damaged one is deleted when this run writes its "
                "first checkpoint."
            )
        if state.get("format") != FORMAT or state.get("config") != digest:
            raise ConfigError(
                f"The checkpoint {str(latest)!r} was made with other settings (model, rank, "
                "learning rate...): train into another out folder, or pass resume=False to "
                "start over (its checkpoints are then replaced)."
            )
        if state.get("data") != data_digest:
            raise ConfigError(
                f"The data changed since the checkpoint {str(latest)!r} (images or captions "
                "added, removed or edited), so its place in the data means nothing now: train "
                "into another out folder, or pass resume=False to start over."
            )
        shaped = config.lr_scheduler not in ("constant", "constant_with_warmup")
        if shaped and state.get("total_steps") != total_steps:
            raise ConfigError(
                f"The checkpoint was made for {state.get('total_steps')} steps and this run asks "
                f"for {total_steps}: a {config.lr_scheduler!r} schedule depends on the length. "
                "Keep max_steps/epochs as they were, or use a constant schedule."
            )
        trainer.load_lora_state(resume.adapter)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        rng.setstate(_as_random_state(state["rng"]))
        step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
        resumed_from, loss_before = step, float(state["loss_before"])  # the first run's
    # a fresh start replaces the old checkpoints, and a resumed one the damaged ones it skipped,
    # but only once it has one of its own
    stale = [f for f, _ in resume.damaged] if resume is not None else list_checkpoints(out)
    resume = None  # its tensors are in the modules now
    log_path = out / "loss.jsonl"
    if resumed_from is None:
        log_path.unlink(missing_ok=True)
    else:  # drop what the interrupted run logged after its last checkpoint
        _truncate_log(log_path, step)

    if loss_before is None:
        loss_before = trainer.fixed_loss()
    for module in trainer.trained:
        module.train()
    saved: list[Path] = []
    accum = config.gradient_accumulation_steps

    def checkpoint() -> None:
        folder = out / "checkpoints" / f"step-{step:06d}"
        flat = {f"{c}.{k}": v for c, part in trainer.lora_state().items() for k, v in part.items()}
        save_checkpoint(
            folder,
            flat,
            {
                "format": FORMAT,
                "config": digest,
                "step": step,
                "epoch": epoch,
                "next_batch": next_batch,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(),
                "rng": _plain_random_state(rng.getstate()),
                "loss_before": loss_before,
                "data": data_digest,
                "total_steps": total_steps,
            },
        )
        for old in stale:
            if old != folder:  # the same step written again has replaced it
                shutil.rmtree(old, ignore_errors=True)
        stale.clear()
        saved.append(folder)
        if config.keep_checkpoints is not None:
            for old in list_checkpoints(out)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", desc="training")
    window: list[float] = []
    try:
        while step < total_steps:
            batches = trainer.epoch_batches(epoch)
            while next_batch < len(batches) and step < total_steps:
                batch = batches[next_batch]
                next_batch += 1
                loss = trainer.loss(batch, generator, rng)
                scaler.scale(loss / accum).backward()
                window.append(float(loss.detach()))
                last_of_epoch = next_batch >= len(batches)
                if len(window) < accum and not last_of_epoch:
                    continue
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    params = [p for g in groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                mean = sum(window) / len(window)
                window = []
                report = TrainingProgress(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    loss=mean,
                    learning_rate=float(schedule.get_last_lr()[0]),
                    elapsed=time.perf_counter() - started,
                )
                _append_log(log_path, report)
                bar.update(1)
                bar.set_postfix(loss=f"{mean:.4f}")
                if last_of_epoch:  # the checkpoint then resumes at the next epoch's start
                    epoch, next_batch = epoch + 1, 0
                every = config.checkpoint_every
                if (every and step % every == 0) or step == total_steps:
                    checkpoint()
                if on_step is not None:
                    on_step(report)
                if last_of_epoch:
                    break
    finally:
        bar.close()
    for module in trainer.trained:
        module.eval()
    loss_after = trainer.fixed_loss()
    lora_path = out / f"{config.name}.safetensors"
    trainer.save_lora(lora_path, _metadata(config, trainer, step, loss_before, loss_after))
    return TrainingResult(
        lora=lora_path,
        steps=step,
        epochs=epoch,
        images=len(trainer.samples),
        resumed_from=resumed_from,
        loss_before=loss_before,
        loss_after=loss_after,
        loss_log=log_path,
        checkpoints=list_checkpoints(out),
        seconds=time.perf_counter() - started,
        warnings=trainer.warnings,
    )


def _metadata(
    config: LoraTrainingConfig, trainer: _Trainer, steps: int, before: float, after: float
) -> dict[str, str]:
    from ._record import public_model_name
    from ._version import __version__

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
