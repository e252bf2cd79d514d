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

from deskgen import DeskGenerator
from deskgen.demo import sample_desk_photo


@contextlib.contextmanager
def openai_endpoint() -> Iterator[dict[str, str]]:
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
        DeskGenerator("openai", model="gpt-image-2.5-flare", quality="medium", **endpoint) as gen,
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
        cost = (
            f"${result.cost_usd:.3f}" if result.cost_usd is not None else "not in the price table"
        )
        print(f"{result.mode} {result.width}x{result.height}, estimated cost: {cost}")
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(f"wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
