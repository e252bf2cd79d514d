"""The ``openai`` backend against a real local HTTP server speaking the Images API shapes."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image

from deskgen import (
    AuthenticationError,
    ConfigError,
    ContentPolicyError,
    DeskGenerator,
    InvalidOutputError,
    InvalidRequestError,
    PromptTooLongError,
    RateLimitedError,
    ServiceError,
    ServiceRequestError,
    ServiceTimeoutError,
    UnsupportedOperationError,
    list_backends,
)
from deskgen.testing import FakeAnswer as Answer
from deskgen.testing import FakeOpenAIServer as FakeOpenAI
from deskgen.testing.contract import BackendContract

pytest.importorskip("openai")

SECRET = "sk-test-DO-NOT-PRINT-1234567890"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    srv = FakeOpenAI()
    yield srv
    srv.close()


def _gen(server: FakeOpenAI, model: str = "gpt-image-1", **options: Any) -> DeskGenerator:
    options.setdefault("max_retries", 0)
    return DeskGenerator("openai", model=model, api_key=SECRET, base_url=server.base_url, **options)


def _phone_photo() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 59.0), 3: "E", 4: (126.0, 58.0, 41.0)}
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (120, 90, 60)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _echo(message: str) -> dict[str, Any]:
    """An error body that quotes the request's key, as some proxies do."""
    return {"error": {"message": f"{message}: {Answer.ECHO_KEY}.", "code": "invalid_api_key"}}


def _assert_scrubbed(exc: BaseException, secret: str) -> None:
    """``secret`` is nowhere in ``exc``, its chained causes, or their traceback."""
    import traceback

    chained: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chained:
        chained.append(current)
        current = current.__cause__ or current.__context__
    assert len(chained) >= 2  # the client's own exception is chained, scrubbed
    seen = ["".join(traceback.format_exception(exc))]
    for item in chained:
        seen += [str(item), repr(item), repr(item.args), repr(vars(item).get("body"))]
        seen.append(str(vars(item).get("message")))
    for text in seen:
        assert secret not in text


def test_registered_with_its_extra() -> None:
    info = next(b for b in list_backends() if b.name == "openai")
    assert info.extra == "openai" and info.installed
    assert info.default_model == "gpt-image-2.5-flare"  # gpt-image-1 was shut down


class TestTextToImage:
    def test_gpt_image(self, server: FakeOpenAI) -> None:
        result = _gen(server).generate(prompt="a tidy desk", num_images=2, seed=1)
        assert len(result.images) == 2
        (req,) = server.received
        assert req.path == "/v1/images/generations"
        assert req.json is not None
        assert req.json["model"] == "gpt-image-1"
        assert req.json["n"] == 2 and req.json["size"] == "1024x1024"
        assert "response_format" not in req.json  # GPT image models always answer base64
        assert result.backend == "openai" and result.mode == "txt2img"
        assert result.device == "api"
        assert result.cost_usd == pytest.approx(2 * 0.042)
        assert result.prompt_report is not None
        assert result.prompt_report.character_limit == 32000
        assert any("takes no seed" in w for w in result.warnings)

    def test_dall_e_3(self, server: FakeOpenAI) -> None:
        gen = _gen(server, model="dall-e-3", quality="hd", style="natural")
        result = gen.generate(prompt="a tidy desk", width=1792, height=1024, num_images=2)
        assert len(server.received) == 2  # dall-e-3 makes one image per request
        body = server.received[0].json
        assert body is not None
        assert (body["n"], body["size"], body["quality"], body["style"]) == (
            1,
            "1792x1024",
            "hd",
            "natural",
        )
        assert body["response_format"] == "b64_json"  # URLs expire
        assert result.revised_prompts == ["REVISED: a tidy desk"] * 2
        assert result.cost_usd == pytest.approx(2 * 0.12)
        assert any("2 requests" in w for w in result.warnings)

    def test_sizes_are_checked(self, server: FakeOpenAI) -> None:
        with pytest.raises(InvalidRequestError, match="1792x1024"):
            _gen(server, model="dall-e-3").generate(prompt="a desk", width=1000, height=1000)
        assert server.received == []

    def test_negative_prompt_is_folded_into_the_prompt(self, server: FakeOpenAI) -> None:
        _gen(server).generate(prompt="a desk", negative_prompt="preset:controlnet_short")
        body = server.received[0].json
        assert body is not None
        assert body["prompt"] == "a desk\n\nAvoid: low quality, bad quality, sketches."

    def test_the_folded_negative_counts_toward_the_limit(self, server: FakeOpenAI) -> None:
        with pytest.raises(PromptTooLongError, match="1015 characters") as info:
            _gen(server, model="dall-e-2").generate(
                prompt="d" * 990, negative_prompt="clutter, people"
            )
        assert info.value.overflow == "d" * 15  # the part of the prompt that does not fit
        assert server.received == []
        fitted = _gen(server, model="dall-e-2").generate(
            prompt="a tidy desk, " + "d" * 970, negative_prompt="clutter, people", long_prompt="fit"
        )
        report = fitted.prompt_report
        assert report is not None and report.characters is not None
        assert report.characters <= 1000  # what was sent, the "Avoid: ..." sentence included
        body = server.received[0].json
        assert body is not None and len(body["prompt"]) == report.characters

    def test_character_limit(self, server: FakeOpenAI) -> None:
        with pytest.raises(PromptTooLongError, match="characters"):
            _gen(server, model="dall-e-3").generate(prompt="desk " * 1000)
        assert server.received == []

    def test_url_answers_are_downloaded_at_once(self, server: FakeOpenAI) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32)).save(buf, format="PNG")
        server.files["/files/img.png"] = buf.getvalue()
        url = server.base_url.replace("/v1", "") + "/files/img.png"
        server.answers.append(Answer(body={"created": 1, "data": [{"url": url}]}))
        result = _gen(server, model="dall-e-2").generate(prompt="a desk")
        assert result.images[0].size == (32, 32)


