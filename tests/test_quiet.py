"""A makeover through the library prints nothing the user did not ask for: no loading bars, no
import-time lines of the libraries it loads with, no notices about diffusers' own VAE upcast."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

NOISE = (
    "Loading pipeline components",  # diffusers' loading bar
    "Loading weights",  # transformers' loading bar
    "should be kept in float32: []",  # SDXL's VAE upcast, twice per float16 call
    "`upcast_vae` is deprecated",
    "Failed to load",  # torchao's native kernels on a CPU
    "Detected no triton",
    "Enum subclass",  # torch's pytree deprecation that torchao's import triggers
    "Unable to import `torchao` Tensor objects",
    "requires torchvision",  # transformers' image-processor fallback
)


@pytest.mark.slow
def test_a_makeover_prints_nothing_unasked(tiny_sdxl_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from deskgen import DeskGenerator, QuantConfig
        for dtype, quantization in (("float16", None), ("float32", QuantConfig(method="torchao"))):
            gen = DeskGenerator(
                "sdxl", model={str(tiny_sdxl_path)!r}, device="cpu", dtype=dtype,
                quantization=quantization,
            )
            gen.generate(prompt="a desk", steps=2, seed=1, width=64, height=64)
            gen.close()
        print("made over")
        """
    )
    # the user's environment: none of the test suite's verbosity settings
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")
        and not k.startswith(("HF_HUB_DISABLE", "TQDM"))
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=env | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "made over"
    printed = out.stderr
    assert not [line for line in NOISE if line in printed], printed
    # what the user's choice deserves still shows: float16 on a CPU is diffusers' own warning
    assert "float16" in printed


def test_the_users_progress_bar_setting_is_restored() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from deskgen._quiet import quiet_loading

    libraries = (diffusers_logging, transformers_logging)
    before = [lib.is_progress_bar_enabled() for lib in libraries]
    try:
        for lib in libraries:
            lib.enable_progress_bar()
        with quiet_loading():
            assert not any(lib.is_progress_bar_enabled() for lib in libraries)
        assert all(lib.is_progress_bar_enabled() for lib in libraries)
        diffusers_logging.disable_progress_bar()
        with quiet_loading():
            pass
        assert not diffusers_logging.is_progress_bar_enabled()  # the user's own choice stays
        assert transformers_logging.is_progress_bar_enabled()
    finally:
        for lib, enabled in zip(libraries, before, strict=True):
            (lib.enable_progress_bar if enabled else lib.disable_progress_bar)()


def test_overlapping_loads_restore_the_settings_once() -> None:
    """T1 enters, T2 enters, T1 leaves, T2 leaves: the levels are the user's again (not the
    quiet ones T2 would have saved on entering)."""
    import logging
    import threading

    from deskgen._quiet import quiet_loading

    logger = logging.getLogger("torchao")
    before = logger.level
    entered, release = threading.Barrier(2), threading.Event()

    def load(first: bool) -> None:
        with quiet_loading():
            entered.wait()
            if first:
                return  # leaves while the other is still loading
            release.wait(10)

    first = threading.Thread(target=load, args=(True,))
    second = threading.Thread(target=load, args=(False,))
    first.start()
    second.start()
    first.join()
    assert logger.level == logging.ERROR  # the second load is still quiet
    release.set()
    second.join()
    assert logger.level == before
