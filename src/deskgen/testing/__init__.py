"""Tiny random-weight pipelines in the real Hugging Face on-disk layout, for offline tests.

```python
from deskgen.testing import make_tiny_pipeline
path = make_tiny_pipeline("sdxl", tmp_path / "tiny-sdxl")
gen = DeskGenerator("sdxl", model=str(path), device="cpu")
```

The folders are written with ``save_pretrained`` (``model_index.json``, one sub-folder per
component, safetensors weights, the real CLIP tokenizer files), so they load through exactly the
code path real hub weights take. Same arguments and seed give byte-identical weights. The images
they make are noise: they test plumbing, not quality. Needs the ``local`` extra.

Besides the tiny models (`make_tiny_pipeline`, `make_tiny_controlnet`, `make_tiny_lora`,
`make_tiny_llama`, `make_tiny_janus`, `make_tiny_clip`, `make_tiny_depth_model`,
`make_tiny_tokenizer`, `make_tiny_qwen_image_edit`, `make_tiny_segmenter` with
`make_desk_photo`, a synthetic desk photo whose desk region is known) it has
`FakeOpenAIServer`, a local stand-in for OpenAI's APIs, `FakeBackend`
(`register_fake_backend`), a pure-Python backend, and
`deskgen.testing.contract.BackendContract`, the tests every backend passes (seed replay,
closing, cancelling, threads, bad inputs), to inherit in a backend's own tests:

```python
from deskgen.testing.contract import BackendContract

class TestMyBackendContract(BackendContract):
    def make_generator(self, tmp_path, tiny_sdxl_path):  # other parameters: fixtures
        return DeskGenerator("my-backend", model=str(tiny_sdxl_path), device="cpu")
```

Nothing here imports torch, diffusers or transformers before a function needs them, and only
`deskgen.testing.contract` imports pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..prompts._tokenizers import clip_tokenizer_dir
from ._common import _CORPUS as _CORPUS  # `_qwen_image` imports these four from here
from ._common import _MARKER as _MARKER
from ._common import _built as _built
from ._common import _require_local as _require_local
from ._diffusers import TinyKind, make_tiny_controlnet, make_tiny_lora, make_tiny_pipeline
from ._fake_backend import FakeBackend, FakeBackendOptions, register_fake_backend
from ._flux import make_tiny_flux_kontext
from ._flux2 import make_tiny_flux2_klein
from ._gguf import make_tiny_gguf
from ._openai_server import FakeAnswer, FakeOpenAIServer, FakeRequest
from ._qwen_image import make_tiny_qwen_image_edit, qwen_processor_without_torchvision
from ._segmentation import make_desk_photo, make_tiny_segmenter
from ._single_file import make_tiny_single_file
from ._transformers import (
    make_tiny_clip,
    make_tiny_depth_model,
    make_tiny_janus,
    make_tiny_llama,
    make_tiny_tokenizer,
)

if TYPE_CHECKING:
    from .contract import BackendContract

__all__ = [
    "BackendContract",
    "FakeAnswer",
    "FakeBackend",
    "FakeBackendOptions",
    "FakeOpenAIServer",
    "FakeRequest",
    "TinyKind",
    "clip_tokenizer_dir",
    "make_desk_photo",
    "make_tiny_clip",
    "make_tiny_controlnet",
    "make_tiny_depth_model",
    "make_tiny_flux2_klein",
    "make_tiny_flux_kontext",
    "make_tiny_gguf",
    "make_tiny_janus",
    "make_tiny_llama",
    "make_tiny_lora",
    "make_tiny_pipeline",
    "make_tiny_qwen_image_edit",
    "make_tiny_segmenter",
    "make_tiny_single_file",
    "make_tiny_tokenizer",
    "qwen_processor_without_torchvision",
    "register_fake_backend",
]


def __getattr__(name: str) -> Any:
    """`BackendContract` on first use: it imports pytest, which nothing else here needs."""
    if name == "BackendContract":
        from .contract import BackendContract

        return BackendContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
