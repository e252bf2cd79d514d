"""What `deskgen demo` uses: the sample desk photo, the tiny offline model, the demo prompts."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import cast

from PIL import Image

from .testing import TinyKind

__all__ = [
    "DEMO_NEGATIVE_PROMPT",
    "DEMO_PROMPT",
    "LONG_DESCRIPTION",
    "cache_dir",
    "sample_desk_photo",
    "tiny_controlnet_options",
    "tiny_model",
]

# The seed team's "clean desk" prompt (shared/seed/prompts.json).
DEMO_PROMPT = (
    "A clean, modern desk setup in a bright open office, with a large LG monitor displaying a "
    "forest wallpaper and a MacBook beneath it. Add a minimalist LED desk lamp on the left, a "
    "sleek wireless charger pad beside the laptop, and all cables neatly organized and hidden. "
    "The scene should feel calm, tidy, and professional, with natural lighting and no clutter."
)
LONG_DESCRIPTION = (
    "A modern office workspace featuring a large monitor on a stand displaying a forest scene "
    "with tall redwood trees, showing the time as 2:55. A laptop is placed on the desk, "
    "mirroring the same forest image. Multiple cables are connected to the laptop, possibly for "
    "data and power. A small device with a blue button sits on the desk, likely a USB hub or "
    "external drive. The background shows other desks and people working, indicating a "
    "collaborative lab or office environment. A visible sign on the desk reads 'Please do not "
    "touch the screens,' suggesting the setup is for research, monitoring, or visual content "
    "analysis."
)
"""The seed team's description prompt: 128 CLIP tokens, cut at 77 by stock pipelines."""
DEMO_NEGATIVE_PROMPT = "preset:photo_default"
"""The seed's default negative preset, by reference (see `deskgen.prompts`)."""

TINY_DEMO_SAMPLE_SIZE = 64
"""Latent size of the demo's tiny models: 128x128 pixel images."""


def cache_dir() -> Path:
    """Where deskgen keeps what it builds: ``$DESKGEN_CACHE``, else the user cache folder."""
    if env := os.environ.get("DESKGEN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deskgen"


def sample_desk_photo() -> Path:
    """The sample desk photo shipped with deskgen (drawn by a script of ours, CC0)."""
    return Path(str(resources.files("deskgen") / "_data" / "sample" / "desk.jpg"))


SAMPLE_LABELS = ("wall", "floor", "windowpane", "desk", "monitor", "computer", "lamp", "plant")
"""The classes of the sample photo's label map, by pixel value (ADE20K's names; the desk
class covers what lies on the desk: papers, keyboard, mug, cables)."""


def sample_desk_labels() -> tuple[Image.Image, tuple[str, ...]]:
    """The sample desk photo's label map ('L', drawn from the same geometry as the photo by
    ``scripts/make_sample_desk.py``) and the class name of each value (`SAMPLE_LABELS`)."""
    path = Path(str(resources.files("deskgen") / "_data" / "sample" / "desk-labels.png"))
    with Image.open(path, formats=("PNG",)) as image:
        return image.convert("L"), SAMPLE_LABELS


def tiny_segmenter() -> Path:
    """The demo's tiny segmentation model, trained (seconds, on the CPU) on the sample photo
    alone and built into the cache on first use: ``mask="auto"`` finds the sample desk
    offline (`deskgen.testing.make_tiny_segmenter`, ``kind="sample"``)."""
    from .testing import make_tiny_segmenter

    return make_tiny_segmenter(cache_dir() / "tiny-segmenter-demo", kind="sample", seed=0)


def tiny_model(kind: TinyKind | str = "sdxl") -> Path:
    """The demo's tiny random-weight model of ``kind`` (a backend profile's ``demo``), built
    into the cache on first use (`deskgen.testing.make_tiny_pipeline` refuses unknown kinds)."""
    from .testing import make_tiny_pipeline

    return make_tiny_pipeline(
        cast("TinyKind", kind),
        cache_dir() / f"tiny-{kind}-demo",
        seed=0,
        sample_size=TINY_DEMO_SAMPLE_SIZE,
    )


def tiny_controlnet_options(control: str | list[str] = "canny,depth") -> dict[str, str]:
    """``sdxl-controlnet`` options (as text, for the CLI's ``--option``) for the demo's tiny
    SDXL: a tiny ControlNet per control kind in ``control`` (``"canny,depth"``, or a list of
    kinds) and a tiny depth model, built into the cache on first use."""
    from .testing import make_tiny_controlnet, make_tiny_depth_model

    kinds = control if isinstance(control, list) else [k.strip() for k in control.split(",")]
    folder = cache_dir()
    size = TINY_DEMO_SAMPLE_SIZE
    nets = [
        str(make_tiny_controlnet(folder / f"tiny-controlnet-{i}-demo", seed=i, sample_size=size))
        for i in (1, 2)
    ]
    return {
        # JSON, so that folder names with commas survive
        "controlnet": json.dumps([nets[1] if kind == "depth" else nets[0] for kind in kinds]),
        "control": json.dumps(kinds),
        "depth_model": str(make_tiny_depth_model(folder / "tiny-depth-demo")),
    }
