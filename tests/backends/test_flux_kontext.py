"""The ``flux-kontext`` backend on a tiny random-weight FLUX.1 Kontext pipeline, loaded through
deskgen's real loading path (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image, ImageOps

import deskgen
from deskgen import (
    DeskGenerator,
    InvalidRequestError,
    LoraMismatchError,
    PromptTooLongError,
    QuantConfig,
    UnsupportedOperationError,
)
from deskgen.backends.diffusers.flux_kontext import FluxKontextBackend, kontext_size
from deskgen.testing import make_tiny_pipeline
from deskgen.testing.contract import BackendContract

from ..conftest import draw_desk

SIZE = {"width": 64, "height": 48}


@pytest.fixture(scope="module")
def kontext_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline("flux-kontext", tmp_path_factory.mktemp("kontext") / "tiny")


@pytest.fixture(scope="module")
def gen(kontext_path: Path) -> DeskGenerator:
    generator = DeskGenerator("flux-kontext", model=str(kontext_path), device="cpu")
    yield generator
    generator.close()


def _by_hand(path: Path, seeds: list[int], **call: Any) -> list[np.ndarray]:
    """The same request as a hand-written diffusers call."""
    import torch
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    out = pipe(generator=generators, output_type="np", **call)
    return [np.asarray(image) for image in pipe.numpy_to_pil(out.images)]


def test_an_edit_matches_a_hand_written_diffusers_call(
    gen: DeskGenerator, kontext_path: Path
) -> None:
    photo, _ = deskgen.load_image(draw_desk())
    result = gen.generate(
        prompt="make the desk tidy, keep the window",
        negative_prompt="clutter",
        true_cfg_scale=2.0,
        guidance_scale=3.0,
        image=photo,
        seed=7,
        steps=2,
        **SIZE,
    )
    expected = _by_hand(
        kontext_path,
        [7],
        image=ImageOps.fit(photo, (64, 48), method=Image.Resampling.LANCZOS),  # at the output size
        prompt="make the desk tidy, keep the window",
        negative_prompt="clutter",
        true_cfg_scale=2.0,
        guidance_scale=3.0,
        num_inference_steps=2,
        max_area=64 * 48,
        _auto_resize=False,
        **SIZE,
    )
    assert result.mode == "edit"
    assert result.request.true_cfg_scale == 2.0 and result.request.guidance_scale == 3.0
    np.testing.assert_array_equal(np.asarray(result.images[0]), expected[0])


def test_txt2img_batches_match_a_hand_written_call(gen: DeskGenerator, kontext_path: Path) -> None:
    result = gen.generate(prompt="a walnut desk by a window", seed=3, steps=2, num_images=2, **SIZE)
    expected = _by_hand(
        kontext_path,
        [3, 4],
        prompt="a walnut desk by a window",
        guidance_scale=2.5,  # the backend's default, the model card's
        num_inference_steps=2,
        num_images_per_prompt=2,
        max_area=64 * 48,
        **SIZE,
    )
    assert result.mode == "txt2img" and result.request.guidance_scale == 2.5
    assert result.request.steps == 2 and result.request.true_cfg_scale == 1.0
    for image, pixels in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_the_output_is_the_kontext_resolution_nearest_the_photo(gen: DeskGenerator) -> None:
    # the real model's: the resolutions the pipeline resizes photos to
    assert kontext_size(4 / 3, native=1024, multiple=16) == (1184, 880)
    assert kontext_size(1.0, native=1024, multiple=16) == (1024, 1024)
    assert kontext_size(9 / 16, native=1024, multiple=16) == (752, 1392)
    # the tiny model's native size is 256 px: the same shapes, a quarter of the side
    assert kontext_size(4 / 3, native=256, multiple=4) == (296, 220)
    backend = gen.backend
    assert isinstance(backend, FluxKontextBackend) and backend.native_size == 256
    result = gen.generate(prompt="a tidy desk", image=draw_desk((80, 60)), seed=1, steps=1)
    assert result.images[0].size == (296, 220)


def test_the_negative_prompt_needs_true_cfg(gen: DeskGenerator) -> None:
    photo = draw_desk()
    unused = gen.generate(
        prompt="a tidy desk", negative_prompt="clutter", image=photo, seed=1, steps=1, **SIZE
    )
    assert unused.prompt_report is not None
    assert unused.prompt_report.negative_prompt is None  # never encoded
    assert any("true_cfg_scale over 1" in w for w in unused.warnings)
    lost = gen.generate(prompt="a tidy desk", true_cfg_scale=3.0, image=photo, steps=1, **SIZE)
    assert any("no effect without a negative prompt" in w for w in lost.warnings)
    plain = gen.generate(prompt="a tidy desk", image=photo, seed=1, steps=1, **SIZE)
    assert not plain.warnings


def test_requests_take_no_strength_and_no_chunks(gen: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="no strength"):
        gen.generate(prompt="a tidy desk", image=draw_desk(), strength=0.5, steps=1)
    with pytest.raises(InvalidRequestError, match="chunk"):
        gen.generate(prompt="a tidy desk", long_prompt="chunk", steps=1, **SIZE)
    with pytest.raises(UnsupportedOperationError, match="reference"):
        gen.generate(prompt="a tidy desk", image=draw_desk(), references=[draw_desk()], steps=1)


def test_t5_reads_the_prompt_whole_and_clip_its_first_77_tokens(gen: DeskGenerator) -> None:
    pipe = gen.backend.pipeline  # type: ignore[attr-defined]
    text = ", ".join(
        f"a {color} lamp on the {side} of a walnut desk"
        for color in ("warm", "brass", "white", "black")
        for side in ("left", "right", "back")
    )
    clip_tokens = len(pipe.tokenizer(text)["input_ids"])
    t5_tokens = len(pipe.tokenizer_2(text)["input_ids"])
    assert clip_tokens > 77 and t5_tokens < 512
    report = gen.check_prompt(prompt=text)
    clip, t5 = report.encoders
    assert (clip.encoder, clip.tokens, clip.limit) == ("text_encoder", clip_tokens, 77)
    assert clip.dropped and text.endswith(clip.dropped)
    assert (t5.encoder, t5.tokens, t5.limit, t5.dropped) == ("text_encoder_2", t5_tokens, 512, "")
    assert report.prompt == text and not report.dropped_phrases  # fit sizes for T5 only
    assert any("pooled vector only" in w and "read it whole" in w for w in report.warnings)
    # error mode refuses only what T5 can't read
    assert gen.check_prompt(prompt=text, long_prompt="error").prompt == text
    long_text = ", ".join(["a walnut desk with a warm brass lamp"] * 80)
    with pytest.raises(PromptTooLongError, match="text_encoder_2"):
        gen.check_prompt(prompt=long_text, long_prompt="error")
    fitted = gen.check_prompt(prompt=long_text)
    assert fitted.encoders[1].tokens <= 512 and fitted.dropped_phrases


def test_other_backends_refuse_true_cfg(tiny_sd_path: Path) -> None:
    with (
        DeskGenerator("sd", model=str(tiny_sd_path), device="cpu") as sd,
        pytest.raises(UnsupportedOperationError, match="flux-kontext"),
    ):
        sd.generate(prompt="a desk", true_cfg_scale=2.0, negative_prompt="mess", steps=1)


def _lora_file(transformer: Any, path: Path, *, kohya: bool) -> Path:
    """A LoRA for the tiny transformer: diffusers' peft layout, or kohya's FLUX layout (fused
    qkv of the double blocks, as FLUX LoRAs trained with kohya/ai-toolkit are published)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    if kohya:
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        for i in range(transformer.config.num_layers):
            key = f"lora_unet_double_blocks_{i}_img_attn_qkv"
            state[f"{key}.lora_down.weight"] = torch.randn(2, inner, generator=g) * 0.5
            state[f"{key}.lora_up.weight"] = torch.randn(3 * inner, 2, generator=g) * 0.5
            state[f"{key}.alpha"] = torch.tensor(2.0)
    else:
        for name, module in transformer.named_modules():
            if name.endswith(("attn.to_q", "attn.to_k")):
                state[f"transformer.{name}.lora_A.weight"] = (
                    torch.randn(2, module.in_features, generator=g) * 0.5
                )
                state[f"transformer.{name}.lora_B.weight"] = (
                    torch.randn(module.out_features, 2, generator=g) * 0.5
                )
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("kohya", [False, True], ids=["diffusers", "kohya"])
def test_flux_loras_are_checked_then_applied(
    kontext_path: Path, tmp_path: Path, kohya: bool
) -> None:
    with DeskGenerator("flux-kontext", model=str(kontext_path), device="cpu") as lora_gen:
        transformer = lora_gen.backend.pipeline.transformer  # type: ignore[attr-defined]
        lora = _lora_file(transformer, tmp_path / "desk-lora.safetensors", kohya=kohya)
        request = {"prompt": "a tidy desk", "image": draw_desk(), "seed": 3, "steps": 2, **SIZE}
        base = np.asarray(lora_gen.generate(**request).images[0])
        loaded = lora_gen.load_lora(str(lora))
        assert loaded.components == ("transformer",)
        with_lora = np.asarray(lora_gen.generate(**request).images[0])
        without = np.asarray(lora_gen.generate(**request, loras={}).images[0])
        assert not np.array_equal(base, with_lora)
        np.testing.assert_array_equal(base, without)


