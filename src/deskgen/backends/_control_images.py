"""Control images from the desk photo, with the field's libraries: OpenCV's Canny detector for
edges, a transformers depth-estimation model for depth. Imported by the ControlNet backend
only; nothing here is imported by ``import deskgen``."""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

from PIL import Image

from .._exceptions import MissingDependencyError, ModelMismatchError, ModelNotFoundError

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


class DepthEstimator:
    """A transformers depth-estimation model, loaded once and shared by every request.

    Maps are relative inverse depth (near is bright), min-max normalised to 0..255 at the
    size asked for, three channels: what SDXL depth ControlNets were trained on.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str,
        dtype: Any,
        local: bool,
        cache_dir: str | None,
        local_files_only: bool,
        allow_pickle: bool,
        missing_message: Any,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        source = os.path.expanduser(model) if local else model
        if local and not os.path.isfile(os.path.join(source, "config.json")):
            raise ModelNotFoundError(
                f"No depth model folder with a config.json at {model!r}: pass depth_model= a "
                "folder saved with save_pretrained() or a hub id such as "
                "depth-anything/Depth-Anything-V2-Small-hf."
            )
        common = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        try:
            # the PIL image processor when torchvision is absent (transformers would warn)
            self.model = AutoModelForDepthEstimation.from_pretrained(
                source, dtype=dtype, use_safetensors=None if allow_pickle else True, **common
            )
            backend = None if importlib.util.find_spec("torchvision") else "pil"
            self.processor = AutoImageProcessor.from_pretrained(source, backend=backend, **common)
        except ValueError as exc:
            if "Unrecognized" in str(exc) or "configuration class" in str(exc):
                raise ModelMismatchError(
                    f"{model!r} is not a depth-estimation model ({str(exc).splitlines()[0]}). "
                    "Use one that transformers' AutoModelForDepthEstimation loads, e.g. "
                    "depth-anything/Depth-Anything-V2-Small-hf or Intel/dpt-hybrid-midas."
                ) from exc
            raise ModelNotFoundError(missing_message(model, exc)) from exc
        except OSError as exc:
            if local:
                raise ModelNotFoundError(
                    f"Could not load the depth model {model!r}: {str(exc).splitlines()[0]}"
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
        self.model = None
