"""The open-vocabulary route to a desk mask: Grounding DINO finds boxes for the target phrases,
SAM turns each box into a mask, and each target's region is the union of its boxes' masks.

```python
detections = get_detector(DEFAULT_DETECTOR_MODEL, device="cuda")(
    photo, ["desk", "cables"], box_threshold=0.3, text_threshold=0.25
)
masks = get_box_segmenter(DEFAULT_SAM_MODEL, device="cuda")(
    photo, [d.box for d in detections if d.kept], size=photo.size
)
```

Both models are transformers' own (``AutoModelForZeroShotObjectDetection`` with its
``AutoProcessor``; ``SamModel`` with ``SamProcessor``), loaded once per process and shared
(`deskgen.masks._shared.shared_model`, the closed-set route's cache), from safetensors only
unless ``allow_pickle``, never running remote code. The prompt is the targets as Grounding DINO
takes them: lower-case phrases, each ending with ``"."`` (``"desk. cables."``). torch and
transformers are imported when a model is first loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from .._exceptions import ConfigError, ImageInputError, ModelMismatchError
from .._loading import map_load_errors, use_safetensors
from .._quiet import quiet_loading
from ._settings import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL, DeskMask
from ._shared import (
    WORK_SIDE,
    SharedModel,
    check_architecture,
    fit,
    model_photo,
    open_config,
    processor_backend,
    shared_model,
    standing_note,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BoxSegmenter",
    "Detection",
    "Detector",
    "OpenVocabularyRegions",
    "get_box_segmenter",
    "get_detector",
    "nothing_detected",
    "open_vocabulary_regions",
]

_DETECTORS = frozenset({"grounding-dino", "mm-grounding-dino"})
"""The zero-shot detectors this route runs: those whose processor takes the phrases as one
``"a. b."`` text and scores each box against every token of it."""

_DETECTOR_WORKING = (
    "Use a Grounding DINO model as transformers ships it (e.g. "
    f"{DEFAULT_DETECTOR_MODEL} or IDEA-Research/grounding-dino-base), or an MM Grounding DINO."
)

_SAM_WORKING = (
    "Use a Segment Anything model as transformers ships it (SamModel): "
    f"{DEFAULT_SAM_MODEL}, facebook/sam-vit-large or facebook/sam-vit-huge."
)

_BOXES_AT_ONCE = 16
"""Boxes SAM's mask decoder takes at a time (the image is encoded once for all of them)."""

_REPORTED = 5
"""How many of the detector's best boxes a nothing-found message lists."""


def _inputs_to(inputs: Any, device: str, dtype: Any) -> dict[str, Any]:
    """A processor's tensors on ``device``, the floating ones (pixels) in ``dtype``."""
    return {
        key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in inputs.items()
        if hasattr(value, "is_floating_point")
    }


@dataclass(frozen=True)
class Detection:
    """One of the detector's boxes (one per query of the model)."""

    phrase: str
    """The target phrase holding the box's most probable token: what it is labelled."""
    score: float
    """The box's score, its highest token probability (what ``box_threshold`` is held to)."""
    phrase_score: float
    """The probability of the phrase's most probable token (what ``text_threshold`` is held
    to)."""
    box: tuple[float, float, float, float] | None
    """``(x0, y0, x1, y1)`` in the photo's pixels; ``None`` for a box under
    ``box_threshold``."""
    kept: bool
    """Over both thresholds: the box goes to SAM."""


