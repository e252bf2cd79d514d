"""Planning and reports, offline with the packaged CLIP tokenizer (`check_prompt`)."""

from __future__ import annotations

from typing import Any

import pytest

from deskgen import LongPromptMode, PromptTooLongError
from deskgen.prompts import check_prompt, count_tokens


def test_chunk_mode_is_the_default_and_loses_nothing(seed_prompts: dict[str, Any]) -> None:
    text = seed_prompts["long_description"]
    report = check_prompt(text, backend="sdxl")
    assert report.mode is LongPromptMode.CHUNK
    assert [r.encoder for r in report.encoders] == ["text_encoder", "text_encoder_2"]
    for r in report.encoders:
        assert (r.tokens, r.limit, len(r.chunks), r.dropped) == (128, 77, 2, "")
        assert r.over_limit
    assert report.lossless
    assert report.prompt == text
    assert report.warnings == []


def test_sd_has_one_encoder(seed_prompts: dict[str, Any]) -> None:
    report = check_prompt(seed_prompts["clean_desk"], backend="sd")
    assert [(r.encoder, r.tokens, len(r.chunks)) for r in report.encoders] == [
        ("text_encoder", 75, 1)
    ]


def test_fit_mode_fits_and_reports_what_went(seed_prompts: dict[str, Any]) -> None:
    report = check_prompt(seed_prompts["long_description"], backend="sdxl", long_prompt="fit")
    assert count_tokens(report.prompt) <= 77
    assert all(r.tokens <= 77 and len(r.chunks) == 1 for r in report.encoders)
    assert "or visual content analysis" in report.dropped_phrases
    assert not report.lossless


def test_truncate_reports_the_exact_cut(seed_prompts: dict[str, Any]) -> None:
    text = seed_prompts["long_description"]
    report = check_prompt(text, backend="sdxl", long_prompt="truncate")
    first = report.encoders[0]
    assert first.dropped and text.endswith(first.dropped)
    assert first.dropped.endswith("for research, monitoring, or visual content analysis.")
    kept = first.chunks[0]
    assert count_tokens(kept) == 77
    assert text.startswith(kept)
    assert any("never saw" in w for w in report.warnings)


def test_error_mode_shows_the_overflow(seed_prompts: dict[str, Any]) -> None:
    with pytest.raises(PromptTooLongError) as info:
        check_prompt(seed_prompts["long_description"], backend="sdxl", long_prompt="error")
    err = info.value
    assert (err.tokens, err.limit, err.encoder, err.role) == (128, 77, "text_encoder", "prompt")
    assert err.overflow.endswith("visual content analysis.")
    assert "long_prompt='chunk'" in str(err)
    assert check_prompt("a tidy desk", long_prompt="error").lossless


def test_negative_is_planned_too() -> None:
    long_negative = ", ".join(["blurry"] * 60)  # 121 tokens
    report = check_prompt("a desk", negative_prompt=long_negative)
    assert len(report.negative_encoders[0].chunks) == 2
    with pytest.raises(PromptTooLongError, match="negative prompt"):
        check_prompt("a desk", negative_prompt=long_negative, long_prompt="error")


def test_negative_presets_by_reference() -> None:
    report = check_prompt("a desk", negative_prompt="preset:default", backend="sd")
    assert report.negative_preset == "photo_default"
    assert report.negative_prompt is not None and report.negative_prompt.startswith("blurry")
    assert check_prompt("a desk", negative_prompt="preset:default").negative_preset == (
        "sdxl_default"
    )


def test_break_in_chunk_mode_and_elsewhere() -> None:
    report = check_prompt("a tidy desk BREAK warm light")
    assert report.encoders[0].chunks == ["a tidy desk", "warm light"]
    fitted = check_prompt("a tidy desk BREAK warm light", long_prompt="fit")
    assert fitted.prompt == "a tidy desk, warm light"


def test_trigger_words_in_the_report() -> None:
    report = check_prompt(
        "3D 0ff1c3, a bright desk", trigger_words=["desk topview"], remove_words=["3D 0ff1c3"]
    )
    assert report.prompt == "desk topview, a bright desk"
    assert report.trigger_words_added == ["desk topview"]
    assert report.words_removed == ["3D 0ff1c3"]
    assert "trigger words added" in report.summary()


def test_korean_prompts_get_a_clear_warning() -> None:
    report = check_prompt("깔끔한 책상, warm light", negative_prompt="지저분한")
    assert len(report.warnings) == 2
    assert "Korean (Hangul)" in report.warnings[0] and "English" in report.warnings[0]
    assert "negative prompt" in report.warnings[1]


