"""`BackendContract`: the tests every backend passes, as a pytest mixin (diffusers'
``PipelineTesterMixin``).

A backend's test module inherits it and says how to make a generator; ``make_generator``'s
parameters other than ``tmp_path`` (a folder for the class) are fixture names, as in a pytest
fixture (session, module or class scope):

```python
from deskgen.testing.contract import BackendContract

class TestSDXLContract(BackendContract):
    steps = 2  # keep every request tiny

    def make_generator(self, tmp_path, tiny_sdxl_path):
        return DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu")
```

The contract, every test named ``test_contract_...`` (select them with ``-k contract``):

- seed replay: the same request and seed give the same pixels, another seed others; the
  result's resolved ``request`` and the record saved in its PNG (`deskgen.read_record`) make the
  same pixels again; each image of a batch is its seed's image alone (`batch_tolerance`); with a
  photo too, and a replay that lacks its photo is refused;
- closing: a request running when `close` is called finishes; afterwards every call raises
  `GeneratorClosedError`, and closing again is harmless;
- cancelling: a set ``cancel`` flag stops a request between steps, before its end, with
  `GenerationCancelledError` (and before it starts); an exception from ``on_step`` propagates
  unchanged; the generator works as before afterwards;
- threads: two requests at once, from two threads, each get exactly their result alone;
- masks (backends whose profile has ``masks``): outside the mask the images are the photo's
  own pixels, exactly, at its size; the mask and the before/after come with the result; a
  replay without its mask is refused; bad masks (all black, all white, another shape, not an
  image) raise `ImageInputError`;
- bad inputs: invalid fields raise `InvalidRequestError` naming the field, before the backend;
  what the backend's `BackendProfile` lacks (photos, masks, control images, references,
  ``true_cfg_scale``, ``describe``) raises `UnsupportedOperationError`.

The generator is made once per class (one more for the closing test); the requests are the
class's tiny ones (`steps`, `request_kwargs`), and results that several tests compare with are
made once.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image, ImageChops, ImageDraw

from .._exceptions import (
    GenerationCancelledError,
    GeneratorClosedError,
    ImageInputError,
    InvalidRequestError,
    UnsupportedOperationError,
)
from .._generator import DeskGenerator
from .._models import MAX_SEED, GenerationResult, StepProgress
from .._record import read_record
from ..backends._profile import BackendProfile
from ..prompts._description import DeskDescription

__all__ = ["BAD_FIELDS", "BackendContract", "ContractRun", "contract_mask", "contract_photo"]

PROMPT = "a tidy desk with a monitor and a plant"
OTHER_PROMPT = "a walnut desk by a window, warm light"

BAD_FIELDS: list[tuple[str, Any]] = [
    ("steps", 0),
    ("steps", -1),
    ("width", -64),
    ("height", -64),
    ("width", 4),
    ("num_images", 0),
    ("num_images", 17),
    ("seed", -1),
    ("guidance_scale", -1.0),
    ("strength", 0.0),
    ("strength", 1.5),
    ("prompt", " "),
]
"""Request fields the facade refuses on every backend (`GenerationRequest`'s limits)."""


def contract_photo(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small synthetic desk photo with some structure (the same pixels on every call)."""
    img = Image.new("RGB", size, (200, 190, 170))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([0, int(h * 0.6), w, h], fill=(120, 80, 40))
    draw.rectangle([int(w * 0.3), int(h * 0.15), int(w * 0.7), int(h * 0.5)], fill=(20, 20, 30))
    draw.ellipse([int(w * 0.8), int(h * 0.55), int(w * 0.9), int(h * 0.7)], fill=(240, 240, 240))
    return img


def contract_mask(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A mask for `contract_photo`: the desk and the monitor white (to change), the rest
    black, with a soft edge (as a feathered found mask has)."""
    from PIL import ImageFilter

    mask = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(mask).rectangle([int(w * 0.25), int(h * 0.1), int(w * 0.75), h], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(2))


def _pixels(result: GenerationResult) -> list[tuple[tuple[int, int], bytes]]:
    return [(img.size, img.convert("RGB").tobytes()) for img in result.images]


def _assert_same(got: GenerationResult, expected: GenerationResult, what: str) -> None:
    assert got.seeds == expected.seeds, what
    assert _pixels(got) == _pixels(expected), f"{what}: the pixels differ"


def _max_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(int(high) for _, high in extrema)  # type: ignore[misc]


class ContractRun:
    """One class's generator, its profile, and the results several contract tests compare with
    (each made once, on first use)."""

    def __init__(self, case: BackendContract, gen: DeskGenerator) -> None:
        self.case = case
        self.gen = gen
        self.profile: BackendProfile = gen.backend.profile
        self._results: dict[str, GenerationResult] = {}

    def fields(self, **extra: Any) -> dict[str, Any]:
        """A tiny request of this class (`BackendContract.fields`)."""
        return self.case.fields(**extra)

    @property
    def photo_mode(self) -> bool:
        """Whether the photo tests run (`BackendContract.photo_mode`, else the profile's)."""
        given = self.case.photo_mode
        return self.profile.has("photos") if given is None else given

    def requests(self) -> dict[str, dict[str, Any]]:
        photo = {"image": contract_photo()} if self.photo_mode else {}
        return {
            "base": self.fields(seed=7),
            "seed+1": self.fields(seed=8),
            "photo": self.fields(seed=7, **photo),
            # another prompt and seed; from the photo (img2img, another pipeline) where taken
            "other": self.fields(prompt=OTHER_PROMPT, seed=21, **photo),
        }

    def result(self, key: str) -> GenerationResult:
        """The result of the named request (`requests`), made once."""
        if key not in self._results:
            self._results[key] = self.gen.generate(**self.requests()[key])
        return self._results[key]


class BackendContract:
    """Mixin of the tests every backend passes; see the module docs. Set the class attributes
    to keep the requests tiny and to say what the backend does differently."""

    steps: ClassVar[int | None] = 2
    """``steps`` of every request (``None``: leave it out, for backends without steps)."""
    request_kwargs: ClassVar[dict[str, Any]] = {}
    """More fields of every request (e.g. a small ``width``)."""
    needs_photo: ClassVar[bool] = False
    """Every request carries the contract's photo (backends that can't draw from text alone)."""
    photo_mode: ClassVar[bool | None] = None
    """Run the photo tests; ``None``: when the profile takes photos (``profile.has("photos")``)."""
    seeded: ClassVar[bool] = True
    """Different seeds give different images (``False`` for services that take no seed)."""
    batch_tolerance: ClassVar[int | None] = 1
    """How far (0-255) an image of a batch may be from its seed's image alone: batched and
    single forward passes may differ by float rounding; ``None``: skip the batch test."""
    mid_run_kwargs: ClassVar[dict[str, Any]] = {"steps": 3}
    """Fields of a request that reports at least one step before it ends (cancel and close
    tests): more steps, or more images for a backend that reports one step per image."""
    rendezvous_seconds: ClassVar[float] = 1.0
    """How long each of the two threads waits, at its first step, for the other to start
    (backends that serialise requests just wait this long)."""

    # -- the generator -----------------------------------------------------------------------

    def _make(self, request: pytest.FixtureRequest, tmp_path: Path) -> DeskGenerator:
        maker: Callable[..., Any] | None = getattr(self, "make_generator", None)
        if maker is None:
            raise TypeError(
                f"{type(self).__name__} inherits BackendContract: define "
                "make_generator(self, tmp_path, <fixtures>...) returning a DeskGenerator."
            )
        kwargs = {
            name: tmp_path if name == "tmp_path" else request.getfixturevalue(name)
            for name in inspect.signature(maker).parameters
        }
        gen = maker(**kwargs)
        if not isinstance(gen, DeskGenerator):
            raise TypeError(f"make_generator returned {type(gen).__name__}, not a DeskGenerator")
        return gen

    @pytest.fixture(scope="class")
    @classmethod
    def contract(
        cls, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ContractRun]:
        """The class's generator (made by ``make_generator``) and its shared results."""
        case = cls()  # test classes take no arguments (pytest makes one per test the same way)
        gen = case._make(request, tmp_path_factory.mktemp("contract"))
        try:
            yield ContractRun(case, gen)
        finally:
            gen.close()

    def fields(self, **extra: Any) -> dict[str, Any]:
        """The class's tiny request: the prompt, `steps`, `request_kwargs`, the photo when
        `needs_photo`, then ``extra``."""
        fields: dict[str, Any] = {"prompt": PROMPT}
        if self.steps is not None:
            fields["steps"] = self.steps
        if self.needs_photo:
            fields["image"] = contract_photo()
        return fields | dict(self.request_kwargs) | extra

    # -- seed replay -------------------------------------------------------------------------

    def test_contract_same_seed_same_pixels(self, contract: ContractRun) -> None:
        first = contract.result("base")
        assert first.seeds == [7] and first.request.seed == 7 and first.images
        assert first.mode in contract.profile.modes, (first.mode, contract.profile.modes)
        again = contract.gen.generate(**contract.requests()["base"])
        _assert_same(again, first, "the same request and seed, twice")

    def test_contract_other_seed_other_pixels(self, contract: ContractRun) -> None:
        if not self.seeded:
            pytest.skip("the backend takes no seed")
        assert _pixels(contract.result("seed+1")) != _pixels(contract.result("base"))

    def test_contract_resolved_request_replays(self, contract: ContractRun) -> None:
        first = contract.result("base")
        _assert_same(contract.gen.generate(first.request), first, "result.request replayed")

    def test_contract_saved_record_replays(self, contract: ContractRun, tmp_path: Path) -> None:
        first = contract.result("base")
        [path] = first.save(tmp_path / "contract.png")
        inputs: dict[str, Any] = {"image": contract_photo()} if self.needs_photo else {}
        again = contract.gen.generate(read_record(path), **inputs)
        _assert_same(again, first, "read_record(saved PNG) replayed")

    def test_contract_batch_images_replay_alone(self, contract: ContractRun) -> None:
        if self.batch_tolerance is None:
            pytest.skip("batch_tolerance is None")
        batch = contract.gen.generate(**contract.fields(seed=7, num_images=2))
        assert batch.seeds == [7, 8] and len(batch.images) == 2
        for image, key in zip(batch.images, ("base", "seed+1"), strict=True):
            alone = contract.result(key).image
            assert _max_difference(image, alone) <= self.batch_tolerance, key

    def test_contract_photo_request_replays(self, contract: ContractRun, tmp_path: Path) -> None:
        if not contract.photo_mode:
            pytest.skip("the backend takes no photo")
        first = contract.result("photo")
        assert first.input_image is not None
        assert first.mode in contract.profile.modes, (first.mode, contract.profile.modes)
        assert first.request.image_sha256 == first.input_image.sha256
        [path] = first.save(tmp_path / "photo.png")
        request = read_record(path)
        again = contract.gen.generate(request, image=contract_photo())
        _assert_same(again, first, "a photo request replayed with its photo")
        with pytest.raises(InvalidRequestError, match="same photo"):
            contract.gen.generate(request)

    # -- closing -----------------------------------------------------------------------------

    def test_contract_close(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        gen = self._make(request, tmp_path)
        fields = self.fields(seed=3) | self.mid_run_kwargs
        entered, release = threading.Event(), threading.Event()

        def hold(progress: StepProgress) -> None:
            if not entered.is_set():
                entered.set()
                release.wait(60)

        with ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(gen.generate, on_step=hold, **fields)
            try:
                _wait_for_step(entered, running, "close")
                closing = pool.submit(gen.close)
                _wait_until(lambda: gen.closed, "close() marks the generator closed")
                with pytest.raises(GeneratorClosedError):  # while the first one still runs
                    gen.generate(**fields)
            finally:
                release.set()
            result = running.result(120)
            closing.result(120)
        assert result.images, "a request running at close() finishes"
        assert gen.closed and "closed" in repr(gen)
        with pytest.raises(GeneratorClosedError):
            gen.generate(**fields)
        with pytest.raises(GeneratorClosedError):
            gen.check_prompt(prompt=PROMPT)
        with pytest.raises(GeneratorClosedError):
            gen.describe(contract_photo())
        with pytest.raises(GeneratorClosedError):
            _ = gen.backend
        gen.close()  # twice is harmless
        with gen:  # and so is leaving a with block
            pass

    # -- cancelling --------------------------------------------------------------------------

    def test_contract_cancel_between_steps(self, contract: ContractRun) -> None:
        flag = threading.Event()
        seen: list[StepProgress] = []

        def cancel_at_first(progress: StepProgress) -> None:
            seen.append(progress)
            flag.set()

        fields = contract.fields(seed=7) | self.mid_run_kwargs
        cancelled: GenerationCancelledError | None = None
        try:
            contract.gen.generate(on_step=cancel_at_first, cancel=flag, **fields)
        except GenerationCancelledError as exc:
            cancelled = exc
        if cancelled is None:
            pytest.fail(
                "the request ran to its end: the backend reported no step (on_step) before "
                "finishing; give mid_run_kwargs a request of several steps or images"
            )
        assert len(seen) == 1 and cancelled.step == seen[0].step, (cancelled.step, seen)
        assert cancelled.step < cancelled.total_steps, "cancelled at its last step: not mid-run"
        after = contract.gen.generate(**contract.requests()["base"])
        _assert_same(after, contract.result("base"), "a request after a cancelled one")

    def test_contract_cancel_before_start(self, contract: ContractRun) -> None:
        flag = threading.Event()
        flag.set()
        seen: list[StepProgress] = []
        with pytest.raises(GenerationCancelledError, match="before"):
            contract.gen.generate(on_step=seen.append, cancel=flag, **contract.fields())
        assert seen == []

    def test_contract_step_callback_error_propagates(self, contract: ContractRun) -> None:
        class Stop(Exception):
            pass

        def stop(progress: StepProgress) -> None:
            raise Stop(f"stop at step {progress.step}")

        fields = contract.fields(seed=7) | self.mid_run_kwargs
        with pytest.raises(Stop, match="stop at step"):
            contract.gen.generate(on_step=stop, **fields)

    # -- threads -----------------------------------------------------------------------------

    def test_contract_two_threads_get_their_own_results(self, contract: ContractRun) -> None:
        keys = ("base", "other")
        alone = [contract.result(key) for key in keys]
        requests = contract.requests()
        arrived = [threading.Event(), threading.Event()]
        progress: list[list[StepProgress]] = [[], []]

        def run(i: int) -> GenerationResult:
            def on_step(step: StepProgress) -> None:
                progress[i].append(step)
                if not arrived[i].is_set():  # both inside the backend at once, if it allows
                    arrived[i].set()
                    arrived[1 - i].wait(self.rendezvous_seconds)

            return contract.gen.generate(on_step=on_step, **requests[keys[i]])

        with ThreadPoolExecutor(max_workers=2) as pool:
            together = list(pool.map(run, range(2)))
        for key, got, expected in zip(keys, together, alone, strict=True):
            _assert_same(got, expected, f"the {key!r} request from a thread, beside another")
        for steps in progress:
            assert [p.step for p in steps] == list(range(1, len(steps) + 1))
            assert all(p.step <= p.total_steps for p in steps)

    # -- bad inputs --------------------------------------------------------------------------

    @pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
    def test_contract_invalid_field_is_refused(
        self, contract: ContractRun, field: str, value: Any
    ) -> None:
        seen: list[StepProgress] = []
        with pytest.raises(InvalidRequestError, match=field):
            contract.gen.generate(on_step=seen.append, **contract.fields(**{field: value}))
        assert seen == []

    def test_contract_bad_calls_are_refused(self, contract: ContractRun) -> None:
        with pytest.raises(InvalidRequestError, match="GenerationRequest"):
            contract.gen.generate("a desk")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="largest seed"):
            contract.gen.generate(**contract.fields(seed=MAX_SEED, num_images=2))

    @pytest.mark.parametrize(
        "capability", ["photos", "masks", "control_images", "references", "true_cfg"]
    )
    def test_contract_refuses_what_the_profile_lacks(
        self, contract: ContractRun, capability: str
    ) -> None:
        profile = contract.profile
        photo = contract_photo()
        if capability == "true_cfg":
            if profile.true_cfg:
                pytest.skip("the backend takes true_cfg_scale")
            fields = contract.fields(true_cfg_scale=2.0, negative_prompt="clutter")
        elif capability == "photos":
            if profile.has("photos"):
                pytest.skip("the backend takes photos")
            fields = contract.fields(image=photo)
        elif not profile.has("photos"):
            pytest.skip("the backend takes no photo (refused first)")
        elif capability == "masks":
            if profile.masks:
                pytest.skip("the backend takes masks")
            fields = contract.fields(image=photo, mask=Image.new("L", photo.size, 255))
        elif capability == "control_images":
            if profile.control_images:
                pytest.skip("the backend takes control images")
            fields = contract.fields(image=photo, control_image=photo)
        else:
            if profile.references:
                pytest.skip("the backend takes reference images")
            fields = contract.fields(image=photo, references=[contract_photo((64, 64))])
        with pytest.raises(UnsupportedOperationError):
            contract.gen.generate(**fields)

    # -- masks -------------------------------------------------------------------------------

    def test_contract_mask_keeps_the_room(self, contract: ContractRun) -> None:
        if not contract.profile.masks:
            pytest.skip("the backend takes no mask")
        photo = contract_photo()
        mask = contract_mask(photo.size)
        result = contract.gen.generate(**contract.fields(seed=7, image=photo, mask=mask))
        assert result.mode == "inpaint"
        assert result.mask is not None and result.mask.size == photo.size
        assert result.request.mask_sha256 is not None and result.photo is not None
        kept = [(x, y) for y in range(photo.height) for x in range(photo.width)]
        keep = [xy for xy in kept if mask.getpixel(xy) == 0]
        for image in result.images:
            assert image.size == photo.size
            assert all(image.getpixel(xy) == photo.getpixel(xy) for xy in keep), (
                "outside the mask the photo's own pixels, exactly"
            )
        before_after = result.before_after()
        assert before_after.height == photo.height and before_after.width > 2 * photo.width
        with pytest.raises(InvalidRequestError, match="mask"):  # a replay without its mask
            contract.gen.generate(result.request, image=photo, mask=None)
        raw = contract.gen.generate(
            **contract.fields(seed=7, image=photo, mask=mask, keep_unmasked=False)
        )
        assert raw.images[0].size == (raw.width, raw.height)

    @pytest.mark.parametrize("bad", ["black", "white", "shape", "not an image"])
    def test_contract_bad_masks_are_refused(self, contract: ContractRun, bad: str) -> None:
        if not contract.profile.masks:
            pytest.skip("the backend takes no mask")
        photo = contract_photo()
        masks: dict[str, Any] = {
            "black": Image.new("L", photo.size, 0),
            "white": Image.new("L", photo.size, 255),
            "shape": Image.new("L", (photo.height, photo.width), 255),
            "not an image": b"not an image",
        }
        with pytest.raises(ImageInputError):
            contract.gen.generate(**contract.fields(image=photo, mask=masks[bad]))

    def test_contract_describe_follows_the_profile(self, contract: ContractRun) -> None:
        if not contract.profile.describes:
            with pytest.raises(UnsupportedOperationError):
                contract.gen.describe(contract_photo())
            return
        description = contract.gen.describe(contract_photo())
        assert isinstance(description, DeskDescription) and description.summary


def _wait_for_step(entered: threading.Event, running: Future[Any], what: str) -> None:
    """Wait until the request reports its first step; fail if it ends without one."""
    deadline = time.monotonic() + 120
    while not entered.wait(0.05):
        if running.done():
            running.result()  # its own error, if any
            pytest.fail(
                f"{what}: the request ended without reporting a step (on_step); give "
                "mid_run_kwargs a request of several steps or images"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no step reported in 120 s")


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting: {what}")
        time.sleep(0.01)