class Detector(SharedModel):
    """A Grounding DINO model (``AutoModelForZeroShotObjectDetection``) and its processor,
    loaded once and shared by every request (use `get_detector`). Calls run one at a time.

    Safetensors weights only unless ``allow_pickle``; remote code is never run."""

    what = "detector"
    getter = "get_detector"

    def __init__(
        self,
        model: str,
        *,
        device: str,
        dtype: Any,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
            MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
            MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
        )

        local, source, common, config = open_config(
            model,
            what="detector",
            hint="pass DeskMask(model=...) on the open-vocabulary route a folder saved with "
            f"save_pretrained() or a hub id such as {DEFAULT_DETECTOR_MODEL}.",
            working=_DETECTOR_WORKING,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in _DETECTORS:
            if model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
                kind = "a zero-shot detector this route does not run (its prompts differ)"
            elif model_type == "sam":
                kind = "a SAM model: give it as sam_model=, with a Grounding DINO as model="
            elif model_type in {
                *MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
                *MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
            }:
                kind = (
                    "a segmentation model of closed-set classes: use it with "
                    "route='closed-set' (the default)"
                )
            else:
                kind = "not a zero-shot object detector"
            raise ModelMismatchError(
                f"{model!r} is a {model_type or 'untyped'} model, {kind}. {_DETECTOR_WORKING}"
            )
        check_architecture(
            model,
            config,
            MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES[model_type],
            _DETECTOR_WORKING,
        )
        with (
            map_load_errors(model, local=local, what="the detector", offline=local_files_only),
            quiet_loading(("transformers",)),
        ):
            loaded = AutoModelForZeroShotObjectDetection.from_pretrained(
                source, dtype=dtype, use_safetensors=use_safetensors(allow_pickle), **common
            )
            processor = AutoProcessor.from_pretrained(source, **processor_backend(), **common)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not callable(
            getattr(processor, "post_process_grounded_object_detection", None)
        ):
            raise ModelMismatchError(
                f"The processor of {model!r} ({type(processor).__name__}) has no tokenizer or "
                f"no post_process_grounded_object_detection. {_DETECTOR_WORKING}"
            )
        super().__init__(loaded, processor, name=model, device=device, dtype=dtype)
        self.max_text_len = int(getattr(config, "max_text_len", 256))
        delimiters = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        delimiters |= set(tokenizer.convert_tokens_to_ids([".", "?"]))
        self._delimiters = {int(index) for index in delimiters if index is not None}

    def prompt(self, phrases: list[str]) -> str:
        """The text Grounding DINO is given: ``"desk. cables."`` (lower-case, each phrase
        ending with ``"."``, as its processor merges a list of labels)."""
        return " ".join(f"{' '.join(phrase.lower().split())}." for phrase in phrases)

    def spans(self, input_ids: list[int]) -> list[list[int]]:
        """The token positions of each phrase in a tokenized prompt: the runs between the
        delimiters (``[CLS]``, ``.``, ``?``, ``[SEP]``, padding), as the model itself splits
        them."""
        spans: list[list[int]] = []
        run: list[int] = []
        for position, token in enumerate(input_ids):
            if token in self._delimiters:
                if run:
                    spans.append(run)
                run = []
            else:
                run.append(position)
        if run:
            spans.append(run)
        return spans

    def __call__(
        self,
        image: Image.Image,
        phrases: list[str],
        *,
        box_threshold: float,
        text_threshold: float,
    ) -> list[Detection]:
        """Every box the model proposes for ``phrases`` in ``image``, best score first, each
        labelled with the phrase holding its most probable token (``text_labels`` of
        transformers' post-processing joins every token over ``text_threshold``, "desk
        monitor", which names no one phrase). Kept: a score over ``box_threshold`` and a phrase
        score over ``text_threshold``. Boxes are in ``image``'s pixels.

        Raises:
            ConfigError: the phrases make more tokens than the model reads (``max_text_len``)
                or split otherwise than given.
            GeneratorClosedError: the detector was closed (`release_segmenters`).
        """
        import torch

        photo = model_photo(image)
        scale = (image.width / photo.width, image.height / photo.height)
        with self.running():
            inputs = self.processor(images=photo, text=self.prompt(phrases), return_tensors="pt")
            input_ids = [int(index) for index in inputs["input_ids"][0]]
            if len(input_ids) > self.max_text_len:
                raise ConfigError(
                    f"The {len(phrases)} targets make {len(input_ids)} text tokens, more than the "
                    f"detector {self.name!r} reads ({self.max_text_len}): name fewer targets."
                )
            spans = self.spans(input_ids)
            if len(spans) != len(phrases):
                raise ConfigError(
                    f"The detector's tokenizer splits the targets into {len(spans)} phrases, not "
                    f"{len(phrases)}: name targets without '.' or '?'."
                )
            outputs = self.model(**_inputs_to(inputs, self.device, self.dtype))
            # the post-processing's own scores: sigmoid of the logits, each box's best token
            probs = torch.sigmoid(outputs.logits)[0]
            scores = torch.max(probs, dim=-1)[0]
            results = self.processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=box_threshold,
                text_threshold=text_threshold,
                target_sizes=[(photo.height, photo.width)],
            )[0]
            over = torch.nonzero(scores > box_threshold).flatten().tolist()
            boxes = results["boxes"].float().cpu().tolist()
            if len(boxes) != len(over):
                raise ModelMismatchError(
                    f"The detector {self.name!r} post-processed {len(boxes)} boxes over "
                    f"box_threshold, not {len(over)}: not a Grounding DINO processor."
                )
            phrase_scores = torch.stack(
                [probs[:, span].max(dim=-1)[0] for span in spans], dim=-1
            ).float()
            best_tensor, which_tensor = phrase_scores.max(dim=-1)
            best, which = best_tensor.cpu().tolist(), which_tensor.cpu().tolist()
            scores_list = scores.float().cpu().tolist()
        box_of = dict(zip(over, boxes, strict=True))
        detections: list[Detection] = []
        for query in sorted(range(len(scores_list)), key=lambda q: -scores_list[q]):
            box = box_of.get(query)
            phrase_score = float(best[query])
            detections.append(
                Detection(
                    phrase=phrases[which[query]],
                    score=scores_list[query],
                    phrase_score=phrase_score,
                    box=None
                    if box is None
                    else (
                        box[0] * scale[0],
                        box[1] * scale[1],
                        box[2] * scale[0],
                        box[3] * scale[1],
                    ),
                    kept=box is not None and phrase_score > text_threshold,
                )
            )
        return detections