def test_summary_lists_every_encoder(seed_prompts: dict[str, Any]) -> None:
    text = check_prompt(seed_prompts["long_description"], negative_prompt="clutter").summary()
    assert "text_encoder: 128/77 tokens, 2 chunks" in text
    assert "negative text_encoder_2" in text


def test_backends_without_text_encoders() -> None:
    from .. import fakes  # noqa: F401

    report = check_prompt("x " * 500, backend="fake")
    assert report.encoders == [] and report.lossless


class TestCharacterLimits:
    """OpenAI image models limit prompts in characters; the same modes apply."""

    def test_limits_by_model(self) -> None:
        from deskgen.prompts import character_limit

        assert character_limit("dall-e-3") == 4000
        assert character_limit("dall-e-2") == 1000
        assert character_limit("gpt-image-1") == character_limit("gpt-image-2") == 32000
        assert character_limit("some-other-model") is None

    def _plan(self, text: str, mode: str) -> Any:
        from deskgen.prompts import plan_prompt

        return plan_prompt(
            backend="openai",
            prompt=text,
            negative_prompt=None,
            encoders=[],
            mode=LongPromptMode(mode),
            character_limit=60,
        )

    def test_fit_drops_phrases_to_the_limit(self) -> None:
        text = "a tidy desk, warm light, a plant by the window, hidden cables, a lamp"
        plan = self._plan(text, "fit")
        assert len(plan.prompt) <= 60
        assert plan.report.characters == len(plan.prompt)
        assert plan.report.character_limit == 60
        assert plan.report.dropped_phrases == ["hidden cables", "a lamp"]  # 67 -> 52 chars

    def test_error_shows_the_overflow(self) -> None:
        with pytest.raises(PromptTooLongError, match="characters") as info:
            self._plan("x" * 70, "error")
        assert info.value.overflow == "x" * 10

    def test_within_the_limit(self) -> None:
        plan = self._plan("a tidy desk", "error")
        assert plan.report.characters == 11 and plan.report.lossless


def test_encoders_that_cannot_be_chunked_report_their_cut() -> None:
    from deskgen.prompts import EncoderFamily, TextEncoderSpec, plan_prompt
    from deskgen.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer("t5")
    spec = TextEncoderSpec(name="text_encoder_3", family=EncoderFamily.T5, max_tokens=10)
    text = "a clean modern desk with a lamp and a plant and a mug and a notebook"
    plan = plan_prompt(
        backend="test", prompt=text, negative_prompt=None, encoders=[(spec, tok)], mode=None
    )
    (report,) = plan.report.encoders
    assert report.tokens > 10
    assert report.dropped and text.endswith(report.dropped)
    assert len(report.chunks) == 1 and text.startswith(report.chunks[0])
    assert not plan.report.lossless


def test_a_cut_negative_prompt_is_warned_about_too() -> None:
    long_negative = ", ".join(["blurry"] * 60)
    report = check_prompt("a desk", negative_prompt=long_negative, long_prompt="truncate")
    assert any("cut the negative prompt at 77 tokens" in w for w in report.warnings)


@pytest.mark.parametrize("mode", ["fit", "error", "truncate", "chunk"])
def test_a_pooled_encoder_reads_what_fits_and_never_sizes_the_text(mode: str) -> None:
    from deskgen.prompts import EncoderFamily, TextEncoderSpec, plan_prompt
    from deskgen.prompts._tokenizers import packaged_clip_tokenizer
    from deskgen.testing import make_tiny_tokenizer

    clip = TextEncoderSpec(name="clip", family=EncoderFamily.CLIP, max_tokens=12, pooled=True)
    t5 = TextEncoderSpec(name="t5", family=EncoderFamily.T5, max_tokens=512)
    encoders = [(clip, packaged_clip_tokenizer()), (t5, make_tiny_tokenizer("t5"))]
    text = "a clean modern desk, a warm lamp on the left, a plant, a mug and a notebook"
    plan = plan_prompt(
        backend="test", prompt=text, negative_prompt=None, encoders=encoders, mode=mode
    )
    clip_report, t5_report = plan.report.encoders
    assert plan.prompt == text and not plan.report.dropped_phrases  # sized for T5 alone
    assert clip_report.chunks == [text[: len(clip_report.chunks[0])]]  # one piece, never chunks
    assert clip_report.dropped and text.endswith(clip_report.dropped)
    assert t5_report.chunks == [text] and not t5_report.dropped
    assert any("pooled vector only" in w and "t5 read it whole" in w for w in plan.report.warnings)
