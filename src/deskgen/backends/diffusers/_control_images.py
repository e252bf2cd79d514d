"""Control images from the desk photo, with the field's libraries: OpenCV's Canny detector for
edges, a transformers depth-estimation model for depth. Imported by the ControlNet backend
only; nothing here is imported by ``import deskgen``."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image

from ..._controls import DEFAULT_DEPTH_MODEL
from ..._exceptions import (
    GeneratorClosedError,
    MissingDependencyError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
)
from ..._loading import MISSING_SAFETENSORS, weights_source

__all__ = ["DepthEstimator", "canny_edges", "require_opencv"]


def require_opencv() -> Any:
    """The ``cv2`` module, or a `MissingDependencyError` naming the extra that installs it."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "Canny controls", extra="controlnet", missing=["opencv-python-headless"]
        ) from exc
    return cv2


def canny_edges(image: Image.Image, *, low_threshold: int, high_threshold: int) -> Image.Image:
    """White edges on black, as SDXL canny ControlNets were trained on: OpenCV's ``Canny`` on
    the RGB image (the strongest gradient of the three channels), repeated to three channels."""
    import numpy as np

    cv2 = require_opencv()
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low_threshold, high_threshold)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


_METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "depth_pro", "prompt_depth_anything"})
"""transformers depth models that predict metric depth (far is large): the wrong way round for
depth ControlNets, which were trained on relative inverse depth (near is bright)."""


class DepthEstimator:
    """A transformers depth-estimation model, loaded once and shared by every request.

    Maps are relative inverse depth (near is bright), min-max normalised to 0..255 at the
    size asked for, three channels: what SDXL depth ControlNets were trained on. Metric-depth
    models are refused at load.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str,
        dtype: Any,
        cache_dir: str | None,
        local_files_only: bool,
        allow_pickle: bool,
        missing_message: Callable[[str, BaseException], str],
    ) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

        local, source = weights_source(
            model,
            what="depth model",
            hint="pass depth_model= a folder saved with save_pretrained() or a hub id such as "
            f"{DEFAULT_DEPTH_MODEL}.",
        )
        common = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        try:
            config = AutoConfig.from_pretrained(source, **common)
        except ValueError as exc:  # no or an unknown model_type
            raise _not_a_depth_model(model, str(exc)) from exc
        except OSError as exc:
            if local:
                raise ModelLoadError(f"Could not read the depth model {model!r}: {exc}") from exc
            raise ModelNotFoundError(missing_message(model, exc)) from exc
        model_type = str(getattr(config, "model_type", ""))
        if (
            model_type in _METRIC_MODEL_TYPES
            or getattr(config, "depth_estimation_type", None) == "metric"
        ):
            raise ModelMismatchError(
                f"{model!r} predicts metric depth ({model_type}): far is large, the opposite of "
                "the relative inverse depth SDXL depth ControlNets were trained on. Use a "
                f"relative depth model, e.g. {DEFAULT_DEPTH_MODEL} or Intel/dpt-hybrid-midas."
            )
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(
                source, dtype=dtype, use_safetensors=None if allow_pickle else True, **common
            )
            # the PIL image processor when torchvision is absent (transformers would warn)
            backend = None if importlib.util.find_spec("torchvision") else "pil"
            self.processor = AutoImageProcessor.from_pretrained(source, backend=backend, **common)
        except ValueError as exc:
            if "Unrecognized" in str(exc) or "configuration class" in str(exc):
                raise _not_a_depth_model(model, str(exc)) from exc
            raise ModelLoadError(f"Could not load the depth model {model!r}: {exc}") from exc
        except OSError as exc:
            text = str(exc)
            if MISSING_SAFETENSORS.search(text):
                raise ModelLoadError(
                    f"The depth model {model!r} has no safetensors weights. deskgen loads "
                    "safetensors only by default because pickle files can run code; pass "
                    "allow_pickle=True if you trust it, or convert it to safetensors."
                ) from exc
            if local:
                raise ModelLoadError(
                    f"Could not load the depth model {model!r}: {text.splitlines()[0]}"
                ) from exc
            raise ModelNotFoundError(missing_message(model, exc)) from exc
        self.model.to(device).eval()
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image) -> Image.Image:
        """The depth map of ``image``, at its size."""
        import numpy as np
        import torch

        with self._lock, torch.no_grad():
            if self.model is None:
                raise GeneratorClosedError(
                    "This generator was closed and its weights freed; create a new DeskGenerator."
                )
            inputs = self.processor(images=image, return_tensors="pt")
            inputs = inputs.to(self.device, dtype=self.dtype)
            outputs = self.model(**inputs)
            post = self.processor.post_process_depth_estimation(
                outputs, target_sizes=[(image.height, image.width)]
            )
            depth = post[0]["predicted_depth"].float()
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))

    def close(self) -> None:
        with self._lock:  # after a running estimate
            self.model = None


def _not_a_depth_model(model: str, why: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"{model!r} is not a depth-estimation model ({why.splitlines()[0]}). Use one that "
        "transformers' AutoModelForDepthEstimation loads, e.g. "
        f"{DEFAULT_DEPTH_MODEL} or Intel/dpt-hybrid-midas."
    )
