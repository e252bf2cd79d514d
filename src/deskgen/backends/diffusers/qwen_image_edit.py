"""``qwen-image-edit``: the desk photo edited by an instruction, the room kept (Qwen-Image-Edit).

The photo goes in, an instruction comes with it ("hide the cables, add a warm lamp; keep the
window and the wall"), and the model redraws the desk in the same room: the seed's
"ChatGPT-4o with the photo" flow, with open weights. diffusers' pipelines do the work:

- ``QwenImageEditPipeline`` (Qwen/Qwen-Image-Edit): one photo;
- ``QwenImageEditPlusPipeline`` (Qwen/Qwen-Image-Edit-2509, -2511): the photo plus up to two
  reference images ("put the lamp from the second image on the left of the desk").

The text encoder is the pipeline's Qwen2.5-VL, a vision-language model: the prompt builder
counts the tokens it really sees (its tokenizer, inside the pipeline's chat template, the first
``prompt_template_encode_start_idx`` dropped as the pipeline drops them; the photo's own image
tokens come on top and are not counted against the text's limit), and ``describe()`` asks the
same model about the photo. Classifier-free guidance is the pipeline's ``true_cfg_scale`` and
runs only with a negative prompt: requests without one default to no guidance (one branch, half
the time); a guidance over 1 without a negative prompt, or a negative prompt with guidance off,
is said in the result's warnings. The output keeps the photo's aspect at the model's area
(1024 x 1024 pixels, on a 32 px grid, as the pipeline computes it). ``preset="fast"``: the
Qwen-Image-Lightning LoRA (8 steps; 4 for -2509 and 2511's 4-step files) with its scheduler,
no guidance.

With a mask (``mask="auto"`` or a mask image: only the desk changes) the request runs
diffusers' ``QwenImageEditInpaintPipeline`` over the same modules: the photo alone (no
reference images: the pipeline takes one image), a ``strength`` (0.6, the pipeline's, when left
out) and ``padding_mask_crop``. That pipeline sizes every output itself, 1024 x 1024 pixels of
area at the aspect of the image it gets (``calculate_dimensions``, whatever ``width``/``height``
say): deskgen gives it the photo centre-cropped to such a size (`inpaint_size`), so it resizes
nothing, and says in the warnings when a requested size was not kept. With Edit Plus models
(-2509, -2511) it encodes the prompt in Qwen-Image-Edit's own template (one picture, not the
"Picture 1:" labels of the Plus pipeline): what diffusers offers for masked Plus edits.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..._exceptions import (
    BackendError,
    ConfigError,
    DeskgenError,
    InvalidRequestError,
    UnsupportedOperationError,
)
from ..._registry import register_backend
from ...prompts import (
    EncoderFamily,
    LongPromptMode,
    PromptPlan,
    TemplatedTokenizer,
    TextEncoderSpec,
)
from ...prompts._description import DeskDescription
from ...prompts._vlm import describe_with
from .._base import BackendOptions, Job
from .._profile import BackendProfile, GiB, MemoryProfile
from ._options import DiffusersOptions, ImageInputs
from ._pipeline import DiffusersBackend
from ._speed import Recipe

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest, Mode

__all__ = [
    "LIGHTNING_LORAS",
    "QWEN_IMAGE_EDIT_PARAMETERS",
    "QwenImageEditBackend",
    "edit_size",
    "inpaint_size",
]

AREA = 1024 * 1024
"""The pixel area the pipelines size the output (and the photo for the VAE) to."""

QWEN_IMAGE_EDIT_PARAMETERS = {  # published safetensors sizes of Qwen/Qwen-Image-Edit(-2509/-2511)
    "transformer": 20_430_401_088,  # QwenImageTransformer2DModel, 60 layers (~40.9 GB bf16)
    "text_encoder": 8_292_166_656,  # Qwen2.5-VL-7B-Instruct, vision tower included
    "vae": 126_892_531,  # AutoencoderKLQwenImage
}
"""What the memory planner sizes without the files (bfloat16: about 41 + 16.6 + 0.25 GB)."""

LIGHTNING_LORAS: dict[str, str] = {
    "Qwen/Qwen-Image-Edit": (
        "lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-Lightning-8steps-V1.0-bf16.safetensors"
    ),
    "Qwen/Qwen-Image-Edit-2509": (
        "lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-2509/"
        "Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"
    ),
    "Qwen/Qwen-Image-Edit-2511": (  # lightx2v publishes a 4-step LoRA only for 2511
        "lightx2v/Qwen-Image-Edit-2511-Lightning/"
        "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors"
    ),
}
"""The Lightning LoRA ``preset="fast"`` loads for each published model (hub
``user/repo/file``, from ModelTC/Qwen-Image-Lightning's README): 8 steps, 4 for -2511; other
models need ``distill_lora=`` (the steps are read from its name, e.g. ``4steps``)."""

LIGHTNING_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
"""FlowMatchEulerDiscreteScheduler as lightx2v's Qwen-Image-Lightning README sets it."""

_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_STEPS = re.compile(r"(\d+)[-_ ]?steps?", re.IGNORECASE)
_PROCESSOR_LOCK = threading.Lock()


@contextlib.contextmanager
def processor_without_torchvision() -> Iterator[None]:
    """Let ``Qwen2VLProcessor`` load without torchvision while the block runs.

    transformers 5 gives the processor a video processor, which needs torchvision: without it
    ``Qwen2VLProcessor`` can neither be built nor loaded. Inside the block (one thread at a
    time) it has no video processor; images and text work as usual, and deskgen sends no
    video. With torchvision installed this does nothing.
    """
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        yield
        return

    def attributes(cls: Any) -> list[str]:
        return [a for a in ProcessorMixin.get_attributes.__func__(cls) if a != "video_processor"]

    with _PROCESSOR_LOCK:
        own = Qwen2VLProcessor.__dict__.get("get_attributes")
        Qwen2VLProcessor.get_attributes = classmethod(attributes)
        try:
            yield
        finally:
            if own is None:
                del Qwen2VLProcessor.get_attributes
            else:
                Qwen2VLProcessor.get_attributes = own


def edit_size(aspect: float, *, multiple: int = 16) -> tuple[int, int]:
    """The pipelines' output size for a photo of ``aspect`` (width / height): the area of
    `AREA` on a 32 px grid (``calculate_dimensions``), floored to ``multiple``."""
    width = math.sqrt(AREA * aspect)
    height = width / aspect
    w, h = round(width / 32) * 32, round(height / 32) * 32
    return max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple)


