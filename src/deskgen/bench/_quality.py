"""Quality columns without extra downloads: structure kept (SSIM of edge maps, with OpenCV's
Canny and torchmetrics' SSIM; for masked runs outside and inside the mask apart) and prompt
adherence (torchmetrics' CLIP score with a CLIP model the caller has locally)."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

from .._exceptions import MissingDependencyError, ModelLoadError
from .._images import prepare_image

__all__ = ["ClipScorer", "edge_map", "edge_ssim", "masked_edge_ssim"]

CANNY_THRESHOLDS = (100, 200)
"""Canny's hysteresis thresholds: the usual ones (diffusers' ControlNet examples)."""
EDGE_LEVEL = 0.05
"""Where a softened edge map exceeds this, there is an edge nearby (SSIM is averaged there)."""


def _require(what: str) -> tuple[Any, Any]:
    try:
        import cv2
        import torchmetrics.functional.image as tm_image
    except ImportError as exc:
        raise MissingDependencyError(
            what, extra="bench", missing=["torchmetrics", "opencv-python-headless"]
        ) from exc
    return cv2, tm_image


def edge_map(image: Image.Image) -> Any:
    """Canny edges of ``image`` (grey), softened by a Gaussian of sigma 1% of the shorter side
    so that edges a few pixels apart still count as kept; floats in 0..1."""
    import numpy as np

    cv2, _ = _require("Edge maps")
    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, *CANNY_THRESHOLDS).astype(np.float32) / 255.0
    sigma = max(1.0, 0.01 * min(image.size))
    return cv2.GaussianBlur(edges, (0, 0), sigma)


def edge_ssim(photo: Image.Image, image: Image.Image) -> float:
    """How much of the photo's structure ``image`` kept: the SSIM of both edge maps, averaged
    over the places where either has edges (flat areas, equal in both, would otherwise count
    as kept), the photo first cropped and resized to ``image`` as the backends do. 1.0: the
    same edges; near 0: unrelated or none. Deterministic, on the CPU.

    Raises:
        MissingDependencyError: torchmetrics or OpenCV is missing (``deskgen[bench]``).
    """
    import torch

    _, tm_image = _require("Edge SSIM")
    reference = prepare_image(photo.convert("RGB"), image.size)
    a = torch.from_numpy(edge_map(reference))[None, None]
    b = torch.from_numpy(edge_map(image))[None, None]
    _, full = tm_image.structural_similarity_index_measure(
        b, a, data_range=1.0, return_full_image=True
    )
    where = torch.maximum(a, b) > EDGE_LEVEL
    if not bool(where.any()):
        return 1.0  # neither has an edge: nothing was lost
    return float(full[where].mean())


def masked_edge_ssim(
    photo: Image.Image, image: Image.Image, mask: Image.Image
) -> tuple[float, float]:
    """``(outside, inside)``: `edge_ssim` apart outside the mask (was the room kept?) and
    inside it (did the desk keep its place and shape?). The photo and the mask (grey, white:
    changed) are first cropped and resized to ``image`` as the backends do.

    Each side is the SSIM of edge maps averaged over the places where either has edges, as
    `edge_ssim`, restricted to the mask's black (outside) or white (inside) pixels: the
    feathered edge (grey) belongs to neither. Each side is scored on its own picture: the
    output on that side, the photo's pixels everywhere else (the feathered edge included), so
    what changed on one side can't reach the other's edges through Canny's hysteresis, the
    edge blur or SSIM's window. ``outside`` is exactly 1.0 when the output's pixels outside
    the mask are the photo's own (a result with ``keep_unmasked``), ``inside`` when they are
    inside it; a side without edges counts as kept (1.0).

    Raises:
        MissingDependencyError: torchmetrics or OpenCV is missing (``deskgen[bench]``).
    """
    import numpy as np

    _require("Edge SSIM")
    output = image.convert("RGB")
    reference = prepare_image(photo.convert("RGB"), output.size)
    grey = mask.convert("L")
    if grey.size != output.size:
        grey = ImageOps.fit(grey, output.size, method=Image.Resampling.BILINEAR)
    values = np.asarray(grey)
    photo_edges = edge_map(reference)
    scores = []
    for region in (values == 0, values == 255):
        side = Image.fromarray(region.astype(np.uint8) * 255, mode="L")
        view = Image.composite(output, reference, side)  # the output on this side only
        scores.append(_region_ssim(reference, photo_edges, view, region))
    return scores[0], scores[1]


def _region_ssim(reference: Image.Image, edges: Any, view: Image.Image, region: Any) -> float:
    """The SSIM of ``reference``'s ``edges`` and ``view``'s, averaged over ``region``'s edge
    places; 1.0 when ``view`` is ``reference`` or the region has no edges."""
    import numpy as np
    import torch

    _, tm_image = _require("Edge SSIM")
    if np.array_equal(np.asarray(reference), np.asarray(view)):
        return 1.0  # the same pixels: the same edges
    a = torch.from_numpy(edges)[None, None]
    b = torch.from_numpy(edge_map(view))[None, None]
    _, full = tm_image.structural_similarity_index_measure(
        b, a, data_range=1.0, return_full_image=True
    )
    where = (torch.maximum(a, b) > EDGE_LEVEL) & torch.from_numpy(region)[None, None]
    if not bool(where.any()):
        return 1.0
    return float(full[where].mean())


class ClipScorer:
    """torchmetrics' CLIP score with a CLIP model loaded from a folder or the local Hugging Face
    cache (safetensors only, no remote code). Prompts over CLIP's 77 tokens are truncated by
    the tokenizer (keeping the end-of-text token CLIP pools from) and say so."""

    def __init__(self, model: str, *, device: str = "cpu") -> None:
        try:
            from torchmetrics.functional.multimodal import clip_score  # noqa: F401
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as exc:
            raise MissingDependencyError(
                "The CLIP score", extra="bench", missing=["torchmetrics", "transformers"]
            ) from exc
        try:
            # local only: a quality column must not start a download of a GB
            local = {"local_files_only": True}
            self._model = CLIPModel.from_pretrained(model, use_safetensors=True, **local)
            self._model.to(device)
            self._processor = CLIPProcessor.from_pretrained(model, **local)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(
                f"Could not load the CLIP model {model!r} (safetensors only, from the disk): "
                f"{first}. Pass a folder saved with CLIPModel/CLIPProcessor.save_pretrained(), "
                f"or a hub id in the local cache (`hf download {model}` first)."
            ) from exc
        self._model.eval()
        self.limit: int = int(self._model.config.text_config.max_position_embeddings)

    def tokens(self, prompt: str) -> int:
        return len(self._processor.tokenizer(prompt, verbose=False)["input_ids"])

    def score(self, image: Image.Image, prompt: str) -> tuple[float, str | None]:
        """``(score, note)``: the CLIP score (0-100, higher: closer to the prompt) and a note
        when the prompt was truncated."""
        import numpy as np
        import torch
        from torchmetrics.functional.multimodal import clip_score

        processor = _Truncating(self._processor, self.limit)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        with torch.no_grad():
            value = clip_score(pixels, prompt, lambda: (_Features(self._model), processor))
        count = self.tokens(prompt)
        note = (
            f"CLIP reads {self.limit} tokens: the prompt's last {count - self.limit} of "
            f"{count} were not scored"
            if count > self.limit
            else None
        )
        return float(value), note


class _Features:
    """A CLIP model whose ``get_*_features`` return the projected embeddings as tensors:
    transformers 5 returns them in an output object's ``pooler_output``, which torchmetrics
    (1.9) does not read."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.config = model.config

    def to(self, device: Any) -> _Features:
        self._model.to(device)
        return self

    def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
        return _tensor(self._model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
        return _tensor(self._model.get_text_features(*args, **kwargs))


def _tensor(output: Any) -> Any:
    return output if hasattr(output, "norm") else output.pooler_output


class _Truncating:
    """A CLIP processor whose texts are truncated by the tokenizer (torchmetrics cuts the ids
    after tokenizing, which drops the end-of-text token CLIP's pooling reads)."""

    def __init__(self, processor: Any, limit: int) -> None:
        self._processor = processor
        self._limit = limit

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("text") is not None:
            kwargs.update(truncation=True, max_length=self._limit)
        return self._processor(*args, **kwargs)
