"""The facade's own behaviour, on the torch-free fake backend."""

from __future__ import annotations

import asyncio
import io
import threading
import traceback
from typing import ClassVar

import pytest
from PIL import Image
from pydantic import SecretStr

import deskgen
from deskgen import (
    BackendError,
    ConfigError,
    DeskGenerator,
    GenerationCancelledError,
    GenerationRequest,
    GeneratorClosedError,
    ImageInputError,
    InvalidOutputError,
    InvalidRequestError,
    ModelLoadError,
    StepProgress,
)
from deskgen.backends import BackendOptions, BackendOutput, Job
from deskgen.testing import register_fake_backend
from deskgen.testing.contract import BackendContract

from . import fakes


@pytest.fixture
def gen() -> DeskGenerator:
    return DeskGenerator("fake")


def _backend(gen: DeskGenerator) -> fakes.FakeBackend:
    backend = gen.backend
    assert isinstance(backend, fakes.FakeBackend)
    return backend


def test_keywords_and_request_are_equivalent(gen: DeskGenerator) -> None:
    a = gen.generate(prompt="a desk", seed=5, steps=3)
    b = gen.generate(GenerationRequest(prompt="a desk", seed=5, steps=3))
    assert a.seeds == b.seeds == [5]
    assert a.images[0].tobytes() == b.images[0].tobytes()


def test_keywords_override_a_request(gen: DeskGenerator) -> None:
    base = GenerationRequest(prompt="a desk", seed=5, steps=3)
    result = gen.generate(base, seed=9, num_images=2)
    assert result.seeds == [9, 10]
    assert result.request.prompt == "a desk"
    assert result.request.steps == 3


def test_invalid_fields_raise_a_typed_error(gen: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="steps"):
        gen.generate(prompt="a desk", steps=0)
    with pytest.raises(InvalidRequestError, match="prompt"):
        gen.generate(prompt=" ")
    with pytest.raises(InvalidRequestError, match="GenerationRequest"):
        gen.generate("a desk")  # type: ignore[arg-type]


def test_seed_none_picks_and_records_one(gen: DeskGenerator) -> None:
    result = gen.generate(prompt="a desk", num_images=3, steps=1)
    first = result.seeds[0]
    assert result.seeds == [first, first + 1, first + 2]
    assert result.request.seed == first
    again = gen.generate(
        result.request.model_copy(update={"seed": result.seeds[2], "num_images": 1})
    )
    assert again.images[0].tobytes() == result.images[2].tobytes()


def test_seed_overflow_is_rejected(gen: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="largest seed"):
        gen.generate(prompt="a desk", seed=2**64 - 1, num_images=2)


def test_photo_is_normalised_before_the_backend_sees_it(gen: DeskGenerator) -> None:
    photo = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    result = gen.generate(prompt="a desk", image=photo, steps=1)
    job = _backend(gen).jobs[-1]
    assert job.photo is not None and job.photo.mode == "RGB"
    assert result.mode == "img2img"
    assert result.input_image is not None
    assert result.input_image.original_width == 20
    assert result.request.image is photo  # in memory the request still replays


def test_bad_photo_raises_before_the_backend_runs(gen: DeskGenerator) -> None:
    with pytest.raises(ImageInputError):
        gen.generate(prompt="a desk", image=b"nope")
    assert _backend(gen).jobs == []


def test_result_carries_the_full_record(gen: DeskGenerator) -> None:
    result = gen.generate(prompt="a desk", seed=1, steps=2)
    assert result.backend == "fake"
    assert result.model == "fake/model"
    assert result.device == "cpu" and result.dtype == "float32"
    assert result.timings.total > 0
    assert result.timings.load >= 0
    assert result.peak_memory.bytes > 0
    assert result.peak_memory.kind == "process_rss"
    assert result.deskgen_version == deskgen.__version__
    assert result.image is result.images[0]
    html = result._repr_html_()
    assert "data:image/png;base64" in html and "seed 1" in html


def test_progress_callback_sees_every_step(gen: DeskGenerator) -> None:
    seen: list[StepProgress] = []
    gen.generate(prompt="a desk", steps=4, on_step=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.total_steps == 4 for p in seen)
    assert all(p.elapsed >= 0 for p in seen)


def test_callback_exceptions_propagate_unchanged(gen: DeskGenerator) -> None:
    class Stop(Exception):
        pass

    def boom(progress: StepProgress) -> None:
        if progress.step == 2:
            raise Stop("mine")

    with pytest.raises(Stop, match="mine"):
        gen.generate(prompt="a desk", steps=4, on_step=boom)


def test_cancel_between_steps(gen: DeskGenerator) -> None:
    flag = threading.Event()

    def cancel_at_two(progress: StepProgress) -> None:
        if progress.step == 2:
            flag.set()

    with pytest.raises(GenerationCancelledError, match="after 2 of 5") as info:
        gen.generate(prompt="a desk", steps=5, on_step=cancel_at_two, cancel=flag)
    assert info.value.step == 2
    assert info.value.total_steps == 5
    assert _backend(gen).steps_done == 2  # the reported count is what ran


def test_cancel_before_start(gen: DeskGenerator) -> None:
    flag = threading.Event()
    flag.set()
    with pytest.raises(GenerationCancelledError, match="before"):
        gen.generate(prompt="a desk", cancel=flag)
    assert _backend(gen).jobs == []


def test_close_and_context_manager() -> None:
    with DeskGenerator("fake") as gen:
        backend = _backend(gen)
        assert not gen.closed
    assert gen.closed and backend.closed
    assert "closed" in repr(gen)
    with pytest.raises(GeneratorClosedError):
        gen.generate(prompt="a desk")
    gen.close()  # twice is harmless


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fail_with"):
        DeskGenerator("fake", colour="red")


