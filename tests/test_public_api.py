from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import deskgen

EXPECTED = {
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
    "LoraFile",
    "LoraMismatchError",
    "LoraSpec",
    "LoraTrainingConfig",
    "MemoryPlan",
    "MemoryReport",
    "LongPromptMode",
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
    "run_bench",
    "generate_dataset",
    "inspect_lora",
    "list_backends",
    "load_image",
    "plan_memory",
    "read_record",
    "register_backend",
    "train_lora",
}


def test_exported_names() -> None:
    assert set(deskgen.__all__) == EXPECTED
    assert deskgen.__all__ == sorted(deskgen.__all__)
    for name in deskgen.__all__:
        assert hasattr(deskgen, name)


def test_public_names_come_from_private_modules() -> None:
    for name in deskgen.__all__:
        obj = getattr(deskgen, name)
        module = getattr(obj, "__module__", "deskgen._version")
        private = (
            "deskgen._",
            "deskgen.prompts._",
            "deskgen.quant._",
            "deskgen.bench._",
            "deskgen.masks._",
        )
        assert module.startswith(private), (
            name,
            module,
        )


def test_bench_namespace_exports() -> None:
    import deskgen.bench

    assert deskgen.bench.__all__ == sorted(deskgen.bench.__all__)
    for name in deskgen.bench.__all__:
        obj = getattr(deskgen.bench, name)
        if callable(obj) and not repr(obj).startswith("typing."):
            assert obj.__module__.startswith("deskgen.bench._"), name


def test_masks_namespace_exports() -> None:
    import deskgen.masks

    assert deskgen.masks.__all__ == sorted(deskgen.masks.__all__)
    for name in deskgen.masks.__all__:
        obj = getattr(deskgen.masks, name)
        if callable(obj):
            assert obj.__module__.startswith("deskgen.masks._"), name


def test_import_is_light() -> None:
    code = (
        "import sys, deskgen; deskgen.list_backends(); "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'openai', 'numpy', 'cv2') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_py_typed_marker_ships() -> None:
    assert (Path(deskgen.__file__).parent / "py.typed").is_file()


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    assert version("deskgen") == deskgen.__version__
