"""The mask tests' shared state: no segmenter shared across modules, one torch thread. The tiny
segmentation models are tests/conftest.py's (``tiny_segformer_path``, ``tiny_mask2former_path``);
the open-vocabulary route's tiny random-weight Grounding DINO and SAM are built here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

GROUNDING_DINO_SEED = 0
SAM_SEED = 2
"""Seeds whose random boxes and masks on ``make_desk_photo(seed=0)`` cover part of the photo
(about 43% together, each phrase of ``["desk", "cables"]`` a part of it): a union that is
neither empty nor everything, so comparing regions means something."""


@pytest.fixture(scope="session")
def tiny_grounding_dino_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing._segmentation import make_tiny_segmenter

    return make_tiny_segmenter(
        tmp_path_factory.mktemp("detectors") / "grounding-dino",
        kind="grounding-dino",
        seed=GROUNDING_DINO_SEED,
    )


@pytest.fixture(scope="session")
def tiny_sam_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing._segmentation import make_tiny_segmenter

    return make_tiny_segmenter(tmp_path_factory.mktemp("sams") / "sam", kind="sam", seed=SAM_SEED)


@pytest.fixture(scope="module", autouse=True)
def _release_segmenters() -> Iterator[None]:
    """Each test module starts and ends with no shared segmenter loaded."""
    from deskgen.masks._segment import release_segmenters

    release_segmenters()
    yield
    release_segmenters()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on one CPU thread: more only wait on each other (dozens of times slower on a
    busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
