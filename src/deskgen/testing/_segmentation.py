"""Tiny segmentation models in the ``save_pretrained`` layout, and synthetic desk photos whose
desk region is known: what `deskgen.masks.find_desk_mask` is tested on.

```python
from deskgen.testing import make_desk_photo, make_tiny_segmenter
path = make_tiny_segmenter(tmp_path / "tiny-segformer")  # trained for a few seconds
photo, expected = make_desk_photo(seed=3)
found = find_desk_mask(photo, settings=DeskMask(model=str(path), grow=0, blur=0))
```

The SegFormer is *trained* on the synthetic photos (on the CPU, one thread, a fixed seed, a few
seconds), so its label maps are right: a test can check that the mask covers the drawn desk.
The Mask2Former has random weights: it tests the universal-segmentation loading and
post-processing path, not the answer. So do the open-vocabulary route's Grounding DINO (a tiny
Swin, a tiny BERT and a WordPiece vocabulary of desk words with BERT's special-token ids) and
SAM: their boxes and masks are random, their plumbing is the real one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from ._common import _MARKER, _built, _require_local

if TYPE_CHECKING:
    import numpy as np

__all__ = ["make_desk_photo", "make_tiny_segmenter"]

_LABELS: dict[int, str] = {
    0: "wall",
    1: "floor",
    2: "table",
    3: "desk",
    4: "lamp",
    5: "computer, computing machine, computing device, data processor",
    6: "monitor",
    7: "screen, silver screen, projection screen",
    8: "book",
    9: "plant, flora, plant life",
}
"""The tiny models' classes (``id2label``), worded as ADE20K words them, synonyms and all.
The trained SegFormer has seen wall, floor, desk, lamp and monitor."""

_WALL, _FLOOR, _DESK, _LAMP, _MONITOR = 0, 1, 3, 4, 6

_TRAIN_SEEDS = range(1_000_000, 1_000_048)
"""The photos the tiny SegFormer is trained on: ``make_desk_photo(seed=...)`` with any seed
outside this range is one it has not seen."""

_TRAIN_SIZE = (96, 64)
_MODEL_SIZE = (48, 32)
"""What the tiny SegFormer sees: its image processor's size (width, height)."""
_STEPS, _BATCH, _LR = 80, 8, 2e-2
"""AdamW steps, photos a step and learning rate: every seed tried gives held-out IoUs over
0.85 (fewer steps or a larger rate do not, for some seeds)."""


