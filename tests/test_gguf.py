"""GGUF denoisers (``QuantConfig(method="gguf", file=...)``): tiny models written as GGUF files
with the gguf package load through diffusers' ``from_single_file`` and GGUF quantizer, hold
what their blocks hold, and generate close to the unquantized model; what can't work is
refused with what to do; the planner sizes them from the header."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deskgen import (
    ConfigError,
    DeskGenerator,
    MissingDependencyError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    QuantConfig,
    UnsupportedOperationError,
    plan_memory,
)
from deskgen.backends._profile import GiB
from deskgen.testing import make_tiny_gguf, make_tiny_pipeline

from .conftest import draw_desk

gguf = pytest.importorskip("gguf")

BLOCKS = {"Q8_0": (32, 34), "Q4_0": (32, 18)}
"""Weights a block holds and its bytes: Q8_0 is 32 int8 and a float16 scale, Q4_0 32 nibbles
and a scale."""
PSNR_FLOOR = {"Q8_0": 50.0, "Q4_0": 38.0}
"""dB against the unquantized model, same seed (measured: Q8_0 62-64, Q4_0 48-49)."""
SIZE = {"width": 64, "height": 48}


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline("qwen-image-edit", tmp_path_factory.mktemp("gguf") / "qwen")


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, qwen_path: Path, tiny_sdxl_path: Path
) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("gguf-files")
    return {
        (kind, quant): make_tiny_gguf(path, root / f"{kind}-{quant}.gguf", quant=quant)  # type: ignore[arg-type]
        for kind, path in (("qwen-image-edit", qwen_path), ("sdxl", tiny_sdxl_path))
        for quant in BLOCKS
    }


def _request(kind: str) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": "a tidy desk", "seed": 3, "steps": 3}
    if kind == "qwen-image-edit":
        request.update(image=draw_desk(), **SIZE)
    return request


def _pixels(gen: DeskGenerator, kind: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(gen.generate(**_request(kind)).image, dtype=np.float64)


def _psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _ideal(path: Path, width: int) -> tuple[int, int]:
    """What the file's tensors should occupy loaded in ``width``-byte floats, from the quant
    types alone, and how many of its weights are quantized."""
    ideal = quantized = 0
    for tensor in gguf.GGUFReader(path).tensors:
        kind = tensor.tensor_type.name
        if kind in BLOCKS:
            block, size = BLOCKS[kind]
            ideal += int(tensor.n_elements) // block * size
            quantized += int(tensor.n_elements)
        else:  # F32/F16: diffusers casts them to the model's dtype
            ideal += int(tensor.n_elements) * width
    return ideal, quantized


def test_the_tiny_gguf_is_written_as_converters_write_them(qwen_path: Path, tmp_path: Path) -> None:
    path = make_tiny_gguf(qwen_path, tmp_path / "q.gguf", quant="Q4_0")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["transformer_blocks.0.attn.to_q.weight"] == "Q4_0"  # a linear weight
    assert types["transformer_blocks.0.attn.to_q.bias"] == "F32"  # 1-D: full precision
    assert {"F32", "Q4_0"} <= set(types.values())
    arch = reader.get_field("general.architecture")
    assert arch is not None and bytes(arch.parts[arch.data[0]]).decode() == "qwen_image"
    stamp = path.stat().st_mtime_ns
    assert make_tiny_gguf(qwen_path, path, quant="Q4_0").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_tiny_gguf(qwen_path, path, quant="Q8_0")
    assert make_tiny_gguf(qwen_path, path, quant="Q8_0", overwrite=True) == path


@pytest.mark.parametrize("kind", ["qwen-image-edit", "sdxl"])
def test_gguf_denoisers_load_hold_their_blocks_and_generate_close(
    kind: str,
    qwen_path: Path,
    tiny_sdxl_path: Path,
    files: dict[tuple[str, str], Path],
) -> None:
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    model = str(qwen_path if kind == "qwen-image-edit" else tiny_sdxl_path)
    with DeskGenerator(kind, model=model, device="cpu") as gen:
        base = _pixels(gen, kind)
        full = gen.memory_report().components[gen.backend.denoiser].bytes  # type: ignore[attr-defined]
    for quant, floor in PSNR_FLOOR.items():
        path = files[(kind, quant)]
        config = QuantConfig(method="gguf", file=str(path))
        with DeskGenerator(kind, model=model, device="cpu", quantization=config) as gen:
            name = gen.backend.denoiser  # type: ignore[attr-defined]
            module = getattr(gen.backend.pipeline, name)  # type: ignore[attr-defined]
            layers = [m for m in module.modules() if isinstance(m, GGUFLinear)]
            assert layers and all(isinstance(m.weight, GGUFParameter) for m in layers)
            assert all(m.weight.dtype == torch.uint8 for m in layers)
            report = gen.memory_report().components[name]
            pixels = _pixels(gen, kind)
        ideal, quantized = _ideal(path, width=4)
        block, size = BLOCKS[quant]
        # the quantized weights at the type's ideal (no more), the F32/F16 rest as floats
        assert report.bytes == ideal
        assert report.bytes_before == full  # the same model, unquantized
        assert report.quantization == f"{quant} (gguf)"
        # every linear weight whose rows divide into blocks, and nothing else, is in blocks
        assert quantized == sum(math.prod(m.weight.quant_shape) for m in layers)
        assert quantized > 0.4 * full / 4
        psnr = _psnr(pixels, base)
        print(
            f"{kind} {quant}: {report.bytes} B vs ideal {ideal} B "
            f"({size}/{block} B a quantized weight), unquantized {full} B "
            f"({full / report.bytes:.2f}x), PSNR {psnr:.1f} dB"
        )
        assert floor < psnr < math.inf  # close, and really quantized


def test_hidream_reads_its_transformer_from_gguf(
    tiny_hidream_paths: dict[str, Path], tmp_path: Path
) -> None:
    path = make_tiny_gguf(tiny_hidream_paths["pipeline"], tmp_path / "hidream.gguf")
    with DeskGenerator(
        "hidream",
        model=str(tiny_hidream_paths["pipeline"]),
        llama_model=str(tiny_hidream_paths["llama"]),
        edition="fast",
        device="cpu",
        quantization=QuantConfig(method="gguf", file=str(path)),
    ) as gen:
        assert gen.memory_report().components["transformer"].quantization == "Q8_0 (gguf)"
        assert gen.generate(prompt="a desk", seed=1, steps=2).image.size[0] > 0


@pytest.mark.parametrize("kind", ["flux-kontext", "flux2-klein"])
def test_the_flux_backends_read_their_transformer_from_gguf(kind: str, tmp_path: Path) -> None:
    import deskgen

    if kind not in {b.name for b in deskgen.list_backends()}:
        pytest.skip(f"no {kind} backend registered")
    model = make_tiny_pipeline(kind, tmp_path / kind)  # type: ignore[arg-type]
    path = make_tiny_gguf(model, tmp_path / f"{kind}.gguf")
    request: dict[str, Any] = {"prompt": "a tidy desk", "seed": 1, "steps": 2}
    request.update(image=draw_desk(), width=64, height=64)
    with DeskGenerator(kind, model=str(model), device="cpu") as gen:
        base = np.asarray(gen.generate(**request).image, dtype=np.float64)
    config = QuantConfig(method="gguf", file=str(path))
    with DeskGenerator(kind, model=str(model), device="cpu", quantization=config) as gen:
        report = gen.memory_report().components["transformer"]
        pixels = np.asarray(gen.generate(**request).image, dtype=np.float64)
    assert report.bytes == _ideal(path, width=4)[0] and report.quantization == "Q8_0 (gguf)"
    assert PSNR_FLOOR["Q8_0"] < _psnr(pixels, base) < math.inf


def test_hub_models_and_hub_gguf_files_come_from_the_cache(
    qwen_path: Path, files: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """A hub id and an ``owner/repo/name.gguf`` file, offline, from a Hugging Face cache
    given as ``cache_dir=`` (the model's transformer config is read from it too)."""
    import shutil

    cache = tmp_path / "hub"

    def cache_repo(repo: str, copy: Any) -> None:
        root = cache / f"models--{repo.replace('/', '--')}"
        copy(root / "snapshots" / ("0" * 40))
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("0" * 40)

    gguf_file = files[("qwen-image-edit", "Q8_0")]
    cache_repo("someone/tiny-qwen", lambda snap: shutil.copytree(qwen_path, snap))
    cache_repo(
        "someone/tiny-gguf",
        lambda snap: (snap.mkdir(parents=True), shutil.copy(gguf_file, snap / gguf_file.name)),
    )
    config = QuantConfig(method="gguf", file=f"someone/tiny-gguf/{gguf_file.name}")
    with DeskGenerator(
        "qwen-image-edit",
        model="someone/tiny-qwen",
        device="cpu",
        cache_dir=str(cache),
        local_files_only=True,
        quantization=config,
    ) as gen:
        report = gen.memory_report().components["transformer"]
        assert report.bytes == _ideal(gguf_file, width=4)[0]
        assert gen.generate(prompt="a desk", image=draw_desk(), steps=2, **SIZE).image.size == (
            64,
            48,
        )


def test_quant_config_checks_gguf_combinations() -> None:
    from pydantic import ValidationError

    config = QuantConfig(method="gguf", file="~/models/x.gguf")
    assert config.weights is None and config.gguf_path == str(Path("~/models/x.gguf").expanduser())
    assert QuantConfig().weights == "int8"  # as before
    for kwargs, words in [
        ({"method": "gguf"}, "needs file="),
        ({"method": "gguf", "file": "x.safetensors"}, "not a .gguf file"),
        ({"method": "gguf", "file": "x.gguf", "weights": "int8"}, "takes no weights"),
        ({"method": "gguf", "file": "x.gguf", "group_size": 64}, "group_size"),
        ({"method": "gguf", "file": "x.gguf", "components": ("vae",)}, "denoiser only"),
        ({"method": "quanto", "file": "x.gguf"}, "file= is for method='gguf'"),
        ({"method": "quanto", "weights": "nf4"}, "bitsandbytes' 4-bit types"),
    ]:
        with pytest.raises(ValidationError, match=words):
            QuantConfig(**kwargs)  # type: ignore[arg-type]


def test_backends_without_gguf_refuse_it_naming_those_that_take_it(
    monkeypatch: pytest.MonkeyPatch, tiny_sdxl_path: Path, files: dict[tuple[str, str], Path]
) -> None:
    import deskgen._registry
    from deskgen._registry import backends_with
    from deskgen.backends.diffusers.sdxl import SDXLBackend

    takers = backends_with("gguf")
    assert {"sd", "sdxl", "sdxl-controlnet", "hidream", "qwen-image-edit"} <= set(takers)

    class NoGGUF(SDXLBackend):  # the same backend, its profile without gguf
        profile = dataclasses.replace(SDXLBackend.profile, gguf=False)

    NoGGUF.name = "sdxl-no-gguf"
    monkeypatch.setitem(deskgen._registry._REGISTRY, "sdxl-no-gguf", NoGGUF)
    config = QuantConfig(method="gguf", file=str(files[("sdxl", "Q8_0")]))
    with pytest.raises(UnsupportedOperationError, match="can't be read from a GGUF file") as info:
        DeskGenerator("sdxl-no-gguf", model=str(tiny_sdxl_path), device="cpu", quantization=config)
    listed = str(info.value).split("takes GGUF files")[1]  # from the profiles
    assert "'qwen-image-edit'" in listed and "'sdxl'" in listed and "no-gguf" not in listed
    with pytest.raises(ConfigError, match="does not take QuantConfig"):
        plan_memory(
            "sdxl-no-gguf",
            model=str(tiny_sdxl_path),
            device="cpu",
            budget_bytes=GiB,
            quantization=config,
        )
    with pytest.raises(ConfigError, match="leave components out"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=config.model_copy(update={"components": ("transformer",)}),
        )


def test_missing_foreign_and_damaged_files_are_refused(
    tiny_sdxl_path: Path, tmp_path: Path, files: dict[tuple[str, str], Path]
) -> None:
    def load(file: str, model: str = str(tiny_sdxl_path)) -> None:
        DeskGenerator(
            "sdxl", model=model, device="cpu", quantization=QuantConfig(method="gguf", file=file)
        )

    # a missing local file: said before the model loads (the model folder is missing too)
    with pytest.raises(ModelNotFoundError, match="No GGUF file at"):
        load(str(tmp_path / "nope.gguf"), model=str(tmp_path / "no-model"))
    with pytest.raises(ModelNotFoundError, match=r"hf download someone/repo unet-Q4_0\.gguf"):
        load("someone/repo/unet-Q4_0.gguf")  # offline, not cached
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"{}" + bytes(64))
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load(str(fake))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(files[("sdxl", "Q8_0")].read_bytes()[:20000])
    with pytest.raises(ModelLoadError, match="damaged GGUF file"):
        load(str(cut))


