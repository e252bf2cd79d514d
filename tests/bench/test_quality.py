"""The quality columns: edge SSIM and the CLIP score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from deskgen.bench import ClipScorer, edge_ssim

from ..conftest import draw_desk


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
