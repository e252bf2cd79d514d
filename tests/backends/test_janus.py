"""``janus`` on a tiny Janus model (transformers), offline: describe, and text to image."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from deskgen import (
    DeskDescription,
    DeskGenerator,
    GenerationCancelledError,
    InvalidRequestError,
    ModelMismatchError,
    ModelNotFoundError,
    StepProgress,
    UnsupportedOperationError,
)
from deskgen.prompts._vlm import parse_description_json
from deskgen.testing.contract import BackendContract

BACKEND = "janus"


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def gen(tiny_janus_path: Path) -> Any:
    generator = DeskGenerator(BACKEND, model=str(tiny_janus_path), device="cpu")
    yield generator
    generator.close()


class TestDescribe:
    def test_describes_a_photo_in_words_and_fields(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        description = gen.describe(desk_photo)
        assert isinstance(description, DeskDescription)
        assert description.text  # the model's own "explain details" answer
        assert description.summary and description.clutter in ("none", "low", "medium", "high")
        assert gen.describe(desk_photo) == description  # greedy decoding: repeatable

    def test_the_seeds_instruction_is_asked(
        self, gen: DeskGenerator, desk_photo: Image.Image, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        asked: list[str] = []
        backend = gen.backend
        real = backend._answer  # type: ignore[attr-defined]

        def spy(photo: Image.Image, question: str, *, max_new_tokens: int) -> str:
            asked.append(question)
            return str(real(photo, question, max_new_tokens=max_new_tokens))

        monkeypatch.setattr(backend, "_answer", spy)
        gen.describe(desk_photo, instruction="explain details")
        assert asked[0] == "explain details"
        assert "JSON" in asked[1]

    def test_a_json_answer_fills_the_fields(
        self, gen: DeskGenerator, desk_photo: Image.Image, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        answer = (
            '```json\n{"summary": "A wooden desk by a window.", "items": ["monitor", "mug"], '
            '"keep": ["monitor"], "remove": ["tangled cables"], "style": "plain", '
            '"lighting": "daylight", "clutter": "high", "colours": ["oak"], '
            '"room": "a small home office"}\n```'
        )

        def fake(photo: Image.Image, question: str, *, max_new_tokens: int) -> str:
            return answer if "JSON" in question else "A desk with a monitor and a mug."

        monkeypatch.setattr(gen.backend, "_answer", fake)
        description = gen.describe(desk_photo)
        assert description.text == "A desk with a monitor and a mug."
        assert (description.clutter, description.room) == ("high", "a small home office")
        spec = description.to_spec()
        assert "monitor" in spec.keep and "tangled cables" in spec.avoid

    def test_json_parsing(self) -> None:
        assert parse_description_json("no json here") is None
        assert parse_description_json('{"summary": "x"}') is None  # fields missing
        fields = parse_description_json(
            'Sure! {"summary": "s", "style": "a", "lighting": "b", "clutter": "low", "room": "c"}'
        )
        assert fields is not None and fields.clutter == "low"
        near_miss = parse_description_json(
            '{"summary": "s", "style": "a", "lighting": "b", "clutter": "Moderate", "room": "c", '
            '"items": "a monitor, a mug and a lamp"}'
        )
        assert near_miss is not None and near_miss.clutter == "medium"
        assert near_miss.items == ["a monitor", "a mug", "a lamp"]


class TestGenerate:
    def test_draws_at_its_size_and_replays_each_seed(self, gen: DeskGenerator) -> None:
        batch = gen.generate(prompt="a tidy desk", seed=5, num_images=2)
        assert batch.image.size == (16, 16) == (batch.width, batch.height)
        assert batch.request.guidance_scale == 5.0 and batch.denoising_steps == 16
        alone = gen.generate(prompt="a tidy desk", seed=6)
        assert np.array_equal(_pixels(alone.image), _pixels(batch.images[1]))
        assert not np.array_equal(_pixels(batch.images[0]), _pixels(batch.images[1]))

    def test_parity_with_transformers(self, gen: DeskGenerator, tiny_janus_path: Path) -> None:
        from transformers import AutoProcessor, JanusForConditionalGeneration

        result = gen.generate(prompt="a walnut desk", seed=11, guidance_scale=3.0)
        model = JanusForConditionalGeneration.from_pretrained(tiny_janus_path)
        processor = AutoProcessor.from_pretrained(tiny_janus_path)
        messages = [{"role": "user", "content": [{"type": "text", "text": "a walnut desk"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, generation_mode="image", return_tensors="pt")
        torch.manual_seed(11)
        tokens = model.generate(
            **inputs, generation_mode="image", do_sample=True, guidance_scale=3.0
        )
        pixels = model.decode_image_tokens(tokens).float().permute(0, 3, 1, 2)
        ref = processor.postprocess(
            list(pixels), return_tensors="PIL.Image.Image", input_data_format="channels_first"
        )["pixel_values"][0]
        assert np.array_equal(_pixels(ref.convert("RGB")), _pixels(result.image))

    def test_progress_and_cancel(self, gen: DeskGenerator) -> None:
        seen: list[StepProgress] = []
        gen.generate(prompt="a desk", seed=1, num_images=2, on_step=seen.append)
        assert [p.step for p in seen] == list(range(1, 33))
        assert {p.total_steps for p in seen} == {32}
        stop = threading.Event()

        def halt(progress: StepProgress) -> None:
            if progress.step == 5:
                stop.set()

        with pytest.raises(GenerationCancelledError) as info:
            gen.generate(prompt="a desk", seed=1, on_step=halt, cancel=stop)
        assert info.value.step == 5

    def test_what_janus_does_not_take(self, gen: DeskGenerator, desk_photo: Image.Image) -> None:
        with pytest.raises(UnsupportedOperationError, match="describe"):
            gen.generate(prompt="a desk", image=desk_photo)
        with pytest.raises(InvalidRequestError, match="16x16"):
            gen.generate(prompt="a desk", width=32)
        result = gen.generate(prompt="a desk", negative_prompt="clutter", steps=20, seed=1)
        assert any("no negative prompt" in w for w in result.warnings)
        assert any("steps has no effect" in w for w in result.warnings)

    def test_threads_get_what_they_would_alone(self, gen: DeskGenerator) -> None:
        jobs = [{"prompt": f"a desk number {i}", "seed": i} for i in range(4)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            together = list(pool.map(lambda job: gen.generate(**job), jobs))
        for job, result in zip(jobs, together, strict=True):
            assert np.array_equal(_pixels(gen.generate(**job).image), _pixels(result.image))


class TestAcrossBackends:
    def test_describe_then_generate_elsewhere(
        self,
        gen: DeskGenerator,
        generators: dict[str, DeskGenerator],
        desk_photo: Image.Image,
    ) -> None:
        """The seed's Janus workflow: describe the photo, write the prompt, generate."""
        rendered = gen.describe(desk_photo).to_spec(style="minimalist").render(backend="sdxl")
        result = generators["sdxl"].generate(rendered.request(image=desk_photo, seed=1, steps=2))
        assert result.images and result.mode == "img2img"
        assert result.prompt_report is not None and result.prompt_report.lossless
        own = gen.generate(rendered.request(seed=1))  # and with Janus itself
        assert own.images

    def test_quantized_language_model(self, tiny_janus_path: Path) -> None:
        from deskgen.quant import module_bytes

        with DeskGenerator(BACKEND, model=str(tiny_janus_path), device="cpu") as plain:
            before = module_bytes(plain.backend.model.model.language_model)  # type: ignore[attr-defined]
        with DeskGenerator(
            BACKEND, model=str(tiny_janus_path), quantize_language_model="int8", device="cpu"
        ) as small:
            backend: Any = small.backend
            assert backend.quantized == {"language_model": "int8 (quanto)"}
            assert module_bytes(backend.model.model.language_model) < before
            assert small.generate(prompt="a desk", seed=1).images


