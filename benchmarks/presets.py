"""Performance presets and speed options, measured with `deskgen bench` as ratios to the
backend's defaults in one run (each configuration in its own process).

Cases: the defaults (30 steps, the model's scheduler), ``quality``, ``balanced``, ``fast`` (a
random LoRA named as an LCM one: the scheduler, steps and guidance of LCM; the numbers are an
LCM-LoRA's, the images are noise), and ``balanced`` with each speed option: ``attention=eager``
(what SDPA saves), ``channels_last``, ``fuse_qkv`` and, with ``--compile``, ``torch.compile``.

    .venv/bin/python benchmarks/presets.py                # tiny SDXL, CPU, 64x64 (plumbing)
    .venv/bin/python benchmarks/presets.py --sd15 --size 128   # SD 1.5's real UNet/VAE/CLIP
    python benchmarks/presets.py --full-size [--compile]  # SDXL's real architecture, CUDA, 1024

``--sd15`` and ``--full-size`` build the real architectures with random weights (nothing to
download): the times are those of real weights of that size. ``--full-size`` needs a CUDA GPU
with about 24 GB and runs bfloat16; it was not run on a GPU yet (none was lent while it was
written). Writes the bench folder (table, CSV, JSON, images) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# stable-diffusion-v1-5's unet/config.json and vae/config.json
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}


def sd15(folder: Path) -> Path:
    """SD 1.5's architecture (UNet 860 M, CLIP ViT-L/14 text, VAE), random weights, float32."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from train_step import clip_text_config  # type: ignore[import-not-found]
    from transformers import CLIPTextModel

    from deskgen.prompts._tokenizers import packaged_clip_tokenizer

    text = clip_text_config(768, 12, 12, "quick_gelu", 768)  # CLIP ViT-L/14's text encoder
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**SD15_UNET),  # type: ignore[arg-type]
        vae=AutoencoderKL(**SD_VAE),  # type: ignore[arg-type]
        text_encoder=CLIPTextModel(text),
        tokenizer=packaged_clip_tokenizer(),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def cases(model: str, backend: str, lora: Path, *, compile: bool) -> list[Any]:
    from deskgen.bench import BenchEntry

    def entry(label: str, **options: Any) -> BenchEntry:
        return BenchEntry(backend=backend, model=model, label=label, options=options)

    runs = [
        entry("defaults"),
        entry("quality", preset="quality"),
        entry("balanced", preset="balanced"),
        entry("fast (LCM)", preset="fast", distill_lora=str(lora)),
        entry("balanced + eager attention", preset="balanced", attention="eager"),
        entry("balanced + channels_last", preset="balanced", channels_last=True),
        entry("balanced + fuse_qkv", preset="balanced", fuse_qkv=True),
    ]
    if compile:
        runs.append(entry("balanced + compile", preset="balanced", compile=True))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sd15", action="store_true", help="SD 1.5's real architecture, CPU")
    which.add_argument("--full-size", action="store_true", help="SDXL's real size, CUDA")
    parser.add_argument("--size", type=int, help="image side (default: 64 tiny, 128, 1024)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--out", default=None, help="bench folder (default: a temporary one)")
    args = parser.parse_args()

    from deskgen.bench import BenchConfig, run_bench
    from deskgen.testing import make_tiny_lora

    scratch = Path(tempfile.mkdtemp(prefix="deskgen-presets-"))
    if args.full_size:
        from train_step import full_size_sdxl  # type: ignore[import-not-found]

        model, backend, size, device, dtype = (
            full_size_sdxl(scratch / "sdxl"),
            "sdxl",
            1024,
            "cuda",
            "bfloat16",
        )
    elif args.sd15:
        model, backend, size, device, dtype = sd15(scratch / "sd15"), "sd", 128, "cpu", "float32"
    else:
        from deskgen.testing import make_tiny_pipeline

        model = make_tiny_pipeline("sdxl", scratch / "tiny-sdxl")
        backend, size, device, dtype = "sdxl", 64, "cpu", "float32"
    size = args.size or size
    lora = make_tiny_lora(model, scratch / "lcm-lora.safetensors", text_encoders=False, rank=64)
    config = BenchConfig(
        prompt="a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo",
        negative_prompt="blurry, cluttered",
        request={"width": size, "height": size},
        warmup=args.warmup,
        repeats=args.repeats,
        device=device,
        dtype=dtype,
        runs=cases(str(model), backend, lora, compile=args.compile),
    )
    out = Path(args.out) if args.out else scratch / "bench"

    def progress(number: int, total: int, row: Any) -> None:
        print(f"[{number}/{total}] {row.label}: {row.error or row.time_text()}", flush=True)

    report = run_bench(config, out=out, on_row=progress)
    print(report.to_markdown())
    base = report.rows[0].median_seconds
    print("| case | steps | s per image | ratio to the defaults | peak memory |")
    print("|---|---|---|---|---|")
    for row in report.rows:
        if row.ok and base:
            ratio = row.median_seconds / base  # type: ignore[operator]
            print(
                f"| {row.label} | {row.steps} | {row.median_seconds:.3f} | {ratio:.2f} | "
                f"{row.memory_text()} |"
            )
        else:
            print(f"| {row.label} | | failed: {row.error} | | |")
    print(f"bench folder: {out}")


if __name__ == "__main__":
    main()
