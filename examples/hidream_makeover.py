"""HiDream-I1 from the seed's long description: every text encoder reads all of it.

diffusers' HiDream pipeline cuts prompts at 128 tokens by default; the `hidream` backend passes
the prompt's own length (up to 218) and reports what each encoder saw. This example also
quantizes the T5 and Llama encoders and prints what that saves.

Offline by default: a tiny random-weight HiDream and a tiny Llama, built into the deskgen cache
(the image is noise). With real weights on a GPU (Llama-3.1-8B-Instruct is gated: accept Meta's
licence on the Hub and run `hf auth login` first; `pip install "deskgen[quanto]"`):

    python examples/hidream_makeover.py --real
"""

from __future__ import annotations

import argparse
from typing import Any

from deskgen import DeskGenerator
from deskgen.demo import LONG_DESCRIPTION, cache_dir, tiny_model
from deskgen.testing import make_tiny_llama

# the seed's description (128 CLIP tokens) and one more sentence: over diffusers' 128
PROMPT = LONG_DESCRIPTION + " Warm light falls from a window on the left onto a walnut desk."


def size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e3:.0f} kB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", action="store_true", help="HiDream-I1-Full on a GPU")
    parser.add_argument("--out", default="hidream-makeover.png")
    args = parser.parse_args()

    before: dict[str, int] = {}
    if args.real:
        # the 16 GB setup: int8 T5/Llama, int4 transformer, one component on the GPU at a time
        options: dict[str, Any] = {
            "model": "HiDream-ai/HiDream-I1-Full",
            "quantize_text_encoders": "int8",
            "quantize_transformer": "int4",
            "offload": "model",
        }
        steps = None  # the edition's default: 50 for Full
    else:
        options = {
            "model": str(tiny_model("hidream")),
            "llama_model": str(make_tiny_llama(cache_dir() / "tiny-llama-demo")),
            "edition": "full",  # the tiny model's name does not say
        }
        steps = 4
        with DeskGenerator("hidream", **options) as plain:  # to compare: no quantization
            before = plain.backend.component_bytes()  # type: ignore[attr-defined]
        options["quantize_text_encoders"] = "int8"

    with DeskGenerator("hidream", **options) as gen:
        print("quantized:", gen.backend.quantized)  # type: ignore[attr-defined]
        for name, after in gen.backend.component_bytes().items():  # type: ignore[attr-defined]
            was = f"{size(before[name])} -> " if name in before else ""
            print(f"  {name}: {was}{size(after)}")
        result = gen.generate(prompt=PROMPT, negative_prompt="preset:default", steps=steps, seed=42)

    report = result.prompt_report
    assert report is not None
    print(report.summary())
    print("lossless:", report.lossless)  # no phrase dropped, no encoder cut anything
    print("max_sequence_length:", max(r.limit for r in report.encoders))  # not 128
    steps, guidance = result.request.steps, result.request.guidance_scale  # Full's: 50, 5.0
    print(f"{steps} steps, guidance {guidance}, {result.width}x{result.height}")
    for path in result.save(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
