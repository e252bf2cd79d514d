"""The quality columns: edge SSIM and the CLIP score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from deskgen.bench import ClipScorer, edge_ssim, masked_edge_ssim
from deskgen.masks import composite_unmasked

from ..conftest import draw_desk
from .conftest import draw_mask


def test_edge_ssim_orders_structure_kept() -> None:
    photo = draw_desk((192, 144))
    same = edge_ssim(photo, photo)
    restyled = edge_ssim(photo, photo.convert("L").convert("RGB").filter(ImageFilter.BLUR))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (144, 192, 3), np.uint8))
    unrelated = edge_ssim(photo, noise)
    flat = edge_ssim(photo, Image.new("RGB", (192, 144), (128, 128, 128)))
    assert same == pytest.approx(1.0)
    assert same > restyled > unrelated
    assert restyled > 0.5 and unrelated < 0.3 and flat < 0.3


def test_edge_ssim_compares_at_the_output_size() -> None:
    photo = draw_desk((400, 300))
    small = photo.resize((200, 150))
    assert edge_ssim(photo, small) > 0.7


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels)


def test_masked_edge_ssim_of_a_composite_is_exactly_one_outside() -> None:
    photo = draw_desk((192, 144))
    mask = draw_mask(photo.size)  # feathered: grey at the edge
    composite = composite_unmasked(photo, _noise(photo.size), mask)
    outside, inside = masked_edge_ssim(photo, composite, mask)
    assert outside == 1.0  # the photo's own pixels outside the mask
    assert inside < 0.3  # the desk redrawn as noise
    # the whole-image score can't tell the room from the desk
    assert outside > edge_ssim(photo, composite) > inside


def test_masked_edge_ssim_sees_a_changed_outside() -> None:
    photo = draw_desk((192, 144))
    mask = draw_mask(photo.size)
    kept = composite_unmasked(photo, _noise(photo.size), mask)
    touched = kept.copy()
    ImageDraw.Draw(touched).rectangle([8, 4, 60, 40], fill=(30, 200, 30))  # a poster on the wall
    outside, inside = masked_edge_ssim(photo, touched, mask)
    assert outside < 0.99
    assert inside == pytest.approx(masked_edge_ssim(photo, kept, mask)[1])  # inside: the same


def test_masked_edge_ssim_tells_inside_from_outside() -> None:
    """The room restyled, the desk kept: the other way round from a composite."""
    photo = draw_desk((192, 144))
    mask = draw_mask(photo.size)
    restyled = _noise(photo.size, seed=3)
    room_changed = composite_unmasked(restyled, photo, mask)  # the photo inside only
    outside, inside = masked_edge_ssim(photo, room_changed, mask)
    assert inside == 1.0 and outside < 0.3
    # a blurred desk keeps more of its edges than noise does
    blurred = composite_unmasked(photo, photo.filter(ImageFilter.GaussianBlur(1)), mask)
    assert masked_edge_ssim(photo, blurred, mask)[1] > 0.5


def test_masked_edge_ssim_at_the_output_size() -> None:
    """A raw output (``keep_unmasked=False``) at the generated size: the photo and the mask
    are cropped and resized to it."""
    photo = draw_desk((192, 144))
    mask = draw_mask(photo.size)
    small = composite_unmasked(photo, _noise(photo.size), mask).resize((96, 72))
    outside, inside = masked_edge_ssim(photo, small, mask)
    assert outside > 0.8 and inside < 0.5


def _by_hand(model_dir: Path, image: Image.Image, prompt: str) -> float:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir)
    processor = CLIPProcessor.from_pretrained(model_dir)
    text = processor.tokenizer(prompt, truncation=True, max_length=77, return_tensors="pt")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        a = model.get_text_features(**text).pooler_output[0]
        b = model.get_image_features(pixel_values=pixels).pooler_output[0]
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0)
    return float(100 * torch.clamp(cosine, min=0))


def test_clip_score_is_torchmetrics_on_the_local_model(tiny_clip: Path) -> None:
    scorer = ClipScorer(str(tiny_clip))
    photo = draw_desk((128, 96))
    score, note = scorer.score(photo, "a tidy desk")
    assert note is None
    assert score == pytest.approx(_by_hand(tiny_clip, photo, "a tidy desk"), abs=1e-3)
    assert score > 0  # the tiny model's seed gives this photo a positive score


def test_long_prompts_are_truncated_by_the_tokenizer_and_say_so(tiny_clip: Path) -> None:
    scorer = ClipScorer(str(tiny_clip))
    photo = draw_desk((128, 96))
    prompt = "a wooden desk with a lamp, a plant and a monitor, " * 10
    score, note = scorer.score(photo, prompt)
    assert note is not None and note.startswith("CLIP reads 77 tokens")
    # the end-of-text token is kept: the same as scoring the prompt cut to 77 tokens by hand
    assert score == pytest.approx(_by_hand(tiny_clip, photo, prompt), abs=1e-3)


def test_clip_model_errors_are_typed(tmp_path: Path) -> None:
    from deskgen import ModelLoadError

    with pytest.raises(ModelLoadError, match="safetensors only"):
        ClipScorer(str(tmp_path / "missing"))
