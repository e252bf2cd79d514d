"""LoRA training at SDXL's real size: seconds per step and peak GPU memory, through `train_lora`.

No weights can be downloaded here, so the script builds a pipeline of SDXL base 1.0's exact
architecture with random weights (UNet 2.6 B parameters, both CLIP encoders, the VAE; the real
CLIP tokenizer), saves it in the diffusers layout, makes a small imagefolder of 1024 px
pictures, and trains through deskgen's real path: the numbers are those of real SDXL weights,
the images and losses mean nothing. Runs: bf16 and fp16 mixed precision, batch 1, rank 16;
then bf16 with gradient checkpointing.

    python benchmarks/train_step.py [--steps 20]     # needs a CUDA GPU with ~24 GB
    .venv/bin/python benchmarks/train_step.py --tiny  # the same path on the tiny SDXL, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def clip_text_config(hidden: int, layers: int, heads: int, act: str, projection: int) -> Any:
    """A CLIP text encoder's config of the real size: ViT-L/14's is (768, 12, 12, "quick_gelu",
    768), OpenCLIP bigG's (1280, 32, 20, "gelu", 1280)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407 if act == "quick_gelu" else 0,
    )


def full_size_sdxl(folder: Path) -> Path:
    """SDXL base 1.0's architecture (its config files), random weights, saved in fp16."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from lora_step import SDXL_UNET  # type: ignore[import-not-found]
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from deskgen.prompts._tokenizers import packaged_clip_tokenizer

    with torch.device("cuda"):
        pipe = StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(**SDXL_UNET),
            vae=AutoencoderKL(
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4,
                layers_per_block=2,
                sample_size=1024,
                scaling_factor=0.13025,
                force_upcast=True,
            ),
            text_encoder=CLIPTextModel(clip_text_config(768, 12, 12, "quick_gelu", 768)),
            text_encoder_2=CLIPTextModelWithProjection(
                clip_text_config(1280, 32, 20, "gelu", 1280)
            ),
            tokenizer=packaged_clip_tokenizer("<|endoftext|>"),
            tokenizer_2=packaged_clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                steps_offset=1,
                timestep_spacing="leading",
            ),
        )
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def dataset(folder: Path, size: int, count: int = 8) -> Path:
    from PIL import Image, ImageDraw

    (folder / "train").mkdir(parents=True)
    lines = []
    for i in range(count):
        image = Image.new("RGB", (size + 64 * (i % 3), size), (200, 190, 170))
        ImageDraw.Draw(image).rectangle((i * 20, size // 3, i * 20 + size // 3, size // 2), "black")
        image.save(folder / "train" / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"a desk, photo {i}"}))
    (folder / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run(model: Path, data: Path, out: Path, steps: int, **fields: Any) -> dict[str, Any]:
    import torch

    from deskgen import LoraTrainingConfig, TrainingProgress, train_lora

    cuda = torch.cuda.is_available() and fields.get("device") != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    marks: list[float] = []

    def on_step(progress: TrainingProgress) -> None:
        marks.append(time.perf_counter())

    config = LoraTrainingConfig(
        model=str(model),
        data=str(data),
        out=str(out),
        rank=16,
        max_steps=steps,
        checkpoint_every=None,
        **fields,
    )
    result = train_lora(config, progress=False, on_step=on_step)
    # the first steps encode and cache the latents and captions: time the later ones
    later = marks[len(marks) // 2 :]
    per_step = (later[-1] - later[0]) / (len(later) - 1)
    return {
        "s/step": round(per_step, 3),
        "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "total s": round(result.seconds, 1),
        "loss before/after": [round(result.loss_before, 4), round(result.loss_after, 4)],
        "LoRA MB": round(result.lora.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="the tiny SDXL on the CPU")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deskgen-train-"))
    results: dict[str, Any] = {}
    if args.tiny:
        from deskgen.testing import make_tiny_pipeline

        model = make_tiny_pipeline("sdxl", root / "sdxl")
        data = dataset(root / "data", 64)
        results["tiny, cpu"] = run(model, data, root / "o", args.steps, device="cpu")
    else:
        import torch

        started = time.perf_counter()
        model = full_size_sdxl(root / "sdxl")
        results["build s"] = round(time.perf_counter() - started, 1)
        data = dataset(root / "data", 1024)
        for name, fields in {
            "bf16": {"mixed_precision": "bf16"},
            "fp16": {"mixed_precision": "fp16"},
            "bf16 + gradient checkpointing": {
                "mixed_precision": "bf16",
                "gradient_checkpointing": True,
            },
        }.items():
            results[name] = run(model, data, root / name.replace(" ", "_"), args.steps, **fields)
            torch.cuda.empty_cache()
        results["device"] = torch.cuda.get_device_name()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
