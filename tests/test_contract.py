"""`deskgen.testing` as a package: what it exports, what importing it costs, the pure-Python
`FakeBackend`, and the backend contract's teeth (it fails backends that break it)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

import deskgen.testing
from deskgen import DeskGenerator, UnknownBackendError, UnsupportedOperationError, list_backends
from deskgen.backends import Backend, BackendOptions, BackendOutput, BackendProfile, Job
from deskgen.testing import FakeBackend, make_tiny_pipeline, register_fake_backend
from deskgen.testing.contract import BackendContract, ContractRun


def test_exports_are_sorted_and_importable() -> None:
    names = deskgen.testing.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(deskgen.testing, name) is not None, name
    assert deskgen.testing.BackendContract is BackendContract
    # what `_qwen_image` imports from the package
    from deskgen.testing import _CORPUS, _MARKER, _built, _require_local  # noqa: F401


def test_importing_it_imports_no_heavy_library_nor_pytest() -> None:
    code = (
        "import sys, deskgen.testing, deskgen.demo; "
        "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'pytest', "
        "'deskgen.testing.contract') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
    code = "import sys, deskgen; print('deskgen.testing' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"


def test_qwen_kinds_go_to_the_qwen_writer(tmp_path: Path) -> None:
    from deskgen.testing import make_tiny_qwen_image_edit

    path = make_tiny_pipeline("qwen-image-edit-plus", tmp_path / "q", seed=2)
    index = (path / "model_index.json").read_text()
    assert "QwenImageEditPlusPipeline" in index
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert make_tiny_qwen_image_edit(path, plus=True, seed=2) == path  # the same build: reused
    assert weights.stat().st_mtime_ns == stamp


class TestFakeBackend:
    def test_nothing_is_registered_until_asked(self) -> None:
        with pytest.raises(UnknownBackendError):
            DeskGenerator("testing-fake-unregistered")
        cls = register_fake_backend("testing-fake-unregistered")
        assert register_fake_backend("testing-fake-unregistered") is cls  # idempotent
        assert issubclass(cls, FakeBackend) and cls.name == "testing-fake-unregistered"
        info = next(i for i in list_backends() if i.name == "testing-fake-unregistered")
        assert info.installed and info.profile.has("photos")

    def test_a_taken_name_needs_replace(self) -> None:
        with pytest.raises(ValueError, match="already registered"):
            register_fake_backend("sdxl", replace=False)

    def test_images_follow_the_request(self) -> None:
        register_fake_backend("testing-fake")
        gen = DeskGenerator("testing-fake")
        a = gen.generate(prompt="a desk", seed=1, steps=2)
        assert a.image.size == (16, 16) and a.mode == "txt2img"
        assert a.request.steps == 2 and a.denoising_steps == 2
        assert gen.generate(prompt="a desk", seed=1, width=24, height=8).image.size == (24, 8)
        assert gen.generate(prompt="a chair", seed=1).image.tobytes() != a.image.tobytes()
        photo = Image.new("RGB", (40, 30), (200, 10, 10))
        edit = gen.generate(prompt="a desk", seed=1, image=photo)
        assert edit.mode == "img2img" and edit.request.strength == 0.6
        mask = Image.new("L", (40, 30))
        mask.paste(255, (10, 10, 30, 30))
        inpaint = gen.generate(prompt="a desk", seed=1, image=photo, mask=mask)
        assert inpaint.mode == "inpaint" and inpaint.image.size == photo.size
        assert inpaint.image.getpixel((0, 0)) == (200, 10, 10)  # outside: the photo's own
        with pytest.raises(UnsupportedOperationError, match="padding_mask_crop"):
            gen.generate(prompt="a desk", image=photo, mask=mask, padding_mask_crop=4)
        backend = gen.backend
        assert isinstance(backend, FakeBackend) and len(backend.jobs) == 6  # the refused one too
        gen.close()
        assert backend.closed


# -- the contract fails backends that break it -------------------------------------------------


class _Broken(FakeBackend):
    """A backend that breaks one rule of the contract at a time."""

    rule: ClassVar[str] = ""
    profile: ClassVar[BackendProfile] = BackendProfile(modes=("txt2img",))
    _shared = random.Random(0)

    def generate(self, job: Job) -> BackendOutput:
        if self.rule == "photos":  # takes a photo its profile doesn't: no refusal
            job = dataclasses.replace(job, photo=None)
        if self.rule == "silent":  # never reports a step
            job = dataclasses.replace(job, on_step=lambda step, total: None)
        output = super().generate(job)
        if self.rule == "random":  # one generator shared by every request: seeds don't replay
            colour = tuple(self._shared.randrange(256) for _ in range(3))
            output.images = [Image.new("RGB", img.size, colour) for img in output.images]
        return output


def _contract_run(rule: str) -> ContractRun:
    cls = type(f"Broken_{rule}", (_Broken,), {"rule": rule})
    deskgen.register_backend(f"testing-broken-{rule}", replace=True)(cls)

    class Case(BackendContract):
        def make_generator(self, tmp_path: Path) -> DeskGenerator:
            return DeskGenerator(f"testing-broken-{rule}")

    case = Case()
    return ContractRun(case, DeskGenerator(f"testing-broken-{rule}"))


def test_the_contract_fails_seeds_that_do_not_replay() -> None:
    run = _contract_run("random")
    with pytest.raises(AssertionError, match="pixels differ"):
        run.case.test_contract_same_seed_same_pixels(run)


def test_the_contract_fails_a_backend_that_never_reports_a_step() -> None:
    run = _contract_run("silent")
    with pytest.raises(pytest.fail.Exception, match="reported no step"):
        run.case.test_contract_cancel_between_steps(run)


def test_the_contract_fails_photos_the_profile_does_not_take() -> None:
    run = _contract_run("photos")
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        run.case.test_contract_refuses_what_the_profile_lacks(run, "photos")


class _Unsafe(Backend):
    """Not thread-safe: the last request's prompt wins (state kept on the instance)."""

    profile: ClassVar[BackendProfile] = BackendProfile(modes=("txt2img",))
    default_model: ClassVar[str | None] = "unsafe/model"

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.prompt = ""

    device = property(lambda self: "cpu")  # type: ignore[assignment]
    dtype = property(lambda self: "float32")  # type: ignore[assignment]

    def generate(self, job: Job) -> BackendOutput:
        self.prompt = job.prompt.prompt
        job.on_step(1, 2)  # the contract's threads meet here, then both read the shared state
        job.on_step(2, 2)
        value = sum(self.prompt.encode()) % 256
        image = Image.new("RGB", (8, 8), (value, job.seeds[0] % 256, 0))
        return BackendOutput(
            images=[image],
            seeds=job.seeds,
            request=job.request,
            mode="txt2img",
            width=8,
            height=8,
            denoising_steps=2,
            scheduler="none",
            encode_seconds=0.0,
            denoise_seconds=0.0,
            decode_seconds=0.0,
        )

    def close(self) -> None:
        pass


def test_the_contract_fails_requests_that_share_state_across_threads() -> None:
    deskgen.register_backend("testing-unsafe", replace=True)(_Unsafe)

    class Case(BackendContract):
        rendezvous_seconds = 5.0

    run = ContractRun(Case(), DeskGenerator("testing-unsafe"))
    with pytest.raises(AssertionError, match="pixels differ"):
        run.case.test_contract_two_threads_get_their_own_results(run)
