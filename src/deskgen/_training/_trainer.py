"""`_Trainer`: the base model loaded with LoRA layers, the cached latents and caption
embeddings, the loss of a batch, and the LoRA's state (for checkpoints and the saved file);
plus which family and architecture a model is."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import ConfigError, ModelLoadError
from .._lora import canonical_safetensors
from .._quiet import quiet_logs
from .._record import atomic_write_bytes
from ._config import LoraTrainingConfig, _named_model
from ._data import _buckets, _nearest_bucket, _prepare, _read_data

if TYPE_CHECKING:
    import torch


class _Trainer:
    def __init__(self, config: LoraTrainingConfig) -> None:
        import torch

        from .._device import resolve_device

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

        from .._registry import get_backend_class
        from ..backends.diffusers import DiffusersOptions

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

        from .._images import load_image

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
    from .._device import resolve_device

    return resolve_device(config.device)


def _family(config: LoraTrainingConfig) -> Literal["sdxl", "sd"]:
    """Whether ``config.model`` is an SDXL or an SD 1.x/2.x pipeline, from its model index."""
    from .._hub import is_local
    from .._loading import read_model_index

    model = _named_model(config.model)  # a copy skips the validator
    index = read_model_index(
        model,
        local=is_local(config.model),
        revision=config.revision,
        local_files_only=config.local_files_only,
    )
    from ..backends.diffusers.sd import SDBackend
    from ..backends.diffusers.sdxl import SDXLBackend

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
