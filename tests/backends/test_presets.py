"""Performance presets and speed options of the diffusers backends, on the tiny pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deskgen import ConfigError, DeskGenerator, UnsupportedOperationError
from deskgen.backends.diffusers._speed import distill_kind, preset_recipe
from deskgen.testing import make_tiny_lora

PROMPT = "a tidy desk with a lamp"


def _pixels(result: object) -> np.ndarray:
    return np.asarray(result.image, dtype=np.float32)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "kind", "steps", "guidance"),
    [
        ("pytorch_lora_weights_lcm.safetensors", "lcm", 4, 1.0),
        ("sdxl_lightning_2step_lora.safetensors", "lightning", 2, 0.0),
        ("sdxl_lightning_8step_lora.safetensors", "lightning", 8, 0.0),
        ("Hyper-SDXL-4steps-lora.safetensors", "hyper-sd", 4, 0.0),
        ("Hyper-SDXL-8steps-CFG-lora.safetensors", "hyper-sd", 8, None),
        ("TCD-SDXL-LoRA.safetensors", "tcd", 4, 0.0),
    ],
)
def test_fast_recipe_from_the_file_name(
    name: str, kind: str, steps: int, guidance: float | None
) -> None:
    assert distill_kind(name) == kind
    recipe = preset_recipe("fast", lora=name)
    assert (recipe.steps, recipe.guidance) == (steps, guidance)


@pytest.mark.parametrize(
    ("source", "kind", "steps", "guidance"),
    [
        ("ByteDance/SDXL-Lightning/sdxl_lightning_2step_lora.safetensors", "lightning", 2, 0.0),
        ("ByteDance/Hyper-SD/Hyper-SDXL-1step-lora.safetensors", "hyper-sd", 1, 0.0),
        ("ByteDance/Hyper-SD/Hyper-SDXL-8steps-CFG-lora.safetensors", "hyper-sd", 8, None),
        ("latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors", "lcm", 4, 1.0),
    ],
)
def test_hub_files_are_read_by_their_file_then_repo_name(
    source: str, kind: str, steps: int, guidance: float | None
) -> None:
    from deskgen import LoraSpec
    from deskgen._lora import as_lora_spec

    spec = as_lora_spec(source)
    assert isinstance(spec, LoraSpec) and spec.weight_name is not None
    recipe = preset_recipe("fast", lora=spec)
    assert (recipe.steps, recipe.guidance) == (steps, guidance)
    assert recipe == preset_recipe("fast", kind=kind, lora=spec)  # type: ignore[arg-type]


def test_folders_do_not_name_the_kind() -> None:
    assert distill_kind("/home/tcdavis/loras/lcm.safetensors") == "lcm"
    assert distill_kind("/home/lcm-user/loras/desk.safetensors") is None


def test_fast_needs_a_lora_of_a_known_kind() -> None:
    with pytest.raises(ConfigError, match="distill_lora="):
        preset_recipe("fast")
    with pytest.raises(ConfigError, match="distill_kind="):
        preset_recipe("fast", lora="my_speedup.safetensors")
    assert preset_recipe("fast", kind="lcm", lora="my_speedup.safetensors").steps == 4


@pytest.mark.parametrize("backend", ["sdxl", "sd"])
def test_quality_and_balanced_set_steps_and_scheduler(
    tiny_paths: dict[str, Path], generators: dict[str, DeskGenerator], backend: str
) -> None:
    plain = generators[backend].generate(prompt=PROMPT, seed=1)
    model = str(tiny_paths[backend])
    with DeskGenerator(backend, model=model, device="cpu", preset="quality") as gen:
        quality = gen.generate(prompt=PROMPT, seed=1)
        assert gen.backend.performance == ["quality: the model's scheduler, 50 steps"]
    with DeskGenerator(backend, model=model, device="cpu", preset="balanced") as gen:
        balanced = gen.generate(prompt=PROMPT, seed=1)
        img2img = gen.generate(prompt=PROMPT, seed=1, image=_photo(), strength=0.6)
        explicit = gen.generate(prompt=PROMPT, seed=1, steps=7)
    # PNDM (the tiny SD's scheduler) runs one step more than it is asked for
    extra = plain.denoising_steps - 30
    assert plain.request.steps == 30 and extra in (0, 1)
    assert quality.scheduler == plain.scheduler
    assert (quality.denoising_steps, quality.request.steps) == (50 + extra, 50)
    assert balanced.scheduler == "DPMSolverMultistepScheduler"
    assert (balanced.denoising_steps, balanced.request.steps) == (25, 25)
    assert img2img.scheduler == "DPMSolverMultistepScheduler"
    assert img2img.denoising_steps == int(25 * 0.6)
    assert explicit.denoising_steps == 7  # a request's own steps win
    assert balanced.request.guidance_scale == plain.request.guidance_scale


def test_results_and_records_say_the_scheduler_settings(
    tiny_sdxl_path: Path, generators: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    from deskgen._record import read_png_text, read_record_data

    assert generators["sdxl"].generate(prompt=PROMPT, seed=1, steps=2).scheduler_settings == {}
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", preset="balanced") as gen:
        result = gen.generate(prompt=PROMPT, seed=1, steps=2)
    settings = {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
    assert result.scheduler_settings == settings
    [path] = result.save(tmp_path / "balanced.png")
    assert read_record_data(path)["scheduler_settings"] == settings
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in read_png_text(path)["parameters"]


def _photo() -> object:
    from ..conftest import draw_desk

    return draw_desk()


@pytest.mark.parametrize(
    ("file_name", "scheduler", "steps", "guidance"),
    [
        ("lcm-lora-tiny.safetensors", "LCMScheduler", 4, 1.0),
        ("tiny_lightning_2step_lora.safetensors", "EulerDiscreteScheduler", 2, 0.0),
        ("TCD-tiny-LoRA.safetensors", "TCDScheduler", 4, 0.0),
    ],
)
def test_fast_loads_fuses_and_schedules_the_distillation_lora(
    tiny_sdxl_path: Path,
    tmp_path: Path,
    file_name: str,
    scheduler: str,
    steps: int,
    guidance: float,
) -> None:
    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / file_name, text_encoders=False)
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", preset="fast", distill_lora=str(lora)
    ) as gen:
        result = gen.generate(prompt=PROMPT, seed=3)
        assert gen.backend.lora_adapters is not None
        assert gen.backend.lora_adapters.fused == {"distill": 1.0}
        if scheduler == "EulerDiscreteScheduler":
            assert gen.backend.pipeline.scheduler.config.timestep_spacing == "trailing"
    assert result.scheduler == scheduler
    assert (result.denoising_steps, result.request.guidance_scale) == (steps, guidance)
    assert [lora.name for lora in result.loras] == ["distill"]
    # the same LoRA unfused, scheduled by hand the same way: the same pixels (up to fusing)
    with DeskGenerator(
        "sdxl",
        model=str(tiny_sdxl_path),
        device="cpu",
        preset="fast",
        distill_lora=str(lora),
        fuse_loras=False,
    ) as gen:
        unfused = gen.generate(prompt=PROMPT, seed=3)
        assert gen.backend.lora_adapters is not None
        assert gen.backend.lora_adapters.fused is None
    assert np.abs(_pixels(result) - _pixels(unfused)).max() <= 2


def test_tcd_passes_its_eta(
    tiny_sdxl_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import StableDiffusionXLPipeline

    from deskgen import LoraSpec

    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "tcd.safetensors", text_encoders=False)
    seen: list[object] = []
    call = StableDiffusionXLPipeline.__call__

    def spy(self: object, *args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("eta"))
        return call(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", spy)
    spec = LoraSpec(path=str(lora))  # a spec without a name is named "distill" too
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", preset="fast", distill_lora=spec
    ) as gen:
        gen.generate(prompt=PROMPT, seed=1)
        assert [lora.name for lora in gen.loras] == ["distill"]
    assert seen == [0.3]


def test_the_distillation_lora_stays_in_every_request(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    distill = make_tiny_lora(tiny_sdxl_path, tmp_path / "lcm.safetensors", text_encoders=False)
    style = make_tiny_lora(tiny_sdxl_path, tmp_path / "style.safetensors", seed=2)
    with DeskGenerator(
        "sdxl",
        model=str(tiny_sdxl_path),
        device="cpu",
        preset="fast",
        distill_lora=str(distill),
        loras=[str(style)],
        fuse_loras=False,
    ) as gen:
        result = gen.generate(prompt=PROMPT, seed=1, loras={"style": 0.7})
        assert {lora.name: lora.weight for lora in result.loras} == {"distill": 1.0, "style": 0.7}
        with pytest.raises(UnsupportedOperationError, match="preset='fast' runs with it"):
            gen.unload_lora("distill")


def test_preset_and_option_errors(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    model = str(tiny_sdxl_path)
    with pytest.raises(ConfigError, match="distill_lora="):
        DeskGenerator("sdxl", model=model, device="cpu", preset="fast")
    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "lcm.safetensors", text_encoders=False)
    with pytest.raises(ConfigError, match="preset='fast'"):
        DeskGenerator("sdxl", model=model, device="cpu", distill_lora=str(lora))
    with pytest.raises(ConfigError, match="preset='fast'"):
        DeskGenerator("sdxl", model=model, device="cpu", distill_kind="lcm")
    with pytest.raises(ConfigError, match="compile=True"):
        DeskGenerator("sdxl", model=model, device="cpu", compile_mode="max-autotune")
    with pytest.raises(ConfigError, match="one of them"):
        DeskGenerator("sdxl", model=model, device="cpu", fuse_qkv=True, attention="eager")
    with pytest.raises(ConfigError, match="preset: Input should be 'quality', 'balanced'"):
        DeskGenerator("sdxl", model=model, device="cpu", preset="turbo")
    with pytest.raises(ConfigError, match="fuse the LoRAs"):
        DeskGenerator("sdxl", model=model, device="cpu", loras=[str(lora)], fuse_qkv=True)
    from deskgen import QuantConfig

    with pytest.raises(ConfigError, match="fuse_qkv"):
        DeskGenerator("sdxl", model=model, device="cpu", fuse_qkv=True, quantization=QuantConfig())


def test_hidream_takes_compile_but_no_presets(tiny_hidream_paths: dict[str, Path]) -> None:
    common = {
        "model": str(tiny_hidream_paths["pipeline"]),
        "device": "cpu",
        "llama_model": str(tiny_hidream_paths["llama"]),
        "edition": "full",
    }
    with pytest.raises(UnsupportedOperationError, match="editions"):
        DeskGenerator("hidream", preset="balanced", **common)
    with pytest.raises(ConfigError, match="does not take channels_last, fuse_qkv"):
        DeskGenerator("hidream", channels_last=True, fuse_qkv=True, **common)
    with DeskGenerator("hidream", compile=True, **common) as gen:  # compiled lazily, in place
        assert gen.backend.performance == ["torch.compile(transformer, mode='default')"]
        transformer = gen.backend.pipeline.transformer
        assert type(transformer).__name__ == "HiDreamImageTransformer2DModel"
        assert transformer._compiled_call_impl is not None


@pytest.mark.parametrize(
    "options",
    [{"attention": "eager"}, {"fuse_qkv": True}, {"channels_last": True}],
    ids=["eager", "fuse_qkv", "channels_last"],
)
def test_speed_options_keep_the_pixels(
    tiny_sdxl_path: Path, generators: dict[str, DeskGenerator], options: dict[str, object]
) -> None:
    plain = generators["sdxl"].generate(prompt=PROMPT, seed=5, steps=4)
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", **options) as gen:
        result = gen.generate(prompt=PROMPT, seed=5, steps=4)
        assert gen.backend.performance == [
            {"attention": "eager attention", "fuse_qkv": "fused QKV projections"}.get(
                next(iter(options)), "channels_last"
            )
        ]
        if options.get("channels_last"):
            weight = gen.backend.pipeline.unet.conv_in.weight
            assert weight.is_contiguous(memory_format=torch.channels_last)
            assert not weight.is_contiguous()
        if options.get("fuse_qkv"):
            assert gen.backend.pipeline.unet.original_attn_processors is not None
        if options.get("attention") == "eager":
            kinds = {type(p).__name__ for p in gen.backend.pipeline.unet.attn_processors.values()}
            assert kinds == {"AttnProcessor"}
    assert np.abs(_pixels(result) - _pixels(plain)).max() <= 2


def test_fused_qkv_pins_the_loras(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "style.safetensors", text_encoders=False)
    with DeskGenerator(
        "sdxl",
        model=str(tiny_sdxl_path),
        device="cpu",
        loras=[str(lora)],
        fuse_loras=True,
        fuse_qkv=True,
    ) as gen:
        fused = gen.generate(prompt=PROMPT, seed=2, steps=3)
        with pytest.raises(UnsupportedOperationError, match="fuse_qkv"):
            gen.unfuse_loras()
        with pytest.raises(UnsupportedOperationError, match="fuse_qkv"):
            gen.load_lora(str(lora))
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", loras=[str(lora)], fuse_loras=True
    ) as gen:
        reference = gen.generate(prompt=PROMPT, seed=2, steps=3)
    assert np.abs(_pixels(fused) - _pixels(reference)).max() <= 2


@pytest.mark.slow
def test_compile_keeps_the_pixels(
    tiny_sdxl_path: Path, generators: dict[str, DeskGenerator]
) -> None:
    plain = generators["sdxl"].generate(prompt=PROMPT, seed=4, steps=2)
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", compile=True) as gen:
        unet = gen.backend.pipeline.unet
        assert type(unet).__name__ == "UNet2DConditionModel"  # compiled in place
        result = gen.generate(prompt=PROMPT, seed=4, steps=2)
        assert unet._compiled_call_impl is not None
    assert np.abs(_pixels(result) - _pixels(plain)).max() <= 2
