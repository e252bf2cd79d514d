"""The open-vocabulary route: Grounding DINO boxes for free-text targets, SAM masks for the
boxes, and the closed-set route's shaping after them. The tiny models have random weights, so
the tests check the plumbing against transformers called by hand on the same two models and the
same photo, not what the boxes find."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from deskgen._exceptions import (
    ConfigError,
    GeneratorClosedError,
    ImageInputError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
)
from deskgen.masks import (
    DEFAULT_DETECTOR_MODEL,
    DEFAULT_MASK_TARGETS,
    DEFAULT_SAM_MODEL,
    DeskMask,
    find_desk_mask,
)
from deskgen.masks import _open_vocab as open_vocab
from deskgen.masks._open_vocab import get_box_segmenter, get_detector
from deskgen.masks._segment import get_segmenter, release_segmenters
from deskgen.testing._segmentation import make_desk_photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHRASES = ["desk", "cables"]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_desk_photo(seed=0)[0]


def _settings(detector: Path, sam: Path, **fields: Any) -> DeskMask:
    base: dict[str, Any] = {
        "route": "open-vocabulary",
        "model": str(detector),
        "sam_model": str(sam),
        "targets": PHRASES,
        "box_threshold": 0.0,
        "text_threshold": 0.0,
        "min_area": 0.0,
        "grow": 0,
        "blur": 0,
    }
    return DeskMask(**{**base, **fields})


class ByHand:
    """Grounding DINO and SAM called as transformers' documentation calls them, nothing of
    deskgen's: every box over 0, one SAM mask each at the photo's size."""

    def __init__(self, detector: Path, sam: Path, photo: Image.Image, phrases: list[str]) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel

        gd = AutoModelForZeroShotObjectDetection.from_pretrained(detector).eval()
        gd_processor = AutoProcessor.from_pretrained(detector, backend="pil")
        text = ". ".join(phrases) + "."
        inputs = gd_processor(images=photo, text=text, return_tensors="pt")
        with torch.no_grad():
            outputs = gd(**inputs)
        result = gd_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=0.0,
            text_threshold=0.0,
            target_sizes=[(photo.height, photo.width)],
        )[0]
        self.boxes: list[list[float]] = result["boxes"].tolist()
        self.scores: list[float] = result["scores"].tolist()
        self.input_ids: list[int] = inputs["input_ids"][0].tolist()
        self.probs = torch.sigmoid(outputs.logits[0])
        sam_model = SamModel.from_pretrained(sam).eval()
        sam_processor = AutoProcessor.from_pretrained(sam, backend="pil")
        sam_inputs = sam_processor(images=photo, input_boxes=[self.boxes], return_tensors="pt")
        with torch.no_grad():
            sam_outputs = sam_model(**sam_inputs, multimask_output=False)
        masks = sam_processor.post_process_masks(
            sam_outputs.pred_masks, sam_inputs["original_sizes"], sam_inputs["reshaped_input_sizes"]
        )[0]
        self.masks: np.ndarray = masks[:, 0].numpy()

    def phrases(self, positions: list[int], phrases: list[str]) -> list[str]:
        """Each box's phrase: the one whose token (at ``positions``) is the most probable."""
        best = self.probs[:, positions].argmax(dim=-1).tolist()
        return [phrases[index] for index in best]

    def union(self, labels: list[str] | None = None, phrase: str | None = None) -> np.ndarray:
        chosen = [
            mask
            for mask, label in zip(self.masks, labels or [""] * len(self.masks), strict=True)
            if phrase is None or label == phrase
        ]
        return np.logical_or.reduce([np.zeros(self.masks.shape[1:], dtype=bool), *chosen])


@pytest.fixture(scope="module")
def by_hand(tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image) -> ByHand:
    return ByHand(tiny_grounding_dino_path, tiny_sam_path, photo, PHRASES)


# --- the detector ------------------------------------------------------------------------


