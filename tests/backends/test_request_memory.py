"""Requests too large for the memory at hand are refused before they run, from an estimate;
allocation failures while one runs become deskgen's `OutOfMemoryError`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deskgen import BackendError, DeskGenerator, OutOfMemoryError
from deskgen.backends._request_memory import (
    RequestMemory,
    available_bytes,
    check_request_fits,
    estimate_request_memory,
    is_out_of_memory,
    out_of_memory_error,
)

pytest.importorskip("diffusers")


def test_an_oversized_request_is_refused_before_any_step(
    generators: dict[str, DeskGenerator],
) -> None:
    gen = generators["sdxl"]
    steps: list[int] = []
    started = time.perf_counter()
    with pytest.raises(OutOfMemoryError) as caught:
        gen.generate(
            prompt="a desk",
            width=8192,
            height=8192,
            num_images=16,  # hundreds of GiB for the decode alone, whatever the machine
            steps=1,
            seed=1,
            on_step=lambda p: steps.append(p.step),
        )
    assert time.perf_counter() - started < 30  # refused, not attempted
    assert steps == []
    err = caught.value
    assert isinstance(err, BackendError) and isinstance(err, MemoryError)
    assert err.needed_bytes is not None and err.available_bytes is not None
    assert err.needed_bytes > err.available_bytes
    assert err.largest_size is not None
    w, h = err.largest_size
    assert w == h and 16 <= w < 8192 and w % 16 == 0  # the tiny VAE scales by 2: a grid of 16
    message = str(err)
    assert "8192x8192" in message and f"{w}x{h}" in message
    assert "fewer images" in message


def test_the_estimate_grows_with_pixels_images_and_guidance(
    generators: dict[str, DeskGenerator],
) -> None:
    pipe = generators["sdxl"].backend._txt2img  # type: ignore[attr-defined]

    def estimate(**change: object) -> int:
        kwargs: dict[str, object] = {
            "denoiser": "unet",
            "width": 512,
            "height": 512,
            "images": 1,
            "guidance_branches": 2,
            "img2img": False,
            "element_bytes": 4,
            "vae_element_bytes": 4,
        } | change
        return estimate_request_memory(pipe, **kwargs).peak  # type: ignore[arg-type]

    base = estimate()
    assert estimate(width=1024, height=1024) > 3 * (base - 2**28)
    assert estimate(images=4) > estimate(images=2) > base
    assert estimate(element_bytes=2, vae_element_bytes=2) < base
    assert estimate(img2img=True) >= base


def test_vae_tiling_bounds_the_decode(tiny_sdxl_path: Path) -> None:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", vae_tiling=True) as gen:
        pipe = gen.backend._txt2img  # type: ignore[attr-defined]

        def estimate() -> RequestMemory:
            return estimate_request_memory(
                pipe,
                denoiser="unet",
                width=8192,
                height=8192,
                images=1,
                guidance_branches=2,
                img2img=True,
                element_bytes=4,
                vae_element_bytes=4,
            )

        tiled = estimate()
        assert tiled.vae_decode == tiled.decode_tiled
        pipe.vae.disable_tiling()
        try:
            whole = estimate()
        finally:
            pipe.vae.enable_tiling()
        assert whole.vae_decode > 4 * tiled.vae_decode
        assert whole.vae_encode > 4 * tiled.vae_encode


def test_vae_tiling_is_offered_where_it_would_fit() -> None:
    room = available_bytes("cpu")
    assert room is not None
    decode_bound = RequestMemory(
        denoise=2**20, vae_encode=0, vae_decode=4 * room, outputs=2**20, decode_tiled=2**20
    )
    with pytest.raises(OutOfMemoryError, match=r"vae_tiling=True") as caught:
        check_request_fits(
            decode_bound,
            device="cpu",
            width=4096,
            height=2048,
            images=1,
            multiple=64,
            tiling_on=False,
        )
    assert caught.value.largest_size is not None
    w, h = caught.value.largest_size
    assert w == 2 * h or abs(w / h - 2) < 0.1
    denoise_bound = RequestMemory(
        denoise=4 * room, vae_encode=0, vae_decode=4 * room, outputs=0, decode_tiled=2**20
    )
    with pytest.raises(OutOfMemoryError) as caught:
        check_request_fits(
            denoise_bound,
            device="cpu",
            width=4096,
            height=4096,
            images=2,
            multiple=64,
            tiling_on=False,
        )
    assert "vae_tiling" not in str(caught.value)  # tiling would not be enough
    fits = RequestMemory(denoise=2**20, vae_encode=0, vae_decode=2**20, outputs=0, decode_tiled=0)
    check_request_fits(
        fits, device="cpu", width=64, height=64, images=1, multiple=64, tiling_on=False
    )


def test_a_cpu_allocation_failure_is_recognised() -> None:
    import torch

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: the CPU allocator refuses it
    assert is_out_of_memory(caught.value)
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shapes do not match"))
    err = out_of_memory_error(caught.value, device="cpu", what="testing", hint="Do less.")
    assert isinstance(err, OutOfMemoryError)
    assert str(err).startswith("Out of memory on cpu testing (") and str(err).endswith("Do less.")
    assert err.available_bytes == available_bytes("cpu")


@pytest.mark.slow
def test_an_allocation_failure_while_generating_is_an_out_of_memory_error(
    tiny_sd_path: Path,
) -> None:
    """A real allocation failure (the address space capped under what a 2048x2048 request
    needs, which the estimate can't see), on the CPU: deskgen's error, with its hint."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        import psutil
        from deskgen import DeskGenerator, OutOfMemoryError
        gen = DeskGenerator("sd", model={str(tiny_sd_path)!r}, device="cpu")
        gen.generate(prompt="a desk", steps=1, seed=1, width=64, height=64)
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + 300 * 2**20, resource.RLIM_INFINITY))
        try:
            gen.generate(prompt="a desk", steps=1, seed=1, width=2048, height=2048)
        except OutOfMemoryError as exc:
            print("OutOfMemoryError|" + type(exc.__cause__).__name__ + "|" + str(exc))
        """
    )
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS caps allocations on Linux only")
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("OutOfMemoryError|")), None)
    assert line is not None, out.stdout + out.stderr
    _, cause, message = line.split("|", 2)
    assert cause in ("RuntimeError", "MemoryError", "OutOfMemoryError")
    assert message.startswith("Out of memory on cpu generating 1 image(s) at 2048x2048")
    assert "a smaller size" in message and "vae_tiling=True" in message


def test_an_allocation_failure_in_any_backend_is_an_out_of_memory_error() -> None:
    """At the facade's boundary too: a custom backend that lets torch's CPU allocator error (or
    a MemoryError) escape gets deskgen's error, not a bare BackendError."""
    import torch

    from .. import fakes  # noqa: F401  (registers the fake backend)

    try:
        torch.empty(2**50, dtype=torch.uint8)
    except RuntimeError as exc:
        allocator_text = str(exc)
    gen = DeskGenerator("fake", fail_with=allocator_text)
    with pytest.raises(OutOfMemoryError, match=r"out of memory .*smaller size") as caught:
        gen.generate(prompt="a desk", seed=1, steps=1)
    assert isinstance(caught.value.__cause__, RuntimeError)


