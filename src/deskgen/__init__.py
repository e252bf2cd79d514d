"""deskgen: turn a photo of a desk (or a description of one) into a picture of a better desk.

```python
from deskgen import DeskGenerator

with DeskGenerator("sdxl", model="stabilityai/stable-diffusion-xl-base-1.0") as gen:
    result = gen.generate(prompt="a tidy minimalist desk, warm light", image="desk.jpg", seed=42)
    result.save("makeover.png")
```

Importing deskgen is light: torch, diffusers and transformers are imported only when a backend
that needs them is created.
"""

from ._controls import Control
from ._dataset import (
    DatasetFailure,
    DatasetItem,
    DatasetPlan,
    DatasetReport,
    DeskGrid,
    RayOptions,
    generate_dataset,
)
from ._exceptions import (
    AuthenticationError,
    BackendError,
    ConfigError,
    ContentPolicyError,
    DeskgenError,
    GenerationCancelledError,
    GeneratorClosedError,
    ImageInputError,
    ImageTooLargeError,
    InvalidOutputError,
    InvalidRequestError,
    LoraMismatchError,
    MissingDependencyError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    OutOfMemoryError,
    PromptTooLongError,
    RateLimitedError,
    RecordError,
    ServiceError,
    ServiceRequestError,
    ServiceTimeoutError,
    UnknownBackendError,
    UnsupportedOperationError,
)
from ._generator import DeskGenerator, RequestFields
from ._generator_spec import GeneratorSpec
from ._images import ImageInfo, load_image
from ._lora import LoadedLora, LoraFile, LoraSpec, inspect_lora
from ._memory_report import MemoryReport
from ._models import (
    GenerationRequest,
    GenerationResult,
    PeakMemory,
    StepProgress,
    Timings,
)
from ._planner import MemoryPlan, plan_memory
from ._record import read_record
from ._registry import BackendInfo, list_backends, register_backend
from ._training import LoraTrainingConfig, TrainingProgress, TrainingResult, train_lora
from ._version import __version__
from .bench._config import BenchConfig, BenchEntry
from .bench._report import BenchReport
from .bench._run import run_bench
from .masks._settings import DeskMask
from .prompts._description import DeskDescription
from .prompts._report import LongPromptMode, PromptReport
from .prompts._spec import DeskItem, DeskSpec
from .quant._config import QuantConfig

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendInfo",
    "BenchConfig",
    "BenchEntry",
    "BenchReport",
    "ConfigError",
    "ContentPolicyError",
    "Control",
    "DatasetFailure",
    "DatasetItem",
    "DatasetPlan",
    "DatasetReport",
    "DeskDescription",
    "DeskGenerator",
    "DeskGrid",
    "DeskItem",
    "DeskMask",
    "DeskSpec",
    "DeskgenError",
    "GenerationCancelledError",
    "GenerationRequest",
    "GenerationResult",
    "GeneratorClosedError",
    "GeneratorSpec",
    "ImageInfo",
    "ImageInputError",
    "ImageTooLargeError",
    "InvalidOutputError",
    "InvalidRequestError",
    "LoadedLora",
    "LongPromptMode",
    "LoraFile",
    "LoraMismatchError",
    "LoraSpec",
    "LoraTrainingConfig",
    "MemoryPlan",
    "MemoryReport",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "PeakMemory",
    "PromptReport",
    "PromptTooLongError",
    "QuantConfig",
    "RateLimitedError",
    "RayOptions",
    "RecordError",
    "RequestFields",
    "ServiceError",
    "ServiceRequestError",
    "ServiceTimeoutError",
    "StepProgress",
    "Timings",
    "TrainingProgress",
    "TrainingResult",
    "UnknownBackendError",
    "UnsupportedOperationError",
    "__version__",
    "generate_dataset",
    "inspect_lora",
    "list_backends",
    "load_image",
    "plan_memory",
    "read_record",
    "register_backend",
    "run_bench",
    "train_lora",
]
