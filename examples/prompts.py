"""The prompt builder: token budgets, long prompts, presets, desk specs, trigger words.

Runs offline: counting uses the real CLIP vocabulary shipped with deskgen, and generation uses a
tiny random-weight SDXL (pass --model for real weights).

    python examples/prompts.py [--model stabilityai/stable-diffusion-xl-base-1.0]
"""

from __future__ import annotations

import argparse

from deskgen import DeskGenerator, DeskItem, DeskSpec
from deskgen.demo import LONG_DESCRIPTION as LONG
from deskgen.demo import tiny_model
from deskgen.prompts import check_prompt, count_tokens, list_negative_presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="hub id or folder (default: a tiny offline model)")
    args = parser.parse_args()

    # 1. Count and check before loading anything.
    print("CLIP tokens:", count_tokens(LONG))
    for mode in ("chunk", "fit", "truncate"):
        print(check_prompt(LONG, backend="sdxl", long_prompt=mode).summary())
    print("presets:", ", ".join(list_negative_presets()))

    # 2. A desk makeover as data, rendered within SDXL's budget.
    spec = DeskSpec(
        style="minimalist scandinavian",
        palette=["white oak", "sage green"],
        lighting="soft natural daylight",
        add=[
            DeskItem(what="a minimalist LED desk lamp on the left", priority="high"),
            "a sleek wireless charger pad beside the laptop",
            DeskItem(what="a small potted plant", priority="low"),
        ],
        keep=["monitor", "window view"],
        avoid=["visible cables"],
        extra=["photorealistic"],
    )
    rendered = spec.render(backend="sdxl")
    print(f"spec prompt ({rendered.tokens}/{rendered.budget} tokens): {rendered.prompt}")
    print(f"spec negative: {rendered.negative_prompt}")

    # 3. Generate: the whole long prompt is encoded (2 chunks), and the report says so.
    model = args.model or str(tiny_model("sdxl"))
    with DeskGenerator("sdxl", model=model) as gen:
        result = gen.generate(
            prompt=LONG,
            negative_prompt="preset:default",
            trigger_words=["desk topview"],
            steps=30 if args.model else 4,
            seed=7,
        )
        assert result.prompt_report is not None
        print(result.prompt_report.summary())
        from_spec = gen.generate(rendered.request(steps=30 if args.model else 4, seed=7))
        report = from_spec.prompt_report
        print("spec image:", from_spec.images[0].size, "lossless:", report and report.lossless)


if __name__ == "__main__":
    main()
