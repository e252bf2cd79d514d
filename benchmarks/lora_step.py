"""Cost of LoRAs on a denoising step, unfused and fused, as ratios to a step without one.

Default: the tiny SDXL through `DeskGenerator` on the CPU (two LoRAs made by
`deskgen.testing.make_tiny_lora`): the median denoising time per step of text-to-image requests
with no LoRA, one LoRA, two LoRAs (per request, through deskgen's adapter gate), and the two
fused into the weights (`fuse_loras`).

``--full-size`` (needs a CUDA GPU): a UNet of SDXL's real size and layout with random weights
(no download), in bfloat16, one batch of two 128x128 latents (1024x1024 px with guidance), and
LoRAs of rank ``--rank`` on every linear layer of the attention blocks, as kohya's trainer
makes them (a rank-32 one is about the size of the seed's ~218 MB community LoRAs). Per case,
the fastest of ``--repeats`` UNet calls, in three rounds (the median round): without peft layers
("bare"), with the adapters disabled, one, two, and the two fused.

    .venv/bin/python benchmarks/lora_step.py [--steps 10] [--repeats 7]
    python benchmarks/lora_step.py --full-size [--rank 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# SDXL base 1.0's UNet (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json)
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
KOHYA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
]


def tiny(args: argparse.Namespace) -> dict[str, Any]:
    from deskgen import DeskGenerator, LoraSpec
    from deskgen.testing import make_tiny_lora, make_tiny_pipeline

    folder = Path(tempfile.mkdtemp(prefix="deskgen-bench-"))
    model = make_tiny_pipeline("sdxl", folder / "sdxl", sample_size=args.sample_size)
    first = make_tiny_lora(model, folder / "a.safetensors", seed=1)
    second = make_tiny_lora(model, folder / "b.safetensors", seed=2)
    request = {"prompt": "a tidy desk", "steps": args.steps, "seed": 1}
    cases: dict[str, tuple[DeskGenerator, dict[str, Any]]] = {}
    plain = DeskGenerator("sdxl", model=str(model), device="cpu")
    plain.load_lora(LoraSpec(path=str(first), weight=0.8))
    plain.load_lora(LoraSpec(path=str(second), weight=0.5))
    cases["no LoRA"] = (plain, {"loras": {}})
    cases["1 LoRA"] = (plain, {"loras": {"a": 0.8}})
    cases["2 LoRAs"] = (plain, {"loras": {"a": 0.8, "b": 0.5}})
    fused = DeskGenerator(
        "sdxl",
        model=str(model),
        device="cpu",
        loras=[LoraSpec(path=str(first), weight=0.8), LoraSpec(path=str(second), weight=0.5)],
        fuse_loras=True,
    )
    cases["2 LoRAs fused"] = (fused, {})
    times: dict[str, list[float]] = {name: [] for name in cases}
    for gen, extra in cases.values():  # warm-up
        gen.generate(**request, **extra)
    for _ in range(args.repeats):
        for name, (gen, extra) in cases.items():
            result = gen.generate(**request, **extra)
            times[name].append(result.timings.denoise / result.denoising_steps)
    return {name: statistics.median(values) for name, values in times.items()}


def full_size(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    dtype = torch.bfloat16
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()
    batch = 2
    inputs = {
        "sample": torch.randn(batch, 4, 128, 128, device="cuda", dtype=dtype),
        "timestep": torch.tensor(500, device="cuda"),
        "encoder_hidden_states": torch.randn(batch, 77, 2048, device="cuda", dtype=dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, 1280, device="cuda", dtype=dtype),
            "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch, device="cuda"),
        },
    }

    def best_ms() -> float:
        samples = []
        with torch.no_grad():
            for _ in range(10):  # clocks up, kernels chosen
                unet(**inputs)
            for _ in range(args.repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                unet(**inputs)
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
        # the fastest call: the one least disturbed by the shared host (medians swing 2x there)
        return min(samples)

    for _ in range(3):  # warm-up rounds: the first calls on a fresh GPU run slow
        best_ms()
    bare = best_ms()  # no peft layers at all
    for name in ("a", "b"):
        config = LoraConfig(
            r=args.rank, lora_alpha=args.rank, target_modules=KOHYA_TARGETS, init_lora_weights=True
        )
        unet.add_adapter(config, adapter_name=name)
    lora_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n and ".a." in n)

    def state(name: str) -> None:
        if name == "no LoRA":
            unet.disable_lora()
            return
        unet.enable_lora()
        if name == "1 LoRA":
            unet.set_adapters(["a"], [0.8])
        else:
            unet.set_adapters(["a", "b"], [0.8, 0.5])
        if name == "2 LoRAs fused":
            unet.fuse_lora(adapter_names=["a", "b"])

    # the cases in turn, three rounds: a GPU still warming up or a busy host skews one round;
    # each case's result is its rounds' median
    cases = ["no LoRA", "1 LoRA", "2 LoRAs", "2 LoRAs fused"]
    rounds: dict[str, list[float]] = {case: [] for case in cases}
    fuse_seconds = []
    for _ in range(3):
        for case in cases:
            started = time.perf_counter()
            state(case)
            torch.cuda.synchronize()
            if case == "2 LoRAs fused":
                fuse_seconds.append(time.perf_counter() - started)
            rounds[case].append(best_ms())
            if case == "2 LoRAs fused":
                unet.unfuse_lora()
    results: dict[str, Any] = {"bare UNet ms": round(bare, 2)}
    results |= {f"{c} ms": round(statistics.median(v), 2) for c, v in rounds.items()}
    results["rounds ms"] = {c: [round(x, 1) for x in v] for c, v in rounds.items()}
    results["LoRA MB (bf16)"] = round(lora_params * 2 / 2**20, 1)
    results["fuse s"] = round(statistics.median(fuse_seconds), 2)
    results["device"] = torch.cuda.get_device_name()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-size", type=int, default=64, help="latent size (image: 2x)")
    parser.add_argument("--full-size", action="store_true", help="SDXL's real UNet on CUDA")
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    if args.full_size:
        results = full_size(args)
        # against the adapters disabled: the same UNet, measured in the same rounds
        base = results["no LoRA ms"]
        for key in ("bare UNet ms", "1 LoRA ms", "2 LoRAs ms", "2 LoRAs fused ms"):
            results[key.replace(" ms", " ratio")] = round(results[key] / base, 3)
        print(json.dumps(results, indent=2))
        return
    seconds = tiny(args)
    base = seconds["no LoRA"]
    print(f"{'case':<16} {'s/step':>8} {'ratio':>7}")
    for name, value in seconds.items():
        print(f"{name:<16} {value:>8.4f} {value / base:>7.3f}")


if __name__ == "__main__":
    main()