def test_the_prompt_and_its_phrases(tiny_grounding_dino_path: Path) -> None:
    detector = get_detector(str(tiny_grounding_dino_path), device="cpu")
    phrases = ["desk", "crt screen", "teapot"]
    text = detector.prompt(phrases)
    assert text == "desk. crt screen. teapot."
    ids = detector.processor.tokenizer(text)["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102  # BERT's [CLS] and [SEP]: Grounding DINO's ids
    spans = detector.spans(ids)
    assert [len(span) for span in spans] == [1, 2, 6]  # "teapot": t ##e ##a ##p ##o ##t
    assert spans[0] == [1]
    assert detector.prompt(["Desk", "  crt   screen "]) == "desk. crt screen."


def test_boxes_for_the_phrases(
    tiny_grounding_dino_path: Path, photo: Image.Image, by_hand: ByHand
) -> None:
    detector = get_detector(str(tiny_grounding_dino_path), device="cpu")
    assert type(detector.model).__name__ == "GroundingDinoForObjectDetection"
    detections = detector(photo, PHRASES, box_threshold=0.0, text_threshold=0.0)
    assert len(detections) == len(by_hand.boxes) == 6  # one per query of the tiny model
    assert all(detection.kept for detection in detections)
    scores = [detection.score for detection in detections]
    assert scores == sorted(scores, reverse=True)
    order = np.argsort(-np.asarray(by_hand.scores), kind="stable")
    assert scores == pytest.approx([by_hand.scores[i] for i in order])
    for detection, index in zip(detections, order, strict=True):
        assert detection.box == pytest.approx(by_hand.boxes[index])
    labels = by_hand.phrases([1, 3], PHRASES)  # [CLS] desk . cables . [SEP]
    assert [detection.phrase for detection in detections] == [labels[i] for i in order]
    assert {detection.phrase for detection in detections} == set(PHRASES)  # both labelled
    for detection in detections:
        assert 0.0 <= detection.phrase_score <= detection.score <= 1.0


def test_thresholds_keep_fewer_boxes(tiny_grounding_dino_path: Path, photo: Image.Image) -> None:
    detector = get_detector(str(tiny_grounding_dino_path), device="cpu")
    every = detector(photo, PHRASES, box_threshold=0.0, text_threshold=0.0)
    scores = sorted(detection.score for detection in every)
    middle = (scores[2] + scores[3]) / 2
    some = detector(photo, PHRASES, box_threshold=middle, text_threshold=0.0)
    assert [d.kept for d in some] == [True, True, True, False, False, False]
    assert [d.box is None for d in some] == [False, False, False, True, True, True]
    assert [d.phrase for d in some] == [d.phrase for d in every]  # the same labels
    text = sorted(detection.phrase_score for detection in every)[3]
    worded = detector(photo, PHRASES, box_threshold=0.0, text_threshold=text)
    assert [d.kept for d in worded] == [d.phrase_score > text for d in every]
    assert not any(d.kept for d in detector(photo, PHRASES, box_threshold=1.0, text_threshold=0))


def test_too_many_targets_for_the_prompt(tiny_grounding_dino_path: Path) -> None:
    detector = get_detector(str(tiny_grounding_dino_path), device="cpu")
    photo = make_desk_photo()[0]
    targets = [f"thing {letter}" for letter in "abcdefghijklmnopqrstuvwxyz"]
    with pytest.raises(ConfigError, match=r"more than the detector .* reads \(64\)"):
        detector(photo, targets, box_threshold=0.3, text_threshold=0.25)


# --- SAM -----------------------------------------------------------------------------------


def test_sam_masks_for_boxes(tiny_sam_path: Path, photo: Image.Image, by_hand: ByHand) -> None:
    sam = get_box_segmenter(str(tiny_sam_path), device="cpu")
    assert type(sam.model).__name__ == "SamModel"
    boxes = [(b[0], b[1], b[2], b[3]) for b in by_hand.boxes]
    masks = sam(photo, boxes)
    assert masks.dtype == bool
    assert masks.shape == (6, photo.height, photo.width)
    assert np.array_equal(masks, by_hand.masks)
    assert 0 < by_hand.union().mean() < 0.8  # neither empty nor the whole photo
    assert sam(photo, [], size=(40, 30)).shape == (0, 30, 40)
    many = sam(photo, boxes * 3)  # more boxes than the mask decoder takes at once
    assert np.array_equal(many, np.concatenate([by_hand.masks] * 3))


def test_a_photo_over_the_input_side_is_scaled_with_its_boxes(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path
) -> None:
    big = make_desk_photo(size=(1200, 800), seed=0)[0]
    seen = big.resize((1024, 683), Image.Resampling.BILINEAR)  # what the models are given
    detector = get_detector(str(tiny_grounding_dino_path), device="cpu")
    on_big = detector(big, PHRASES, box_threshold=0.0, text_threshold=0.0)
    on_seen = detector(seen, PHRASES, box_threshold=0.0, text_threshold=0.0)
    for large, small in zip(on_big, on_seen, strict=True):
        assert large.box is not None and small.box is not None
        x, y = 1200 / 1024, 800 / 683
        assert large.box == pytest.approx(
            (small.box[0] * x, small.box[1] * y, small.box[2] * x, small.box[3] * y)
        )
    sam = get_box_segmenter(str(tiny_sam_path), device="cpu")
    boxes = [d.box for d in on_big if d.box]
    small_boxes = [d.box for d in on_seen if d.box]
    assert np.array_equal(sam(big, boxes, size=(96, 64)), sam(seen, small_boxes, size=(96, 64)))


# --- the route -----------------------------------------------------------------------------


def test_one_target_is_the_union_of_its_masks(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image
) -> None:
    settings = _settings(tiny_grounding_dino_path, tiny_sam_path, targets=["desk"])
    found = find_desk_mask(photo, settings=settings, device="cpu")
    alone = ByHand(tiny_grounding_dino_path, tiny_sam_path, photo, ["desk"])
    expected = alone.union()
    assert found.hard.size == found.mask.size == photo.size
    assert np.array_equal(np.asarray(found.hard) > 0, expected)
    assert set(np.unique(np.asarray(found.hard))) <= {0, 255}
    assert np.array_equal(np.asarray(found.mask), np.asarray(found.hard))  # blur 0
    assert found.found == {"desk": pytest.approx(expected.mean())}
    assert found.coverage == pytest.approx(expected.mean())
    assert found.settings.model == str(tiny_grounding_dino_path)
    assert found.settings.sam_model == str(tiny_sam_path)
    assert found.settings.route == "open-vocabulary"


def test_each_target_is_the_union_of_its_boxes_masks(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image, by_hand: ByHand
) -> None:
    settings = _settings(tiny_grounding_dino_path, tiny_sam_path, on_surface=False)
    found = find_desk_mask(photo, settings=settings, device="cpu")
    labels = by_hand.phrases([1, 3], PHRASES)
    region = np.asarray(found.hard) > 0
    assert np.array_equal(region, by_hand.union())
    assert found.found["desk"] == pytest.approx(by_hand.union(labels, "desk").mean())
    assert found.found["cables"] == pytest.approx(by_hand.union(labels, "cables").mean())
    assert found.coverage < found.found["desk"] + found.found["cables"]  # they overlap


def test_objects_on_a_surface(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image, by_hand: ByHand
) -> None:
    """The closed-set route's selection after the masks: cables count where they touch the
    desk's region (grown by 2 pixels), the parts of them that don't are left out."""
    from deskgen.masks._segment import _kept
    from deskgen.masks._shape import grow_mask

    found = find_desk_mask(
        photo, settings=_settings(tiny_grounding_dino_path, tiny_sam_path), device="cpu"
    )
    labels = by_hand.phrases([1, 3], PHRASES)
    desk, cables = by_hand.union(labels, "desk"), by_hand.union(labels, "cables")
    touching = _kept(cables & ~desk, 0, near=grow_mask(desk, 2))
    assert np.array_equal(np.asarray(found.hard) > 0, desk | touching)


def test_grow_feather_and_min_area_as_on_the_closed_set_route(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image, by_hand: ByHand
) -> None:
    settings = _settings(tiny_grounding_dino_path, tiny_sam_path, on_surface=False)
    plain = np.asarray(find_desk_mask(photo, settings=settings, device="cpu").hard) > 0
    shaped = find_desk_mask(
        photo, settings=settings.model_copy(update={"grow": 3, "blur": 4}), device="cpu"
    )
    hard = np.asarray(shaped.hard) > 0
    assert hard.sum() > plain.sum()
    assert (hard[plain]).all()
    soft = np.asarray(shaped.mask)
    assert ((soft > 0) & (soft < 255)).any()
    with pytest.raises(ImageInputError, match=r"at least 90\.00%"):
        find_desk_mask(photo, settings=settings.model_copy(update={"min_area": 0.9}), device="cpu")


def test_a_large_photo_gets_a_mask_at_its_size(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path
) -> None:
    big = make_desk_photo(size=(1200, 800), seed=0)[0]
    settings = _settings(tiny_grounding_dino_path, tiny_sam_path, on_surface=False, grow=8)
    found = find_desk_mask(big, settings=settings, device="cpu")
    assert found.mask.size == found.hard.size == (1200, 800)
    assert 0 < found.coverage < 1


def test_targets_are_free_text(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image
) -> None:
    names = ["cables", "keyboard", "mouse", "teapot"]  # no class list to be refused by
    settings = _settings(tiny_grounding_dino_path, tiny_sam_path, targets=names)
    found = find_desk_mask(photo, settings=settings, device="cpu")
    assert found.found
    assert set(found.found) <= set(names)
    default = DeskMask(
        route="open-vocabulary",
        model=str(tiny_grounding_dino_path),
        sam_model=str(tiny_sam_path),
        box_threshold=0.0,
        text_threshold=0.0,
        on_surface=False,
    )
    everything = find_desk_mask(photo, settings=default, device="cpu")  # all 15 looked for
    assert everything.found
    assert set(everything.found) <= set(DEFAULT_MASK_TARGETS)


def test_high_thresholds_say_what_was_detected(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, photo: Image.Image
) -> None:
    strict = _settings(tiny_grounding_dino_path, tiny_sam_path, box_threshold=1.0)
    with pytest.raises(ImageInputError) as caught:
        find_desk_mask(photo, settings=strict, device="cpu")
    message = str(caught.value)
    assert "No desk, cables found in the photo" in message
    assert "kept 0 of its 6 boxes" in message
    assert "box_threshold=1" in message
    assert "(phrase" not in message  # every box under box_threshold
    listed = message.split("its best: ")[1].split(". Lower")[0].split(", ")
    assert len(listed) == 5
    assert all(item.split()[0] in PHRASES for item in listed)
    assert all(0 <= float(item.split()[1]) <= 1 for item in listed)
    assert "mask=" in message
    wordless = _settings(tiny_grounding_dino_path, tiny_sam_path, text_threshold=1.0)
    with pytest.raises(ImageInputError, match=r"text_threshold=1\)") as caught:
        find_desk_mask(photo, settings=wordless, device="cpu")
    assert "(phrase 0." in str(caught.value) or "(phrase 1." in str(caught.value)


# --- loading -------------------------------------------------------------------------------


def test_models_are_loaded_once_and_shared(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_segmenters()
    loads: list[str] = []

    class Counting(open_vocab.Detector):
        def __init__(self, model: str, **kwargs: Any) -> None:
            loads.append(model)
            time.sleep(0.2)  # both threads ask while the first load runs
            super().__init__(model, **kwargs)

    monkeypatch.setattr(open_vocab, "Detector", Counting)
    got: list[open_vocab.Detector] = []

    def load() -> None:
        got.append(get_detector(str(tiny_grounding_dino_path), device="cpu"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert got[0] is got[1]
    assert get_detector(str(tiny_grounding_dino_path), device="cpu", dtype="float32") is got[0]
    sam = get_box_segmenter(str(tiny_sam_path), device="cpu")
    assert get_box_segmenter(str(tiny_sam_path), device="cpu") is sam
    photo = make_desk_photo()[0]
    find_desk_mask(photo, settings=_settings(tiny_grounding_dino_path, tiny_sam_path))
    assert len(loads) == 1
    release_segmenters()  # both routes' models, one cache
    assert got[0].closed and sam.closed
    with pytest.raises(GeneratorClosedError, match="release_segmenters"):
        got[0](photo, PHRASES, box_threshold=0.3, text_threshold=0.25)
    with pytest.raises(GeneratorClosedError, match="get_box_segmenter"):
        sam(photo, [(0.0, 0.0, 10.0, 10.0)])
    assert get_detector(str(tiny_grounding_dino_path), device="cpu") is not got[0]
    assert len(loads) == 2


def test_a_folder_of_the_wrong_kind_is_refused(
    tiny_grounding_dino_path: Path,
    tiny_sam_path: Path,
    tiny_segformer_path: Path,
    photo: Image.Image,
) -> None:
    with pytest.raises(ModelMismatchError, match=r"SAM model: give it as sam_model="):
        get_detector(str(tiny_sam_path), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"route='closed-set'"):
        get_detector(str(tiny_segformer_path), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"not a SAM model .* a detector: give it as"):
        get_box_segmenter(str(tiny_grounding_dino_path), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"route='open-vocabulary'"):
        get_segmenter(str(tiny_grounding_dino_path), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"sam_model=\.\.\."):
        get_segmenter(str(tiny_sam_path), device="cpu")
    swapped = _settings(tiny_sam_path, tiny_grounding_dino_path)
    with pytest.raises(ModelMismatchError):
        find_desk_mask(photo, settings=swapped, device="cpu")
    closed_set = DeskMask(model=str(tiny_grounding_dino_path))
    with pytest.raises(ModelMismatchError, match="zero-shot object detector"):
        find_desk_mask(photo, settings=closed_set, device="cpu")


def test_other_models_are_refused(tmp_path: Path, tiny_grounding_dino_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1
    )
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ModelMismatchError, match="Grounding DINO"):
        get_detector(str(tmp_path / "clip"), device="cpu")
    with pytest.raises(ModelMismatchError, match="facebook/sam-vit-base"):
        get_box_segmenter(str(tmp_path / "clip"), device="cpu")
    folder = tmp_path / "backbone-only"
    shutil.copytree(tiny_grounding_dino_path, folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["architectures"] = ["GroundingDinoModel"]
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelMismatchError, match="GroundingDinoModel, not of a Grounding"):
        get_detector(str(folder), device="cpu")


def test_mm_grounding_dino_runs_too(
    tmp_path: Path, tiny_sam_path: Path, photo: Image.Image
) -> None:
    from deskgen.testing._segmentation import make_tiny_segmenter

    path = make_tiny_segmenter(tmp_path / "mm", kind="mm-grounding-dino")
    detector = get_detector(str(path), device="cpu")
    assert type(detector.model).__name__ == "MMGroundingDinoForObjectDetection"
    found = find_desk_mask(photo, settings=_settings(path, tiny_sam_path, on_surface=False))
    assert set(found.found) <= set(PHRASES)


def test_missing_models(tmp_path: Path, tiny_grounding_dino_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"No detector folder with a config\.json"):
        get_detector(str(tmp_path / "nothing-here"), device="cpu")
    with pytest.raises(ModelNotFoundError, match=r"No SAM model folder with a config\.json"):
        get_box_segmenter(str(tmp_path / "nothing-here"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="hf download"):
        get_detector("deskgen-tests/no-such-detector", device="cpu")
    with pytest.raises(ModelNotFoundError, match="hf download"):
        get_box_segmenter("deskgen-tests/no-such-sam", device="cpu")
    photo = make_desk_photo()[0]
    # the defaults, from an empty cache (offline): named in the error; SAM is loaded even
    # when no box would reach it
    empty = str(tmp_path / "empty-cache")
    with pytest.raises(ModelNotFoundError, match=DEFAULT_DETECTOR_MODEL):
        find_desk_mask(photo, settings=DeskMask(route="open-vocabulary"), cache_dir=empty)
    only_detector = DeskMask(
        route="open-vocabulary", model=str(tiny_grounding_dino_path), box_threshold=1.0
    )
    with pytest.raises(ModelNotFoundError, match=DEFAULT_SAM_MODEL):
        find_desk_mask(photo, settings=only_detector, cache_dir=empty)


@pytest.mark.parametrize("which", ["detector", "sam"])
def test_pickle_weights_need_allow_pickle(
    which: str, tiny_grounding_dino_path: Path, tiny_sam_path: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    source = tiny_grounding_dino_path if which == "detector" else tiny_sam_path
    get = get_detector if which == "detector" else get_box_segmenter
    folder = tmp_path / "pickled"
    folder.mkdir()
    for path in source.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, folder / path.name)
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        get(str(folder), device="cpu")  # type: ignore[operator]
    loaded = get(str(folder), device="cpu", allow_pickle=True)  # type: ignore[operator]
    assert not loaded.closed


def test_remote_code_never_runs(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {"model_type": "desk-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelMismatchError, match="custom code"):
        get_detector(str(folder), device="cpu")
    with pytest.raises(ModelMismatchError, match="custom code"):
        get_box_segmenter(str(folder), device="cpu")


def test_the_tiny_models_are_deterministic(
    tiny_grounding_dino_path: Path, tiny_sam_path: Path, tmp_path: Path
) -> None:
    from deskgen.testing._segmentation import make_tiny_segmenter

    from .conftest import GROUNDING_DINO_SEED, SAM_SEED

    for kind, seed, built in (
        ("grounding-dino", GROUNDING_DINO_SEED, tiny_grounding_dino_path),
        ("sam", SAM_SEED, tiny_sam_path),
    ):
        again = make_tiny_segmenter(tmp_path / kind, kind=kind, seed=seed)  # type: ignore[arg-type]
        weights = (again / "model.safetensors").read_bytes()
        assert weights == (built / "model.safetensors").read_bytes()
        assert make_tiny_segmenter(again, kind=kind, seed=seed) == again  # type: ignore[arg-type]
    tokenizer = json.loads((tiny_grounding_dino_path / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."], vocab["?"]) == (101, 102, 1012, 1029)
    assert {"desk", "cables", "keyboard", "mouse", "##t"} <= set(vocab)


# --- settings and the command line ------------------------------------------------------


def test_the_route_settings() -> None:
    settings = DeskMask()
    assert settings.route == "closed-set"
    assert settings.sam_model is None
    assert (settings.box_threshold, settings.text_threshold) == (0.3, 0.25)
    assert DEFAULT_DETECTOR_MODEL == "IDEA-Research/grounding-dino-tiny"
    assert DEFAULT_SAM_MODEL == "facebook/sam-vit-base"
    open_route = DeskMask(route="open-vocabulary", targets=["Cables", "mug"], box_threshold=0)
    assert open_route.targets == ("cables", "mug")
    assert open_route.box_threshold == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"sam_model": "facebook/sam-vit-base"},
        {"box_threshold": 0.4},
        {"text_threshold": 0.1},
    ],
    ids=["sam_model", "box_threshold", "text_threshold"],
)
def test_open_vocabulary_fields_need_the_route(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=f"{next(iter(fields))} belong to route="):
        DeskMask(**fields)
    DeskMask(route="open-vocabulary", **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"route": "semantic"},
        {"route": None},
        {"route": "open-vocabulary", "box_threshold": 1.5},
        {"route": "open-vocabulary", "text_threshold": -0.1},
        {"route": "open-vocabulary", "box_threshold": "0.3"},
        {"route": "open-vocabulary", "sam_model": 3},
        {"route": "open-vocabulary", "targets": ["desk. lamp"]},
        {"route": "open-vocabulary", "targets": ["a lamp?"]},
    ],
)
def test_bad_route_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeskMask(**fields)


@pytest.mark.parametrize(
    "settings",
    [
        DeskMask(),
        DeskMask(targets=["desk"], model="some/segmenter"),
        DeskMask(
            route="open-vocabulary",
            targets=["desk", "cables"],
            model="some/detector",
            revision="main",
            sam_model="some/sam",
            box_threshold=0.2,
            text_threshold=0.2,
        ),
    ],
    ids=["defaults", "closed-set", "open-vocabulary"],
)
def test_json_round_trip(settings: DeskMask) -> None:
    data = settings.model_dump(mode="json")
    again = DeskMask.model_validate(json.loads(json.dumps(data)))
    assert again == settings
    assert DeskMask.model_validate_json(settings.model_dump_json()) == settings


def test_the_command_line_options() -> None:
    from deskgen.cli.mask import (
        _add_shape_options,
        add_mask_options,
        desk_mask_settings,
        mask_fields,
    )

    parser = argparse.ArgumentParser()
    _add_shape_options(parser.add_argument_group("mask"), prefix="")
    args = parser.parse_args(
        ["--route", "open-vocabulary", "--sam-model", "some/sam", "--target", "Cables"]
    )
    settings = desk_mask_settings(args, prefix="")
    assert settings == DeskMask(route="open-vocabulary", sam_model="some/sam", targets=["cables"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--route", "semantic"])
    lone = parser.parse_args(["--sam-model", "some/sam"])
    with pytest.raises(ConfigError, match="sam-model belong to route='open-vocabulary'"):
        desk_mask_settings(lone, prefix="")
    generate = argparse.ArgumentParser()
    add_mask_options(generate)
    fields = mask_fields(generate.parse_args(["--mask-route", "open-vocabulary"]))
    assert fields["mask"] == DeskMask(route="open-vocabulary")
    with pytest.raises(ConfigError, match="--mask-sam-model"):
        mask_fields(generate.parse_args(["--mask", "m.png", "--mask-sam-model", "x/y"]))
