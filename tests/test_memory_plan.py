"""The memory planner: sizes without loading, choices for given memory, applied by the facade."""

from __future__ import annotations

from pathlib import Path

import pytest

import deskgen
from deskgen import ConfigError, DeskGenerator, plan_memory
from deskgen._planner import known_parameters
from deskgen.backends._profile import GiB
from deskgen.cli import main

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
    assert plan.component_bytes["unet"] == 2 * known_parameters("sdxl")["unet"]  # type: ignore[attr-defined]
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


def test_the_backend_comes_from_the_model_index(
    tiny_sd_path: Path, tiny_sdxl_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan_memory(model=str(tiny_sd_path), device="cpu", budget_bytes=GiB).backend == "sd"
    assert plan_memory(model=str(tiny_sdxl_path), device="cpu", budget_bytes=GiB).backend == "sdxl"
    # a hub repo whose index is in the local cache, and a known hub id that is not cached
    from huggingface_hub import constants

    snapshot = tmp_path / "models--someone--my-hidream" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"_class_name": "HiDreamImagePipeline"}')
    (tmp_path / "models--someone--my-hidream" / "refs").mkdir()
    (tmp_path / "models--someone--my-hidream" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cached = plan_memory(model="someone/my-hidream", device="cpu", budget_bytes=64 * GiB)
    assert cached.backend == "hidream"
    for edition in ("Full", "Dev", "Fast"):
        model = f"HiDream-ai/HiDream-I1-{edition}"
        assert plan_memory(model=model, device="cpu", budget_bytes=GiB).backend == "hidream"
    assert plan_memory(device="cpu", budget_bytes=GiB).backend == "sdxl"  # no model: as before


def test_models_of_no_known_backend_are_refused_with_the_choices(tiny_sd_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="Can't tell which backend 'someone/thing' is for"
    ) as info:
        plan_memory(model="someone/thing", device="cpu", budget_bytes=GiB)
    # every backend with diffusers pipelines, from the registry (a new backend joins the list)
    local = [b.name for b in deskgen.list_backends() if b.pipelines]
    assert {"hidream", "sd", "sdxl", "sdxl-controlnet"} <= set(local)
    assert f"one of {', '.join(local)}" in str(info.value)
    with pytest.raises(ConfigError, match=r"the 'sdxl' backend doesn't load: plan it with"):
        plan_memory("sdxl", model="HiDream-ai/HiDream-I1-Full", device="cpu", budget_bytes=GiB)
    with pytest.raises(ConfigError, match=r"StableDiffusionPipeline \(the sd backend's\)"):
        plan_memory("hidream", model=str(tiny_sd_path), device="cpu", budget_bytes=GiB)
    from deskgen import ModelNotFoundError

    for missing in ("./nowhere", str(tiny_sd_path / "nowhere")):  # not SDXL's published sizes
        with pytest.raises(ModelNotFoundError, match="No model folder at"):
            plan_memory("sdxl", model=missing, device="cpu", budget_bytes=GiB)


def test_plans_for_a_device_that_is_not_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = plan_memory("sdxl", model=SDXL, device="cuda", budget_bytes=16 * GiB)
    assert (plan.device, plan.dtype, plan.budget_bytes) == ("cuda", "bfloat16", 16 * GiB)
    assert any("not on this machine" in note for note in plan.notes)
    assert plan_memory("sdxl", model=SDXL, device="cuda:1", budget_bytes=GiB).offload != "none"
    with pytest.raises(ConfigError, match="--budget 16GB"):
        plan_memory("sdxl", model=SDXL, device="cuda")  # the free memory of what? say so
    with pytest.raises(ConfigError, match="Unknown device"):
        plan_memory("sdxl", model=SDXL, device="gpu", budget_bytes=GiB)


def test_plan_command_infers_the_backend_and_takes_a_budget_in_gb(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["plan", "HiDream-ai/HiDream-I1-Full", "--device", "cuda", "--budget", "16GB"]
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["backend"], plan["device"], plan["budget_bytes"]) == ("hidream", "cuda", 16 * GiB)
    assert main(["plan", "someone/thing", "--budget", "8"]) == 1
    assert "--backend NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--budget", "lots"])
    assert "not a memory size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16GB", 16 * GiB),
        ("24GiB", 24 * GiB),
        ("12", 12 * GiB),
        ("512MB", GiB // 2),
        ("1.5g", 3 * GiB // 2),
    ],
)
def test_memory_sizes(text: str, size: int) -> None:
    from deskgen.cli import _memory_size

    assert _memory_size(text) == size


def test_an_empty_model_name_is_refused() -> None:
    from deskgen import ConfigError, plan_memory

    for model in ("", "   "):
        with pytest.raises(ConfigError, match="empty"):
            plan_memory("sdxl", model=model, budget_bytes=16 * 2**30)


def test_a_name_that_is_no_folder_and_no_hub_id_is_refused() -> None:
    """As the backends tell them apart (`deskgen._hub.is_local`): not planned with SDXL's
    published sizes."""
    from deskgen import ModelNotFoundError

    for model in ("my models/sdxl", "a/b/c", "C:\\models\\sdxl"):
        with pytest.raises(ModelNotFoundError, match="No model folder at"):
            plan_memory("sdxl", model=model, device="cpu", budget_bytes=GiB)


def test_the_budget_is_the_memory_available_bytes_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    import deskgen._device
    from deskgen._planner import _budget

    free = {"cpu": 5 * GiB, "cuda": 7 * GiB}
    monkeypatch.setattr(deskgen._device, "available_bytes", free.get)
    assert _budget("cpu", None) == (5 * GiB, "ram")
    assert _budget("cuda", None) == (7 * GiB, "gpu")
    assert _budget("mps", None) == (5 * GiB, "ram")  # unified memory: the RAM, as before
    assert _budget("cuda", 3 * GiB) == (3 * GiB, "given")
    plan = plan_memory("sdxl", model=SDXL, device="cpu")
    assert (plan.budget_bytes, plan.budget_source) == (5 * GiB, "ram")
    del free["cuda"]  # unreadable: say what to pass rather than a raw torch error
    with pytest.raises(ConfigError, match="--budget 16GB"):
        _budget("cuda", None)


def test_the_plan_command_refuses_an_empty_model(capsys: pytest.CaptureFixture[str]) -> None:
    from deskgen.cli import main

    assert main(["plan", "", "--budget", "16GB"]) == 1
    assert "empty" in capsys.readouterr().err
