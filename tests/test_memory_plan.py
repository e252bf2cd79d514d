"""The memory planner: sizes without loading, choices for given memory, applied by the facade."""

from __future__ import annotations

from pathlib import Path

import pytest

from deskgen import ConfigError, DeskGenerator
from deskgen.cli import main
from deskgen.quant import plan_memory
from deskgen.quant._plan import KNOWN_PARAMETERS, GiB

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def _plan(budget_gib: float, mode: str = "balanced", **fields: object) -> object:
    return plan_memory(
        "sdxl",
        model=SDXL,
        mode=mode,  # type: ignore[arg-type]
        device="cpu",
        dtype="bfloat16",
        budget_bytes=int(budget_gib * GiB),
        **fields,  # type: ignore[arg-type]
    )


def test_published_sizes_when_nothing_is_cached() -> None:
    plan = _plan(24)
    assert plan.sizes_from == "published"  # type: ignore[attr-defined]
    assert plan.component_bytes["unet"] == 2 * KNOWN_PARAMETERS["sdxl"]["unet"]  # type: ignore[attr-defined]
    assert plan.fits and plan.quantization is None and plan.offload == "none"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("budget", "mode", "quantized", "tiled", "fits"),
    [
        (24, "balanced", None, False, True),  # 10.5 GiB of weights and work: as is
        (8, "balanced", ("unet", "text_encoder_2"), True, True),
        (4, "balanced", ("unet", "text_encoder_2"), True, False),
        (24, "max-speed", None, False, True),
        (8, "max-speed", None, False, False),  # never quantizes: says it does not fit
        (24, "low", ("unet", "text_encoder_2"), True, True),
    ],
)
def test_choices_on_the_cpu(
    budget: float, mode: str, quantized: tuple[str, ...] | None, tiled: bool, fits: bool
) -> None:
    plan = _plan(budget, mode)
    components = plan.quantization.components if plan.quantization else None  # type: ignore[attr-defined]
    assert (components, plan.vae_tiling, plan.fits) == (quantized, tiled, fits)  # type: ignore[attr-defined]
    assert plan.offload == "none"  # type: ignore[attr-defined]  # no offload without a GPU


@pytest.mark.parametrize(
    ("budget", "offload", "quantized"),
    [
        (16, "none", None),
        (10, "none", ("unet",)),
        (6, "model", ("unet",)),
        (4, "sequential", ("unet", "text_encoder_2")),
    ],
)
def test_choices_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch, budget: float, offload: str, quantized: tuple[str, ...] | None
) -> None:
    import deskgen._device

    monkeypatch.setattr(deskgen._device, "resolve_device", lambda device: "cuda")
    plan = plan_memory(
        "sdxl", model=SDXL, device="cuda", dtype="bfloat16", budget_bytes=int(budget * GiB)
    )
    components = plan.quantization.components if plan.quantization else None
    assert (plan.offload, components) == (offload, quantized)
    assert plan.options()["offload"] == offload


def test_sizes_from_a_local_folder_and_controlnets(
    tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
) -> None:
    plan = plan_memory(
        "sdxl-controlnet",
        model=str(tiny_sdxl_path),
        device="cpu",
        dtype="float32",
        budget_bytes=GiB,
        controlnet=[str(tiny_control_paths["canny"]), str(tiny_control_paths["depth"])],
    )
    assert plan.sizes_from == "files"
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        unet = gen.memory_report().components["unet"].bytes
    assert plan.component_bytes["unet"] == unet  # float32: 4 bytes an element, as loaded
    assert plan.component_bytes["controlnet"] > 0


def test_the_facade_applies_the_plan(tiny_sdxl_path: Path) -> None:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", memory="low") as gen:
        plan = gen.memory_plan
        assert plan is not None and plan.vae_tiling
        assert gen.backend.pipeline.vae.use_tiling  # type: ignore[attr-defined]
        gen.generate(prompt="a desk", steps=2, seed=1)
    # explicit options win over the plan
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", memory="low", vae_tiling=False
    ) as gen:
        assert not gen.backend.pipeline.vae.use_tiling  # type: ignore[attr-defined]


def test_plan_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", SDXL, "--device", "cpu", "--dtype", "bfloat16"]
    code = main([*argv, "--budget-gb", "8", "--memory", "balanced"])
    text = capsys.readouterr().out
    assert code == 0 and "fits" in text and "quantization: int8 (torchao) of unet" in text
    assert main(["plan", "--device", "cpu", "--budget-gb", "2", "--memory", "max-speed"]) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_api_backends_have_no_plan() -> None:
    with pytest.raises(ConfigError, match="no local weights"):
        plan_memory("openai")


def test_hidream_plans_quantize_its_big_components() -> None:
    plan = plan_memory(
        "hidream", mode="balanced", device="cpu", dtype="bfloat16", budget_bytes=40 * GiB
    )
    assert plan.quantization is not None and plan.fits
    assert set(plan.quantization.components or ()) >= {"transformer", "text_encoder_4"}
    assert plan.options()["quantization"] == plan.quantization


def test_saved_quantized_folders_and_loras_plan_no_quantization(
    tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    from deskgen import QuantConfig
    from deskgen.quant import save_quantized

    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", quantization=QuantConfig()
    ) as gen:
        save_quantized(gen, tmp_path / "q")
    plan = plan_memory("sdxl", model=str(tmp_path / "q"), device="cpu", budget_bytes=1000)
    assert plan.quantization is None and "saved quantized" in plan.notes[0]
    assert (
        plan.component_bytes["unet"]
        == (tmp_path / "q/unet/deskgen_quantized.safetensors").stat().st_size
    )
    plain = plan_memory(
        "sdxl", model=SDXL, device="cpu", budget_bytes=GiB, allow_quantization=False
    )
    assert plain.quantization is None and any("LoRAs" in note for note in plain.notes)