def test_files_of_another_model_or_size_are_refused(
    qwen_path: Path,
    tiny_sd_path: Path,
    tiny_sdxl_path: Path,
    tmp_path: Path,
    files: dict[tuple[str, str], Path],
) -> None:
    sdxl_file = str(files[("sdxl", "Q8_0")])
    with pytest.raises(ModelMismatchError, match=r"another shape .* in the file") as info:
        DeskGenerator(
            "sd",
            model=str(tiny_sd_path),
            device="cpu",
            quantization=QuantConfig(method="gguf", file=sdxl_file),
        )
    assert "architecture 'sdxl'" in str(info.value)
    with pytest.raises(ModelMismatchError, match="none of its tensor names is the model's"):
        DeskGenerator(
            "qwen-image-edit",
            model=str(qwen_path),
            device="cpu",
            quantization=QuantConfig(method="gguf", file=sdxl_file),
        )
    # the right model with a tensor left out (a truncated conversion)
    reader = gguf.GGUFReader(sdxl_file)
    writer = gguf.GGUFWriter(path=None, arch="sdxl")
    for tensor in reader.tensors[1:]:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    partial = tmp_path / "partial.gguf"
    writer.write_header_to_file(path=partial)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelMismatchError, match="1 of the model's tensors are not in the file"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=QuantConfig(method="gguf", file=str(partial)),
        )