def inpaint_size(aspect: float, *, multiple: int = 16) -> tuple[int, int]:
    """The output size of ``QwenImageEditInpaintPipeline`` for an image of ``aspect``, as one
    it keeps: the pipeline sizes its output to `edit_size` of the aspect of the image it is
    given, so deskgen gives it the photo at a size whose own aspect gives that size again (the
    `edit_size` of ``aspect``, or the next one; every aspect from 1:4 to 4:1 gets there in two).

    Raises:
        InvalidRequestError: no such size near ``aspect`` (a photo over about 8:1).
    """
    size = edit_size(aspect, multiple=multiple)
    for _ in range(8):
        again = edit_size(size[0] / size[1], multiple=multiple)
        if again == size:
            return size
        size = again
    raise InvalidRequestError(
        f"The photo's aspect ratio ({aspect:.3g}:1) is too elongated for Qwen-Image-Edit's "
        "inpainting pipeline to keep a size: crop the photo (and its mask) to at most 4:1."
    )


@register_backend("qwen-image-edit")
class QwenImageEditBackend(DiffusersBackend):
    """Qwen-Image-Edit, -2509 and -2511 in the diffusers layout: instruction edits of the photo."""

    description: ClassVar[str] = (
        "Qwen-Image-Edit (diffusers): edits the desk photo by instruction, keeps the room; "
        "reference images with -2509/-2511"
    )
    default_model: ClassVar[str | None] = "Qwen/Qwen-Image-Edit-2511"
    options_class: ClassVar[type[BackendOptions]] = DiffusersOptions
    txt2img_class: ClassVar[str] = "QwenImageEditPlusPipeline"
    img2img_class: ClassVar[str | None] = None
    inpaint_class: ClassVar[str | None] = "QwenImageEditInpaintPipeline"
    """Masked requests: the photo alone (one image, Qwen-Image-Edit's template), any model."""
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset(
        {"QwenImageEditPipeline", "QwenImageEditPlusPipeline"}
    )
    family: ClassVar[str] = "Qwen-Image-Edit"
    default_guidance: ClassVar[float] = 4.0
    """``true_cfg_scale`` with a negative prompt (the model cards'); 1.0 (off) without one."""
    denoiser: ClassVar[str] = "transformer"
    guidance_argument: ClassVar[str] = "true_cfg_scale"
    speed_options: ClassVar[frozenset[str]] = frozenset({"compile"})
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(
            name="text_encoder",
            family=EncoderFamily.QWEN,
            max_tokens=1024,  # the pipelines' largest max_sequence_length
            tokenizers=(
                "Qwen/Qwen-Image-Edit-2511/tokenizer",
                "Qwen/Qwen-Image-Edit-2509/tokenizer",
                "Qwen/Qwen-Image-Edit/tokenizer",
            ),
        ),
    )
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.FIT
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("edit", "inpaint"),
        masks=True,
        gguf=True,
        loras=True,
        references=2,
        quantizable=("transformer", "text_encoder", "vae"),
        default_quantized=("transformer",),
        saves_quantized=True,
        presets=("fast",),
        describes=True,
        memory=MemoryProfile(
            parameters=QWEN_IMAGE_EDIT_PARAMETERS,
            # a 1024 px edit: photo and output latents in the transformer, the VAE decode;
            # an estimate from the architecture, not measured on a GPU
            work_bytes=8 * GiB,
            published_models=("Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509"),
        ),
        demo="qwen-image-edit",
    )

    def __init__(self, options: BackendOptions) -> None:
        assert isinstance(options, DiffusersOptions)
        if options.preset == "fast" and options.distill_lora is None:
            lightning = LIGHTNING_LORAS.get(options.model.strip("/"))
            if lightning is None:
                raise ConfigError(
                    f"preset='fast' needs the Qwen-Image-Lightning LoRA of {options.model!r}: "
                    "pass distill_lora= its file (e.g. lightx2v/Qwen-Image-Lightning/"
                    "Qwen-Image-Edit-Lightning-8steps-V1.0-bf16.safetensors)."
                )
            options = options.model_copy(update={"distill_lora": lightning})
        with processor_without_torchvision():
            super().__init__(options)
        self.plus: bool = type(self._txt2img).__name__ == "QwenImageEditPlusPipeline"
        """Edit Plus (-2509/-2511): takes reference images."""
        if options.preset is None:
            self.default_steps = 40 if self.plus else 50  # the model cards'
        # the processor's tokenizer is shared and the pipeline encodes inside its call: the
        # whole call holds the encode lock (one request at a time on one generator)
        self._call_lock = self._encode_lock

    # -- loading -----------------------------------------------------------------------------

    def _load_class(self, index: dict[str, Any]) -> str:
        return str(index.get("_class_name"))

    def _native_size(self, pipe: Any) -> int:
        return int(math.sqrt(AREA))

    def _takes_cfg_embeds(self, pipe: Any) -> bool:
        return True

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * 2

    def _preset_recipe(self, options: DiffusersOptions) -> Recipe:
        assert options.preset == "fast" and options.distill_lora is not None
        names = [str(options.distill_lora.weight_name or ""), str(options.distill_lora.path)]
        steps = next((int(m.group(1)) for n in names if (m := _STEPS.search(n))), 8)
        return Recipe(
            steps=steps,
            guidance=1.0,
            scheduler="FlowMatchEulerDiscreteScheduler",
            scheduler_config=dict(LIGHTNING_SCHEDULER),
        )

    # -- prompts -----------------------------------------------------------------------------

    def _template(self, pipe: Any) -> str:
        """The chat template the prompt is encoded in, with the photo's image marker."""
        template = str(pipe.prompt_template_encode)
        if _IMAGE in template:  # Qwen-Image-Edit: the photo's marker is in the template
            return template
        # Edit Plus labels each image ("Picture 1: ..."); references add theirs, uncounted
        return template.replace("{}", f"Picture 1: {_IMAGE}{{}}")

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        pipe = self._txt2img
        if pipe is None:
            self._check_open()
        spec = self.text_encoders[0]
        tokenizer = TemplatedTokenizer(
            pipe.tokenizer,
            template=self._template(pipe),
            drop=int(pipe.prompt_template_encode_start_idx),
        )
        return [(spec, tokenizer)]

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        """The texts themselves: the pipeline encodes them with the photo inside its call."""
        prompt = plan.prompt_chunks[0].chunks[0] if plan.prompt_chunks else plan.prompt
        negative = plan.negative_prompt
        if plan.negative_chunks and negative is not None:
            negative = plan.negative_chunks[0].chunks[0]
        return {"prompt": prompt, "negative_prompt": negative if do_cfg else None}

    # -- requests ----------------------------------------------------------------------------

    def _default_guidance(self, job: Job) -> float:
        return self.guidance_default if job.prompt.negative_prompt is not None else 1.0

    def _does_cfg(self, guidance: float, job: Job) -> bool:
        return guidance > 1 and job.prompt.negative_prompt is not None

    def _mode(self, job: Job, strength: float) -> Mode:
        if job.photo is None:
            raise InvalidRequestError(
                "qwen-image-edit edits a photo: pass image=... (the desk photo). For a desk "
                "from the prompt alone use a text-to-image backend, e.g. 'sdxl' or 'hidream'."
            )
        return "inpaint" if job.mask is not None else "edit"

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        if photo is not None and request.masked:
            return self._inpaint_size(request, photo)
        if photo is not None and request.width is None and request.height is None:
            width, height = edit_size(photo.width / photo.height, multiple=self._size_multiple())
            return width, height, []
        return super()._plan_size(request, photo, label=label)

    def _inpaint_size(
        self, request: GenerationRequest, photo: Image.Image
    ) -> tuple[int, int, list[str]]:
        """The size ``QwenImageEditInpaintPipeline`` generates at (`inpaint_size`): of the
        request's aspect where it gives both sides, else of the photo's; a requested size
        the pipeline would not keep is said in the warnings."""
        given = (request.width, request.height)
        if request.width is not None and request.height is not None:
            aspect = request.width / request.height
        else:
            aspect = photo.width / photo.height
        width, height = inpaint_size(aspect, multiple=self._size_multiple())
        warnings: list[str] = []
        if any(side not in (None, kept) for side, kept in zip(given, (width, height), strict=True)):
            asked = "x".join("?" if side is None else str(side) for side in given)
            warnings.append(
                f"The output is {width}x{height}, not {asked}: Qwen-Image-Edit's inpainting "
                "pipeline (QwenImageEditInpaintPipeline) always generates about 1024x1024 "
                "pixels at the photo's aspect ratio. Leave width/height out with a mask."
            )
        return width, height, warnings

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        request = job.request
        if request.strength is not None and mode != "inpaint":
            raise InvalidRequestError(
                "qwen-image-edit has no strength: the instruction says what changes and what "
                "stays. Leave out strength=..., and say 'keep ...' in the prompt (with a mask, "
                "strength says how much of the masked part is redrawn)."
            )
        if job.references and mode == "inpaint":
            raise UnsupportedOperationError(
                "qwen-image-edit takes no reference images with a mask: its inpainting "
                "pipeline (QwenImageEditInpaintPipeline) sees the photo alone. Leave out "
                "references (describe the object in the prompt) or the mask, or use "
                "'flux2-klein' or 'flux-kontext' (one reference image with a mask)."
            )
        if job.references and not self.plus:
            raise UnsupportedOperationError(
                f"{self.opts.model!r} (Qwen-Image-Edit) edits one photo: reference images need "
                "an Edit Plus model, e.g. Qwen/Qwen-Image-Edit-2511."
            )
        assert job.photo is not None
        steps = request.steps if request.steps is not None else self.default_steps
        if steps < 2 and self._txt2img.scheduler.config.get("shift_terminal"):
            raise InvalidRequestError(
                "steps=1 with this model's scheduler (its sigmas stretched to shift_terminal) "
                "divides by zero: use 2 steps or more, or preset='fast' for few-step edits."
            )
        warnings: list[str] = []
        guidance = request.guidance_scale
        negative = job.prompt.negative_prompt
        if guidance is not None and guidance > 1 and negative is None:
            warnings.append(
                f"guidance_scale={guidance:g} has no effect without a negative prompt "
                "(Qwen-Image-Edit's true_cfg_scale guides only against one): add "
                "negative_prompt=' ' for the model card's guidance, or leave guidance out."
            )
        if guidance is not None and guidance <= 1 and negative is not None:
            warnings.append(
                f"The negative prompt is not used: guidance_scale={guidance:g} turns "
                "classifier-free guidance off (it needs a value over 1, e.g. 4.0)."
            )
        if mode == "inpaint":
            call = {**self._inpaint_inputs(job, width=width, height=height), "strength": strength}
            return ImageInputs(call=call, warnings=warnings)
        image: Any = [job.photo, *job.references] if self.plus else job.photo
        return ImageInputs(
            call={"image": image, "height": height, "width": width}, warnings=warnings
        )

    def _size_reference(self, job: Job) -> tuple[Image.Image | None, str]:
        return job.photo, "photo"

    # -- describe ----------------------------------------------------------------------------

    def describe(self, photo: Image.Image, *, instruction: str) -> DeskDescription:
        """Qwen2.5-VL's answer about the photo (the pipeline's own text encoder)."""
        self._check_open()
        pipe = self._txt2img
        max_new_tokens = 512

        def answer(question: str, tokens: int) -> str:
            import torch

            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": question}],
                }
            ]
            processor = pipe.processor
            text = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(text=[text], images=[photo], return_tensors="pt")
            inputs = inputs.to(pipe.text_encoder.device)
            with torch.no_grad():
                out = pipe.text_encoder.generate(**inputs, max_new_tokens=tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]
            return str(processor.batch_decode(new, skip_special_tokens=True)[0]).strip()

        with self._encode_lock:
            try:
                return describe_with(answer, instruction=instruction, max_new_tokens=max_new_tokens)
            except DeskgenError:
                raise
            except Exception as exc:
                raise BackendError(f"Qwen2.5-VL failed to describe the photo: {exc}") from exc
