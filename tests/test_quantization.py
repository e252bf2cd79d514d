"""`QuantConfig`: components quantized as they load (each method and weight type that runs on a
CPU), the memory report, refusals before loading, and the LoRA order rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deskgen import (
    ConfigError,
    DeskGenerator,
    QuantConfig,
    UnsupportedOperationError,
)

pytest.importorskip("optimum.quanto")
pytest.importorskip("torchao")


def _pixels(gen: DeskGenerator) -> np.ndarray[Any, np.dtype[np.int16]]:
    image = gen.generate(prompt="a tidy desk", seed=1, steps=3).image
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def base_pixels(tiny_sdxl_path: Path) -> np.ndarray[Any, np.dtype[np.int16]]:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        return _pixels(gen)


@pytest.mark.parametrize(
    ("method", "weights", "activations", "smaller"),
    [
        ("quanto", "int8", None, 3.0),  # quanto also quantizes the convolutions
        ("quanto", "int4", None, 5.0),
        ("quanto", "fp8", None, 3.0),
        ("torchao", "int8", None, 1.4),  # torchao: linear layers only
        ("torchao", "fp8", None, 1.4),
        ("torchao", "int8", "int8", 1.4),
    ],
)
def test_each_method_quantizes_at_load_and_generates(
    tiny_sdxl_path: Path,
    base_pixels: np.ndarray[Any, np.dtype[np.int16]],
    method: str,
    weights: str,
    activations: str | None,
    smaller: float,
) -> None:
    config = QuantConfig(method=method, weights=weights, activations=activations)  # type: ignore[arg-type]
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config) as gen:
        report = gen.memory_report()
        unet = report.components["unet"]
        label = " + int8 activations" if activations else ""
        assert unet.quantization == f"{weights}{label} ({method})"
        assert unet.ratio is not None and unet.ratio > smaller
        assert report.components["vae"].quantization is None
        assert report.load_peak is not None and report.load_peak.bytes > 0
        pixels = _pixels(gen)
    # quantized, not broken: close to the full-precision image, not equal to it
    difference = np.abs(pixels - base_pixels).mean()
    assert 0 < difference < 10


def test_components_and_exclusions(tiny_sdxl_path: Path) -> None:
    from optimum.quanto import QLinear

    config = QuantConfig(
        method="quanto", components=("unet", "text_encoder_2"), exclude=("*attn2*",)
    )
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config) as gen:
        pipe = gen.backend.pipeline  # type: ignore[attr-defined]
        block = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
        assert isinstance(block.attn1.to_q, QLinear)
        assert not isinstance(block.attn2.to_q, QLinear)  # excluded
        assert type(block.attn2.to_q) is torch.nn.Linear
        assert any(isinstance(m, QLinear) for m in pipe.text_encoder_2.modules())
        assert not any(isinstance(m, QLinear) for m in pipe.text_encoder.modules())
        assert set(gen.memory_report().components) >= {"unet", "vae", "text_encoder"}


@pytest.mark.parametrize("nets", [["canny"], ["canny", "depth"]])
def test_controlnets_quantized_too(
    tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path], tmp_path: Path, nets: list[str]
) -> None:
    from deskgen.demo import sample_desk_photo
    from deskgen.quant import save_quantized

    config = QuantConfig(method="quanto", components=("unet", "controlnet"))
    with DeskGenerator(
        "sdxl-controlnet",
        model=str(tiny_sdxl_path),
        controlnet=[str(tiny_control_paths[n]) for n in nets],
        control=["canny"] * len(nets),
        device="cpu",
        quantization=config,
    ) as gen:
        report = gen.memory_report()
        assert report.components["controlnet"].quantization == "int8 (quanto)"
        assert (report.components["controlnet"].ratio or 0) > 2
        gen.generate(prompt="a desk", image=sample_desk_photo(), steps=2, seed=1)
        with pytest.raises(ConfigError, match="save the quantized base"):
            save_quantized(gen, tmp_path / "q")


def test_refused_before_loading(tmp_path: Path, tiny_sdxl_path: Path) -> None:
    missing = str(tmp_path / "no-model")  # would be ModelNotFoundError if loading started
    with pytest.raises(ConfigError, match="int4 weights need its CUDA kernels"):
        DeskGenerator("sdxl", model=missing, quantization=QuantConfig(weights="int4"))
    with pytest.raises(ConfigError, match="activations"):
        DeskGenerator(
            "sdxl",
            model=missing,
            quantization=QuantConfig(method="quanto", weights="int8", activations="int8"),
        )
    with pytest.raises(ConfigError, match="LoRAs can't be applied to quantized"):
        DeskGenerator("sdxl", model=missing, quantization=QuantConfig(), loras=["x.safetensors"])
    with pytest.raises(ConfigError, match="no weights to quantize"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=QuantConfig(components=("tokenizer",)),
        )
    with pytest.raises(ConfigError, match="lacks: choose from"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=QuantConfig(components=("transformer",)),
        )


def test_lora_on_a_quantized_generator_is_refused(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from deskgen.testing import make_tiny_lora

    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "l.safetensors")
    with (
        DeskGenerator(
            "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=QuantConfig()
        ) as gen,
        pytest.raises(UnsupportedOperationError, match="quantized"),
    ):
        gen.load_lora(lora)


def test_memory_report_of_a_plain_generator(tiny_sdxl_path: Path) -> None:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        report = gen.memory_report()
    assert report.components["unet"].bytes_before is None
    assert report.total_bytes == sum(c.bytes for c in report.components.values())


@pytest.mark.parametrize(
    ("method", "weights"),
    [
        ("quanto", "int8"),
        ("quanto", "int4"),
        ("quanto", "fp8"),
        ("torchao", "int8"),
        ("torchao", "fp8"),
    ],
)
def test_saved_quantized_reloads_to_the_same_images(
    tiny_sdxl_path: Path, tmp_path: Path, method: str, weights: str
) -> None:
    from deskgen.quant import save_quantized

    config = QuantConfig(method=method, weights=weights, components=("unet", "text_encoder_2"))  # type: ignore[arg-type]
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config) as gen:
        before = _pixels(gen)
        sizes = {k: v.bytes for k, v in gen.memory_report().components.items()}
        save_quantized(gen, tmp_path / "q")
    assert (tmp_path / "q" / "unet" / "deskgen_quantization.json").is_file()
    assert not (tmp_path / "q" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    with DeskGenerator("sdxl", model=str(tmp_path / "q"), device="cpu") as again:
        assert np.array_equal(_pixels(again), before)
        report = again.memory_report()
        assert report.components["unet"].quantization == f"{weights} ({method})"
        assert {k: v.bytes for k, v in report.components.items()} == sizes
    with pytest.raises(ConfigError, match="already quantized"):
        DeskGenerator("sdxl", model=str(tmp_path / "q"), device="cpu", quantization=config)
    with pytest.raises(ConfigError, match="dtype='float32'"):
        DeskGenerator("sdxl", model=str(tmp_path / "q"), device="cpu", dtype="bfloat16")


def test_save_refusals(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from deskgen.quant import save_quantized

    with (
        DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as plain,
        pytest.raises(ConfigError, match="no quantized component"),
    ):
        save_quantized(plain, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with (
        DeskGenerator(
            "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=QuantConfig()
        ) as gen,
        pytest.raises(ConfigError, match="not an empty folder"),
    ):
        save_quantized(gen, tmp_path / "full")


def test_quantize_command(
    tiny_sdxl_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deskgen.cli import main

    out = tmp_path / "q"
    argv = ["quantize", str(tiny_sdxl_path), "--method", "quanto", "--weights", "int4"]
    argv += ["--component", "unet", "--exclude", "*conv_out*", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "unet:" in text and "int4 (quanto)" in text and "x smaller" in text
    generate = ["generate", "a desk", "--model", str(out), "--device", "cpu", "--steps", "2"]
    code = main(
        [*generate, "--out", str(tmp_path / "g.png"), "--no-progress", "--dtype", "float32"]
    )
    assert code == 0
    assert main(argv) == 1  # not empty
    assert "not empty" in capsys.readouterr().err


def test_quantize_a_loaded_generator(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from deskgen.quant import quantize
    from deskgen.testing import make_tiny_lora

    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        lora = gen.load_lora(make_tiny_lora(tiny_sdxl_path, tmp_path / "l.safetensors"))
        with pytest.raises(ConfigError, match="LoRAs are loaded"):
            quantize(gen, QuantConfig(method="quanto"))
        gen.unload_lora(lora.name)
        report = quantize(gen, QuantConfig(method="quanto", components=("unet", "vae")))
        assert report.components["unet"].quantization == "int8 (quanto)"
        assert report.components["vae"].ratio is not None
        with pytest.raises(ConfigError, match="quantized already"):
            quantize(gen, QuantConfig(method="quanto"))
        with pytest.raises(UnsupportedOperationError, match="quantized"):
            gen.load_lora(tmp_path / "l.safetensors")
        gen.generate(prompt="a desk", steps=2, seed=1)


def test_save_after_quantize_and_in_bfloat16(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    """Regressions: saving a generator quantized after load; int8 CPU kernels on a bfloat16
    folder reloaded from unaligned safetensors buffers (a crash once)."""
    from deskgen.quant import quantize, save_quantized

    options: dict[str, Any] = {"model": str(tiny_sdxl_path), "device": "cpu"}
    with DeskGenerator("sdxl", dtype="bfloat16", **options) as gen:
        quantize(gen, QuantConfig(method="quanto"))
        quantize(gen, QuantConfig(method="torchao", components=("text_encoder_2",)))
        before = _pixels(gen)
        save_quantized(gen, tmp_path / "q")
    with DeskGenerator("sdxl", model=str(tmp_path / "q"), device="cpu", dtype="bfloat16") as again:
        assert np.array_equal(_pixels(again), before)
        components = again.memory_report().components
        assert components["unet"].quantization == "int8 (quanto)"
        assert components["text_encoder_2"].quantization == "int8 (torchao)"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize(
    ("method", "weights"), [("quanto", "int8"), ("torchao", "int8"), ("torchao", "fp8")]
)
def test_quantized_on_cuda_saves_and_reloads(
    tiny_sdxl_path: Path, tmp_path: Path, method: str, weights: str
) -> None:
    from deskgen.quant import save_quantized

    config = QuantConfig(method=method, weights=weights, components=("unet", "text_encoder_2"))  # type: ignore[arg-type]
    options: dict[str, Any] = {"device": "cuda", "dtype": "bfloat16"}
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), quantization=config, **options) as gen:
        before = _pixels(gen)
        assert gen.memory_report().load_peak.kind == "cuda_allocated"  # type: ignore[union-attr]
        save_quantized(gen, tmp_path / "q")
    with DeskGenerator("sdxl", model=str(tmp_path / "q"), **options) as again:
        assert np.array_equal(_pixels(again), before)


@cuda
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_on_cuda(tiny_sdxl_path: Path, offload: str) -> None:
    options: dict[str, Any] = {"model": str(tiny_sdxl_path), "device": "cuda", "dtype": "float32"}
    with DeskGenerator("sdxl", **options) as plain:
        expected = _pixels(plain)
    with DeskGenerator("sdxl", offload=offload, vae_tiling=True, **options) as gen:
        assert gen.backend.offload == offload  # type: ignore[attr-defined]
        assert np.abs(_pixels(gen) - expected).max() <= 1
    with DeskGenerator("sdxl", memory="auto", **options) as planned:
        assert planned.memory_plan is not None and planned.memory_plan.budget_source == "gpu"
        planned.generate(prompt="a desk", steps=2, seed=1)


def test_hidream_components_quantized_as_they_load(tiny_hidream_paths: dict[str, Path]) -> None:
    options: dict[str, Any] = {
        "model": str(tiny_hidream_paths["pipeline"]),
        "llama_model": str(tiny_hidream_paths["llama"]),
        "edition": "full",
        "device": "cpu",
    }
    with DeskGenerator("hidream", quantization=QuantConfig(method="quanto"), **options) as gen:
        components = gen.memory_report().components
        for name in ("transformer", "text_encoder_3", "text_encoder_4"):
            assert components[name].quantization == "int8 (quanto)", name
        assert components["vae"].quantization is None
        gen.generate(prompt="a desk", steps=2, seed=1)
    with pytest.raises(ConfigError, match="not both"):
        DeskGenerator(
            "hidream", quantization=QuantConfig(), quantize_text_encoders="int8", **options
        )


def test_a_crafted_index_cannot_import_other_modules(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from deskgen import ModelLoadError

    folder = tmp_path / "crafted"
    shutil.copytree(tiny_sdxl_path, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["os", "system"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="diffusers and transformers libraries only"):
        DeskGenerator("sdxl", model=str(folder), device="cpu", quantization=QuantConfig())


def test_a_reloaded_quantized_model_saves_again_and_saves_are_whole(
    tiny_sdxl_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regressions: saving a generator loaded from a saved folder (KeyError once); a failed save
    leaves no half-written folder."""
    import deskgen.quant._saved as saved_module
    from deskgen.quant import save_quantized

    options: dict[str, Any] = {"device": "cpu"}
    config = QuantConfig(method="quanto", weights="int4")
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), quantization=config, **options) as gen:
        save_quantized(gen, tmp_path / "a")
    with DeskGenerator("sdxl", model=str(tmp_path / "a"), **options) as again:
        before = _pixels(again)
        save_quantized(again, tmp_path / "b")

        def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(saved_module, "_write_json", broken)
        with pytest.raises(OSError, match="disk full"):
            save_quantized(again, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.")]
    with DeskGenerator("sdxl", model=str(tmp_path / "b"), **options) as twice:
        assert np.array_equal(_pixels(twice), before)


def test_a_damaged_record_is_a_typed_error(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from deskgen import ModelLoadError
    from deskgen.quant import save_quantized

    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=QuantConfig()
    ) as gen:
        save_quantized(gen, tmp_path / "q")
    (tmp_path / "q" / "unet" / "deskgen_quantization.json").write_text('{"format": 1}')
    with pytest.raises(ModelLoadError, match="damaged or from another version"):
        DeskGenerator("sdxl", model=str(tmp_path / "q"), device="cpu")


def test_int4_group_size(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    from deskgen.quant import save_quantized
    from deskgen.quant._weights import group_sizes, quanto_group

    assert [quanto_group(n, 320) for n in (2880, 2048, 5120, 320, 36)] == [320, 256, 320, 160, None]
    with pytest.raises(ValueError, match="int4 weights only"):
        QuantConfig(weights="int8", group_size=256)
    sizes = {}
    for group in (None, 64):
        config = QuantConfig(method="quanto", weights="int4", group_size=group)
        with DeskGenerator(
            "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config
        ) as gen:
            sizes[group] = gen.memory_report().components["unet"].bytes
            if group is not None:
                unet = gen.backend.pipeline.unet  # type: ignore[attr-defined]
                assert 64 in group_sizes(unet).values()
                before = _pixels(gen)
                save_quantized(gen, tmp_path / "g64")
    assert sizes[64] > sizes[None]  # smaller groups than the default 128: more scales
    with DeskGenerator("sdxl", model=str(tmp_path / "g64"), device="cpu") as again:
        assert np.array_equal(_pixels(again), before)
        assert again.memory_report().components["unet"].bytes == sizes[64]


def test_hidream_saves_quantized_and_reloads(
    tiny_hidream_paths: dict[str, Path], tmp_path: Path
) -> None:
    from deskgen.quant import save_quantized

    with DeskGenerator(
        "hidream",
        model=str(tiny_hidream_paths["pipeline"]),
        llama_model=str(tiny_hidream_paths["llama"]),
        edition="full",
        device="cpu",
        quantization=QuantConfig(method="quanto"),
    ) as gen:
        before = np.asarray(gen.generate(prompt="a desk", seed=1, steps=2).image)
        save_quantized(gen, tmp_path / "q")  # T5's tied embedding stored once
    with DeskGenerator("hidream", model=str(tmp_path / "q"), edition="full", device="cpu") as again:
        assert np.array_equal(
            np.asarray(again.generate(prompt="a desk", seed=1, steps=2).image), before
        )
        quantized = {k for k, v in again.memory_report().components.items() if v.quantization}
    assert quantized == {"transformer", "text_encoder_3", "text_encoder_4"}
