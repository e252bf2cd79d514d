"""The seed's comparison, rerunnable: one desk photo through several configurations (presets,
a few-step LoRA, SD 1.x beside SDXL), measured and shown side by side.

Offline by default: the tiny random-weight SDXL and SD of `deskgen demo` on the CPU, a tiny
random "LCM" LoRA for the fast preset, and a tiny random CLIP for the prompt-adherence column
(the images are noise and the scores meaningless; the timings, memory, table, sheet and report
are real). With real weights on a GPU (``pip install "deskgen[bench]"``):

    python examples/bench_compare.py --photo my-desk.jpg \
        --model stabilityai/stable-diffusion-xl-base-1.0 \
        --sd-model stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --distill-lora latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors \
        --clip-model openai/clip-vit-large-patch14 --out bench-out

Writes OUT/bench.md (the table), bench.csv, bench.json, the images, sheet.png and report.html.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from deskgen.bench import BenchConfig, BenchEntry, run_bench, write_comparison
from deskgen.demo import DEMO_NEGATIVE_PROMPT, sample_desk_photo, tiny_model

PROMPT = "a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="an SDXL hub id or folder (default: tiny, offline)")
    parser.add_argument("--sd-model", help="an SD 1.x/2.x hub id or folder (default: tiny)")
    parser.add_argument("--distill-lora", help="an LCM/Lightning/Hyper-SD/TCD LoRA for --model")
    parser.add_argument("--clip-model", help="a CLIP model for the prompt-adherence column")
    parser.add_argument("--out", default="bench-out", help="the output folder")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs per configuration")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="deskgen-bench-example-"))
    tiny = args.model is None
    sdxl = args.model or str(tiny_model("sdxl"))
    sd = args.sd_model or str(tiny_model("sd"))
    distill, clip = args.distill_lora, args.clip_model
    if tiny:
        from deskgen.testing import make_tiny_clip, make_tiny_lora

        # a random LoRA named like an LCM one: the fast preset reads its kind from the name
        distill = distill or str(make_tiny_lora(sdxl, scratch / "lcm-lora-tiny.safetensors"))
        clip = clip or str(make_tiny_clip(scratch / "clip", seed=5))

    runs = [
        BenchEntry(backend="sdxl", model=sdxl, label="sdxl"),
        BenchEntry(backend="sdxl", model=sdxl, label="sdxl quality", options={"preset": "quality"}),
        BenchEntry(
            backend="sdxl", model=sdxl, label="sdxl balanced", options={"preset": "balanced"}
        ),
        BenchEntry(backend="sd", model=sd, label="sd balanced", options={"preset": "balanced"}),
    ]
    if distill:
        fast = {"preset": "fast", "distill_lora": distill}
        runs.insert(3, BenchEntry(backend="sdxl", model=sdxl, label="sdxl fast", options=fast))
    config = BenchConfig(
        prompt=PROMPT,
        negative_prompt=DEMO_NEGATIVE_PROMPT,
        image=args.photo,
        # img2img as the seed team ran it; the presets choose the steps
        request={"strength": 0.6} | ({"width": 128, "height": 96} if tiny else {}),
        warmup=1,
        repeats=args.repeats,
        clip_model=clip,
        runs=runs,
    )

    def progress(number: int, total: int, row: object) -> None:
        print(f"[{number}/{total}] {getattr(row, 'label', '')} done")

    report = run_bench(config, out=args.out, on_row=progress)
    write_comparison(report, args.out)
    print(report.to_markdown())
    print(f"wrote {args.out}/bench.md, bench.csv, bench.json, sheet.png and report.html")


if __name__ == "__main__":
    main()
