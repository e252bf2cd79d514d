"""A desk makeover with OpenAI: describe the photo, write the prompt, edit the photo.

With OPENAI_API_KEY set it calls OpenAI (it costs money: see the printed estimate). Without it,
it runs against deskgen's local stand-in server (`deskgen.testing.FakeOpenAIServer`), so the
whole path runs offline; the images are then flat test pictures.

    python examples/openai_makeover.py [--photo my-desk.jpg] [--out makeover.png]
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from deskgen import DeskGenerator
from deskgen.demo import sample_desk_photo

# OpenAI bills gpt-image-2.5-flare by tokens and publishes no per-image price, so deskgen's
# price table (deskgen.backends.openai.IMAGE_PRICES_USD, OpenAI's per-image prices as of
# IMAGE_PRICES_DATE) has none, and without `prices=` the cost is None. This figure is an
# estimate of ours, checked on 2026-12-02: image output tokens at $30 per million (OpenAI's
# rate for gpt-image-2, which the 2.5 models share: https://developers.openai.com/api/docs/pricing)
# times ~1,770 tokens for a medium image of about a megapixel (gpt-image-2's 1024x1024 medium:
# $0.053 in OpenAI's cost calculator, as reported at its launch on 2026-04-21). The photo's input
# tokens come on top.
# "*" prices every size, as makeovers take the photo's aspect ratio. Put your own figure here.
PRICES = {"gpt-image-2.5-flare|medium|*": 0.053}


@contextlib.contextmanager
def openai_endpoint() -> Iterator[dict[str, Any]]:
    """Real OpenAI when a key is set, else the local stand-in server."""
    if os.environ.get("OPENAI_API_KEY"):
        yield {}
        return
    from deskgen.testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        print(f"no OPENAI_API_KEY: using the local stand-in server at {server.base_url}")
        yield {"api_key": "local-test-key", "base_url": server.base_url}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()))
    parser.add_argument("--out", default="openai-makeover.png")
    args = parser.parse_args()

    with (
        openai_endpoint() as endpoint,
        DeskGenerator(
            "openai", model="gpt-image-2.5-flare", quality="medium", prices=PRICES, **endpoint
        ) as gen,
    ):
        # 1. The seed's "explain details", as a typed description.
        description = gen.describe(args.photo)
        print(f"described: {description.summary} (clutter: {description.clutter})")

        # 2. The description becomes a makeover spec, rendered for this backend.
        rendered = description.to_spec(style="warm minimalist").render(backend="openai")
        print(f"prompt: {rendered.prompt}")

        # 3. The makeover: an edit of the photo (sent without its metadata).
        result = gen.generate(rendered.request(image=args.photo))
        paths = result.save(args.out)
        # None only for a model, quality or size without a price (a warning says which key)
        cost = f"${result.cost_usd:.3f}" if result.cost_usd is not None else "unknown"
        print(f"{result.mode} {result.width}x{result.height}, estimated cost: {cost}")
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(f"wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
