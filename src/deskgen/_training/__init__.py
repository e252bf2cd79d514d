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

The code lives in submodules by job: ``_config`` (the settings and the result), ``_data`` (the
imagefolder, buckets, crops), ``_trainer`` (the model, the loss, the LoRA's state), ``_run``
(`train_lora` and its loop), ``_save`` (the LoRA's metadata, the loss log).
"""

from __future__ import annotations

from ._config import LoraTrainingConfig as LoraTrainingConfig
from ._config import TrainingProgress as TrainingProgress
from ._config import TrainingResult as TrainingResult
from ._config import _config_digest as _config_digest
from ._config import _named_model as _named_model
from ._data import _buckets as _buckets
from ._data import _nearest_bucket as _nearest_bucket
from ._data import _prepare as _prepare
from ._data import _read_data as _read_data
from ._data import _Sample as _Sample
from ._run import _train as _train
from ._run import train_lora as train_lora
from ._save import _append_log as _append_log
from ._save import _as_random_state as _as_random_state
from ._save import _metadata as _metadata
from ._save import _plain_random_state as _plain_random_state
from ._save import _truncate_log as _truncate_log
from ._trainer import _architecture as _architecture
from ._trainer import _device_of as _device_of
from ._trainer import _family as _family
from ._trainer import _Trainer as _Trainer

__all__ = ["LoraTrainingConfig", "TrainingProgress", "TrainingResult", "train_lora"]