def test_gguf_needs_the_gguf_package(
    monkeypatch: pytest.MonkeyPatch, tiny_sdxl_path: Path, files: dict[tuple[str, str], Path]
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # as when it is not installed
    config = QuantConfig(method="gguf", file=str(files[("sdxl", "Q8_0")]))
    with pytest.raises(MissingDependencyError, match=r"pip install 'deskgen\[gguf\]'"):
        DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config)


def test_gguf_generators_refuse_in_place_quantization_saving_and_loras(
    tiny_sdxl_path: Path, tmp_path: Path, files: dict[tuple[str, str], Path]
) -> None:
    from deskgen.quant import quantize, save_quantized
    from deskgen.testing import make_tiny_lora

    config = QuantConfig(method="gguf", file=str(files[("sdxl", "Q4_0")]))
    with (
        DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen,
        pytest.raises(ConfigError, match="quantized already"),
    ):
        quantize(gen, config)
    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "lora.safetensors")
    with pytest.raises(ConfigError, match="LoRAs can't be applied to quantized weights"):
        DeskGenerator(
            "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config, loras=[str(lora)]
        )
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=config) as gen:
        with pytest.raises(ConfigError, match="not gguf"):
            save_quantized(gen, tmp_path / "saved")
        with pytest.raises(UnsupportedOperationError, match="weights are quantized"):
            gen.load_lora(str(lora))
        with pytest.raises(ConfigError, match="can't quantize a loaded pipeline in place"):
            gen.backend.quantize(QuantConfig(method="bitsandbytes"))  # type: ignore[attr-defined]


