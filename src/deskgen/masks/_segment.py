"""Finding the desk in a photo, by either route, with models loaded once and shared.

The closed-set route runs a transformers semantic-segmentation model (`Segmenter`, from
`get_segmenter`'s process-wide cache) and takes the pixels of the target classes; the
open-vocabulary route (`deskgen.masks._open_vocab`) finds boxes for the target phrases with
Grounding DINO and turns them into masks with SAM. Either gives a boolean region per target;
from there `find_desk_mask` is one path: it keeps the objects standing on a surface, drops
speckle, and shapes the result (grown, feathered) into a grey mask at the photo's size.

Resolution: the photo is handed to the models' processors at most ``1024`` pixels on its long
side (they resize it to what the model was trained on, 512 for ADE20K models); the regions are
computed at most `WORK_SIDE` pixels on their long side, where the connected parts are found
too. The region is scaled back to the photo (bilinear, cut at one half) and grown and feathered
at the photo's full size, so ``grow`` and ``blur`` are photo pixels. torch and transformers are
imported when a model is first loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from .._exceptions import (
    ConfigError,
    ImageInputError,
    ModelMismatchError,
)
from .._images import ImageInput, load_image
from .._loading import map_load_errors, use_safetensors
from .._quiet import quiet_loading
from ._open_vocab import nothing_detected, open_vocabulary_regions
from ._settings import DEFAULT_SEGMENTATION_MODEL, DeskMask
from ._shape import connected_components, feather_mask, grow_mask
from ._shared import (
    WORK_SIDE,
    SharedModel,
    fit,
    model_photo,
    open_config,
    processor_backend,
    shared_model,
    standing_note,
)
from ._shared import release_segmenters as release_segmenters

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "WORK_SIDE",
    "FoundMask",
    "Segmenter",
    "find_desk_mask",
    "get_segmenter",
    "release_segmenters",
]

_TOUCH = 0.01
"""How near (a fraction of the map's long side, at least 2 pixels) an object must come to a
surface to count as standing on it: segmentation leaves a seam between the two."""

_UNIVERSAL = frozenset({"mask2former", "maskformer"})
"""Model types loaded with ``AutoModelForUniversalSegmentation`` (queries of masks and classes,
turned into a semantic map by their processor)."""

_WORKING = (
    "Use a transformers semantic-segmentation model: Mask2Former or MaskFormer (e.g. "
    f"{DEFAULT_SEGMENTATION_MODEL}), SegFormer (nvidia/segformer-b0-finetuned-ade-512-512), "
    "UperNet, BEiT, DPT or MobileViT."
)


class Segmenter(SharedModel):
    """A transformers semantic-segmentation model and its image processor, loaded once and
    shared by every request (use `get_segmenter`). Calls run one at a time (a lock).

    Safetensors weights only unless ``allow_pickle``; remote code is never run. OneFormer is
    refused (its processor needs a text task input this class does not make)."""

    what = "segmentation model"
    getter = "get_segmenter"

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
        from transformers import (
            AutoImageProcessor,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
        )
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
            MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
            MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
        )

        local, source, common, config = open_config(
            model,
            what="segmentation model",
            hint="pass DeskMask(model=...) a folder saved with save_pretrained() or a hub id "
            f"such as {DEFAULT_SEGMENTATION_MODEL}.",
            working=_WORKING,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        model_type = str(getattr(config, "model_type", ""))
        if model_type == "oneformer":
            raise ConfigError(
                f"{model!r} is a OneFormer model, which deskgen does not run (its processor "
                "needs a text task input). Use the Mask2Former of the same dataset, e.g. "
                f"{DEFAULT_SEGMENTATION_MODEL}."
            )
        if model_type in _UNIVERSAL:
            auto_class: Any = AutoModelForUniversalSegmentation
            head = MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES[model_type]
        elif model_type in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
            auto_class = AutoModelForSemanticSegmentation
            head = MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES[model_type]
        elif model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
            raise ModelMismatchError(
                f"{model!r} is a {model_type} model: a zero-shot object detector, which finds "
                "boxes for phrases, not a semantic-segmentation model. Set "
                "DeskMask(route='open-vocabulary') to find the targets by name with it and SAM "
                "(Grounding DINO models), or give the closed-set route a segmentation model. "
                f"{_WORKING}"
            )
        elif model_type == "sam":
            raise ModelMismatchError(
                f"{model!r} is a SAM model, which turns boxes into masks and knows no "
                "classes: give it as DeskMask(route='open-vocabulary', sam_model=...), with a "
                f"Grounding DINO detector as model. {_WORKING}"
            )
        else:
            raise ModelMismatchError(
                f"{model!r} is a {model_type or 'untyped'} model, not a semantic-segmentation "
                f"model. {_WORKING}"
            )
        saved = list(getattr(config, "architectures", None) or [])
        if saved and head not in saved:  # e.g. a DPT depth model: its head would be random
            raise ModelMismatchError(
                f"{model!r} holds the weights of a {', '.join(saved)}, not of a {head}: a "
                f"{model_type} model trained for another task. {_WORKING}"
            )
        with (
            map_load_errors(
                model, local=local, what="the segmentation model", offline=local_files_only
            ),
            quiet_loading(("transformers",)),  # no loading bar in the middle of a request
        ):
            loaded = auto_class.from_pretrained(
                source,
                dtype=dtype,
                use_safetensors=use_safetensors(allow_pickle),
                **common,
            )
            # the PIL image processor when torchvision is absent (transformers would warn)
            processor = AutoImageProcessor.from_pretrained(source, **processor_backend(), **common)
        if not callable(getattr(processor, "post_process_semantic_segmentation", None)):
            raise ModelMismatchError(
                f"The image processor of {model!r} ({type(processor).__name__}) makes no "
                f"semantic label maps (no post_process_semantic_segmentation). {_WORKING}"
            )
        super().__init__(loaded, processor, name=model, device=device, dtype=dtype)
        id2label = getattr(config, "id2label", None) or {}
        self._labels = {int(index): str(name) for index, name in id2label.items()}

    @property
    def labels(self) -> dict[int, str]:
        """The model's classes: label id to name (``config.id2label``)."""
        return dict(self._labels)

    def __call__(self, image: Image.Image, *, size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of ``image`` (an int32 array of class ids, height x width), at
        ``size`` (``(width, height)``; default the image's). It is computed at most
        `WORK_SIDE` pixels on its long side and scaled up (nearest) to a larger ``size``.

        Raises:
            GeneratorClosedError: the segmenter was closed (`release_segmenters`).
        """
        import numpy as np

        width, height = size or image.size
        photo = model_photo(image)
        work_w, work_h = fit((width, height), WORK_SIDE)
        with self.running():
            inputs = self.processor(images=photo, return_tensors="pt")
            inputs = inputs.to(self.device, dtype=self.dtype)
            outputs = self.model(**inputs)
            maps = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(work_h, work_w)]
            )
            labels: np.ndarray = maps[0].to("cpu").numpy().astype(np.int32)
        if (work_w, work_h) == (width, height):
            return labels
        rows = (np.arange(height) * work_h) // height
        cols = (np.arange(width) * work_w) // width
        scaled: np.ndarray = labels[rows[:, None], cols[None, :]]
        return scaled


def get_segmenter(
    model: str,
    *,
    device: str,
    dtype: Any = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> Segmenter:
    """The process-wide `Segmenter` of ``model`` on ``device``: loaded on first use (once,
    however many threads ask at the same time), then shared. Keyed by model (a folder by its
    absolute path), revision, device and dtype. ``device="auto"``: the best available;
    ``dtype`` a torch dtype or its name, ``None``: float32 (segmentation is cheap).

    Raises:
        ModelNotFoundError: no such folder, or a hub id that is not cached (offline).
        ModelLoadError: unreadable or pickle-only weights (without ``allow_pickle``).
        ModelMismatchError: not a semantic-segmentation model (a Grounding DINO or SAM model:
            the message points to the open-vocabulary route).
        ConfigError: an unknown device or dtype; a OneFormer model.
    """

    def load(resolved: str, resolved_dtype: Any) -> Segmenter:
        return Segmenter(
            model,
            device=resolved,
            dtype=resolved_dtype,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )

    return shared_model(
        "segmenter", model, device=device, dtype=dtype, revision=revision, load=load
    )


@dataclass(frozen=True)
class FoundMask:
    """The desk found in a photo (`find_desk_mask`)."""

    mask: Image.Image
    """The edit mask, grey (``L``) at the photo's size: 255 to change, 0 to keep, the
    feathered edge in between."""
    hard: Image.Image
    """The grown region before feathering, 0 or 255 (``L``)."""
    found: dict[str, float]
    """Each target found, by name, with the fraction of the photo it covers (before growing)."""
    settings: DeskMask
    """The settings used, with ``model`` set to the model that found the mask (on the
    open-vocabulary route: ``model`` the detector, ``sam_model`` the SAM model)."""
    coverage: float
    """The fraction of the photo the hard mask covers."""


def _synonyms(labels: dict[int, str]) -> dict[str, set[int]]:
    """Each name a class answers to (``"screen, silver screen"``: two), with its ids."""
    names: dict[str, set[int]] = {}
    for index, label in labels.items():
        for part in re.split(r"[,;]", label):
            name = " ".join(part.split()).lower()
            if name:
                names.setdefault(name, set()).add(index)
    return names


def _target_ids(settings: DeskMask, labels: dict[int, str], model: str) -> dict[str, list[int]]:
    """The class ids of each target the model knows; `ConfigError` for names given that it
    doesn't (default names it lacks are skipped)."""
    names = _synonyms(labels)
    unknown = [target for target in settings.targets if target not in names]
    known = {target: sorted(names[target]) for target in settings.targets if target in names}
    if (unknown and not settings.default_targets) or not known:
        which = ", ".join(repr(name) for name in unknown)
        raise ConfigError(
            f"The segmentation model {model!r} has no class named {which}. The classes it "
            f"knows: {', '.join(sorted(names)) or '(none)'}. Pick targets among them, or use "
            "another model (DeskMask(model=...))."
        )
    return known


def _kept(region: np.ndarray, min_pixels: float, near: np.ndarray | None = None) -> np.ndarray:
    """The connected parts of ``region`` of at least ``min_pixels`` pixels (and, with
    ``near``, that meet it)."""
    import numpy as np

    parts, count = connected_components(region)
    if count == 0:
        return region
    keep = np.bincount(parts.ravel(), minlength=count + 1) >= min_pixels
    if near is not None:
        meets = np.zeros(count + 1, dtype=bool)
        meets[np.unique(parts[near & region])] = True
        keep &= meets
    keep[0] = False
    return np.asarray(keep[parts])


def _filled(region: np.ndarray, min_pixels: float) -> np.ndarray:
    """``region`` with its holes (parts of the rest not touching the border) smaller than
    ``min_pixels`` filled: speckle of other classes inside the desk."""
    import numpy as np

    holes, count = connected_components(~region)
    if count == 0:
        return region
    small = np.bincount(holes.ravel(), minlength=count + 1) < min_pixels
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small[border] = False
    small[0] = False
    return np.asarray(region | small[holes])


def _class_regions(label_map: np.ndarray, ids: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Each target's pixels in a label map (those of any of its class ids)."""
    import numpy as np

    return {name: np.isin(label_map, indices) for name, indices in ids.items()}


def _select(
    label_map: np.ndarray, ids: dict[str, list[int]], settings: DeskMask
) -> tuple[np.ndarray, dict[str, float]]:
    """`_select_regions` of a label map's target classes."""
    return _select_regions(_class_regions(label_map, ids), settings)


def _select_regions(
    regions: dict[str, np.ndarray], settings: DeskMask
) -> tuple[np.ndarray, dict[str, float]]:
    """The surfaces found and the objects kept (on a surface), without speckle, and the share
    of the map each target covers in it. ``regions``: a boolean map per target (the same
    shape; they may overlap, as boxes' masks do: where an object's region meets a surface's,
    the pixels count as the surface)."""
    import numpy as np

    shape = next(iter(regions.values())).shape
    total = shape[0] * shape[1]
    min_pixels = settings.min_area * total
    nothing = np.zeros(shape, dtype=bool)
    surface_names = [name for name in regions if name in settings.surfaces]
    surface_any = np.logical_or.reduce([regions[name] for name in surface_names] + [nothing])
    objects = np.logical_or.reduce(
        [region for name, region in regions.items() if name not in surface_names] + [nothing]
    )
    objects &= ~surface_any
    surface = _kept(surface_any, min_pixels)
    if settings.on_surface and surface_names:
        reach = max(2, round(_TOUCH * max(shape)))
        objects = _kept(objects, min_pixels, near=grow_mask(surface, reach))
    else:
        objects = _kept(objects, min_pixels)
    region = _filled(surface | objects, min_pixels)
    found: dict[str, float] = {}
    for name, pixels in regions.items():
        share = float(np.count_nonzero(pixels & region)) / total
        if share > 0:
            found[name] = share
    return region, found


def _nothing_found(
    label_map: np.ndarray, labels: dict[int, str], ids: dict[str, list[int]], settings: DeskMask
) -> ImageInputError:
    import numpy as np

    counts = np.bincount(label_map.ravel().clip(min=0))
    largest = [int(index) for index in np.argsort(-counts, kind="stable")[:5] if counts[index]]
    seen = ", ".join(
        f"{labels.get(index, str(index)).split(',')[0].strip()} "
        f"{100 * counts[index] / label_map.size:.0f}%"
        for index in largest
    )
    return ImageInputError(
        f"No {', '.join(ids)} found in the photo{standing_note(settings, list(ids))}, in parts "
        f"of at least {settings.min_area:.2%} of it. The segmentation model saw: {seen}. Use "
        "other targets (DeskMask(targets=[...])), a lower min_area, or draw the mask yourself "
        "(mask='mask.png': white to change, black to keep)."
    )


def find_desk_mask(
    photo: ImageInput,
    *,
    settings: DeskMask | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> FoundMask:
    """Find the desk and what stands on it in ``photo`` (a PIL image, a path, bytes or a
    binary file, read as every photo is: upright, RGB), as an edit mask at its size.

    Each target gets a region: on the closed-set route the pixels of its classes in the
    segmentation model's label map, on the open-vocabulary route the union of SAM's masks of
    the boxes Grounding DINO labelled with it. Then, the same on both: objects are kept where
    they touch a surface (``on_surface``), parts smaller than ``min_area`` are dropped (and
    holes that small filled), the region is grown by ``grow`` pixels and feathered over
    ``blur`` pixels.

    Raises:
        ImageInputError: an unreadable photo (`deskgen.load_image`); nothing of the targets in
            it (the message says what the model saw instead: the largest classes, or the
            detector's best boxes with their scores), or nothing left after shrinking (a
            negative ``grow``).
        ConfigError: a target name the segmentation model has no class for; more targets than
            the detector's prompt holds.
        ModelNotFoundError, ModelLoadError, ModelMismatchError: see `get_segmenter` (and, on
            the open-vocabulary route, `deskgen.masks._open_vocab.get_detector` and
            `get_box_segmenter`).
    """
    import numpy as np

    chosen = settings if settings is not None else DeskMask()
    image, _ = load_image(photo)  # upright RGB, as every photo deskgen reads
    if chosen.route == "open-vocabulary":
        detected = open_vocabulary_regions(
            image,
            chosen,
            device=device,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )
        used = detected.models
        region, found = _select_regions(detected.regions, chosen)
        if not region.any():
            raise nothing_detected(detected, chosen)
    else:
        model = chosen.model or DEFAULT_SEGMENTATION_MODEL
        used = {"model": model}
        segmenter = get_segmenter(
            model,
            device=device,
            revision=chosen.revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )
        labels = segmenter.labels
        ids = _target_ids(chosen, labels, model)
        label_map = segmenter(image, size=fit(image.size, WORK_SIDE))
        region, found = _select(label_map, ids, chosen)
        if not region.any():
            raise _nothing_found(label_map, labels, ids, chosen)
    if region.shape != (image.height, image.width):
        scaled = Image.fromarray(region.astype(np.uint8) * 255, "L").resize(
            image.size, Image.Resampling.BILINEAR
        )
        region = np.asarray(scaled) >= 128
    hard = grow_mask(region, chosen.grow)
    if not hard.any():
        raise ImageInputError(
            f"The desk found was shrunk away by grow={chosen.grow}: use a smaller shrink "
            "(grow closer to 0) or a positive grow."
        )
    return FoundMask(
        mask=Image.fromarray(feather_mask(hard, chosen.blur), "L"),
        hard=Image.fromarray(hard.astype(np.uint8) * 255, "L"),
        found=found,
        settings=chosen.model_copy(update=used),
        coverage=float(np.count_nonzero(hard)) / hard.size,
    )