class TestModelRules:
    def test_retired_models_warn(self, server: FakeOpenAI) -> None:
        result = _gen(server, model="dall-e-3").generate(prompt="a desk")
        assert any("retired on 2026-05-12" in w for w in result.warnings)

    def test_flexible_sizes_on_current_models(self, server: FakeOpenAI) -> None:
        gen = _gen(server, model="gpt-image-2.5-flare")
        gen.generate(prompt="a desk", width=1536, height=864)
        assert server.received[-1].json is not None
        assert server.received[-1].json["size"] == "1536x864"
        gen.generate(prompt="tidy", image=_phone_photo())  # a 4:3 photo
        w, h = map(int, server.received[-1].parts["size"][1].decode().split("x"))
        assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 4 / 3) < 0.03
        for width, height in ((1000, 1000), (4000, 1000), (3856, 2160)):
            with pytest.raises(InvalidRequestError, match="16-pixel grid"):
                gen.generate(prompt="a desk", width=width, height=height)
        with pytest.raises(InvalidRequestError, match="1536x1024"):
            _gen(server, model="gpt-image-1").generate(prompt="x", width=1536, height=864)

    @pytest.mark.parametrize(
        ("model", "options", "message"),
        [
            ("gpt-image-2.5-flare", {"quality": "hd"}, "quality='hd'"),
            ("dall-e-3", {"quality": "high"}, "quality='high'"),
            ("gpt-image-1", {"background": "transparent", "output_format": "jpeg"}, "png"),
            ("gpt-image-2.5-flare", {"input_fidelity": "high"}, "no input_fidelity"),
            ("gpt-image-1-mini", {"input_fidelity": "high"}, "only input_fidelity='low'"),
            ("gpt-image-2", {"size": "1000x1000"}, "16-pixel grid"),
        ],
    )
    def test_options_the_api_would_reject(
        self, server: FakeOpenAI, model: str, options: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            _gen(server, model=model, **options)
        assert server.received == []

    def test_max_quality_on_2_5(self, server: FakeOpenAI) -> None:
        _gen(server, model="gpt-image-2.5-sunburst", quality="max").generate(prompt="a desk")
        assert server.received[0].json is not None
        assert server.received[0].json["quality"] == "max"


class TestCost:
    def test_the_price_table_is_dated_and_sourced(self) -> None:
        from datetime import date

        from deskgen.backends import openai as backend

        assert date.fromisoformat(backend.IMAGE_PRICES_DATE) >= date(2026, 12, 1)
        assert backend.IMAGE_PRICES_SOURCE.startswith("https://developers.openai.com/")
        prices = backend.IMAGE_PRICES_USD
        assert prices["gpt-image-1.5|medium|1024x1024"] == 0.034  # current models
        assert prices["gpt-image-1-mini|low|1536x1024"] == 0.006
        assert not any(k.startswith("gpt-image-2") for k in prices)  # billed by tokens only

    def test_a_current_model_has_a_cost(self, server: FakeOpenAI) -> None:
        result = _gen(server, model="gpt-image-1.5", quality="high").generate(
            prompt="a desk", width=1536, height=1024
        )
        assert result.cost_usd == pytest.approx(0.2)
        assert not any("prices=" in w for w in result.warnings)

    def test_an_unknown_price_says_how_to_give_one(self, server: FakeOpenAI) -> None:
        result = _gen(server, model="gpt-image-2.5-flare").generate(prompt="a desk")
        assert result.cost_usd is None
        (warning,) = [w for w in result.warnings if "prices=" in w]
        assert "result.cost_usd is None" in warning
        assert "prices={'gpt-image-2.5-flare|medium|1024x1024': " in warning
        assert "'gpt-image-2.5-flare|medium|*'" in warning

    def test_prices_given_by_the_caller(self, server: FakeOpenAI) -> None:
        prices = {"gpt-image-2.5-flare|medium|*": 0.05, "gpt-image-2.5-flare|high|1024x1024": 0.2}
        gen = _gen(server, model="gpt-image-2.5-flare", prices=prices)
        edit = gen.generate(prompt="tidy", image=_phone_photo(), num_images=2)
        assert edit.width == 1168 // 16  # the photo's 4:3 size, priced by the "*" entry
        assert edit.cost_usd == pytest.approx(2 * 0.05)
        assert not any("prices=" in w for w in edit.warnings)
        high = _gen(server, model="gpt-image-2.5-flare", quality="high", prices=prices)
        assert high.generate(prompt="a desk").cost_usd == pytest.approx(0.2)
        own = _gen(server, model="gpt-image-1.5", prices={"gpt-image-1.5|medium|1024x1024": 1.0})
        assert own.generate(prompt="a desk").cost_usd == 1.0  # the caller's figure wins


class TestLifecycle:
    def test_cancel_set_during_a_request_stops_the_next_one(self, server: FakeOpenAI) -> None:
        import threading

        from deskgen import GenerationCancelledError

        stop = threading.Event()
        server.answers.append(Answer(delay=0.5))  # the first request is slow

        def cancel_once_sent() -> None:  # cancelled while it runs, however busy the machine
            while not server.received:
                time.sleep(0.01)
            stop.set()

        threading.Thread(target=cancel_once_sent, daemon=True).start()
        with pytest.raises(GenerationCancelledError, match="Cancelled after 1 of 2"):
            _gen(server, model="dall-e-3").generate(prompt="a desk", num_images=2, cancel=stop)
        assert len(server.received) == 1

    def test_close_lets_running_requests_finish(self, server: FakeOpenAI) -> None:
        from deskgen import GeneratorClosedError

        gen = _gen(server, model="dall-e-3")
        result = gen.generate(prompt="a desk", num_images=3, on_step=lambda p: gen.close())
        assert len(result.images) == 3 and len(server.received) == 3
        with pytest.raises(GeneratorClosedError):
            gen.generate(prompt="a desk")

    def test_cancel_stops_before_the_next_paid_request(self, server: FakeOpenAI) -> None:
        import threading

        from deskgen import GenerationCancelledError

        stop = threading.Event()
        with pytest.raises(GenerationCancelledError, match="Cancelled"):
            _gen(server, model="dall-e-3").generate(
                prompt="a desk", num_images=3, on_step=lambda p: stop.set(), cancel=stop
            )
        assert len(server.received) == 1


class TestEdits:
    def test_gpt_image_edit_sends_a_clean_photo(self, server: FakeOpenAI) -> None:
        gen = _gen(server, input_fidelity="high")
        result = gen.generate(prompt="make it tidy", image=_phone_photo())
        (req,) = server.received
        assert req.path == "/v1/images/edits"
        _, data = req.parts["image"]
        sent = Image.open(io.BytesIO(data))
        assert sent.format == "PNG" and sent.size == (400, 300)
        assert "exif" not in sent.info and len(sent.getexif()) == 0
        assert req.parts["input_fidelity"][1] == b"high"
        assert req.parts["size"][1] == b"1536x1024"  # closest to the photo's 4:3
        assert result.mode == "img2img"
        assert result.input_image is not None

    def test_dall_e_2_gets_a_square_png(self, server: FakeOpenAI) -> None:
        _gen(server, model="dall-e-2").generate(prompt="tidy", image=_phone_photo())
        _, data = server.received[0].parts["image"]
        sent = Image.open(io.BytesIO(data))
        assert sent.format == "PNG" and sent.mode == "RGBA"
        assert sent.size == (1024, 1024) and len(data) < 4 * 2**20

    def test_mask_white_means_change(self, server: FakeOpenAI) -> None:
        mask = Image.new("L", (400, 300), 0)
        mask.paste(255, (0, 0, 200, 300))  # change the left half
        _gen(server).generate(prompt="tidy the left side", image=_phone_photo(), mask=mask)
        _, data = server.received[0].parts["mask"]
        sent = Image.open(io.BytesIO(data))
        assert sent.format == "PNG" and sent.mode == "RGBA" and sent.size == (400, 300)
        alpha = sent.getchannel("A")
        assert alpha.getpixel((50, 150)) == 0  # transparent: edit here
        assert alpha.getpixel((350, 150)) == 255  # opaque: keep

    def test_an_auto_mask_goes_as_openais_transparent_edit_area(
        self, server: FakeOpenAI, tiny_segformer_path: Path
    ) -> None:
        import numpy as np

        from deskgen import DeskMask
        from deskgen.testing import make_desk_photo

        photo, expected = make_desk_photo(size=(192, 128), seed=11)
        settings = DeskMask(model=str(tiny_segformer_path), grow=0, blur=0)
        result = _gen(server).generate(prompt="tidy", image=photo, mask=settings)
        assert result.mode == "inpaint" and result.request.desk_mask is not None
        _, data = server.received[0].parts["mask"]
        alpha = np.asarray(Image.open(io.BytesIO(data)).getchannel("A"))
        desk = np.asarray(expected) == 255
        assert (alpha[desk] == 0).mean() > 0.85  # the desk: transparent, edited
        assert (alpha[~desk] == 255).mean() > 0.9  # the room: opaque, kept
        assert result.image.size == photo.size
        with pytest.raises(UnsupportedOperationError, match="padding_mask_crop"):
            _gen(server).generate(prompt="tidy", image=photo, mask=settings, padding_mask_crop=8)

    def test_mask_needs_a_photo(self, server: FakeOpenAI) -> None:
        with pytest.raises(InvalidRequestError, match="pass image="):
            _gen(server).generate(prompt="x", mask=Image.new("L", (8, 8)))

    def test_size_option(self, server: FakeOpenAI) -> None:
        _gen(server, size="auto").generate(prompt="a desk")
        assert server.received[0].json is not None
        assert server.received[0].json["size"] == "auto"
        with pytest.raises(ConfigError, match="size='512x512'"):
            _gen(server, model="dall-e-3", size="512x512")  # refused before any request

    def test_a_replayed_masked_edit_needs_its_mask(self, server: FakeOpenAI) -> None:
        mask = Image.new("L", (400, 300), 0)
        mask.paste(255, (100, 100, 300, 300))
        first = _gen(server).generate(prompt="tidy", image=_phone_photo(), mask=mask)
        assert first.request.mask_sha256 is not None
        replay = first.request.model_copy(update={"mask": None})
        with pytest.raises(InvalidRequestError, match="pass the same mask"):
            _gen(server).generate(replay)

    def test_dall_e_2_png_stays_under_4_mb_even_for_noise(self, server: FakeOpenAI) -> None:
        import os

        noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
        _gen(server, model="dall-e-2").generate(prompt="tidy", image=noise)
        _, data = server.received[0].parts["image"]
        assert len(data) < 4 * 2**20

    def test_dall_e_3_cannot_edit(self, server: FakeOpenAI) -> None:
        with pytest.raises(InvalidRequestError, match=r"gpt-image-2\.5-flare"):
            _gen(server, model="dall-e-3").generate(prompt="tidy", image=_phone_photo())


class TestDescribe:
    def test_structured_description_and_makeover_spec(self, server: FakeOpenAI) -> None:
        from deskgen import DeskDescription

        gen = _gen(server, describe_model="gpt-4o-mini")
        description = gen.describe(_phone_photo())
        assert isinstance(description, DeskDescription)
        assert description.clutter == "high"
        (req,) = server.received
        assert req.path == "/v1/chat/completions"
        assert req.json is not None
        assert req.json["model"] == "gpt-4o-mini"
        schema = req.json["response_format"]["json_schema"]
        assert schema["strict"] is True and schema["name"] == "DescriptionFields"
        assert "text" not in schema["schema"]["properties"]  # the fields only: no free text
        assert description.text == ""
        content = req.json["messages"][1]["content"]
        assert content[0]["text"].startswith("explain details")
        url = content[1]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        import base64

        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert len(sent.getexif()) == 0  # no EXIF/GPS leaves the machine
        spec = description.to_spec(style="japandi")
        assert spec.avoid == ["tangled cables", "loose papers", "clutter"]
        assert spec.keep == ["monitor on a stand", "laptop", "wooden desk"]
        assert spec.style == "japandi"
        rendered = spec.render(backend="sdxl")
        assert rendered.prompt.startswith("a realistic photo of a tidy, improved desk setup")

    def test_refusal(self, server: FakeOpenAI) -> None:
        answer = FakeOpenAI.chat_answer(None)
        answer["choices"][0]["message"]["refusal"] = "I can't help with that."
        server.answers.append(Answer(body=answer))
        with pytest.raises(ContentPolicyError, match="refused"):
            _gen(server).describe(_phone_photo())

    def test_answer_that_breaks_the_schema(self, server: FakeOpenAI) -> None:
        server.answers.append(Answer(body=FakeOpenAI.chat_answer({"summary": "x"})))
        with pytest.raises(InvalidOutputError, match="DeskDescription"):
            _gen(server).describe(_phone_photo())

    def test_diffusion_backends_say_they_cannot(self, generators: dict[str, Any]) -> None:
        from deskgen import UnsupportedOperationError

        with pytest.raises(UnsupportedOperationError, match="openai"):
            generators["sdxl"].describe(_phone_photo())


class TestErrors:
    def test_429_with_retry_after_then_success(self, server: FakeOpenAI) -> None:
        server.answers.append(
            Answer(
                429,
                {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
                headers={"retry-after-ms": "10"},
            )
        )
        result = _gen(server, max_retries=2).generate(prompt="a desk")
        assert len(server.received) == 2 and result.images

    def test_still_rate_limited_after_the_retries(self, server: FakeOpenAI) -> None:
        for _ in range(2):
            server.answers.append(
                Answer(429, {"error": {"message": "slow down"}}, headers={"retry-after": "0.01"})
            )
        with pytest.raises(RateLimitedError) as info:
            _gen(server, max_retries=1).generate(prompt="a desk")
        assert len(server.received) == 2
        assert info.value.retry_after == pytest.approx(0.01)

    def test_retry_after_as_an_http_date(self, server: FakeOpenAI) -> None:
        from email.utils import formatdate

        server.answers.append(
            Answer(429, {"error": {"message": "slow"}}, headers={"retry-after": formatdate()})
        )
        with pytest.raises(RateLimitedError) as info:
            _gen(server).generate(prompt="a desk")
        assert info.value.retry_after is not None and info.value.retry_after <= 1

    def test_retry_count_is_the_clients_own(self, server: FakeOpenAI) -> None:
        server.answers.append(
            Answer(429, {"error": {"message": "slow"}}, headers={"retry-after": "300"})
        )
        with pytest.raises(RateLimitedError) as info:
            _gen(server, max_retries=2).generate(prompt="a desk")
        assert len(server.received) == 1  # the client won't wait 300 s
        assert "after 2 retries" not in str(info.value)
        assert info.value.retry_after == 300

    def test_repeated_5xx(self, server: FakeOpenAI) -> None:
        for _ in range(2):
            server.answers.append(Answer(503, {"error": {"message": "overloaded"}}))
        with pytest.raises(ServiceError, match="503") as info:
            _gen(server, max_retries=1).generate(prompt="a desk")
        assert len(server.received) == 2 and info.value.status == 503

    def test_timeout(self, server: FakeOpenAI) -> None:
        server.answers.append(Answer(delay=1.5))
        with pytest.raises(ServiceTimeoutError, match="timeout"):
            _gen(server, timeout=0.3).generate(prompt="a desk")

    def test_401(self, server: FakeOpenAI) -> None:
        server.answers.append(Answer(401, {"error": {"message": "Incorrect API key"}}))
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY") as info:
            _gen(server).generate(prompt="a desk")
        assert SECRET not in str(info.value)

    def test_content_policy_is_never_retried(self, server: FakeOpenAI) -> None:
        server.answers.append(
            Answer(400, {"error": {"message": "blocked", "code": "moderation_blocked"}})
        )
        with pytest.raises(ContentPolicyError, match="moderation_blocked"):
            _gen(server, max_retries=2).generate(prompt="a desk")
        assert len(server.received) == 1

    def test_other_bad_requests(self, server: FakeOpenAI) -> None:
        server.answers.append(Answer(400, {"error": {"message": "bad size", "code": "x"}}))
        with pytest.raises(ServiceRequestError, match="bad size"):
            _gen(server).generate(prompt="a desk")

    @pytest.mark.parametrize(
        "body", [{"created": 1, "data": []}, {"created": 1, "data": [{"revised_prompt": "x"}]}]
    )
    def test_malformed_200(self, server: FakeOpenAI, body: dict[str, Any]) -> None:
        server.answers.append(Answer(body=body))
        with pytest.raises(InvalidOutputError):
            _gen(server).generate(prompt="a desk")

    @pytest.mark.parametrize(
        ("answer", "says"),
        [
            (Answer(body={"created": 1, "data": [{"b64_json": "not base64!"}]}), "base64"),
            (Answer(body={"created": 1, "data": [{"b64_json": "abc"}]}), "base64"),
            (Answer(body={"created": 1, "data": [{"b64_json": 12}]}), "base64"),
            (Answer(raw=b'{"created": 1, "data": [{"b64_json": "iVBORw0K'), "not valid JSON"),
            (Answer(raw=b"<html>502 Bad Gateway</html>"), "not valid JSON"),
            (Answer(raw=b""), "not valid JSON"),
            (Answer(body=[1, 2]), "'data'"),
            (Answer(body={"created": 1, "data": "iVBORw0K"}), "'data'"),
            (Answer(body={"created": 1, "data": ["iVBORw0K"]}), "no b64_json or url"),
        ],
        ids=[
            "bad-b64",
            "b64-padding",
            "b64-number",
            "cut-json",
            "html",
            "empty",
            "list",
            "data-text",
            "item-text",
        ],
    )
    def test_every_malformed_200_is_invalid_output(
        self, server: FakeOpenAI, answer: Answer, says: str
    ) -> None:
        server.answers.append(answer)
        with pytest.raises(InvalidOutputError, match=says) as info:
            _gen(server).generate(prompt="a desk")
        assert "base_url" in str(info.value) or "image data" in str(info.value)
        assert len(server.received) == 1  # a broken answer is not retried by deskgen

    def test_a_data_url_answer_is_decoded(self, server: FakeOpenAI) -> None:
        png = server.image_answer({"size": "256x256"}, {})["data"][0]["b64_json"]
        server.answers.append(
            Answer(body={"created": 1, "data": [{"b64_json": "data:image/png;base64," + png}]})
        )
        assert _gen(server).generate(prompt="a desk").images[0].size == (16, 16)

    @pytest.mark.parametrize(
        ("answer", "says"),
        [
            (Answer(raw=b'{"id": "chatcmpl-1", "choi'), "not valid JSON"),
            (Answer(raw=b"upstream timed out"), "not valid JSON"),
            (Answer(body=[1]), "chat completion"),
            (Answer(body={"choices": "x"}), "chat completion"),
            (Answer(body={"choices": [{"message": "hi"}]}), "chat completion"),
            (Answer(body={"id": "x", "object": "chat.completion", "choices": []}), "no choices"),
        ],
        ids=["cut-json", "text", "list", "choices-text", "message-text", "no-choices"],
    )
    def test_malformed_descriptions_are_invalid_output(
        self, server: FakeOpenAI, answer: Answer, says: str
    ) -> None:
        server.answers.append(answer)
        with pytest.raises(InvalidOutputError, match=says):
            _gen(server).describe(_phone_photo())


class TestSecrets:
    def test_the_key_is_never_shown(
        self, server: FakeOpenAI, caplog: pytest.LogCaptureFixture, tmp_path: Path
    ) -> None:
        caplog.set_level(logging.DEBUG)
        for name in ("openai", "httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        gen = _gen(server)
        result = gen.generate(prompt="a desk")
        server.answers.append(Answer(401, {"error": {"message": "no"}}))
        with pytest.raises(AuthenticationError) as info:
            gen.generate(prompt="a desk")
        (path,) = result.save(tmp_path / "o.png")
        seen = [
            caplog.text,
            repr(gen),
            repr(gen.backend.options),
            str(gen.backend.options),
            str(info.value),
            repr(info.value),
            path.read_bytes().decode("latin-1"),
        ]
        assert "DEBUG" in caplog.text  # the client really logged
        for text in seen:
            assert SECRET not in text
        assert server.received[0].headers["authorization"] == f"Bearer {SECRET}"

    def test_the_key_stays_out_of_tracebacks(self) -> None:
        import traceback

        with pytest.raises(ConfigError) as info:
            DeskGenerator("openai", api_key="x", openai_api_key=SECRET)
        assert SECRET not in "".join(traceback.format_exception(info.value))

    @pytest.mark.parametrize(
        ("status", "error"),
        [(401, AuthenticationError), (400, ServiceRequestError), (500, ServiceError)],
    )
    def test_a_key_the_server_echoes_is_scrubbed(
        self, server: FakeOpenAI, status: int, error: type[ServiceError]
    ) -> None:
        server.answers.append(Answer(status, _echo("Incorrect API key provided")))
        with pytest.raises(error) as info:
            _gen(server).generate(prompt="a desk")
        assert server.received[0].headers["authorization"] == f"Bearer {SECRET}"
        _assert_scrubbed(info.value, SECRET)
        assert "Incorrect API key provided: ***" in str(info.value)  # still says what's wrong
        if status == 401:
            assert "OPENAI_API_KEY" in str(info.value)  # and how to fix it

    def test_the_environments_key_is_scrubbed_too(
        self, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = "proxy-key-not-sk-shaped-0123456789"
        monkeypatch.setenv("OPENAI_API_KEY", key)
        server.answers.append(Answer(403, _echo("Key not allowed")))
        gen = DeskGenerator("openai", base_url=server.base_url, max_retries=0)
        with pytest.raises(AuthenticationError) as info:
            gen.generate(prompt="a desk")
        _assert_scrubbed(info.value, key)

    def test_describe_and_other_keys_are_scrubbed(self, server: FakeOpenAI) -> None:
        other = "sk-proj-SOMEONE-ELSES-KEY-abcdefghijklmnop"
        server.answers.append(
            Answer(401, {"error": {"message": f"{Answer.ECHO_KEY} is not {other}"}})
        )
        with pytest.raises(AuthenticationError) as info:
            _gen(server).describe(_phone_photo())
        _assert_scrubbed(info.value, SECRET)
        _assert_scrubbed(info.value, other)
        assert "*** is not sk-***" in str(info.value)

    def test_missing_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
            DeskGenerator("openai")

    def test_key_from_the_environment(
        self, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        DeskGenerator("openai", base_url=server.base_url).generate(prompt="a desk")
        assert server.received[0].headers["authorization"] == f"Bearer {SECRET}"


class TestOpenAIContract(BackendContract):
    """``openai`` passes the backend contract (`deskgen.testing.contract`) against
    `FakeOpenAIServer`. The service takes no seed or steps, and reports a step per request
    only: a request of 11 images (two requests of at most 10) has one before its end."""

    steps = None
    seeded = False
    mid_run_kwargs: ClassVar[dict[str, Any]] = {"num_images": 11}

    @pytest.fixture(scope="class")
    @classmethod
    def contract_server(cls) -> Iterator[FakeOpenAI]:
        # images at the requested size, as OpenAI's: the backend records the size it got
        with FakeOpenAI(scale=1) as srv:
            yield srv

    def make_generator(self, tmp_path: Path, contract_server: FakeOpenAI) -> DeskGenerator:
        return _gen(contract_server)