def test_backend_errors_are_translated_at_the_boundary() -> None:
    gen = DeskGenerator("fake", fail_with="kaput")
    with pytest.raises(BackendError, match="kaput") as info:
        gen.generate(prompt="a desk")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_backend_load_errors_are_translated() -> None:
    with pytest.raises(ModelLoadError, match=r"weights\.bin") as info:
        DeskGenerator("fake", fail_on_load=True)
    assert isinstance(info.value.__cause__, KeyError)


class _SecretOptions(fakes.FakeOptions):
    token: SecretStr | None = None
    hub: dict[str, str] = {}  # noqa: RUF012  (pydantic copies defaults)


@deskgen.register_backend("fake-secret", replace=True)
class _SecretBackend(fakes.FakeBackend):
    """Fails with its own secrets in the message, as a careless library would."""

    options_class: ClassVar[type[BackendOptions]] = _SecretOptions

    def __init__(self, options: BackendOptions) -> None:
        assert isinstance(options, _SecretOptions)
        if options.fail_on_load and options.token is not None:
            raise OSError(f"401 Unauthorized for {options.token.get_secret_value()}")
        super().__init__(options)
        self.hub_token = options.hub.get("hf_token", "")

    def generate(self, job: Job) -> BackendOutput:
        if self.fail_with == "typed":
            raise InvalidOutputError(f"the hub refused {self.hub_token}")
        return super().generate(job)


class TestSecretsNeverReachErrors:
    TOKEN = "tok-0123456789-do-not-print"
    HUB = "hf_abcdefghijklmnopqrstuvwxyz"

    def _assert_scrubbed(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.__cause__)
        assert self.TOKEN not in text and self.HUB not in text
        assert "***" in str(exc)

    def test_untranslated_errors(self) -> None:
        gen = DeskGenerator("fake-secret", token=self.TOKEN, fail_with=f"bad {self.TOKEN}")
        with pytest.raises(BackendError) as info:
            gen.generate(prompt="a desk")
        assert isinstance(info.value.__cause__, RuntimeError)
        self._assert_scrubbed(info.value)

    def test_load_errors(self) -> None:
        with pytest.raises(ModelLoadError) as info:
            DeskGenerator("fake-secret", token=self.TOKEN, fail_on_load=True)
        self._assert_scrubbed(info.value)

    def test_deskgen_errors_and_secrets_by_name(self) -> None:
        gen = DeskGenerator("fake-secret", hub={"hf_token": self.HUB}, fail_with="typed")
        with pytest.raises(InvalidOutputError, match=r"the hub refused \*\*\*") as info:
            gen.generate(prompt="a desk")
        self._assert_scrubbed(info.value)

    def test_sk_shaped_keys_and_short_values(self) -> None:
        key = "sk-proj-" + "x" * 40
        gen = DeskGenerator("fake-secret", token="short", fail_with=f"{key} short of it")
        with pytest.raises(BackendError) as info:
            gen.generate(prompt="a desk")
        assert key not in "".join(traceback.format_exception(info.value))
        assert "sk-*** short of it" in str(info.value)  # a short value blanks no words


class TestReplayChecks:
    def test_a_replayed_makeover_needs_its_photo(self, gen: DeskGenerator) -> None:
        photo = Image.new("RGB", (20, 10), (10, 20, 30))
        first = gen.generate(prompt="a desk", image=photo, steps=1, seed=1)
        assert first.input_image is not None
        assert first.request.image_sha256 == first.input_image.sha256
        replay = first.request.model_copy(update={"image": None})
        with pytest.raises(InvalidRequestError, match="pass the same photo"):
            gen.generate(replay)
        same = gen.generate(replay, image=photo.copy())
        assert same.warnings == []
        other = gen.generate(replay, image=Image.new("RGB", (20, 10)))
        assert any("differs" in w for w in other.warnings)
        txt = gen.generate(replay, image_sha256=None)
        assert txt.mode == "txt2img"

    def test_file_objects_are_rewound_for_replay(self, gen: DeskGenerator) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, format="PNG")
        buf.seek(0)
        first = gen.generate(prompt="a desk", image=buf, steps=1, seed=2)
        again = gen.generate(first.request)
        assert again.input_image == first.input_image


def test_agenerate_matches_generate(gen: DeskGenerator) -> None:
    async def run() -> deskgen.GenerationResult:
        return await gen.agenerate(prompt="a desk", seed=3, steps=2)

    result = asyncio.run(run())
    assert (
        result.images[0].tobytes()
        == gen.generate(prompt="a desk", seed=3, steps=2).images[0].tobytes()
    )


def test_cancelling_the_task_stops_the_worker(gen: DeskGenerator) -> None:
    backend = _backend(gen)
    gate = threading.Event()
    backend.step_barrier = gate  # each step waits for the gate
    started = threading.Event()

    def on_step(progress: StepProgress) -> None:
        started.set()
        gate.clear()  # hold the worker after its first step

    async def run() -> None:
        task = asyncio.create_task(gen.agenerate(prompt="a desk", steps=50, on_step=on_step))
        gate.set()
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        gate.set()  # release the worker only once the task is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert 1 <= backend.steps_done < 50


class TestFakeBackendContract(BackendContract):
    """The pure-Python `deskgen.testing.FakeBackend` passes the backend contract."""

    steps = 3

    def make_generator(self, tmp_path: object) -> DeskGenerator:
        register_fake_backend("testing-fake")
        return DeskGenerator("testing-fake", step_seconds=0.002)
