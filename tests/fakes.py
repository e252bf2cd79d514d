"""A pure-Python backend for facade tests: no torch, deterministic images from the seed."""

from __future__ import annotations

import random
import threading
from typing import ClassVar

from PIL import Image

from deskgen import register_backend
from deskgen.backends import Backend, BackendOptions, BackendOutput, Job


class FakeOptions(BackendOptions):
    fail_with: str | None = None
    fail_on_load: bool = False


@register_backend("fake", replace=True)
class FakeBackend(Backend):
    description: ClassVar[str] = "test backend"
    extra: ClassVar[str] = "local"
    default_model: ClassVar[str | None] = "fake/model"
    options_class: ClassVar[type[BackendOptions]] = FakeOptions

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, FakeOptions)
        if options.fail_on_load:
            raise KeyError("weights.bin")
        self.fail_with = options.fail_with
        self.steps_done = 0
        self.closed = False
        self.jobs: list[Job] = []
        self.step_barrier: threading.Event | None = None

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    def generate(self, job: Job) -> BackendOutput:
        self.jobs.append(job)
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        steps = job.request.steps or 30
        for i in range(steps):
            if self.step_barrier is not None:
                self.step_barrier.wait(5)
            self.steps_done = i + 1
            job.on_step(i + 1, steps)
        images = []
        for seed in job.seeds:
            rng = random.Random(seed)
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            images.append(Image.new("RGB", (16, 16), colour))
        resolved = job.request.model_copy(
            update={"width": 16, "height": 16, "guidance_scale": 1.0, "steps": steps}
        )
        return BackendOutput(
            images=images,
            seeds=job.seeds,
            request=resolved,
            mode="img2img" if job.photo is not None else "txt2img",
            width=16,
            height=16,
            denoising_steps=steps,
            scheduler="FakeScheduler",
            encode_seconds=0.0,
            denoise_seconds=0.0,
            decode_seconds=0.0,
        )

    def close(self) -> None:
        self.closed = True


class MissingDepsBackend(FakeBackend):
    requirements: ClassVar[tuple[str, ...]] = ("deskgen_no_such_module_xyz",)
    extra: ClassVar[str] = "imaginary"


register_backend("fake-missing", replace=True)(MissingDepsBackend)