class BoxSegmenter(SharedModel):
    """A SAM model (``SamModel``) and its processor, loaded once and shared by every request
    (use `get_box_segmenter`): one mask for each box. Calls run one at a time.

    Safetensors weights only unless ``allow_pickle``; remote code is never run."""

    what = "SAM model"
    getter = "get_box_segmenter"

    def __init__(
        self,
        model: str,
        *,
        device: str,
        dtype: Any,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        from transformers import AutoProcessor, SamModel

        local, source, common, config = open_config(
            model,
            what="SAM model",
            hint="pass DeskMask(sam_model=...) a folder saved with save_pretrained() or a hub "
            f"id such as {DEFAULT_SAM_MODEL}.",
            working=_SAM_WORKING,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        model_type = str(getattr(config, "model_type", ""))
        if model_type != "sam":
            hint = (
                " It is a detector: give it as model=, and a SAM model as sam_model=."
                if model_type in _DETECTORS
                else ""
            )
            raise ModelMismatchError(
                f"{model!r} is a {model_type or 'untyped'} model, not a SAM model (SamModel)."
                f"{hint} {_SAM_WORKING}"
            )
        check_architecture(model, config, "SamModel", _SAM_WORKING)
        with (
            map_load_errors(model, local=local, what="the SAM model", offline=local_files_only),
            quiet_loading(("transformers",)),
        ):
            loaded = SamModel.from_pretrained(
                source, dtype=dtype, use_safetensors=use_safetensors(allow_pickle), **common
            )
            processor = AutoProcessor.from_pretrained(source, **processor_backend(), **common)
        if not callable(getattr(processor, "post_process_masks", None)):
            raise ModelMismatchError(
                f"The processor of {model!r} ({type(processor).__name__}) has no "
                f"post_process_masks. {_SAM_WORKING}"
            )
        super().__init__(loaded, processor, name=model, device=device, dtype=dtype)

    def __call__(
        self,
        image: Image.Image,
        boxes: list[tuple[float, float, float, float]],
        *,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """SAM's mask of each box (``(x0, y0, x1, y1)`` in ``image``'s pixels) as a boolean
        array (boxes x height x width) at ``size`` (``(width, height)``; default the
        image's): ``SamProcessor`` with ``input_boxes``, the model with one mask per box
        (``multimask_output=False``), ``post_process_masks`` (logits over 0).

        Raises:
            GeneratorClosedError: the SAM model was closed (`release_segmenters`).
        """
        import numpy as np
        import torch

        width, height = size or image.size
        if not boxes:
            return np.zeros((0, height, width), dtype=bool)
        photo = model_photo(image)
        scale = (photo.width / image.width, photo.height / image.height)
        scaled = [
            [box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1]]
            for box in boxes
        ]
        masks = np.zeros((len(boxes), height, width), dtype=bool)
        with self.running():
            inputs = self.processor(images=photo, input_boxes=[scaled], return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
            embeddings = self.model.get_image_embeddings(pixels)
            # the processor's boxes as they are (float64), but MPS has no float64
            box_dtype = torch.float32 if self.device.startswith("mps") else None
            all_boxes = inputs["input_boxes"].to(self.device, dtype=box_dtype)
            for start in range(0, len(boxes), _BOXES_AT_ONCE):
                outputs = self.model(
                    image_embeddings=embeddings,
                    input_boxes=all_boxes[:, start : start + _BOXES_AT_ONCE],
                    multimask_output=False,
                )
                chunk = self.processor.post_process_masks(  # scaled on the device
                    outputs.pred_masks.float(), [(height, width)], inputs["reshaped_input_sizes"]
                )[0]
                masks[start : start + _BOXES_AT_ONCE] = chunk[:, 0].cpu().numpy()
        return masks


def get_detector(
    model: str,
    *,
    device: str,
    dtype: Any = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> Detector:
    """The process-wide `Detector` of ``model`` on ``device``, as `get_segmenter` shares
    segmenters (and in the same cache: `release_segmenters` closes it).

    Raises:
        ModelNotFoundError: no such folder, or a hub id that is not cached (offline).
        ModelLoadError: unreadable or pickle-only weights (without ``allow_pickle``).
        ModelMismatchError: not a Grounding DINO model (a segmentation model: the message
            points to the closed-set route).
        ConfigError: an unknown device or dtype.
    """

    def load(resolved: str, resolved_dtype: Any) -> Detector:
        return Detector(
            model,
            device=resolved,
            dtype=resolved_dtype,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )

    return shared_model("detector", model, device=device, dtype=dtype, revision=revision, load=load)


def get_box_segmenter(
    model: str,
    *,
    device: str,
    dtype: Any = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> BoxSegmenter:
    """The process-wide `BoxSegmenter` (SAM) of ``model`` on ``device``, shared as
    `get_detector` shares detectors.

    Raises:
        ModelNotFoundError, ModelLoadError, ConfigError: as `get_detector`.
        ModelMismatchError: not a SAM model.
    """

    def load(resolved: str, resolved_dtype: Any) -> BoxSegmenter:
        return BoxSegmenter(
            model,
            device=resolved,
            dtype=resolved_dtype,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )

    return shared_model("sam", model, device=device, dtype=dtype, revision=revision, load=load)


@dataclass(frozen=True)
class OpenVocabularyRegions:
    """What the open-vocabulary route found in a photo (`open_vocabulary_regions`)."""

    regions: dict[str, np.ndarray]
    """Each target's region (boolean, at most `WORK_SIDE` pixels on its long side): the union
    of SAM's masks of the kept boxes labelled with it (all ``False`` when none was)."""
    detections: list[Detection]
    """Every box the detector proposed, best score first."""
    models: dict[str, str]
    """The models used: ``{"model": detector, "sam_model": sam}``."""


def open_vocabulary_regions(
    image: Image.Image,
    settings: DeskMask,
    *,
    device: str = "auto",
    cache_dir: str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> OpenVocabularyRegions:
    """The region of each of ``settings.targets`` in ``image``: the detector's kept boxes for
    the target phrases, each box's SAM mask, the union per phrase. Both models are loaded
    first (a missing SAM model is an error whatever the photo). The regions are at
    ``fit(image.size, WORK_SIDE)``.

    Raises:
        ModelNotFoundError, ModelLoadError, ModelMismatchError, ConfigError: see
            `get_detector`, `get_box_segmenter` and `Detector.__call__`.
    """
    import numpy as np

    detector_name = settings.model or DEFAULT_DETECTOR_MODEL
    sam_name = settings.sam_model or DEFAULT_SAM_MODEL
    options: dict[str, Any] = {
        "device": device,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
        "allow_pickle": allow_pickle,
    }
    detector = get_detector(detector_name, revision=settings.revision, **options)
    sam = get_box_segmenter(sam_name, **options)
    targets = list(settings.targets)
    detections = detector(
        image,
        targets,
        box_threshold=settings.box_threshold,
        text_threshold=settings.text_threshold,
    )
    width, height = fit(image.size, WORK_SIDE)
    regions = {name: np.zeros((height, width), dtype=bool) for name in targets}
    kept = [detection for detection in detections if detection.kept]
    masks = sam(image, [detection.box for detection in kept if detection.box], size=(width, height))
    for detection, mask in zip(kept, masks, strict=True):
        regions[detection.phrase] |= mask
    return OpenVocabularyRegions(
        regions=regions,
        detections=detections,
        models={"model": detector_name, "sam_model": sam_name},
    )


def nothing_detected(found: OpenVocabularyRegions, settings: DeskMask) -> ImageInputError:
    """The nothing-found error of the open-vocabulary route: what was looked for, how many
    boxes the detector kept, and its best boxes with their phrases and scores."""
    targets = list(settings.targets)
    kept = sum(detection.kept for detection in found.detections)
    best = ", ".join(
        f"{detection.phrase} {detection.score:.2f}"
        + (
            f" (phrase {detection.phrase_score:.2f})"
            if detection.box is not None and not detection.kept
            else ""
        )
        for detection in found.detections[:_REPORTED]
    )
    return ImageInputError(
        f"No {', '.join(targets)} found in the photo{standing_note(settings, targets)}, in "
        f"parts of at least {settings.min_area:.2%} of it. The detector kept {kept} of its "
        f"{len(found.detections)} boxes (a score over box_threshold={settings.box_threshold:g} "
        f"and a phrase over text_threshold={settings.text_threshold:g}); its best: "
        f"{best or '(none)'}. Lower the thresholds (DeskMask(box_threshold=..., "
        "text_threshold=...)), name the targets otherwise, use a lower min_area, or draw the "
        "mask yourself (mask='mask.png': white to change, black to keep)."
    )
