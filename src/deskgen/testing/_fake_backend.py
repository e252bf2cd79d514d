"""`FakeBackend`: a pure-Python backend (PIL only, no torch) for tests of code built on deskgen.

```python
from deskgen.testing import register_fake_backend
register_fake_backend()  # under "fake"; or register_fake_backend("my-fake")
gen = DeskGenerator("fake")
gen.generate(prompt="a desk", seed=1).image  # 16x16 noise, the same for the same request
```

Nothing is registered until `register_fake_backend` is called. Its images are seeded noise
drawn from the prompt, the seed and (img2img) the photo, so they replay exactly and differ
between requests; each request runs its ``steps`` (default 4) through the facade's progress
and cancel hooks, so progress, cancelling, threads and closing behave as with a real backend.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from typing import TYPE_CHECKING, ClassVar

from PIL import Image

from .._exceptions import UnsupportedOperationError
from ..backends._base import Backend, BackendOptions, BackendOutput, Job
from ..backends._profile import BackendProfile

if TYPE_CHECKING:
    from .._models import GenerationRequest

__all__ = ["FakeBackend", "FakeBackendOptions", "register_fake_backend"]

_DEFAULT_STEPS = 4
_DEFAULT_STRENGTH = 0.6


class FakeBackendOptions(BackendOptions):
    """What `FakeBackend` takes besides ``model``, ``device`` and ``dtype``."""

    size: int = 16
    """Native image size in pixels (square), used where a request gives no size."""
    step_seconds: float = 0.0
    """Sleep this long in each step (to make concurrent requests really overlap)."""
    fail_with: str | None = None
    """Raise ``RuntimeError(fail_with)`` from every request (a backend failure)."""
    fail_on_load: bool = False
    """Raise ``KeyError("weights.bin")`` while loading (a load failure)."""


class FakeBackend(Backend):
    """A deterministic, thread-safe backend without weights: txt2img, img2img and inpaint (the
    whole picture redrawn as img2img; the facade keeps the photo outside the mask).

    For tests it keeps every `Job` it ran (`jobs`), the steps of the last request (`steps_done`)
    and whether it was closed (`closed`); set `step_gate` to a `threading.Event` to hold each
    step until the event is set.
    """

    description: ClassVar[str] = "pure-Python test backend (deskgen.testing): seeded noise"
    extra: ClassVar[str] = ""
    default_model: ClassVar[str | None] = "fake/model"
    options_class: ClassVar[type[BackendOptions]] = FakeBackendOptions
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "img2img", "inpaint"),
        masks=True,
        notes=("For tests: images are seeded noise, no model is loaded.",),
    )

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, FakeBackendOptions)
        if options.fail_on_load:
            raise KeyError("weights.bin")
        self.opts: FakeBackendOptions = options
        self.jobs: list[Job] = []
        self.steps_done = 0
        self.closed = False
        self.step_gate: threading.Event | None = None
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    def generate(self, job: Job) -> BackendOutput:
        with self._lock:
            self.jobs.append(job)
        if self.opts.fail_with:
            raise RuntimeError(self.opts.fail_with)
        req = job.request
        if req.padding_mask_crop is not None:  # taken by the diffusers backends only
            raise UnsupportedOperationError(
                f"The {self.name!r} backend redraws the whole picture: leave out padding_mask_crop."
            )
        width, height = self._size(req)
        steps = req.steps or _DEFAULT_STEPS
        strength = (req.strength or _DEFAULT_STRENGTH) if job.photo is not None else None
        started = time.perf_counter()
        for i in range(steps):
            gate = self.step_gate
            if gate is not None:
                gate.wait(10)
            if self.opts.step_seconds:
                time.sleep(self.opts.step_seconds)
            self.steps_done = i + 1
            job.on_step(i + 1, steps)
        images = [self._draw(job, seed, (width, height), strength) for seed in job.seeds]
        resolved = req.model_copy(
            update={
                "width": width,
                "height": height,
                "steps": steps,
                "guidance_scale": 1.0 if req.guidance_scale is None else req.guidance_scale,
                "strength": strength,
            }
        )
        return BackendOutput(
            images=images,
            seeds=list(job.seeds),
            request=resolved,
            mode=("txt2img" if job.photo is None else "img2img" if job.mask is None else "inpaint"),
            width=width,
            height=height,
            denoising_steps=steps,
            scheduler="FakeScheduler",
            encode_seconds=0.0,
            denoise_seconds=time.perf_counter() - started,
            decode_seconds=0.0,
        )

    def _size(self, req: GenerationRequest) -> tuple[int, int]:
        size = self.opts.size
        return req.width or req.height or size, req.height or req.width or size

    @staticmethod
    def _draw(job: Job, seed: int, size: tuple[int, int], strength: float | None) -> Image.Image:
        key = hashlib.sha256(f"{seed}\0{job.prompt.prompt}\0{job.prompt.negative_prompt}".encode())
        rng = random.Random(key.digest())
        noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
        if job.photo is None or strength is None:
            return noise
        return Image.blend(job.photo.resize(size), noise, strength)

    def close(self) -> None:
        self.closed = True


_REGISTERED: dict[str, type[FakeBackend]] = {}
_REGISTER_LOCK = threading.Lock()


def register_fake_backend(name: str = "fake", *, replace: bool = True) -> type[FakeBackend]:
    """Register `FakeBackend` under ``name`` (a subclass of its own per name) and return it.

    Calling it again with the same name returns the same class. ``replace=False`` refuses a
    name another backend has (`deskgen.register_backend`'s `ValueError`).
    """
    from .._exceptions import UnknownBackendError
    from .._registry import get_backend_class, register_backend

    with _REGISTER_LOCK:
        known = _REGISTERED.get(name)
        try:
            current = get_backend_class(name, check_installed=False)
        except UnknownBackendError:
            current = None
        if known is not None and current is known:
            return known
        cls: type[FakeBackend] = type(
            "FakeBackend", (FakeBackend,), {"__module__": __name__, "__qualname__": "FakeBackend"}
        )
        register_backend(name, replace=replace)(cls)
        _REGISTERED[name] = cls
        return cls
