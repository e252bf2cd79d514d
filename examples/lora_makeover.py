"""A desk makeover with LoRAs: inspect a file, load it, choose adapters per request, stack, fuse.

Offline by default: a tiny random-weight SDXL and two tiny random LoRAs made for it with
`deskgen.testing.make_tiny_lora`, standing in for files from civitai or the Hub (the images are
noise; loading, checking, trigger words, per-request adapters, fusing and records are real).
With real weights on a GPU:

    python examples/lora_makeover.py --photo my-desk.jpg \
        --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora ./loras/walnut-desk.safetensors --lora2 ./loras/topview.safetensors

``--lora user/repo --lora-file name.safetensors`` takes the first LoRA from a Hub repo.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deskgen import DeskGenerator, GenerationResult, LoraSpec, inspect_lora
from deskgen.demo import DEMO_NEGATIVE_PROMPT, cache_dir, sample_desk_photo, tiny_model
from deskgen.testing import make_tiny_lora

PROMPT = "a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo"


def _pixels(result: GenerationResult) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(result.image, dtype=np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="hub id or folder (default: a tiny offline model)")
    parser.add_argument("--backend", default="sdxl", help="sdxl or sd")
    parser.add_argument("--lora", help="LoRA file, folder or Hub repo (default: a tiny one)")
    parser.add_argument("--lora-file", help="the file inside a --lora folder or Hub repo")
    parser.add_argument("--lora2", help="a second LoRA to stack (default: a tiny one)")
    parser.add_argument("--out", default="lora-makeover.png")
    args = parser.parse_args()

    if args.model:
        if not (args.lora and args.lora2):
            parser.error("with --model, name the LoRAs made for it: --lora ... --lora2 ...")
        model, steps = args.model, 30
        first = LoraSpec(path=args.lora, weight_name=args.lora_file, weight=0.8)
        second = LoraSpec(path=args.lora2, weight=0.5)
    else:
        model, steps = str(tiny_model(args.backend)), 12
        folder = cache_dir() / f"tiny-loras-{args.backend}"
        # a kohya-layout file with civitai's metadata, as most downloaded LoRAs are (alpha at
        # half the rank keeps the random deltas of the tiny model moderate)
        walnut = make_tiny_lora(
            model,
            folder / "walnut-desk.safetensors",
            seed=1,
            alpha=2.0,
            trigger_words=("walnut desk", "warm light"),
        )
        # a diffusers/peft-layout file, as diffusers' training scripts write
        topview = make_tiny_lora(
            model, folder / "topview.safetensors", layout="peft", seed=2, text_encoders=False
        )
        first = LoraSpec(path=str(walnut), weight=0.8)
        second = LoraSpec(path=str(topview), weight=0.5, trigger_words=("desk topview",))

    # what the file is, read from its header without loading it
    info = inspect_lora(first)
    print(
        f"inspected {info.path.name}: {info.format}, {info.layout} layout, for {info.base}, "
        f"rank {info.rank}, trigger words {list(info.trigger_words)}"
    )

    out = Path(args.out)
    request: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": DEMO_NEGATIVE_PROMPT,
        "image": args.photo,
        "strength": 0.6,
        "steps": steps,
        "seed": 42,
    }
    # LoRAs given with the model are checked against it and applied before the first request
    with DeskGenerator(args.backend, model=model, loras=[first]) as gen:
        [walnut_lora] = gen.loras
        print(
            f"loaded {walnut_lora.name} at {walnut_lora.weight} into "
            f"{', '.join(walnut_lora.components)} (sha256 {walnut_lora.sha256[:12]})"
        )
        print(f"prompt as encoded: {gen.check_prompt(prompt=PROMPT).prompt}")

        results: dict[str, GenerationResult] = {}
        results["styled"] = gen.generate(**request)  # loras unset: every loaded one
        results["plain"] = gen.generate(**request, loras={})  # none, same generator
        change = np.abs(_pixels(results["styled"]) - _pixels(results["plain"])).mean()
        print(f"with vs without the LoRA: mean pixel difference {change:.1f}")

        # stack a second LoRA with its own weight; a request can also pick its own weights
        topview_lora = gen.load_lora(second)
        results["stacked"] = gen.generate(**request)
        results["custom"] = gen.generate(
            **request, loras={walnut_lora.name: 0.4, topview_lora.name: 1.0}
        )
        print(f"stacked: {[(lora.name, lora.weight) for lora in results['stacked'].loras]}")
        print(f"custom: {[(lora.name, lora.weight) for lora in results['custom'].loras]}")

        # fused: merged into the weights for faster steps; the same images up to float rounding
        gen.fuse_loras()
        results["fused"] = gen.generate(**request)
        gen.unfuse_loras()
        fused_diff = np.abs(_pixels(results["fused"]) - _pixels(results["stacked"])).max()
        print(f"fused vs stacked: max pixel difference {fused_diff}")

    for name, result in results.items():
        [path] = result.save(out.with_name(f"{out.stem}-{name}.png"))
        print(f"wrote {path}")
    saved = out.with_name(f"{out.stem}-stacked.png")
    with Image.open(saved) as png:
        prompt_line = png.text["parameters"].splitlines()[0]
    print(f"A1111 prompt line: {prompt_line}")
    print(f"record loras: {results['stacked'].record()['loras']}")


if __name__ == "__main__":
    main()
