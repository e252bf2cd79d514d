"""The prompt builder on the sd/sdxl backends: chunked encoding, modes, presets, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deskgen import DeskGenerator, PromptTooLongError, StepProgress
from deskgen.backends import DiffusersBackend
from deskgen.prompts import LongPromptMode, check_prompt, plan_prompt

DATA = Path(__file__).resolve().parents[1] / "data"
SEED: dict[str, Any] = json.loads((DATA / "seed_prompts.json").read_text(encoding="utf-8"))
LONG = SEED["long_description"]


@pytest.fixture(params=["sdxl", "sd"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gen(kind: str, generators: dict[str, DeskGenerator]) -> DeskGenerator:
    return generators[kind]


def _backend(gen: DeskGenerator) -> DiffusersBackend:
    backend = gen.backend
    assert isinstance(backend, DiffusersBackend)
    return backend


def _plan(backend: DiffusersBackend, prompt: str, negative: str | None, mode: str = "chunk") -> Any:
    return plan_prompt(
        backend=backend.name,
        prompt=prompt,
        negative_prompt=negative,
        encoders=backend.prompt_encoders(),
        mode=LongPromptMode(mode),
        default_negative_preset=backend.default_negative_preset,
    )


def _encode(backend: DiffusersBackend, plan: Any, *, chunked: bool) -> dict[str, Any]:
    from deskgen.backends.diffusers._chunked import encode_chunked_sd, encode_chunked_sdxl

    pipe = backend.pipeline
    with torch.no_grad():
        if not chunked:
            return backend.encode_prompt(pipe, plan, do_cfg=True)
        encode = encode_chunked_sdxl if backend.name == "sdxl" else encode_chunked_sd
        return encode(pipe, plan, do_cfg=True, device=pipe.device)


class TestChunkedEncoder:
    @pytest.mark.parametrize("negative", [None, "clutter, people", ""])
    def test_one_chunk_equals_diffusers_own_encoding(
        self, gen: DeskGenerator, negative: str | None
    ) -> None:
        backend = _backend(gen)
        plan = _plan(backend, SEED["clean_desk"], negative)  # 75 tokens: one chunk
        assert not plan.chunked
        ours = _encode(backend, plan, chunked=True)
        theirs = _encode(backend, plan, chunked=False)
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), key

    def test_the_seed_long_prompt_is_encoded_whole(self, gen: DeskGenerator) -> None:
        backend = _backend(gen)
        plan = _plan(backend, LONG, "clutter")
        assert plan.chunked
        embeds = _encode(backend, plan, chunked=False)  # the backend picks the chunked path
        assert embeds["prompt_embeds"].shape[1] == 154
        assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape
        # the second chunk really is the prompt's tail, not padding
        empty = _encode(backend, _plan(backend, "x", None), chunked=True)["prompt_embeds"]
        assert not torch.equal(embeds["prompt_embeds"][:, 77:], empty[:, :77])

    def test_chunks_are_the_first_chunk_plus_the_rest(self, gen: DeskGenerator) -> None:
        backend = _backend(gen)
        long_plan = _plan(backend, LONG, None)
        first, second = long_plan.prompt_chunks[0].chunks
        head = _encode(backend, _plan(backend, first, None), chunked=True)
        tail = _encode(backend, _plan(backend, second, None), chunked=True)
        whole = _encode(backend, long_plan, chunked=True)
        assert torch.equal(whole["prompt_embeds"][:, :77], head["prompt_embeds"])
        assert torch.equal(whole["prompt_embeds"][:, 77:], tail["prompt_embeds"])
        if backend.name == "sdxl":  # pooled from the first chunk (A1111/ComfyUI/compel)
            assert torch.equal(whole["pooled_prompt_embeds"], head["pooled_prompt_embeds"])

    def test_negative_is_padded_with_empty_chunks(self, gen: DeskGenerator) -> None:
        backend = _backend(gen)
        plan = _plan(backend, LONG, "blurry")
        embeds = _encode(backend, plan, chunked=True)
        blurry = _encode(backend, _plan(backend, "blurry", None), chunked=True)
        empty = _encode(backend, _plan(backend, "", None), chunked=True)
        negative = embeds["negative_prompt_embeds"]
        assert torch.equal(negative[:, :77], blurry["prompt_embeds"])
        assert torch.equal(negative[:, 77:], empty["prompt_embeds"])

    def test_a_long_negative_pads_the_prompt(self, gen: DeskGenerator) -> None:
        backend = _backend(gen)
        plan = _plan(backend, "a desk", ", ".join(["blurry"] * 60))
        embeds = _encode(backend, plan, chunked=False)
        assert embeds["prompt_embeds"].shape[1] == embeds["negative_prompt_embeds"].shape[1] == 154

    def test_sdxl_zeroes_a_missing_negative_like_diffusers(
        self, generators: dict[str, DeskGenerator]
    ) -> None:
        backend = _backend(generators["sdxl"])
        embeds = _encode(backend, _plan(backend, LONG, None), chunked=True)
        assert not embeds["negative_prompt_embeds"].any()
        assert not embeds["negative_pooled_prompt_embeds"].any()

    def test_break_makes_chunks_in_a_short_prompt(self, gen: DeskGenerator) -> None:
        backend = _backend(gen)
        plan = _plan(backend, "a tidy desk BREAK warm light", None)
        assert plan.chunked
        assert _encode(backend, plan, chunked=False)["prompt_embeds"].shape[1] == 154


class TestModesEndToEnd:
    def test_chunk_generates_and_reports(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt=LONG, seed=1, steps=3)
        report = result.prompt_report
        assert report is not None and report.mode is LongPromptMode.CHUNK and report.lossless
        assert all(len(r.chunks) == 2 and r.tokens == 128 for r in report.encoders)
        truncated = gen.generate(prompt=LONG, seed=1, steps=3, long_prompt="truncate")
        # the tail of the prompt changes the picture: it was really encoded
        assert result.images[0].tobytes() != truncated.images[0].tobytes()

    def test_truncate_is_diffusers_own_cut(
        self, kind: str, gen: DeskGenerator, tiny_paths: dict[str, Path]
    ) -> None:
        import diffusers

        result = gen.generate(prompt=LONG, seed=2, steps=3, long_prompt="truncate")
        name = "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline"
        pipe = getattr(diffusers, name).from_pretrained(tiny_paths[kind])
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(
            LONG,
            num_inference_steps=3,
            guidance_scale=result.request.guidance_scale,
            generator=torch.Generator().manual_seed(2),
        ).images[0]
        assert np.array_equal(np.asarray(ref), np.asarray(result.images[0]))
        report = result.prompt_report
        assert report is not None
        assert report.encoders[0].dropped.endswith("visual content analysis.")
        assert any("never saw" in w for w in result.warnings)

    def test_fit_encodes_the_fitted_text(self, gen: DeskGenerator) -> None:
        fitted = gen.generate(prompt=LONG, seed=3, steps=3, long_prompt="fit")
        report = fitted.prompt_report
        assert report is not None and report.dropped_phrases
        direct = gen.generate(prompt=report.prompt, seed=3, steps=3)
        assert fitted.images[0].tobytes() == direct.images[0].tobytes()
        assert fitted.request.prompt == LONG  # the record keeps what the user asked

    def test_error_refuses_before_any_step(self, gen: DeskGenerator) -> None:
        steps: list[StepProgress] = []
        with pytest.raises(PromptTooLongError, match="128 tokens"):
            gen.generate(prompt=LONG, long_prompt="error", on_step=steps.append)
        assert steps == []


class TestPromptFeatures:
    def test_check_prompt_uses_the_pipeline_tokenizers(self, gen: DeskGenerator) -> None:
        loaded = gen.check_prompt(prompt=LONG, negative_prompt="preset:default")
        offline = check_prompt(LONG, backend=gen.backend_name, negative_prompt="preset:default")
        assert loaded == offline

    def test_a_preset_reference_equals_its_text(self, gen: DeskGenerator) -> None:
        by_name = gen.generate(
            prompt="a desk", negative_prompt="preset:photo_default", seed=4, steps=2
        )
        text = SEED["negative_presets"]["photo_default"]
        by_text = gen.generate(prompt="a desk", negative_prompt=text, seed=4, steps=2)
        assert by_name.images[0].tobytes() == by_text.images[0].tobytes()
        assert by_name.request.negative_prompt == "preset:photo_default"
        assert by_name.prompt_report is not None
        assert by_name.prompt_report.negative_preset == "photo_default"

    def test_trigger_words_reach_the_encoder(self, gen: DeskGenerator) -> None:
        with_trigger = gen.generate(prompt="a desk", trigger_words=["topview"], seed=5, steps=2)
        spelled_out = gen.generate(prompt="topview, a desk", seed=5, steps=2)
        assert with_trigger.images[0].tobytes() == spelled_out.images[0].tobytes()
        removed = gen.generate(
            prompt="3D 0ff1c3, a desk", remove_words=["3D 0ff1c3"], seed=5, steps=2
        )
        plain = gen.generate(prompt="a desk", seed=5, steps=2)
        assert removed.images[0].tobytes() == plain.images[0].tobytes()

    def test_korean_prompt_warns_in_the_result(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="깔끔한 책상", seed=6, steps=2)
        assert any("Korean (Hangul)" in w for w in result.warnings)

    def test_record_carries_the_report(self, gen: DeskGenerator, tmp_path: Path) -> None:
        from PIL import Image

        result = gen.generate(prompt=LONG, seed=7, steps=2)
        (path,) = result.save(tmp_path / "long.png")
        with Image.open(path) as img:
            record = json.loads(img.text["deskgen"])  # type: ignore[attr-defined]
        assert len(record["prompt_report"]["encoders"][0]["chunks"]) == 2
        assert record["request"]["long_prompt"] is None