def test_a_lora_for_another_model_is_refused(gen: DeskGenerator, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    wrong = {  # the right module, the wrong width
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 3072),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 2),
    }
    save_file(wrong, str(tmp_path / "flux-dev-lora.safetensors"))
    with pytest.raises(LoraMismatchError, match="does not fit"):
        gen.load_lora(str(tmp_path / "flux-dev-lora.safetensors"))


def test_the_transformer_quantizes_at_load(kontext_path: Path) -> None:
    config = QuantConfig(method="torchao", weights="int8")
    with DeskGenerator(
        "flux-kontext", model=str(kontext_path), device="cpu", quantization=config
    ) as quantized:
        transformer = quantized.memory_report().components["transformer"]
        assert transformer.quantization is not None and transformer.bytes_before is not None
        assert transformer.bytes < transformer.bytes_before
        result = quantized.generate(prompt="a tidy desk", image=draw_desk(), steps=2, **SIZE)
        assert result.images[0].size == (64, 48)


class TestFluxKontextContract(BackendContract):
    """``flux-kontext`` passes the backend contract (`deskgen.testing.contract`), with and
    without a photo."""

    request_kwargs: ClassVar[dict[str, Any]] = dict(SIZE)

    def make_generator(self, tmp_path: Path, kontext_path: Path) -> DeskGenerator:
        return DeskGenerator("flux-kontext", model=str(kontext_path), device="cpu")
