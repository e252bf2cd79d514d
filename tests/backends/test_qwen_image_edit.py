"""The ``qwen-image-edit`` backend on tiny random-weight Qwen-Image-Edit and Edit Plus models,
loaded through deskgen's real loading path (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import deskgen
from deskgen import (
    ConfigError,
    DeskGenerator,
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedOperationError,
)
from deskgen.backends.diffusers.qwen_image_edit import (
    LIGHTNING_SCHEDULER,
    QwenImageEditBackend,
    edit_size,
    processor_without_torchvision,
)
from deskgen.testing import make_tiny_pipeline
from deskgen.testing.contract import BackendContract

from ..conftest import draw_desk

SIZE = {"width": 64, "height": 48}  # small outputs: the pipeline's photo encode dominates


@pytest.fixture(scope="module")
def qwen_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen")
    return {
        "edit": make_tiny_pipeline("qwen-image-edit", root / "edit"),
        "plus": make_tiny_pipeline("qwen-image-edit-plus", root / "plus"),
    }


@pytest.fixture(scope="module")
def edit_gen(qwen_paths: dict[str, Path]) -> DeskGenerator:
    gen = DeskGenerator("qwen-image-edit", model=str(qwen_paths["edit"]), device="cpu")
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def plus_gen(qwen_paths: dict[str, Path]) -> DeskGenerator:
    gen = DeskGenerator("qwen-image-edit", model=str(qwen_paths["plus"]), device="cpu")
    yield gen
    gen.close()


def _by_hand(path: Path, plus: bool, **call: object) -> np.ndarray:
    """The same request as a hand-written diffusers call."""
    import torch
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    with processor_without_torchvision():
        pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator("cpu").manual_seed(7), output_type="np", **call)
    return np.asarray(pipe.numpy_to_pil(out.images)[0])


@pytest.mark.parametrize("kind", ["edit", "plus"])
def test_pixels_match_a_hand_written_diffusers_call(
    kind: str, qwen_paths: dict[str, Path], edit_gen: DeskGenerator, plus_gen: DeskGenerator
) -> None:
    gen = plus_gen if kind == "plus" else edit_gen
    photo, _ = deskgen.load_image(draw_desk())
    ref = draw_desk((40, 40))
    refs = [ref] if kind == "plus" else []
    result = gen.generate(
        prompt="make the desk tidy, keep the window",
        negative_prompt="clutter",
        guidance_scale=4.0,
        image=photo,
        references=refs or None,
        seed=7,
        steps=2,
        **SIZE,
    )
    expected = _by_hand(
        qwen_paths[kind],
        kind == "plus",
        image=[photo, *refs] if kind == "plus" else photo,
        prompt="make the desk tidy, keep the window",
        negative_prompt="clutter",
        true_cfg_scale=4.0,
        num_inference_steps=2,
        **SIZE,
    )
    assert result.mode == "edit"
    np.testing.assert_array_equal(np.asarray(result.images[0]), expected)


def test_the_output_keeps_the_photos_aspect_at_the_models_area() -> None:
    assert edit_size(4 / 3) == (1184, 896)  # the pipeline's calculate_dimensions, on 32 px
    assert edit_size(1.0) == (1024, 1024)
    width, height = edit_size(16 / 9)
    assert width % 16 == 0 and height % 16 == 0 and abs(width / height - 16 / 9) < 0.03


def test_guidance_runs_only_with_a_negative_prompt(edit_gen: DeskGenerator) -> None:
    photo = draw_desk()
    plain = edit_gen.generate(prompt="a tidy desk", image=photo, seed=1, steps=2, **SIZE)
    assert plain.request.guidance_scale == 1.0 and not plain.warnings  # off: no negative
    guided = edit_gen.generate(
        prompt="a tidy desk", negative_prompt=" ", image=photo, seed=1, steps=2, **SIZE
    )
    assert guided.request.guidance_scale == 4.0
    lost = edit_gen.generate(
        prompt="a tidy desk", guidance_scale=5.0, image=photo, seed=1, steps=2, **SIZE
    )
    assert any("no effect without a negative prompt" in w for w in lost.warnings)
    unused = edit_gen.generate(
        prompt="a tidy desk",
        negative_prompt="mess",
        guidance_scale=1.0,
        image=photo,
        seed=1,
        steps=2,
        **SIZE,
    )
    assert any("negative prompt is not used" in w for w in unused.warnings)


def test_edits_need_a_photo_and_take_no_strength(edit_gen: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="edits a photo"):
        edit_gen.generate(prompt="a tidy desk", seed=1, steps=2)
    with pytest.raises(InvalidRequestError, match="no strength"):
        edit_gen.generate(prompt="a tidy desk", image=draw_desk(), strength=0.5, steps=2)
    with pytest.raises(InvalidRequestError, match="2 steps or more"):
        edit_gen.generate(prompt="a tidy desk", image=draw_desk(), steps=1)


def test_references_need_an_edit_plus_model(
    edit_gen: DeskGenerator, plus_gen: DeskGenerator
) -> None:
    photo, ref = draw_desk(), draw_desk((40, 40))
    with pytest.raises(UnsupportedOperationError, match="Edit Plus"):
        edit_gen.generate(prompt="add the lamp", image=photo, references=[ref], steps=1)
    with pytest.raises(InvalidRequestError, match="at most 2"):
        plus_gen.generate(prompt="add", image=photo, references=[ref, ref, ref], steps=1)
    result = plus_gen.generate(
        prompt="put the lamp from the second image on the left of the desk",
        image=photo,
        references=[ref],
        seed=7,
        steps=2,
        **SIZE,
    )
    assert result.request.reference_sha256 == [deskgen.load_image(ref)[1].sha256]
    assert result.images[0].size == (64, 48)
    # a replay without the reference is refused, as a replay without the photo is
    with pytest.raises(InvalidRequestError, match="reference images"):
        plus_gen.generate(result.request.model_copy(update={"references": None}), image=photo)


def test_backends_without_references_refuse_them(tiny_sd_path: Path) -> None:
    with (
        DeskGenerator("sd", model=str(tiny_sd_path), device="cpu") as gen,
        pytest.raises(UnsupportedOperationError, match="qwen-image-edit"),
    ):
        gen.generate(prompt="a desk", image=draw_desk(), references=[draw_desk()], steps=1)


def test_the_prompt_report_counts_the_encoders_real_sequence(edit_gen: DeskGenerator) -> None:
    pipe = edit_gen.backend.pipeline  # type: ignore[attr-defined]
    text = "make the desk tidy, hide the cables"
    template = pipe.prompt_template_encode
    ids = pipe.tokenizer(template.format(text))["input_ids"]
    report = edit_gen.check_prompt(prompt=text)
    assert report.encoders[0].tokens == len(ids) - pipe.prompt_template_encode_start_idx
    assert report.encoders[0].limit == 1024
    long_text = ", ".join(["a walnut desk with a warm brass lamp"] * 200)
    with pytest.raises(PromptTooLongError):
        edit_gen.check_prompt(prompt=long_text, long_prompt="error")
    fitted = edit_gen.check_prompt(prompt=long_text)  # fit: whole phrases dropped, reported
    assert fitted.encoders[0].tokens <= 1024 and fitted.dropped_phrases


def test_describe_uses_the_pipelines_own_vision_language_model(
    edit_gen: DeskGenerator,
) -> None:
    description = edit_gen.describe(draw_desk())
    assert isinstance(description, deskgen.DeskDescription)
    assert isinstance(description.text, str)


def test_the_fast_preset_needs_a_known_lightning_lora(qwen_paths: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="Qwen-Image-Lightning"):
        DeskGenerator("qwen-image-edit", model=str(qwen_paths["edit"]), device="cpu", preset="fast")


def test_the_lightning_recipe_reads_its_steps_from_the_file_name() -> None:
    from deskgen.backends.diffusers import DiffusersOptions

    recipe = QwenImageEditBackend._preset_recipe(
        QwenImageEditBackend.__new__(QwenImageEditBackend),
        DiffusersOptions(
            model="x",
            preset="fast",
            distill_lora="lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-Lightning-4steps-V1.0.safetensors",
        ),
    )
    assert recipe.steps == 4 and recipe.guidance == 1.0
    assert recipe.scheduler_config == LIGHTNING_SCHEDULER


def test_loras_are_checked_then_applied_to_the_transformer(
    qwen_paths: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    with DeskGenerator("qwen-image-edit", model=str(qwen_paths["edit"]), device="cpu") as gen:
        transformer = gen.backend.pipeline.transformer  # type: ignore[attr-defined]
        generator = torch.Generator().manual_seed(0)
        state = {}
        for name, module in transformer.named_modules():
            if name.endswith(("attn.to_q", "attn.to_k")):  # diffusers' peft layout
                a = torch.randn(2, module.in_features, generator=generator) * 0.5
                b = torch.randn(module.out_features, 2, generator=generator) * 0.5
                state[f"transformer.{name}.lora_A.weight"] = a
                state[f"transformer.{name}.lora_B.weight"] = b
        save_file(state, str(tmp_path / "desk-lora.safetensors"))
        request = {"prompt": "a tidy desk", "image": draw_desk(), "seed": 3, "steps": 2, **SIZE}
        base = np.asarray(gen.generate(**request).images[0])
        gen.load_lora(str(tmp_path / "desk-lora.safetensors"))
        with_lora = np.asarray(gen.generate(**request).images[0])
        without = np.asarray(gen.generate(**request, loras={}).images[0])
        assert not np.array_equal(base, with_lora)
        np.testing.assert_array_equal(base, without)
        wrong = {
            "transformer.nope.lora_A.weight": torch.zeros(2, 4),
            "transformer.nope.lora_B.weight": torch.zeros(4, 2),
        }
        save_file(wrong, str(tmp_path / "wrong.safetensors"))
        with pytest.raises(deskgen.LoraMismatchError, match="does not fit"):
            gen.load_lora(str(tmp_path / "wrong.safetensors"))


def test_quantized_transformer(qwen_paths: dict[str, Path]) -> None:
    config = deskgen.QuantConfig(method="quanto", weights="int8")
    with DeskGenerator(
        "qwen-image-edit", model=str(qwen_paths["edit"]), device="cpu", quantization=config
    ) as gen:
        report = gen.memory_report().components["transformer"]
        assert report.quantization is not None and "int8" in report.quantization
        result = gen.generate(prompt="a tidy desk", image=draw_desk(), seed=3, steps=2, **SIZE)
        assert result.images[0].size == (64, 48)


@pytest.mark.parametrize(("budget", "fits"), [(24, True), (16, True)])
def test_the_planner_fits_24_and_16_gb_cards(budget: int, fits: bool) -> None:
    plan = deskgen.plan_memory(
        "qwen-image-edit", device="cuda", budget_bytes=budget * 2**30, mode="balanced"
    )
    assert plan.fits is fits
    assert plan.sizes_from == "published"
    assert plan.offload != "none" or plan.quantization is not None  # 57 GB of bf16 weights


class TestQwenImageEditContract(BackendContract):
    """``qwen-image-edit`` (an Edit Plus model) passes the backend contract
    (`deskgen.testing.contract`); it edits photos only, so every request carries one."""

    needs_photo = True
    request_kwargs: ClassVar[dict[str, Any]] = dict(SIZE)

    def make_generator(self, tmp_path: Path, qwen_paths: dict[str, Path]) -> DeskGenerator:
        return DeskGenerator("qwen-image-edit", model=str(qwen_paths["plus"]), device="cpu")