class TestLoading:
    def test_missing_folder(self) -> None:
        with pytest.raises(ModelNotFoundError, match="No Janus folder"):
            DeskGenerator(BACKEND, model="./no/janus", device="cpu")

    def test_hub_id_missing_offline(self) -> None:
        with pytest.raises(ModelNotFoundError, match="hf download deepseek-community/Janus"):
            DeskGenerator(BACKEND, device="cpu")

    def test_another_model_is_a_mismatch(self, tiny_sdxl_path: Path) -> None:
        with pytest.raises(ModelMismatchError, match="not Janus"):
            DeskGenerator(BACKEND, model=str(tiny_sdxl_path / "text_encoder"), device="cpu")


def test_record_replays(gen: DeskGenerator, tmp_path: Path) -> None:
    from deskgen import read_record

    result = gen.generate(prompt="a walnut desk with plants", seed=21, num_images=2)
    paths = result.save(tmp_path / "janus.png")
    again = gen.generate(read_record(paths[1]))
    assert np.array_equal(_pixels(again.image), _pixels(result.images[1]))


class TestReviewFindings:
    def test_guidance_must_be_above_one(self, gen: DeskGenerator) -> None:
        for scale in (0.0, 1.0):
            with pytest.raises(InvalidRequestError, match="guidance_scale > 1"):
                gen.generate(prompt="a desk", guidance_scale=scale)

    def test_deepseeks_original_repo_is_a_mismatch(self, tmp_path: Path) -> None:
        folder = tmp_path / "Janus-Pro-7B"
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "multi_modality"}')
        with pytest.raises(ModelMismatchError, match="multi_modality"):
            DeskGenerator(BACKEND, model=str(folder), device="cpu")

    def test_begin_of_image_token_found_without_generation_kwargs(
        self, tiny_janus_path: Path, tmp_path: Path
    ) -> None:
        import json
        import shutil

        copy = tmp_path / "janus"
        shutil.copytree(tiny_janus_path, copy)
        config_file = copy / "generation_config.json"
        config = json.loads(config_file.read_text())
        del config["generation_kwargs"]
        config_file.write_text(json.dumps(config))
        with DeskGenerator(BACKEND, model=str(copy), device="cpu") as janus:
            assert janus.generate(prompt="a desk", seed=1).images

    def test_torchao_int4_is_refused_before_loading(self, tiny_janus_path: Path) -> None:
        from deskgen import ConfigError

        with pytest.raises(ConfigError, match="quanto"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_janus_path),
                quantize_language_model="int4",
                quantization_backend="torchao",
                device="cpu",
            )

    def test_describe_then_hidream(
        self, gen: DeskGenerator, desk_photo: Image.Image, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        """The route for HiDream, which has no image input: Janus describes, HiDream draws."""
        rendered = gen.describe(desk_photo).to_spec().render(backend="hidream")
        with DeskGenerator(
            "hidream",
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            edition="full",
            device="cpu",
        ) as hidream:
            result = hidream.generate(rendered.request(seed=1, steps=2))
        assert result.images and result.prompt_report is not None
        # the spec's text, fitted to all four encoders (the render counted CLIP only)
        assert result.prompt_report.prompt.startswith("a realistic photo of a tidy")


class TestJanusContract(BackendContract):
    """``janus`` passes the backend contract (`deskgen.testing.contract`); it draws image
    tokens (one step each), so its requests take no steps."""

    steps = None
    mid_run_kwargs: ClassVar[dict[str, Any]] = {}

    def make_generator(self, tmp_path: Path, tiny_janus_path: Path) -> DeskGenerator:
        return DeskGenerator(BACKEND, model=str(tiny_janus_path), device="cpu")