def test_the_planner_sizes_a_gguf_denoiser_from_its_header(
    qwen_path: Path, files: dict[tuple[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from deskgen.cli import main

    path = files[("qwen-image-edit", "Q4_0")]
    config = QuantConfig(method="gguf", file=str(path))
    common: dict[str, Any] = {"model": str(qwen_path), "device": "cpu", "budget_bytes": GiB}
    plan = plan_memory("qwen-image-edit", dtype="float32", quantization=config, **common)
    with DeskGenerator(
        "qwen-image-edit",
        dtype="float32",
        quantization=config,
        **{k: v for k, v in common.items() if k != "budget_bytes"},
    ) as gen:
        loaded = gen.memory_report().components["transformer"].bytes
    assert plan.component_bytes["transformer"] == loaded == _ideal(path, width=4)[0]
    assert plan.quantization == config.model_copy(update={"components": ("transformer",)})
    assert "gguf" in plan.methods and "bitsandbytes" in plan.methods
    # in half precision the F32/F16 tensors are 2 bytes; the blocks are the file's bytes
    half = plan_memory("qwen-image-edit", dtype="float16", quantization=config, **common)
    tensors = gguf.GGUFReader(path).tensors
    blocks = sum(int(t.n_bytes) for t in tensors if t.tensor_type.name == "Q4_0")
    floats = sum(int(t.n_elements) for t in tensors if t.tensor_type.name != "Q4_0")
    assert half.component_bytes["transformer"] == blocks + 2 * floats
    file_bytes = sum(int(t.n_bytes) for t in tensors)
    assert file_bytes < path.stat().st_size < file_bytes + 64 * 1024  # the rest is the header
    # memory="auto" plans with the GGUF file as given
    with DeskGenerator(
        "qwen-image-edit",
        memory="auto",
        dtype="float32",
        quantization=config,
        model=str(qwen_path),
        device="cpu",
    ) as gen:
        assert gen.memory_plan is not None
        assert gen.memory_plan.component_bytes["transformer"] == loaded
    argv = ["plan", str(qwen_path), "--device", "cpu", "--dtype", "float32", "--budget", "1"]
    assert main([*argv, "--gguf", str(path)]) in (0, 1)
    out = capsys.readouterr().out
    assert "sized from the GGUF file's header (Q4_0)" in out
    assert f"quantization: {path.name} (gguf) of transformer" in out
    assert "quantization methods it takes: torchao, quanto, bitsandbytes, gguf" in out


def test_the_planner_reads_a_single_file_checkpoint(tmp_path: Path) -> None:
    from deskgen.testing import make_tiny_single_file

    path = make_tiny_single_file("sdxl", tmp_path / "tiny-sdxl.safetensors")
    folder = tmp_path / "tiny-sdxl"  # the same weights as a diffusers folder
    make_tiny_pipeline("sdxl", folder)
    plan = plan_memory(model=str(path), device="cpu", dtype="float32", budget_bytes=GiB)
    by_folder = plan_memory(
        "sdxl", model=str(folder), device="cpu", dtype="float32", budget_bytes=GiB
    )
    assert plan.backend == "sdxl" and plan.sizes_from == "files"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert plan.component_bytes[name] == by_folder.component_bytes[name], name
    with pytest.raises(ModelNotFoundError, match="No checkpoint file at"):
        plan_memory(
            "sdxl", model=str(tmp_path / "missing.safetensors"), device="cpu", budget_bytes=GiB
        )
    with pytest.raises(ConfigError, match="doesn't load from one file"):
        plan_memory("qwen-image-edit", model=str(path), device="cpu", budget_bytes=GiB)
