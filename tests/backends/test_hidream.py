"""``hidream`` on a tiny HiDream pipeline (four text encoders, Llama apart), offline."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from deskgen import (
    ConfigError,
    DeskGenerator,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    PromptTooLongError,
    UnsupportedOperationError,
)
from deskgen.demo import LONG_DESCRIPTION
from deskgen.testing.contract import BackendContract

BACKEND = "hidream"
# the seed's 128-token description and more: 150-200 tokens for every encoder
LONGER = LONG_DESCRIPTION + " Warm light falls from a window on the left onto a walnut desk."


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def gen(tiny_hidream_paths: dict[str, Path]) -> Any:
    generator = DeskGenerator(
        BACKEND,
        model=str(tiny_hidream_paths["pipeline"]),
        llama_model=str(tiny_hidream_paths["llama"]),
        edition="full",
        device="cpu",
    )
    yield generator
    generator.close()


def _hand_written(paths: dict[str, Path]) -> Any:
    from diffusers import HiDreamImagePipeline
    from transformers import AutoTokenizer, LlamaForCausalLM

    pipe = HiDreamImagePipeline.from_pretrained(
        paths["pipeline"],
        text_encoder_4=LlamaForCausalLM.from_pretrained(paths["llama"]),
        tokenizer_4=AutoTokenizer.from_pretrained(paths["llama"]),
        use_safetensors=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _diffusers_truncation_log() -> Iterator[list[str]]:
    """What diffusers' HiDream pipeline itself logs about cut prompts (a count independent of
    deskgen's)."""
    logger = logging.getLogger("diffusers.pipelines.hidream_image.pipeline_hidream_image")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class TestSequenceLength:
    def test_long_prompt_is_seen_whole_by_every_encoder(self, gen: DeskGenerator) -> None:
        with _diffusers_truncation_log() as cut:
            result = gen.generate(prompt=LONGER, negative_prompt="clutter", seed=1, steps=2)
        assert not [m for m in cut if "truncated" in m]  # diffusers' own check agrees
        with _diffusers_truncation_log() as cut:  # and the check can see a cut
            gen.generate(prompt=LONGER + " " + LONGER, long_prompt="truncate", seed=1, steps=1)
        assert [m for m in cut if "truncated" in m]
        report = result.prompt_report
        assert report is not None and report.lossless
        counts = [r.tokens for r in report.encoders]
        assert max(counts) > 128  # longer than diffusers' default cut
        length = max(counts)
        assert all(r.limit == length for r in report.encoders)  # one fitted length for all
        assert not result.warnings

    def test_parity_with_the_fitted_length(
        self, gen: DeskGenerator, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        result = gen.generate(prompt=LONGER, negative_prompt="clutter", seed=3, steps=2)
        assert result.prompt_report is not None
        length = max(r.limit for r in result.prompt_report.encoders)
        ref = _hand_written(tiny_hidream_paths)(
            LONGER,
            negative_prompt="clutter",
            num_inference_steps=2,
            guidance_scale=5.0,
            max_sequence_length=length,
            generator=torch.Generator().manual_seed(3),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.image))

    def test_short_prompts_run_exactly_as_stock(
        self, gen: DeskGenerator, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        result = gen.generate(prompt="a tidy desk", seed=2, steps=2)
        assert result.prompt_report is not None
        assert {r.limit for r in result.prompt_report.encoders} == {128}
        ref = _hand_written(tiny_hidream_paths)(
            "a tidy desk",
            num_inference_steps=2,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(2),
        ).images[0]  # diffusers' default max_sequence_length=128
        assert np.array_equal(_pixels(ref), _pixels(result.image))

    def test_over_the_cap_fit_drops_whole_phrases(self, gen: DeskGenerator) -> None:
        report = gen.check_prompt(prompt=LONGER + " " + LONGER)
        assert report.mode.value == "fit" and report.dropped_phrases
        assert all(r.tokens <= r.limit <= 218 for r in report.encoders)
        assert not any(r.dropped for r in report.encoders)

    def test_over_the_cap_truncate_reports_each_encoders_cut(self, gen: DeskGenerator) -> None:
        report = gen.check_prompt(prompt=LONGER + " " + LONGER, long_prompt="truncate")
        assert all(r.dropped for r in report.encoders)
        assert any("cut the prompt at 218 tokens" in w for w in report.warnings)

    def test_error_mode_and_chunk_mode(self, gen: DeskGenerator) -> None:
        with pytest.raises(PromptTooLongError):
            gen.check_prompt(prompt=LONGER + " " + LONGER, long_prompt="error")
        with pytest.raises(InvalidRequestError, match="'fit'"):
            gen.check_prompt(prompt="a desk", long_prompt="chunk")

    def test_cap_is_an_option(self, tiny_hidream_paths: dict[str, Path]) -> None:
        with DeskGenerator(
            BACKEND,
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            edition="full",
            max_sequence_length=400,
            device="cpu",
        ) as big:
            report = big.check_prompt(prompt=LONGER + " " + LONGER, long_prompt="truncate")
        for r in report.encoders:
            if r.family.value == "clip":  # the pipeline's own CLIP maximum stays
                assert r.limit == 218 and r.dropped
            else:  # T5 and Llama read it all
                assert 218 < r.tokens <= r.limit <= 400 and not r.dropped


class TestRequests:
    def test_edition_defaults(
        self, gen: DeskGenerator, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        result = gen.generate(prompt="a desk", seed=1, steps=2)
        assert result.request.guidance_scale == 5.0  # full
        fast = tiny_hidream_paths["pipeline"].parent / "tiny-HiDream-I1-Fast"
        if not fast.exists():
            os.symlink(tiny_hidream_paths["pipeline"], fast)
        with DeskGenerator(
            BACKEND, model=str(fast), llama_model=str(tiny_hidream_paths["llama"]), device="cpu"
        ) as quick:
            done = quick.generate(prompt="a desk", seed=1)
        assert (done.request.steps, done.request.guidance_scale) == (16, 0.0)
        assert done.denoising_steps == 16

    def test_native_area_and_aspect(self, gen: DeskGenerator) -> None:
        square = gen.generate(prompt="a desk", seed=1, steps=1)
        assert square.image.size == (128, 128) == (square.width, square.height)
        wide = gen.generate(prompt="a desk", seed=1, steps=1, width=64, height=32)
        assert wide.image.size == (wide.width, wide.height) == (180, 90)
        assert any("native area" in w for w in wide.warnings)

    def test_photo_is_refused_with_the_describe_route(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        with pytest.raises(UnsupportedOperationError, match=r"describe\(photo\)"):
            gen.generate(prompt="a desk", image=desk_photo, steps=1)

    def test_threads_get_what_they_would_alone(self, gen: DeskGenerator) -> None:
        jobs = [{"prompt": p, "seed": i, "steps": 2} for i, p in enumerate(["a desk", LONGER])]
        jobs.append({"prompt": "a walnut desk, plants", "seed": 9, "steps": 2})
        with ThreadPoolExecutor(max_workers=3) as pool:
            together = list(pool.map(lambda job: gen.generate(**job), jobs))
        for job, result in zip(jobs, together, strict=True):
            assert np.array_equal(_pixels(gen.generate(**job).image), _pixels(result.image))


class TestLowMemory:
    @pytest.mark.parametrize(
        ("weights", "backend"), [("int8", "quanto"), ("int4", "quanto"), ("int8", "torchao")]
    )
    def test_quantized_encoders_are_smaller_and_generate(
        self, gen: DeskGenerator, tiny_hidream_paths: dict[str, Path], weights: str, backend: str
    ) -> None:
        plain = gen.backend.component_bytes()  # type: ignore[attr-defined]
        with DeskGenerator(
            BACKEND,
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            edition="full",
            quantize_text_encoders=weights,
            quantization_backend=backend,
            device="cpu",
        ) as small:
            sizes = small.backend.component_bytes()  # type: ignore[attr-defined]
            assert small.backend.quantized == {  # type: ignore[attr-defined]
                "text_encoder_4": f"{weights} ({backend})",
                "text_encoder_3": f"{weights} ({backend})",
            }
            result = small.generate(prompt=LONGER, seed=1, steps=2)
        for name in ("text_encoder_3", "text_encoder_4"):
            assert sizes[name] < plain[name], name
        assert sizes["transformer"] == plain["transformer"]
        assert result.image.size == (128, 128) and np.asarray(result.image).std() > 0

    def test_quantized_transformer(self, tiny_hidream_paths: dict[str, Path]) -> None:
        with DeskGenerator(
            BACKEND,
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            edition="full",
            quantize_transformer="int8",
            device="cpu",
        ) as small:
            assert "transformer" in small.backend.quantized  # type: ignore[attr-defined]
            assert small.generate(prompt="a desk", seed=1, steps=1).images

    def test_missing_quantization_library_names_the_extra(
        self, tiny_hidream_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from deskgen.quant import _weights

        monkeypatch.setattr(_weights, "_available", lambda backend: False)
        with pytest.raises(MissingDependencyError, match=r"deskgen\[quanto\]"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_hidream_paths["pipeline"]),
                llama_model=str(tiny_hidream_paths["llama"]),
                edition="full",
                quantize_text_encoders="int8",
                device="cpu",
            )

    @pytest.mark.parametrize("device", ["cpu", "auto"])  # "auto" is the CPU on this machine
    def test_offload_needs_a_gpu(self, tiny_hidream_paths: dict[str, Path], device: str) -> None:
        with pytest.raises(ConfigError, match="device='cuda'"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_hidream_paths["pipeline"]),
                llama_model=str(tiny_hidream_paths["llama"]),
                edition="full",
                offload="model",
                device=device,
            )


class TestLoading:
    def test_missing_llama_folder(self, tiny_hidream_paths: dict[str, Path]) -> None:
        with pytest.raises(ModelNotFoundError, match="llama_model="):
            DeskGenerator(
                BACKEND,
                model=str(tiny_hidream_paths["pipeline"]),
                llama_model="./no/llama",
                device="cpu",
            )

    def test_llama_missing_from_the_offline_cache(
        self, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        with pytest.raises(ModelNotFoundError, match="hf auth login"):
            DeskGenerator(BACKEND, model=str(tiny_hidream_paths["pipeline"]), device="cpu")

    def test_sdxl_weights_are_a_mismatch(
        self, tiny_sdxl_path: Path, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        from deskgen import ModelMismatchError

        with pytest.raises(ModelMismatchError, match="sdxl"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                llama_model=str(tiny_hidream_paths["llama"]),
                edition="full",
                device="cpu",
            )


def test_record_replays(gen: DeskGenerator, tmp_path: Path) -> None:
    from deskgen import read_record

    result = gen.generate(prompt=LONGER, seed=8, steps=2)
    [path] = result.save(tmp_path / "hidream.png")
    request = read_record(path)
    assert (request.steps, request.guidance_scale, request.width) == (2, 5.0, 128)
    assert np.array_equal(_pixels(gen.generate(request).image), _pixels(result.image))


class TestReviewFindings:
    @pytest.mark.parametrize(("width", "height"), [(144, 80), (64, 32), (96, 128), (32, 112)])
    def test_reported_size_is_the_image_size(
        self, gen: DeskGenerator, width: int, height: int
    ) -> None:
        result = gen.generate(prompt="a desk", seed=1, steps=1, width=width, height=height)
        assert result.image.size == (result.width, result.height)

    def test_unused_negative_prompt_neither_counts_nor_shows(self, gen: DeskGenerator) -> None:
        result = gen.generate(
            prompt="a desk", negative_prompt=LONGER, guidance_scale=0.0, seed=1, steps=1
        )
        report = result.prompt_report
        assert report is not None and report.negative_prompt is None
        assert {r.limit for r in report.encoders} == {128}  # the stock length: a short prompt
        assert any("negative prompt" in w and "not used" in w for w in result.warnings)

    def test_a_llama_that_is_not_one(self, tiny_hidream_paths: dict[str, Path]) -> None:
        from deskgen import ModelMismatchError

        with pytest.raises(ModelMismatchError, match="'t5' model"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_hidream_paths["pipeline"]),
                llama_model=str(tiny_hidream_paths["pipeline"] / "text_encoder_3"),
                device="cpu",
            )

    @pytest.mark.parametrize(
        ("name", "edition"),
        [
            ("HiDream-ai/HiDream-I1-Dev", "dev"),
            ("./HiDream-I1-Fast/", "fast"),
            ("/cache/models--HiDream-ai--HiDream-I1-Dev/snapshots/0123abc", "dev"),
            ("./my-hidream-fast-nf4", "fast"),
            ("./tiny-hidream", None),
        ],
    )
    def test_edition_from_the_name(self, name: str, edition: str | None) -> None:
        from deskgen.backends.diffusers.hidream import _edition_from_name

        assert _edition_from_name(name) == edition

    def test_torchao_int4_is_refused_before_loading(
        self, tiny_hidream_paths: dict[str, Path]
    ) -> None:
        with pytest.raises(ConfigError, match="mslk"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_hidream_paths["pipeline"]),
                llama_model=str(tiny_hidream_paths["llama"]),
                edition="full",
                quantize_transformer="int4",
                quantization_backend="torchao",
                device="cpu",
            )

    def test_auto_offload_is_none_on_the_cpu(self, gen: DeskGenerator) -> None:
        assert gen.backend.offload == "none"  # type: ignore[attr-defined]


def test_unknown_edition_warns(tiny_hidream_paths: dict[str, Path]) -> None:
    with pytest.warns(UserWarning, match="edition='dev' or 'fast'"):
        DeskGenerator(
            BACKEND,
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            device="cpu",
        ).close()


class TestHiDreamContract(BackendContract):
    """``hidream`` passes the backend contract (`deskgen.testing.contract`), at one step."""

    steps = 1
    mid_run_kwargs: ClassVar[dict[str, Any]] = {"steps": 2}

    def make_generator(self, tmp_path: Path, tiny_hidream_paths: dict[str, Path]) -> DeskGenerator:
        return DeskGenerator(
            BACKEND,
            model=str(tiny_hidream_paths["pipeline"]),
            llama_model=str(tiny_hidream_paths["llama"]),
            edition="full",
            device="cpu",
        )