def _scene(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB desk photo (uint8, H x W x 3) and its class map (H x W) for ``seed``.

    A wall above a floor, a brown desk on one side, a dark monitor and a yellow lamp standing
    on the desk, and a yellow floor lamp on the other side of the room, away from the desk."""
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    labels = np.full((height, width), _WALL, dtype=np.int64)
    colours = {
        _WALL: rng.integers([185, 180, 165], [235, 230, 220]),
        _FLOOR: rng.integers([70, 80, 95], [110, 120, 140]),
        _DESK: rng.integers([120, 65, 25], [160, 95, 50]),
        _MONITOR: rng.integers([10, 10, 15], [45, 45, 55]),
        _LAMP: rng.integers([225, 195, 60], [255, 230, 120]),
    }

    def box(x0: float, y0: float, x1: float, y1: float, label: int) -> None:
        labels[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = (
            label
        )

    horizon = rng.uniform(0.5, 0.62)
    box(0, horizon, 1, 1, _FLOOR)
    desk_width = rng.uniform(0.45, 0.58)
    left = rng.uniform(0.32, 0.97 - desk_width)  # the desk on the right, the floor lamp left
    desk_top = rng.uniform(0.52, 0.62)
    box(left, desk_top, left + desk_width, rng.uniform(0.86, 0.94), _DESK)
    monitor_width = rng.uniform(0.2, 0.28)
    monitor_left = left + rng.uniform(0.03, desk_width - monitor_width - 0.12)
    box(
        monitor_left,
        desk_top - rng.uniform(0.24, 0.32),
        monitor_left + monitor_width,
        desk_top,
        _MONITOR,
    )
    lamp_left = monitor_left + monitor_width + rng.uniform(0.03, 0.06)
    box(lamp_left, desk_top - rng.uniform(0.16, 0.22), lamp_left + 0.06, desk_top, _LAMP)
    floor_lamp = rng.uniform(0.04, left - 0.2)
    box(floor_lamp, rng.uniform(0.12, 0.22), floor_lamp + 0.06, rng.uniform(0.88, 0.95), _LAMP)
    if rng.random() < 0.5:  # mirrored: the desk on the left
        labels = labels[:, ::-1].copy()
    palette = np.zeros((max(colours) + 1, 3), dtype=np.int64)
    for label, colour in colours.items():
        palette[label] = colour
    noise = rng.integers(-8, 9, size=(height, width, 3))
    pixels = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)
    return pixels, labels


def make_desk_photo(
    *, size: tuple[int, int] = (96, 64), seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """A synthetic desk photo (RGB, ``size`` as ``(width, height)``) and the region a desk mask
    should cover: the desk and the monitor and lamp standing on it, white (255) on black (0),
    an ``L`` image. The floor lamp across the room is not in it. Positions and colours vary
    with ``seed``; the same seed gives the same pixels."""
    import numpy as np

    pixels, labels = _scene(size, seed)
    desk = labels == _DESK
    on_desk = np.isin(labels, (_MONITOR, _LAMP))
    # the floor lamp is the lamp whose columns never meet the desk's
    columns = desk.any(axis=0)
    start, stop = np.flatnonzero(columns)[[0, -1]]
    on_desk[:, :start] = False
    on_desk[:, stop + 1 :] = False
    expected = ((desk | on_desk) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), Image.fromarray(expected, "L")


def make_tiny_segmenter(
    path: str | os.PathLike[str],
    *,
    kind: Literal[
        "segformer", "mask2former", "sample", "grounding-dino", "mm-grounding-dino", "sam"
    ] = "segformer",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a tiny segmentation model with its processor to ``path``, in the
    ``save_pretrained`` layout (``config.json``, ``model.safetensors``, the processor's files;
    the semantic-segmentation kinds with ADE20K-style ``id2label``).

    ``kind="segformer"``: a two-stage SegFormer *trained* on `make_desk_photo` scenes (wall,
    floor, desk, monitor, lamp), deterministic for a ``seed``, a few seconds on a CPU.
    ``kind="mask2former"``: a random-weight Mask2Former with a tiny Swin backbone, for the
    universal-segmentation path (its label maps mean nothing). ``kind="sample"``: the same
    SegFormer trained on the sample desk photo (`deskgen.demo.sample_desk_photo`) and its label
    map, so that the offline demo finds that desk (it has seen nothing else).
    ``kind="grounding-dino"`` (or ``"mm-grounding-dino"``): a random-weight zero-shot detector
    with its ``GroundingDinoProcessor`` (a tiny BERT tokenizer that knows the desk words and
    `DEFAULT_MASK_TARGETS`, spelling others letter by letter), six queries. ``kind="sam"``: a
    random-weight ``SamModel`` (a 64-pixel ViT) with its ``SamProcessor``. Random weights give
    random boxes and masks: they test the open-vocabulary route's plumbing. A folder already
    holding the same build is reused unless ``overwrite``."""
    _require_local()
    target = Path(path)
    spec = {"kind": f"segmenter-{kind}", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    if kind == "segformer":
        model, processor = _trained_segformer(seed)
    elif kind == "sample":
        model, processor = _trained_segformer(seed, sample=True)
    elif kind == "mask2former":
        model, processor = _random_mask2former(seed)
    elif kind in ("grounding-dino", "mm-grounding-dino"):
        model, processor = _random_grounding_dino(seed, mm=kind == "mm-grounding-dino")
    elif kind == "sam":
        model, processor = _random_sam(seed)
    else:
        raise ValueError(
            f"Unknown kind {kind!r}: use 'segformer', 'mask2former', 'sample', "
            "'grounding-dino', 'mm-grounding-dino' or 'sam'."
        )
    from .._quiet import quiet_loading

    with quiet_loading(("transformers",)):  # no "Writing model shards" bar
        model.save_pretrained(target)
        processor.save_pretrained(target)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


_SAMPLE_SIZE = (128, 96)
"""What the sample-trained SegFormer sees (the sample photo is 4:3)."""
_SAMPLE_CROPS = 24
_SAMPLE_STEPS = 150


def _sample_scenes(seed: int) -> tuple[list[Image.Image], np.ndarray, dict[int, str]]:
    """Crops of the sample desk photo and of its label map (the whole photo, mirrored, and
    random crops of 70-100% of each side), at `_SAMPLE_SIZE`, with the label names."""
    import numpy as np

    from ..demo import sample_desk_labels, sample_desk_photo

    labels_image, names = sample_desk_labels()
    with Image.open(sample_desk_photo()) as opened:
        photo = opened.convert("RGB")
    rng = np.random.default_rng(seed)
    photos, maps = [], []
    for i in range(_SAMPLE_CROPS):
        if i < 2:
            box = (0, 0, photo.width, photo.height)
        else:
            w = int(photo.width * rng.uniform(0.7, 1.0))
            h = int(photo.height * rng.uniform(0.7, 1.0))
            x, y = (
                int(rng.integers(0, photo.width - w + 1)),
                int(rng.integers(0, photo.height - h + 1)),
            )
            box = (x, y, x + w, y + h)
        crop = photo.resize(_SAMPLE_SIZE, Image.Resampling.BILINEAR, box=box)
        labels = labels_image.resize(_SAMPLE_SIZE, Image.Resampling.NEAREST, box=box)
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            labels = labels.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        photos.append(crop)
        maps.append(np.asarray(labels, dtype=np.int64))
    return photos, np.stack(maps), dict(enumerate(names))


def _trained_segformer(seed: int, *, sample: bool = False) -> tuple[Any, Any]:
    import numpy as np
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers.models.segformer.image_processing_pil_segformer import (
        SegformerImageProcessorPil,
    )

    id2label = dict(_LABELS)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[4, 2],
        hidden_sizes=[8, 16],
        patch_sizes=[3, 3],
        strides=[2, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    steps = _STEPS
    if sample:
        photos, label_maps, id2label = _sample_scenes(seed)
        config.num_labels, config.id2label = len(id2label), id2label
        config.label2id = {name: index for index, name in id2label.items()}
        width, height = _SAMPLE_SIZE
        steps = _SAMPLE_STEPS
    else:
        scenes = [_scene(_TRAIN_SIZE, train_seed) for train_seed in _TRAIN_SEEDS]
        photos = [Image.fromarray(pixels, "RGB") for pixels, _ in scenes]
        label_maps = np.stack([classes for _, classes in scenes])
        width, height = _MODEL_SIZE
    processor = SegformerImageProcessorPil(size={"height": height, "width": width})
    images = processor(images=photos, return_tensors="pt")["pixel_values"]
    labels = torch.from_numpy(label_maps)
    threads = torch.get_num_threads()
    # one thread: the same weights on every machine, and faster (on a model this small more
    # threads only wait on each other)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SegformerForSemanticSegmentation(config)
            model.train()
            optimiser = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=0.0)
            order = torch.Generator().manual_seed(seed)
            for _ in range(steps):
                batch = torch.randint(len(photos), (_BATCH,), generator=order)
                loss = model(pixel_values=images[batch], labels=labels[batch]).loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), processor


def _random_mask2former(seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import (
        Mask2FormerImageProcessorPil,
    )

    id2label = dict(_LABELS)
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,  # GroupNorm(32) in the pixel decoder: no narrower
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=8,
        common_stride=4,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = Mask2FormerImageProcessorPil(
        size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32, ignore_index=255
    )
    return model, processor


_BERT_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
_BERT_DELIMITERS = {".": 1012, "?": 1029}
"""BERT's ids for its special tokens and for the phrase delimiters: Grounding DINO's text masks
are built from these very ids (``SPECIAL_TOKENS`` in its modeling file), so a tiny vocabulary
must keep them where BERT has them."""


def _tiny_bert_tokenizer() -> Any:
    """A WordPiece BERT tokenizer of the desk words, the default mask targets' words, the
    letters (``a``, ``##a``...) so any word is spelt, at BERT's special-token ids."""
    from transformers import BertTokenizer

    from ..masks._settings import DEFAULT_MASK_TARGETS
    from ._common import _CORPUS

    words = sorted(
        {word for line in (*_CORPUS, *DEFAULT_MASK_TARGETS) for word in re.findall("[a-z]+", line)}
    )
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    pieces = [*words, *letters, *(f"##{letter}" for letter in letters), ",", "!", "-"]
    size = max(_BERT_DELIMITERS.values()) + 1 + len(pieces)
    tokens = [f"[unused{index}]" for index in range(size)]
    for token, index in {**_BERT_SPECIAL, **_BERT_DELIMITERS}.items():
        tokens[index] = token
    start = max(_BERT_DELIMITERS.values()) + 1
    tokens[start:] = pieces
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def _random_grounding_dino(seed: int, *, mm: bool = False) -> tuple[Any, Any]:
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tokenizer = _tiny_bert_tokenizer()
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    config_class: Any = MMGroundingDinoConfig if mm else GroundingDinoConfig
    model_class: Any = MMGroundingDinoForObjectDetection if mm else GroundingDinoForObjectDetection
    config = config_class(
        backbone_config=backbone,
        text_config=text,
        num_queries=6,
        d_model=32,  # GroupNorm(32) in the input projections: no narrower
        encoder_layers=1,
        decoder_layers=2,  # the tied box heads are named from the second layer on
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _random_sam(seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    side, patch = 64, 8
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=side,
            patch_size=patch,
            window_size=4,
            global_attn_indexes=[0],
            num_pos_feats=8,
            mlp_dim=32,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=side, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16,
            mlp_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=16,
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(config).eval()
    image_processor = SamImageProcessorPil(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": side // 4},
        mask_pad_size={"height": side // 4, "width": side // 4},
    )
    return model, SamProcessor(image_processor=image_processor)