def _real_sdxl(**vae: object) -> object:
    """What the estimate reads of SDXL base: its VAE's and UNet's published configs."""
    from types import SimpleNamespace

    return SimpleNamespace(
        vae=SimpleNamespace(
            config=SimpleNamespace(block_out_channels=[128, 256, 512, 512], sample_size=1024),
            **vae,
        ),
        unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=[320, 640, 1280])),
        vae_scale_factor=8,
    )


@pytest.mark.parametrize(
    ("images", "side", "vae_bytes", "most_gib"),
    [
        (1, 1024, 2, 3.0),  # bfloat16: decoded in bfloat16
        (1, 1024, 4, 5.5),  # float16: SDXL upcasts the VAE to float32 for the decode
        (4, 1024, 2, 10.0),
        (1, 2048, 2, 10.0),
    ],
)
def test_real_sdxl_requests_are_not_overestimated(
    images: int, side: int, vae_bytes: int, most_gib: float
) -> None:
    """Ordinary SDXL requests fit on a 24 GB card after its ~7 GB of weights: the estimate must
    not refuse them (it is a bound, not a scare)."""
    estimate = estimate_request_memory(
        _real_sdxl(),
        denoiser="unet",
        width=side,
        height=side,
        images=images,
        guidance_branches=2,
        img2img=True,
        element_bytes=2,
        vae_element_bytes=vae_bytes,
    )
    assert estimate.peak < most_gib * 2**30
    assert estimate.vae_decode > estimate.denoise  # the decode is what grows with pixels
