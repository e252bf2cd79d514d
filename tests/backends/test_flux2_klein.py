"""The ``flux2-klein`` backend on tiny random-weight FLUX.2 [klein] models (step-distilled and
base), loaded through deskgen's real loading path (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

import deskgen
from deskgen import (
    DeskGenerator,
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedOperationError,
    read_record,
)
from deskgen.backends.diffusers.flux2_klein import (
    AREA,
    BASE_DEFAULTS,
    DISTILLED_DEFAULTS,
    Flux2KleinBackend,
    pipeline_size,
)
from deskgen.testing import make_tiny_flux2_klein, make_tiny_pipeline
from deskgen.testing.contract import BackendContract

from ..conftest import draw_desk

SIZE: dict[str, Any] = {"width": 64, "height": 48}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def klein_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("klein")
    return {
        "distilled": make_tiny_pipeline("flux2-klein", root / "distilled"),
        "base": make_tiny_pipeline("flux2-klein-base", root / "base"),
    }


@pytest.fixture(scope="module")
def klein(klein_paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    with DeskGenerator("flux2-klein", model=str(klein_paths["distilled"]), device="cpu") as gen:
        yield gen


@pytest.fixture(scope="module")
def base(klein_paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    with DeskGenerator("flux2-klein", model=str(klein_paths["base"]), device="cpu") as gen:
        yield gen


def _pipe(path: Path) -> Any:
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _by_hand(pipe: Any, **call: Any) -> np.ndarray:
    """The same request as a hand-written diffusers call (seed 7)."""
    import torch

    out = pipe(generator=torch.Generator("cpu").manual_seed(7), output_type="np", **call)
    return np.asarray(pipe.numpy_to_pil(out.images)[0])


# -- parity with diffusers ---------------------------------------------------------------------


def test_an_edit_with_references_is_the_pipelines_image_list(
    klein_paths: dict[str, Path], klein: DeskGenerator
) -> None:
    photo, ref = draw_desk(), draw_desk((64, 80))
    prompt = "put the lamp from the second image on the left of the desk"
    result = klein.generate(prompt=prompt, image=photo, references=[ref], seed=7)
    # no size given: the pipeline sizes the output to the photo, which deskgen states
    expected = _by_hand(
        _pipe(klein_paths["distilled"]),
        image=[photo, ref],
        prompt=prompt,
        num_inference_steps=4,
        guidance_scale=1.0,
    )
    assert result.mode == "edit"
    assert result.images[0].size == (96, 64) == (result.width, result.height)
    np.testing.assert_array_equal(np.asarray(result.images[0]), expected)
    alone = klein.generate(prompt=prompt, image=photo, seed=7)
    assert not np.array_equal(np.asarray(alone.images[0]), expected)  # the reference counts


def test_base_txt2img_guides_against_the_empty_prompt_as_diffusers_does(
    klein_paths: dict[str, Path], base: DeskGenerator
) -> None:
    result = base.generate(prompt="a tidy walnut desk", seed=7, steps=2, **SIZE)
    assert result.mode == "txt2img" and result.request.guidance_scale == BASE_DEFAULTS[1]
    expected = _by_hand(
        _pipe(klein_paths["base"]),
        prompt="a tidy walnut desk",
        num_inference_steps=2,
        guidance_scale=4.0,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(result.images[0]), expected)


def test_a_negative_prompt_is_the_pipelines_negative_embeddings(
    klein_paths: dict[str, Path], base: DeskGenerator
) -> None:
    import torch

    photo = draw_desk()
    result = base.generate(
        prompt="a tidy desk", negative_prompt="clutter", image=photo, seed=7, steps=2, **SIZE
    )
    assert not result.warnings
    assert result.prompt_report is not None
    assert result.prompt_report.negative_encoders[0].tokens > 0
    pipe = _pipe(klein_paths["base"])
    with torch.no_grad():
        positive, _ = pipe.encode_prompt("a tidy desk")
        negative, _ = pipe.encode_prompt("clutter")
    expected = _by_hand(
        pipe,
        image=[photo],
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=2,
        guidance_scale=4.0,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(result.images[0]), expected)
    empty = base.generate(prompt="a tidy desk", image=photo, seed=7, steps=2, **SIZE)
    assert not np.array_equal(np.asarray(empty.images[0]), expected)


def test_the_output_size_is_the_pipelines_rule() -> None:
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    for size in [(2000, 1500), (4032, 3024), (1024, 1024), (96, 72), (700, 3000)]:
        image = Image.new("RGB", size)
        if size[0] * size[1] > AREA:
            image = Flux2ImageProcessor._resize_to_target_area(image, AREA)
        expected = (image.width // 16 * 16, image.height // 16 * 16)
        assert pipeline_size(size, multiple=16) == expected, size


def test_one_side_keeps_the_photos_aspect_and_both_sides_are_taken_as_given(
    klein: DeskGenerator,
) -> None:
    photo = draw_desk((128, 64))
    wide = klein.generate(prompt="a desk", image=photo, seed=1, steps=1, width=64)
    assert wide.images[0].size == (64, 32)
    square = klein.generate(prompt="a desk", image=photo, seed=1, steps=1, width=64, height=64)
    assert square.images[0].size == (64, 64) and not square.warnings  # the photo is not cut
    with pytest.raises(InvalidRequestError, match="multiple of 16"):
        klein.generate(prompt="a desk", image=photo, steps=1, width=72)


# -- defaults read from the model --------------------------------------------------------------


def test_step_and_guidance_defaults_come_from_is_distilled(
    klein_paths: dict[str, Path], klein: DeskGenerator, base: DeskGenerator
) -> None:
    for key, gen, defaults in (
        ("distilled", klein, DISTILLED_DEFAULTS),
        ("base", base, BASE_DEFAULTS),
    ):
        index = json.loads((klein_paths[key] / "model_index.json").read_text())
        backend = gen.backend
        assert isinstance(backend, Flux2KleinBackend)
        assert backend.distilled is index["is_distilled"] is (key == "distilled")
        assert (backend.default_steps, backend.guidance_default) == defaults
    result = klein.generate(prompt="a tidy desk", seed=3, **SIZE)
    assert (result.request.steps, result.request.guidance_scale) == DISTILLED_DEFAULTS
    assert result.denoising_steps == 4
    # the two tiny models have the same weights: without guidance they draw the same image
    plain = base.generate(prompt="a tidy desk", seed=3, steps=4, guidance_scale=1.0, **SIZE)
    np.testing.assert_array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))
    guided = base.generate(prompt="a tidy desk", seed=3, steps=4, **SIZE)
    assert not np.array_equal(np.asarray(guided.images[0]), np.asarray(result.images[0]))


def test_txt2img_without_a_photo_is_the_native_square(klein: DeskGenerator) -> None:
    pipe = klein.backend.pipeline  # type: ignore[attr-defined]
    result = klein.generate(prompt="a tidy desk", seed=1, steps=1)
    side = pipe.default_sample_size * pipe.vae_scale_factor
    assert result.mode == "txt2img" and result.images[0].size == (side, side) == (1024, 1024)


# -- what is refused or not used, and why ------------------------------------------------------


def test_guidance_on_a_distilled_model_is_refused_with_the_reason(klein: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match=r"step-distilled.*FLUX.2-klein-base-4B"):
        klein.generate(prompt="a desk", guidance_scale=4.0, steps=1, **SIZE)
    ok = klein.generate(prompt="a desk", guidance_scale=1.0, seed=1, steps=1, **SIZE)
    assert ok.request.guidance_scale == 1.0


def test_a_negative_prompt_without_guidance_is_said_unused(
    klein: DeskGenerator, base: DeskGenerator
) -> None:
    distilled = klein.generate(prompt="a desk", negative_prompt="mess", seed=1, steps=1, **SIZE)
    [warning] = distilled.warnings
    assert "'mess' was not used" in warning and "step-distilled" in warning
    assert distilled.prompt_report is not None
    assert distilled.prompt_report.negative_prompt is None  # not encoded, not reported as seen
    off = base.generate(
        prompt="a desk", negative_prompt="mess", guidance_scale=1.0, seed=1, steps=1, **SIZE
    )
    assert any("guidance_scale=1 turns classifier-free guidance off" in w for w in off.warnings)
    plain = klein.generate(prompt="a desk", seed=1, steps=1, **SIZE)
    assert np.array_equal(np.asarray(distilled.images[0]), np.asarray(plain.images[0]))


def test_strength_small_and_elongated_images_are_refused(klein: DeskGenerator) -> None:
    photo = draw_desk()
    with pytest.raises(InvalidRequestError, match="no strength"):
        klein.generate(prompt="a desk", image=photo, strength=0.5, steps=1)
    with pytest.raises(InvalidRequestError, match=r"reference image 1 is 40x40.*at least 64"):
        klein.generate(prompt="a desk", image=photo, references=[draw_desk((40, 40))], steps=1)
    with pytest.raises(InvalidRequestError, match=r"photo is 640x64.*8:1"):
        klein.generate(prompt="a desk", image=draw_desk((640, 64)), steps=1)
    with pytest.raises(InvalidRequestError, match="at most 3"):
        klein.generate(prompt="a desk", image=photo, references=[photo] * 4, steps=1)
    with pytest.raises(InvalidRequestError, match="desk photo"):
        klein.generate(prompt="a desk", references=[photo], steps=1)


def test_presets_point_to_the_distilled_models(klein_paths: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedOperationError, match=r"FLUX.2-klein-4B.*4 steps"):
        DeskGenerator("flux2-klein", model=str(klein_paths["base"]), device="cpu", preset="fast")


def test_another_pipeline_is_refused_with_its_backend(tiny_sd_path: Path) -> None:
    with pytest.raises(deskgen.ModelMismatchError, match=r"FLUX.2 \[klein\].*'sd'"):
        DeskGenerator("flux2-klein", model=str(tiny_sd_path), device="cpu")


# -- prompts -----------------------------------------------------------------------------------


def test_tokens_are_counted_inside_the_chat_template(klein: DeskGenerator) -> None:
    pipe = klein.backend.pipeline  # type: ignore[attr-defined]
    tokenizer = pipe.tokenizer

    def seen(text: str) -> int:  # what _get_qwen3_prompt_embeds tokenizes, unpadded
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        return len(tokenizer(chat)["input_ids"])

    text = "make the desk tidy, hide the cables"
    report = klein.check_prompt(prompt=text)
    assert report.encoders[0].tokens == seen(text) > len(tokenizer(text)["input_ids"])
    assert report.encoders[0].limit == 512
    long_text = ", ".join(["a walnut desk with a warm brass lamp"] * 120)
    assert seen(long_text) > 512
    with pytest.raises(PromptTooLongError, match="512"):
        klein.check_prompt(prompt=long_text, long_prompt="error")
    fitted = klein.check_prompt(prompt=long_text)  # fit: whole phrases dropped, reported
    assert fitted.dropped_phrases and seen(fitted.prompt) == fitted.encoders[0].tokens <= 512
    cut = klein.check_prompt(prompt=long_text, long_prompt="truncate")
    assert seen(cut.encoders[0].chunks[0]) <= 512 and cut.encoders[0].dropped


def test_a_tokenizer_without_the_chat_template_is_refused(klein_paths: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from deskgen.backends.diffusers.flux2_klein import chat_template

    tokenizer = AutoTokenizer.from_pretrained(klein_paths["distilled"] / "tokenizer")
    assert chat_template(tokenizer).startswith("<|im_start|>user\n{}<|im_end|>")
    tokenizer.chat_template = None
    with pytest.raises(deskgen.ModelLoadError, match="chat template"):
        chat_template(tokenizer)


# -- records and replays -----------------------------------------------------------------------


def test_an_edit_with_references_replays_from_its_record(
    klein: DeskGenerator, tmp_path: Path
) -> None:
    photo, ref = draw_desk(), draw_desk((64, 64))
    first = klein.generate(prompt="add the lamp", image=photo, references=[ref], seed=5, steps=2)
    assert first.request.reference_sha256 == [deskgen.load_image(ref)[1].sha256]
    [path] = first.save(tmp_path / "edit.png")
    record = read_record(path)
    again = klein.generate(record, image=photo, references=[ref])
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))
    with pytest.raises(InvalidRequestError, match="reference images"):
        klein.generate(record, image=photo)


# -- loading options ---------------------------------------------------------------------------


def test_loras_are_checked_then_applied_to_the_transformer(
    klein_paths: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    with DeskGenerator("flux2-klein", model=str(klein_paths["distilled"]), device="cpu") as gen:
        transformer = gen.backend.pipeline.transformer  # type: ignore[attr-defined]
        generator = torch.Generator().manual_seed(0)
        state = {}
        for name, module in transformer.named_modules():
            if name.endswith(("attn.to_q", "attn.to_k")):  # diffusers' peft layout
                a = torch.randn(2, module.in_features, generator=generator) * 0.5
                b = torch.randn(module.out_features, 2, generator=generator) * 0.5
                state[f"transformer.{name}.lora_A.weight"] = a
                state[f"transformer.{name}.lora_B.weight"] = b
        assert state
        save_file(state, str(tmp_path / "desk-lora.safetensors"))
        request: dict[str, Any] = {"prompt": "a tidy desk", "image": draw_desk(), "seed": 3}
        request |= {"steps": 2, **SIZE}
        plain = np.asarray(gen.generate(**request).images[0])
        gen.load_lora(str(tmp_path / "desk-lora.safetensors"))
        with_lora = np.asarray(gen.generate(**request).images[0])
        without = np.asarray(gen.generate(**request, loras={}).images[0])
        assert not np.array_equal(plain, with_lora)
        np.testing.assert_array_equal(plain, without)
        wrong = {
            "transformer.nope.lora_A.weight": torch.zeros(2, 4),
            "transformer.nope.lora_B.weight": torch.zeros(4, 2),
        }
        save_file(wrong, str(tmp_path / "wrong.safetensors"))
        with pytest.raises(deskgen.LoraMismatchError, match="does not fit"):
            gen.load_lora(str(tmp_path / "wrong.safetensors"))


def test_a_quantized_transformer_saves_and_reloads_to_the_same_image(
    klein_paths: dict[str, Path], tmp_path: Path
) -> None:
    from deskgen.quant import save_quantized

    config = deskgen.QuantConfig(method="quanto", weights="int8")
    request: dict[str, Any] = {"prompt": "a tidy desk", "image": draw_desk(), "seed": 3, "steps": 2}
    request |= SIZE
    model = str(klein_paths["distilled"])
    with DeskGenerator("flux2-klein", model=model, device="cpu", quantization=config) as gen:
        report = gen.memory_report().components["transformer"]
        assert report.quantization == "int8 (quanto)"
        before = np.asarray(gen.generate(**request).images[0])
        save_quantized(gen, tmp_path / "q")
    with DeskGenerator("flux2-klein", model=str(tmp_path / "q"), device="cpu") as again:
        assert again.backend.distilled  # type: ignore[attr-defined]
        np.testing.assert_array_equal(np.asarray(again.generate(**request).images[0]), before)


def test_offload_needs_a_gpu(klein_paths: dict[str, Path]) -> None:
    with pytest.raises(deskgen.ConfigError, match=r"offload='model'.*GPU"):
        DeskGenerator(
            "flux2-klein", model=str(klein_paths["distilled"]), device="cpu", offload="model"
        )


@pytest.mark.parametrize("budget", [24, 12])
def test_the_planner_fits_the_4b_models(budget: int) -> None:
    from deskgen._planner import infer_backend

    for model in ("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-base-4B"):
        assert infer_backend(model) == "flux2-klein"
        plan = deskgen.plan_memory(
            "flux2-klein", model=model, device="cuda", budget_bytes=budget * 2**30
        )
        assert plan.fits and plan.sizes_from == "published"
        if budget == 12:  # 16 GB of bf16 weights: quantized or offloaded
            assert plan.offload != "none" or plan.quantization is not None


def test_a_bench_row_per_model(klein_paths: dict[str, Path], tmp_path: Path) -> None:
    from deskgen.bench import BenchConfig, BenchEntry, run_bench

    photo = tmp_path / "desk.png"
    draw_desk().save(photo)
    config = BenchConfig(
        prompt="a tidy desk",
        image=str(photo),
        request=dict(SIZE),
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        runs=[
            BenchEntry(backend="flux2-klein", model=str(klein_paths["distilled"]), label="4B"),
            BenchEntry(backend="flux2-klein", model=str(klein_paths["base"]), label="base"),
        ],
    )
    report = run_bench(config, out=tmp_path / "bench")
    rows = {row.label: row for row in report.rows}
    assert all(row.ok for row in rows.values()), [row.error for row in rows.values()]
    assert {row.mode for row in rows.values()} == {"edit"}
    assert (rows["4B"].steps, rows["base"].steps) == (4, 50)


# -- the tiny model, the demo and the example --------------------------------------------------


def test_the_tiny_model_is_the_real_layout_and_reproducible(tmp_path: Path) -> None:
    a = make_tiny_flux2_klein(tmp_path / "a", seed=3)
    b = make_tiny_flux2_klein(tmp_path / "b", seed=3)
    c = make_tiny_flux2_klein(tmp_path / "c", seed=4, distilled=False)
    index = json.loads((a / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is True
    assert json.loads((c / "model_index.json").read_text())["is_distilled"] is False
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"]
    assert not list(a.rglob("*.bin"))
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert len(files) == 3  # text encoder, transformer, VAE
    for name in [*files, Path("tokenizer/tokenizer.json")]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    weights = Path("transformer/diffusion_pytorch_model.safetensors")
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
    before = (a / weights).stat().st_mtime_ns
    assert make_tiny_flux2_klein(tmp_path / "a", seed=3) == a  # reused, not rebuilt
    assert (a / weights).stat().st_mtime_ns == before
    pipe = _pipe(a)
    text = pipe.text_encoder.config
    assert pipe.transformer.config.joint_attention_dim == 3 * text.hidden_size
    assert text.num_hidden_layers > 27  # the hidden states the pipeline stacks: 9, 18, 27


@pytest.mark.slow
def test_demo_runs_offline_on_the_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deskgen.cli import main

    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "klein-demo.png"
    code = main(["demo", "--backend", "flux2-klein", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "flux2-klein edit" in said and "was not used" in said  # the demo's negative preset
    assert (tmp_path / "cache" / "tiny-flux2-klein-demo" / "model_index.json").is_file()
    assert read_record(out).steps == 20


@pytest.mark.slow
def test_the_example_runs_offline(tmp_path: Path) -> None:
    out = tmp_path / "klein.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flux2_klein_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "DESKGEN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("edit (128, 96)")
    assert "references: ['" in proc.stdout and "base: 50 steps" in proc.stdout
    assert out.is_file()


# -- the contract ------------------------------------------------------------------------------


class TestFlux2KleinContract(BackendContract):
    """``flux2-klein`` on the step-distilled tiny model passes the backend contract
    (`deskgen.testing.contract`): txt2img without a photo, edits with one."""

    request_kwargs: ClassVar[dict[str, Any]] = dict(SIZE)

    def make_generator(self, tmp_path: Path, klein_paths: dict[str, Path]) -> DeskGenerator:
        return DeskGenerator("flux2-klein", model=str(klein_paths["distilled"]), device="cpu")


class TestFlux2KleinBaseContract(TestFlux2KleinContract):
    """The same on the base model: classifier-free guidance, two branches a step."""

    def make_generator(self, tmp_path: Path, klein_paths: dict[str, Path]) -> DeskGenerator:
        return DeskGenerator("flux2-klein", model=str(klein_paths["base"]), device="cpu")
