"""The seed's distillation plan in one script: generate desk images with a community LoRA,
train our own LoRA on them, and make over a desk photo with it.

Offline by default: a tiny random-weight SDXL and a tiny random "community" LoRA made for it
with `deskgen.testing.make_tiny_lora` (the images are noise; planning, generating, resuming,
training, saving and loading the LoRA are the real path). With real weights on a GPU:

    python examples/distill_lora.py --photo my-desk.jpg \
        --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora ./loras/office3d.safetensors --images-per-prompt 20 --train-steps 1500

Run it again with the same ``--work`` folder and options: the finished images are skipped and
training resumes from its latest checkpoint (``--train-steps`` may grow; more images need a
fresh ``WORK/lora`` folder, since a checkpoint resumes only on the data it was made with).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from deskgen import (
    DatasetPlan,
    DeskGenerator,
    DeskGrid,
    DeskItem,
    DeskSpec,
    GenerationResult,
    LoraSpec,
    LoraTrainingConfig,
    generate_dataset,
    train_lora,
)
from deskgen.demo import DEMO_NEGATIVE_PROMPT, cache_dir, sample_desk_photo, tiny_model
from deskgen.prompts import Priority
from deskgen.testing import make_tiny_lora

TRIGGER = "dskgn desk"
"""The trigger word our LoRA learns: every caption starts with it."""


def _pixels(result: GenerationResult) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(result.image, dtype=np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="SDXL hub id or folder (default: a tiny offline model)")
    parser.add_argument("--lora", help="a community LoRA for the dataset (default: a tiny one)")
    parser.add_argument("--device", help="default: cpu offline, auto with --model")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--train-steps", type=int, help="default: 6 offline, 1000 with --model")
    parser.add_argument("--work", default="distill", help="folder for the dataset and the LoRA")
    parser.add_argument("--out", default="distilled-makeover.png")
    args = parser.parse_args()

    work = Path(args.work)
    if args.model:
        model, device = args.model, args.device or "auto"
        steps, train_steps = 30, args.train_steps or 1000
        training: dict[str, Any] = {"rank": 16, "learning_rate": 1e-4, "batch_size": 2}
        community = [LoraSpec(path=args.lora, weight=0.8)] if args.lora else []
    else:
        model, device = str(tiny_model("sdxl")), args.device or "cpu"
        steps, train_steps = 4, args.train_steps or 6
        # small rank, a high rate: a few steps must show on the tiny model
        training = {"rank": 4, "learning_rate": 5e-3, "batch_size": 2}
        # a kohya file with civitai's metadata, standing in for the seed's "3D Office" LoRA;
        # made once: the dataset's keys include the digests of the generator's LoRA files
        office = cache_dir() / "tiny-loras-sdxl" / "office3d.safetensors"
        if not office.is_file():
            make_tiny_lora(model, office, seed=3, alpha=2.0, trigger_words=("3D 0ff1c3", "office"))
        # used without its trigger word, as the seed team did
        community = [LoraSpec(path=args.lora or str(office), weight=0.8, trigger_words=())]

    # 1. the dataset: a prompt and a grid of DeskSpec variations, each some times, with the
    #    community LoRA active; every caption starts with our LoRA's trigger word
    plan = DatasetPlan(
        prompts=["a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo"],
        grid=DeskGrid(
            base=DeskSpec(add=[DeskItem(what="a monitor light bar", priority=Priority.HIGH)]),
            vary={"style": ["scandinavian", "industrial"]},
        ),
        images_per_prompt=args.images_per_prompt,
        seed=100,
        request={"steps": steps},
        caption_prefix=TRIGGER,
    )
    data = work / "dataset"
    with DeskGenerator("sdxl", model=model, device=device, loras=community) as gen:
        print(f"dataset LoRAs: {[(lora.name, lora.weight) for lora in gen.loras]}")
        report = generate_dataset(gen, plan, data)
    print(
        f"dataset: {report.generated} generated, {report.skipped} already there, "
        f"{len(report.failures)} failed, of {report.planned} in {data}"
    )

    # 2. our own LoRA, trained on those images and captions
    config = LoraTrainingConfig(
        model=model,
        data=str(data),
        out=str(work / "lora"),
        name="dskgn_desk",
        max_steps=train_steps,
        trigger_words=[TRIGGER],
        device=device,
        **training,
    )
    result = train_lora(config)
    if result.resumed_from is not None:
        print(f"resumed from the checkpoint at step {result.resumed_from}")
    print(f"trained {result.steps} steps on {result.images} images")
    print(f"fixed-noise loss before {result.loss_before:.4f} after {result.loss_after:.4f}")
    print(f"wrote {result.lora}")

    # 3. a makeover with it: a fresh generator, the LoRA's trigger word from its metadata
    request: dict[str, Any] = {
        "prompt": "a tidy desk with a warm lamp and plants",
        "negative_prompt": DEMO_NEGATIVE_PROMPT,
        "image": args.photo,
        "strength": 0.6,
        "steps": 30 if args.model else 12,
        "seed": 42,
    }
    with DeskGenerator(
        "sdxl", model=model, device=device, loras=[LoraSpec(path=str(result.lora))]
    ) as gen:
        [ours] = gen.loras
        print(f"loaded {ours.name}: rank {ours.rank}, trigger words {list(ours.trigger_words)}")
        styled = gen.generate(**request)
        plain = gen.generate(**request, loras={})
    assert styled.prompt_report is not None
    print(f"prompt as encoded: {styled.prompt_report.prompt}")
    change = np.abs(_pixels(styled) - _pixels(plain)).mean()
    print(f"with vs without our LoRA: mean pixel difference {change:.1f}")
    [path] = styled.save(args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
