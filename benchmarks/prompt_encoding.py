"""Encoding cost of a two-chunk prompt against a one-chunk prompt (goal: about 2x, not more).

Runs the sd/sdxl backends' own encoding path (`encode_prompt` on a prompt plan) with the real
CLIP vocabulary; the seed's 128-token description is two chunks, its 75-token "clean desk"
prompt one. Prompt and negative prompt are both encoded (classifier-free guidance), as in a real
request. Rows: the tiny test models (where fixed costs dominate), and SD with a text encoder of
CLIP ViT-L/14's size (random weights, 123 M parameters), where the encoder's work dominates as
it does with real weights. Printed: median milliseconds per encoding and the ratio.

    .venv/bin/python benchmarks/prompt_encoding.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch

    from deskgen import DeskGenerator, GenerationRequest
    from deskgen.backends import DiffusersBackend
    from deskgen.demo import DEMO_PROMPT as CLEAN_DESK
    from deskgen.demo import LONG_DESCRIPTION
    from deskgen.testing import make_tiny_pipeline

    folder = Path(tempfile.mkdtemp(prefix="deskgen-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny models")
    print(f"{'model':<10} {'1 chunk ms':>11} {'2 chunks ms':>12} {'ratio':>6}")
    for kind, label in (("sd", "sd"), ("sdxl", "sdxl"), ("sd", "sd+CLIP-L")):
        path = make_tiny_pipeline(kind, folder / kind)  # type: ignore[arg-type]
        gen = DeskGenerator(kind, model=str(path), device="cpu")
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)
        pipe = backend.pipeline
        if label.endswith("CLIP-L"):
            from transformers import CLIPTextConfig, CLIPTextModel

            torch.manual_seed(0)
            pipe.text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=49408,
                    hidden_size=768,
                    intermediate_size=3072,
                    num_hidden_layers=12,
                    num_attention_heads=12,
                    max_position_embeddings=77,
                    hidden_act="quick_gelu",
                    bos_token_id=49406,
                    eos_token_id=49407,
                    pad_token_id=49407,
                )
            ).eval()
        times: dict[str, list[float]] = {"one": [], "two": []}
        plans = {
            name: backend.plan_prompt(GenerationRequest(prompt=text, negative_prompt="clutter"))
            for name, text in (("one", CLEAN_DESK), ("two", LONG_DESCRIPTION))
        }
        assert not plans["one"].chunked and plans["two"].chunked
        for _ in range(3):  # warm-up
            for plan in plans.values():
                backend.encode_prompt(pipe, plan, do_cfg=True)
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, plan in plans.items():
                    start = time.perf_counter()
                    backend.encode_prompt(pipe, plan, do_cfg=True)
                    times[name].append(time.perf_counter() - start)
        one, two = statistics.median(times["one"]), statistics.median(times["two"])
        print(f"{label:<10} {one * 1000:>11.2f} {two * 1000:>12.2f} {two / one:>6.2f}")
        gen.close()


if __name__ == "__main__":
    main()
