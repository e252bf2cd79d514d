"""``janus``: DeepSeek's Janus-Pro through transformers (``JanusForConditionalGeneration``).

One model that both reads and draws:

- ``describe(photo)``: the seed team's "explain details" of the desk photo, answered in the
  model's words (`DeskDescription.text`) and as structured fields (asked for as JSON; where the
  answer is not valid JSON, each field is asked for on its own), so ``to_spec()`` can write the
  makeover prompt for any backend.
- ``generate(prompt=...)``: text to image with Janus' own classifier-free guidance over image
  tokens (guidance 5.0 by default, as DeepSeek's reference code) at its fixed size (384x384
  for Janus-Pro). Janus does not edit photos: describe the photo, then generate from the
  description's prompt.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from .._device import dtype_name, free_accelerator_memory, resolve_device, resolve_dtype
from .._exceptions import (
    BackendError,
    DeskgenError,
    GeneratorClosedError,
    InvalidRequestError,
    ModelLoadError,
    ModelMismatchError,
    UnsupportedOperationError,
)
from .._loading import load_error, weights_source
from .._registry import register_backend
from ..prompts import EncoderFamily, LongPromptMode, TextEncoderSpec
from ..prompts._description import DeskDescription
from ..prompts._tokenizers import TOKENIZER_LOCK
from ..prompts._vlm import describe_with
from ..quant import QuantBackend, WeightBits
from ._base import Backend, BackendOptions, BackendOutput, Job
from ._profile import BackendProfile
from ._request_memory import is_out_of_memory, out_of_memory_error

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["JanusBackend", "JanusOptions"]

_SAMPLING_LOCK = threading.Lock()
"""Janus samples image tokens from torch's process-wide generator: requests of every Janus
generator in the process run one at a time, each seeded, so every image replays."""


class JanusOptions(BackendOptions):
    """Loading options of ``janus``."""

    revision: str | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    allow_pickle: bool = False
    """Also accept pickle weights; only for checkpoints you trust."""
    max_new_tokens: int = Field(default=512, ge=16, le=4096)
    """Longest answer of ``describe``, in tokens."""
    temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    """Sampling temperature of image tokens (DeepSeek's reference: 1.0)."""
    quantize_language_model: WeightBits | None = None
    """Quantize the language model's weights at load (Janus-Pro-7B: about 14 GB in bfloat16,
    7 GB int8, 4 GB int4)."""
    quantization_backend: QuantBackend = "auto"


@register_backend("janus")
class JanusBackend(Backend):
    """Janus-Pro 1B/7B (transformers): ``describe`` a desk photo, and text to image."""

    description: ClassVar[str] = "Janus-Pro (transformers): describe a desk photo; text to image"
    extra: ClassVar[str] = "local"
    requirements: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    default_model: ClassVar[str | None] = "deepseek-community/Janus-Pro-7B"
    profile: ClassVar[BackendProfile] = BackendProfile(modes=("txt2img",), describes=True)
    options_class: ClassVar[type[BackendOptions]] = JanusOptions
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(
            name="language_model",
            family=EncoderFamily.LLAMA,
            max_tokens=4096,
            # Janus-Pro's own (DeepSeek's vocabulary, not Llama 3's), for counting without it
            tokenizers=("deepseek-community/Janus-Pro-7B", "deepseek-community/Janus-Pro-1B"),
        ),
    )
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.FIT
    default_guidance: ClassVar[float] = 5.0

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, JanusOptions)
        self.opts: JanusOptions = options
        self._device = resolve_device(options.device)
        self._torch_dtype = resolve_dtype(options.dtype, self._device)
        self._lock = _SAMPLING_LOCK
        self.quantized: dict[str, str] = {}
        self.model, self.processor = self._load()
        config = self.model.config
        self.num_image_tokens: int = int(config.vision_config.num_image_tokens)
        vq = config.vq_config
        self.image_size: int = int(vq.num_patches) * 2 ** (len(vq.channel_multiplier) - 1)
        limit = int(config.text_config.max_position_embeddings) - self.num_image_tokens - 16
        self._prompt_limit = max(limit, 16)

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoProcessor, JanusForConditionalGeneration, PretrainedConfig

        name = self.opts.model
        local, source = weights_source(
            name,
            what="Janus",
            hint="pass a folder saved with save_pretrained() (model and processor) or a hub id "
            "such as deepseek-community/Janus-Pro-7B.",
        )
        common: dict[str, Any] = {
            "revision": self.opts.revision,
            "cache_dir": self.opts.cache_dir,
            "local_files_only": self.opts.local_files_only,
        }
        try:  # the raw config first: DeepSeek's own repos have a type transformers doesn't know
            raw, _ = PretrainedConfig.get_config_dict(source, **common)
        except (OSError, ValueError) as exc:
            raise self._load_error(name, local, exc) from exc
        if raw.get("model_type") != "janus":
            raise ModelMismatchError(
                f"{name!r} is a {raw.get('model_type', 'unknown')!r} model, not Janus: "
                "use the transformers version of Janus-Pro, e.g. deepseek-community/Janus-Pro-7B "
                "(the original deepseek-ai repos need their own code)."
            )
        if self.opts.quantize_language_model:  # before loading gigabytes
            from ..quant._weights import check_supported

            check_supported(self.opts.quantize_language_model, self.opts.quantization_backend)
        try:
            processor = AutoProcessor.from_pretrained(source, **common)
            model = JanusForConditionalGeneration.from_pretrained(
                source,
                dtype=self._torch_dtype,
                use_safetensors=None if self.opts.allow_pickle else True,
                **common,
            )
        except (OSError, ValueError) as exc:
            raise self._load_error(name, local, exc) from exc
        except Exception as exc:  # corrupt or truncated files
            raise ModelLoadError(
                f"Could not load {name!r} ({type(exc).__name__}: {exc}). If the files are "
                "incomplete, delete them and download again."
            ) from exc
        generation = model.generation_config
        extra = dict(getattr(generation, "generation_kwargs", None) or {})
        if "boi_token_id" not in extra:  # where converters put it at the top level, or not at all
            boi = getattr(generation, "boi_token_id", None)
            boi_token = getattr(processor.tokenizer, "boi_token", None)
            if boi is None and boi_token is not None:
                boi = processor.tokenizer.convert_tokens_to_ids(boi_token)
            if boi is None:
                raise ModelLoadError(
                    f"{name!r} has no begin-of-image token (generation_config.generation_kwargs"
                    "['boi_token_id'] or the tokenizer's boi_token): it can't draw. Use "
                    "deepseek-community/Janus-Pro-7B or -1B."
                )
            generation.generation_kwargs = {**extra, "boi_token_id": int(boi)}
        if self.opts.quantize_language_model:
            from ..quant import quantize_weights

            used = quantize_weights(
                model.model.language_model,
                weights=self.opts.quantize_language_model,
                backend=self.opts.quantization_backend,
            )
            self.quantized["language_model"] = f"{self.opts.quantize_language_model} ({used})"
        try:
            model.to(self._device).eval()
        except Exception as exc:
            raise ModelLoadError(
                f"Could not move {name!r} to {self._device} ({type(exc).__name__}: {exc}). "
                "Free memory on the device, use dtype='bfloat16', or "
                "quantize_language_model='int8'."
            ) from exc
        return model, processor

    def _load_error(self, name: str, local: bool, exc: BaseException) -> DeskgenError:
        return load_error(
            name, exc, local=local, offline=self.opts.local_files_only, remote_missing=True
        )

    # -- Backend interface -------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return dtype_name(self._torch_dtype)

    def _check_open(self) -> tuple[Any, Any]:
        model, processor = self.model, self.processor
        if model is None:
            raise GeneratorClosedError(
                "This generator was closed and its weights freed; create a new DeskGenerator."
            )
        return model, processor

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        _, processor = self._check_open()
        spec = self.text_encoders[0].model_copy(update={"max_tokens": self._prompt_limit})
        return [(spec, processor.tokenizer)]

    def _chat(self, content: list[dict[str, Any]]) -> str:
        _, processor = self._check_open()
        messages = [{"role": "user", "content": content}]
        return str(processor.apply_chat_template(messages, add_generation_prompt=True))

    def _answer(self, photo: Image.Image, question: str, *, max_new_tokens: int) -> str:
        import torch

        model, processor = self._check_open()
        prompt = self._chat([{"type": "image"}, {"type": "text", "text": question}])
        with TOKENIZER_LOCK:  # the tokenizer is shared with prompt planning in other threads
            inputs = processor(
                text=prompt, images=[photo], generation_mode="text", return_tensors="pt"
            )
        inputs = inputs.to(self._device, dtype=self._torch_dtype)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_length=int(inputs["input_ids"].shape[1]) + max_new_tokens,
                generation_mode="text",
                do_sample=False,  # greedy: the same photo gets the same description
            )
        answer = output[0][inputs["input_ids"].shape[1] :]
        with TOKENIZER_LOCK:
            return str(processor.decode(answer, skip_special_tokens=True)).strip()

    def describe(self, photo: Image.Image, *, instruction: str) -> DeskDescription:
        """The model's answer to ``instruction`` (the seed's "explain details"), then the
        structured fields (`deskgen.prompts.describe_with`)."""
        with self._lock:
            try:
                return describe_with(
                    lambda question, tokens: self._answer(photo, question, max_new_tokens=tokens),
                    instruction=instruction,
                    max_new_tokens=self.opts.max_new_tokens,
                )
            except DeskgenError:
                raise
            except Exception as exc:
                raise BackendError(f"Janus failed to describe the photo: {exc}") from exc

    def generate(self, job: Job) -> BackendOutput:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        model, processor = self._check_open()
        request = job.request
        if job.photo is not None or job.mask is not None:
            raise UnsupportedOperationError(
                "Janus draws from text only, it does not edit photos. Describe the photo first "
                "(gen.describe(photo)) and generate from description.to_spec().render("
                "backend='janus').prompt without image=..., or use 'sdxl' for img2img."
            )
        size = self.image_size
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value != size:
                raise InvalidRequestError(
                    f"{name}={value}: Janus-Pro draws {size}x{size} images only; leave out "
                    "width/height (resize the result if you need another size)."
                )
        warnings = []
        if job.prompt.negative_prompt:
            warnings.append(
                "Janus takes no negative prompt (its guidance contrasts the prompt with an empty "
                "one): the negative prompt was ignored."
            )
        for name in ("steps", "strength"):
            if getattr(request, name) is not None:
                warnings.append(f"{name} has no effect on Janus, which draws image tokens.")
        guidance = request.guidance_scale if request.guidance_scale is not None else 5.0
        if guidance <= 1:
            raise InvalidRequestError(
                f"guidance_scale={guidance:g}: Janus always draws with classifier-free guidance "
                "and needs guidance_scale > 1 (its default is 5.0)."
            )
        total = self.num_image_tokens * len(job.seeds)

        class Progress(LogitsProcessor):  # type: ignore[misc]  # once per image token
            def __init__(self, offset: int) -> None:
                self.done = offset

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                self.done += 1
                job.on_step(self.done, total)
                return scores

        started = time.perf_counter()
        prompt = self._chat([{"type": "text", "text": job.prompt.prompt}])
        with TOKENIZER_LOCK:
            inputs = processor(text=prompt, generation_mode="image", return_tensors="pt")
        inputs = inputs.to(self._device)
        encoded = time.perf_counter()
        tokens = []
        try:
            with self._lock:
                for i, seed in enumerate(job.seeds):
                    devices = [self._device] if self._device.startswith("cuda") else []
                    with torch.random.fork_rng(devices=devices), torch.no_grad():
                        torch.manual_seed(seed)
                        tokens.append(
                            model.generate(
                                **inputs,
                                generation_mode="image",
                                do_sample=True,
                                temperature=self.opts.temperature,
                                guidance_scale=guidance,
                                logits_processor=LogitsProcessorList(
                                    [Progress(i * self.num_image_tokens)]
                                ),
                            )
                        )
                drawn = time.perf_counter()
                with torch.no_grad():
                    pixels = model.decode_image_tokens(torch.cat(tokens))
                images = self._to_images(pixels)
        except DeskgenError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory_error(
                    exc,
                    device=self._device,
                    what=f"drawing {len(job.seeds)} image(s)",
                    hint="Generate fewer at once, use dtype='bfloat16', or "
                    "quantize_language_model='int8'.",
                ) from exc
            raise BackendError(f"The 'janus' backend failed: {type(exc).__name__}: {exc}") from exc
        finished = time.perf_counter()
        images = images if isinstance(images, list) else [images]
        resolved = request.model_copy(
            update={"width": size, "height": size, "guidance_scale": guidance}
        )
        return BackendOutput(
            images=[image.convert("RGB") for image in images],
            seeds=list(job.seeds),
            request=resolved,
            mode="txt2img",
            width=size,
            height=size,
            denoising_steps=self.num_image_tokens,
            scheduler="autoregressive image tokens",
            encode_seconds=encoded - started,
            denoise_seconds=drawn - encoded,
            decode_seconds=finished - drawn,
            warnings=warnings,
        )

    def _to_images(self, pixels: Any) -> list[Image.Image]:
        """Decoded pixels (batch, height, width, channels; normalised) to 8-bit images: the
        image processor's own mean and std undone, as its ``postprocess`` does (whose signature
        differs between its PIL and torchvision versions)."""
        import numpy as np
        import torch
        from PIL import Image as PILImage

        _, processor = self._check_open()
        settings = processor.image_processor
        mean = torch.tensor(settings.image_mean, dtype=torch.float32)
        std = torch.tensor(settings.image_std, dtype=torch.float32)
        values = pixels.float().cpu() * std + mean
        scaled = (values / float(settings.rescale_factor)).clamp(0, 255)
        arrays = scaled.to(torch.uint8).numpy()  # truncation, as postprocess' astype(uint8)
        return [PILImage.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arrays]

    def close(self) -> None:
        with self._lock:  # after a running request
            self.model = None
            self.processor = None
        free_accelerator_memory(self._device)
