"""Finding the desk with tiny segmentation models in the real on-disk layout: a SegFormer
trained on synthetic desk photos, whose desk region is known, and a random Mask2Former."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deskgen._exceptions import (
    ConfigError,
    GeneratorClosedError,
    ImageInputError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
)
from deskgen.masks import DEFAULT_MASK_TARGETS, DeskMask, FoundMask, _segment, find_desk_mask
from deskgen.masks._segment import Segmenter, get_segmenter, release_segmenters
from deskgen.testing._segmentation import _scene, make_desk_photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELD_OUT = (0, 1, 2, 3)
"""Photos the tiny SegFormer was not trained on."""


def _iou(mask: Image.Image, expected: Image.Image) -> float:
    found, wanted = np.asarray(mask) > 127, np.asarray(expected) > 127
    return float((found & wanted).sum() / (found | wanted).sum())


def _floor_lamp(seed: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """The pixels of the lamp that does not stand on the desk."""
    _, labels = _scene(size, seed)
    _, expected = make_desk_photo(size=size, seed=seed)
    return np.asarray((labels == 4) & (np.asarray(expected) == 0))


def _settings(path: Path, **fields: object) -> DeskMask:
    return DeskMask(model=str(path), **{"grow": 0, "blur": 0, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", HELD_OUT)
def test_the_mask_covers_the_drawn_desk(tiny_segformer_path: Path, seed: int) -> None:
    photo, expected = make_desk_photo(seed=seed)
    found = find_desk_mask(photo, settings=_settings(tiny_segformer_path), device="cpu")
    assert isinstance(found, FoundMask)
    assert found.mask.mode == found.hard.mode == "L"
    assert found.mask.size == found.hard.size == photo.size
    assert _iou(found.hard, expected) > 0.8
    assert not (np.asarray(found.hard)[_floor_lamp(seed)] > 0).any()  # across the room
    assert {"desk", "monitor", "lamp"} <= set(found.found)
    assert set(found.found) <= set(DEFAULT_MASK_TARGETS)
    assert 0 < found.found["desk"] < 1
    assert found.coverage == pytest.approx((np.asarray(found.hard) > 0).mean())
    assert found.settings.model == str(tiny_segformer_path)


def test_objects_anywhere_without_on_surface(tiny_segformer_path: Path) -> None:
    photo, expected = make_desk_photo(seed=0)
    found = find_desk_mask(
        photo, settings=_settings(tiny_segformer_path, on_surface=False), device="cpu"
    )
    floor_lamp = _floor_lamp(0)  # thin: the tiny model sees it at half the photo's size
    assert (np.asarray(found.hard)[floor_lamp] > 0).mean() > 0.6
    wanted = np.asarray(expected) > 0
    assert (np.asarray(found.hard)[wanted] > 0).mean() > 0.9


def test_objects_anywhere_when_no_target_is_a_surface(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=1)
    found = find_desk_mask(
        photo, settings=_settings(tiny_segformer_path, targets=["lamp"]), device="cpu"
    )
    assert set(found.found) == {"lamp"}
    assert (np.asarray(found.hard)[_floor_lamp(1)] > 0).mean() > 0.6


def test_grow_and_feather_at_the_photo_size(tiny_segformer_path: Path) -> None:
    photo, expected = make_desk_photo(size=(480, 320), seed=2)
    plain = find_desk_mask(photo, settings=_settings(tiny_segformer_path), device="cpu")
    assert plain.mask.size == (480, 320)
    assert _iou(plain.hard, expected) > 0.8
    settings = _settings(tiny_segformer_path, grow=10, blur=12)
    found = find_desk_mask(photo, settings=settings, device="cpu")
    hard, soft, base = (np.asarray(image) for image in (found.hard, found.mask, plain.hard))
    assert set(np.unique(hard)) == {0, 255}
    assert hard.sum() > base.sum()
    assert (hard[base > 0] == 255).all()
    assert found.coverage > plain.coverage
    grey = (soft > 0) & (soft < 255)
    assert grey.any()
    far = _segment.grow_mask(hard > 0, 6)  # beyond blur // 2 outside the grown region
    assert (soft[~far] == 0).all()
    assert (soft[~_segment.grow_mask(hard == 0, 6)] == 255).all()


def test_a_photo_as_a_file(tiny_segformer_path: Path, tmp_path: Path) -> None:
    photo, expected = make_desk_photo(seed=3)
    path = tmp_path / "desk.png"
    photo.save(path)
    found = find_desk_mask(str(path), settings=_settings(tiny_segformer_path), device="auto")
    assert _iou(found.hard, expected) > 0.8
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    again = find_desk_mask(buffer.getvalue(), settings=_settings(tiny_segformer_path))
    assert np.array_equal(np.asarray(again.mask), np.asarray(found.mask))


def test_default_targets_the_model_lacks_are_skipped(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    for settings in (
        DeskMask(model=str(tiny_segformer_path)),
        DeskMask(model=str(tiny_segformer_path), targets=list(DEFAULT_MASK_TARGETS)),
        DeskMask.model_validate(DeskMask(model=str(tiny_segformer_path)).model_dump()),
    ):
        found = find_desk_mask(photo, settings=settings, device="cpu")
        assert "keyboard" not in found.found


def test_a_target_the_model_lacks_is_refused(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    settings = _settings(tiny_segformer_path, targets=["desk", "Keyboard", "sofa"])
    with pytest.raises(ConfigError) as caught:
        find_desk_mask(photo, settings=settings, device="cpu")
    message = str(caught.value)
    assert "'keyboard', 'sofa'" in message
    assert "book, computer, computing device" in message  # sorted, synonyms split
    assert "screen, silver screen, table, wall" in message


def test_a_synonym_matches(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    settings = _settings(tiny_segformer_path, targets=["desk", "computing machine"])
    found = find_desk_mask(photo, settings=settings, device="cpu")
    assert "desk" in found.found


def test_nothing_found_says_what_was_seen(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    settings = _settings(tiny_segformer_path, targets=["book", "plant"], on_surface=False)
    with pytest.raises(ImageInputError) as caught:
        find_desk_mask(photo, settings=settings, device="cpu")
    message = str(caught.value)
    assert "No book, plant found" in message
    assert "wall " in message
    assert "%" in message
    assert "min_area" in message
    assert "mask=" in message


def test_min_area_drops_small_parts(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    with pytest.raises(ImageInputError, match=r"at least 50\.00%"):
        find_desk_mask(photo, settings=_settings(tiny_segformer_path, min_area=0.5))
    found = find_desk_mask(photo, settings=_settings(tiny_segformer_path, min_area=0.1))
    assert set(found.found) == {"desk"}  # the monitor and the lamp are smaller than 10%


def test_shrinking_everything_away_is_refused(tiny_segformer_path: Path) -> None:
    photo, _ = make_desk_photo(seed=0)
    with pytest.raises(ImageInputError, match="shrunk away"):
        find_desk_mask(photo, settings=_settings(tiny_segformer_path, grow=-40), device="cpu")


def _label_map() -> np.ndarray:
    """A 40x60 map: wall 0, floor 1, a desk 3 with a monitor 6 on it and a speck of monitor,
    a hole of wall in the desk, a lamp 4 away from it."""
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[30:] = 1
    labels[20:35, 20:55] = 3
    labels[8:20, 25:40] = 6  # on the desk
    labels[2:4, 2:4] = 6  # a speck of 4 pixels
    labels[25:27, 45:47] = 0  # a small hole in the desk
    labels[5:38, 5:9] = 4  # a lamp across the room
    return labels


def test_select_keeps_objects_on_the_surface_and_drops_speckle() -> None:
    ids = {"desk": [3], "monitor": [6], "lamp": [4]}
    labels = _label_map()
    region, found = _segment._select(labels, ids, DeskMask(min_area=0.002))
    assert region[20:35, 20:55].all()  # the hole filled
    assert region[8:20, 25:40].all()
    assert not region[2:4, 2:4].any()  # 4 pixels: under 0.2% of 2400
    assert not region[5:38, 5:9].any()
    assert set(found) == {"desk", "monitor"}
    assert found["monitor"] == pytest.approx(12 * 15 / labels.size)
    anywhere, found = _segment._select(labels, ids, DeskMask(on_surface=False, min_area=0))
    assert anywhere[2:4, 2:4].all()
    assert anywhere[5:38, 5:9].all()
    assert not anywhere[25:27, 45:47].any()  # holes are speckle only with a min_area
    assert set(found) == {"desk", "monitor", "lamp"}


def test_segmenter_label_maps(tiny_segformer_path: Path) -> None:
    segmenter = get_segmenter(str(tiny_segformer_path), device="cpu")
    assert segmenter.labels[3] == "desk"
    assert segmenter.labels[7].startswith("screen")
    photo, _ = make_desk_photo(size=(1200, 800), seed=0)
    labels = segmenter(photo)
    assert labels.shape == (800, 1200)
    assert np.issubdtype(labels.dtype, np.integer)
    small = segmenter(photo, size=(96, 64))
    assert small.shape == (64, 96)
    assert set(np.unique(small)) <= set(segmenter.labels)


def test_the_segmenter_is_loaded_once(
    tiny_segformer_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_segmenters()
    loads: list[str] = []

    class Counting(Segmenter):
        def __init__(self, model: str, **kwargs: object) -> None:
            loads.append(model)
            time.sleep(0.2)  # both threads ask while the first load runs
            super().__init__(model, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_segment, "Segmenter", Counting)
    got: list[Segmenter] = []

    def load() -> None:
        got.append(get_segmenter(str(tiny_segformer_path), device="cpu"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert got[0] is got[1]
    assert get_segmenter(str(tiny_segformer_path), device="cpu") is got[0]
    assert get_segmenter(str(tiny_segformer_path), device="cpu", dtype="float32") is got[0]
    find_desk_mask(make_desk_photo()[0], settings=_settings(tiny_segformer_path), device="cpu")
    assert len(loads) == 1
    release_segmenters()
    with pytest.raises(GeneratorClosedError, match="release_segmenters"):
        got[0](make_desk_photo()[0])
    assert get_segmenter(str(tiny_segformer_path), device="cpu") is not got[0]
    assert len(loads) == 2


def test_a_closed_segmenter_is_loaded_again(tiny_segformer_path: Path) -> None:
    first = get_segmenter(str(tiny_segformer_path), device="cpu")
    first.close()
    assert first.closed
    second = get_segmenter(str(tiny_segformer_path), device="cpu")
    assert second is not first
    assert not second.closed


def test_pickle_weights_need_allow_pickle(tiny_segformer_path: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_segformer_path / name, folder / name)
    torch.save(load_file(tiny_segformer_path / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        get_segmenter(str(folder), device="cpu")
    segmenter = get_segmenter(str(folder), device="cpu", allow_pickle=True)
    assert segmenter.labels[3] == "desk"


def test_a_model_of_another_kind_is_refused(tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1
    )
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ModelMismatchError, match="SegFormer"):
        get_segmenter(str(tmp_path / "clip"), device="cpu")


def test_a_segmentation_type_with_another_head_is_refused(
    tiny_segformer_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "classifier"
    shutil.copytree(tiny_segformer_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["SegformerForImageClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelMismatchError, match="SegformerForImageClassification"):
        get_segmenter(str(folder), device="cpu")


def test_a_processor_without_label_maps_is_refused(
    tiny_segformer_path: Path, tmp_path: Path
) -> None:
    from transformers import CLIPImageProcessorPil

    folder = tmp_path / "clip-processor"
    shutil.copytree(tiny_segformer_path, folder)
    (folder / "preprocessor_config.json").unlink()
    CLIPImageProcessorPil().save_pretrained(folder)
    with pytest.raises(ModelMismatchError, match="post_process_semantic_segmentation"):
        get_segmenter(str(folder), device="cpu")


def test_oneformer_is_refused(tmp_path: Path) -> None:
    from transformers import OneFormerConfig

    OneFormerConfig().save_pretrained(tmp_path / "oneformer")
    with pytest.raises(ConfigError, match="OneFormer"):
        get_segmenter(str(tmp_path / "oneformer"), device="cpu")


def test_remote_code_never_runs(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {"model_type": "desk-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelMismatchError, match="custom code"):
        get_segmenter(str(folder), device="cpu")


def test_missing_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        get_segmenter(str(tmp_path / "nothing-here"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="hf download"):
        get_segmenter("deskgen-tests/no-such-segmenter", device="cpu")
    photo, _ = make_desk_photo()
    with pytest.raises(ModelNotFoundError):
        find_desk_mask(photo, settings=DeskMask(model=str(tmp_path / "nothing-here")))


def test_mask2former_loads_and_makes_label_maps(tiny_mask2former_path: Path) -> None:
    segmenter = get_segmenter(str(tiny_mask2former_path), device="cpu")
    assert type(segmenter.model).__name__ == "Mask2FormerForUniversalSegmentation"
    assert segmenter.labels[3] == "desk"
    photo, _ = make_desk_photo(size=(150, 100), seed=0)
    labels = segmenter(photo)
    assert labels.shape == (100, 150)
    assert set(np.unique(labels)) <= set(segmenter.labels)


@pytest.mark.slow
def test_the_trained_segformer_is_deterministic(tiny_segformer_path: Path, tmp_path: Path) -> None:
    from deskgen.testing._segmentation import make_tiny_segmenter

    again = make_tiny_segmenter(tmp_path / "again")
    weights = (again / "model.safetensors").read_bytes()
    assert weights == (tiny_segformer_path / "model.safetensors").read_bytes()
    assert make_tiny_segmenter(again) == again  # the marker: built already
    config = json.loads((again / "config.json").read_text())
    assert config["id2label"]["3"] == "desk"
    assert json.loads((again / "preprocessor_config.json").read_text())["size"] == {
        "height": 32,
        "width": 48,
    }


def test_an_unknown_factory_kind_is_refused(tmp_path: Path) -> None:
    from deskgen.testing._segmentation import make_tiny_segmenter

    with pytest.raises(ValueError, match="segformer"):
        make_tiny_segmenter(tmp_path / "x", kind="upernet")  # type: ignore[arg-type]


def test_an_unreadable_photo_is_refused(tiny_segformer_path: Path) -> None:
    with pytest.raises(ImageInputError):
        find_desk_mask(b"not an image", settings=_settings(tiny_segformer_path))
