"""The ``openai`` backend's price table: OpenAI's published per-image prices, with their date
and source, and the caller's own (the ``prices`` option)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["IMAGE_PRICES_DATE", "IMAGE_PRICES_SOURCE", "IMAGE_PRICES_USD", "price_per_image"]

IMAGE_PRICES_DATE = "2026-12-02"
"""When `IMAGE_PRICES_USD` was last checked against `IMAGE_PRICES_SOURCE`."""
IMAGE_PRICES_SOURCE = "https://developers.openai.com/api/docs/pricing#image-generation"
"""OpenAI's published per-image prices (also on each model's page, e.g.
``https://developers.openai.com/api/docs/models/gpt-image-1-mini``)."""

IMAGE_PRICES_USD: dict[str, float] = {
    # "model|quality|size": US dollars per image, OpenAI's published figures (IMAGE_PRICES_SOURCE,
    # as of IMAGE_PRICES_DATE). The gpt-image-2 family (gpt-image-2, -2.5-*, -2.6-*) is billed by
    # tokens only, with no per-image figure: give your own with the `prices` option.
    # gpt-image-1.5's figures as price trackers quote OpenAI's page (checked March to May 2026)
    "gpt-image-1.5|low|1024x1024": 0.009,
    "gpt-image-1.5|low|1536x1024": 0.013,
    "gpt-image-1.5|low|1024x1536": 0.013,
    "gpt-image-1.5|medium|1024x1024": 0.034,
    "gpt-image-1.5|medium|1536x1024": 0.05,
    "gpt-image-1.5|medium|1024x1536": 0.05,
    "gpt-image-1.5|high|1024x1024": 0.133,
    "gpt-image-1.5|high|1536x1024": 0.2,
    "gpt-image-1.5|high|1024x1536": 0.2,
    "gpt-image-1-mini|low|1024x1024": 0.005,
    "gpt-image-1-mini|low|1536x1024": 0.006,
    "gpt-image-1-mini|low|1024x1536": 0.006,
    "gpt-image-1-mini|medium|1024x1024": 0.011,
    "gpt-image-1-mini|medium|1536x1024": 0.015,
    "gpt-image-1-mini|medium|1024x1536": 0.015,
    "gpt-image-1-mini|high|1024x1024": 0.036,
    "gpt-image-1-mini|high|1536x1024": 0.052,
    "gpt-image-1-mini|high|1024x1536": 0.052,
    # the retired models, for OpenAI-compatible servers that still serve them
    "gpt-image-1|low|1024x1024": 0.011,
    "gpt-image-1|low|1536x1024": 0.016,
    "gpt-image-1|low|1024x1536": 0.016,
    "gpt-image-1|medium|1024x1024": 0.042,
    "gpt-image-1|medium|1536x1024": 0.063,
    "gpt-image-1|medium|1024x1536": 0.063,
    "gpt-image-1|high|1024x1024": 0.167,
    "gpt-image-1|high|1536x1024": 0.25,
    "gpt-image-1|high|1024x1536": 0.25,
    "dall-e-3|standard|1024x1024": 0.04,
    "dall-e-3|standard|1792x1024": 0.08,
    "dall-e-3|standard|1024x1792": 0.08,
    "dall-e-3|hd|1024x1024": 0.08,
    "dall-e-3|hd|1792x1024": 0.12,
    "dall-e-3|hd|1024x1792": 0.12,
    "dall-e-2|standard|1024x1024": 0.02,
    "dall-e-2|standard|512x512": 0.018,
    "dall-e-2|standard|256x256": 0.016,
}
"""Estimated price per image, keyed ``"model|quality|size"``; the `prices` option overrides and
extends it (``"model|quality|*"`` for every size). GPT image models are billed by tokens: these
are OpenAI's per-image estimates for text to image (an edit also bills the photo's tokens)."""


def price_per_image(
    model: str, quality: str, size: str, prices: Mapping[str, float], warnings: list[str]
) -> float | None:
    """The price of one image: the caller's ``prices`` first, then `IMAGE_PRICES_USD`; the exact
    ``"model|quality|size"`` key before ``"model|quality|*"``. None, with a warning that says how
    to give a price, when neither has one."""
    key, every = f"{model}|{quality}|{size}", f"{model}|{quality}|*"
    for table in (prices, IMAGE_PRICES_USD):
        for name in (key, every):
            if name in table:
                return table[name]
    warnings.append(
        f"No price for {model} at quality {quality}, {size}, in deskgen's table (OpenAI's "
        f"per-image prices as of {IMAGE_PRICES_DATE}), so result.cost_usd is None. Pass "
        f"prices={{{key!r}: dollars_per_image}} (or {every!r} for every size) to estimate it."
    )
    return None
