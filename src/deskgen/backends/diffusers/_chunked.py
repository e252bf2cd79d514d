"""Encoding prompts longer than CLIP's 77 tokens for SD and SDXL pipelines, A1111-style.

Each chunk is tokenized exactly as diffusers' ``encode_prompt`` tokenizes a whole prompt (BOS,
up to 75 tokens, EOS, padding to 77), run through the text encoder(s) on its own, and the
chunks' hidden states are joined on the sequence axis: ``(1, 77 * n, C)``. The negative prompt
(or the prompt) is padded with empty-prompt chunks so both have the same length, as A1111 and
compel do. For SDXL both encoders get the same chunks and the pooled embedding comes from the
first chunk of the second encoder (A1111, ComfyUI and compel do the same; sd_embed uses the
last). A prompt of one chunk gives exactly diffusers' own embeddings (a test checks it), so this
path is only taken when some text needs two chunks or more.
"""

from __future__ import annotations

from typing import Any

from ...prompts import PromptPlan

__all__ = ["encode_chunked_sd", "encode_chunked_sdxl"]


def _token_ids(tokenizer: Any, text: str) -> tuple[Any, Any]:
    inputs = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return inputs.input_ids, inputs.attention_mask


def _padded(chunks: list[str], n: int) -> list[str]:
    return chunks + [""] * (n - len(chunks))


def _lengths(plan: PromptPlan, do_cfg: bool) -> tuple[list[str], list[str], int]:
    prompt = plan.prompt_chunks[0].chunks
    negative = plan.negative_chunks[0].chunks if plan.negative_chunks else [""]
    n = max(len(prompt), len(negative)) if do_cfg else len(prompt)
    return prompt, negative, n


def encode_chunked_sd(pipe: Any, plan: PromptPlan, *, do_cfg: bool, device: Any) -> dict[str, Any]:
    """``prompt_embeds`` / ``negative_prompt_embeds`` for a Stable Diffusion 1.x/2.x pipeline."""
    import torch

    encoder = pipe.text_encoder
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))

    def encode(chunks: list[str]) -> Any:
        parts = []
        for text in chunks:
            ids, mask = _token_ids(pipe.tokenizer, text)
            out = encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)
            parts.append(out[0])
        return torch.cat(parts, dim=1).to(dtype=encoder.dtype, device=device)

    prompt, negative, n = _lengths(plan, do_cfg)
    with torch.no_grad():
        embeds = encode(_padded(prompt, n))
        negative_embeds = encode(_padded(negative, n)) if do_cfg else None
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


def encode_chunked_sdxl(
    pipe: Any, plan: PromptPlan, *, do_cfg: bool, device: Any
) -> dict[str, Any]:
    """The four SDXL embeddings (prompt, negative, and their pooled forms)."""
    import torch

    pairs = [
        (tok, enc)
        for tok, enc in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        )
        if tok is not None and enc is not None
    ]
    dtype = pipe.text_encoder_2.dtype if pipe.text_encoder_2 is not None else pipe.unet.dtype

    def encode(chunks: list[str]) -> tuple[Any, Any]:
        per_encoder = []
        pooled = None
        for tokenizer, encoder in pairs:
            parts = []
            for index, text in enumerate(chunks):
                ids, _ = _token_ids(tokenizer, text)
                out = encoder(ids.to(device), output_hidden_states=True)
                if index == 0 and pooled is None and out[0].ndim == 2:
                    pooled = out[0]
                parts.append(out.hidden_states[-2])
            per_encoder.append(torch.cat(parts, dim=1))
        return torch.cat(per_encoder, dim=-1).to(dtype=dtype, device=device), pooled

    prompt, negative, n = _lengths(plan, do_cfg)
    with torch.no_grad():
        embeds, pooled = encode(_padded(prompt, n))
        negative_embeds = negative_pooled = None
        if do_cfg:
            if plan.negative_prompt is None and pipe.config.force_zeros_for_empty_prompt:
                negative_embeds = torch.zeros_like(embeds)
                negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
            else:
                negative_embeds, negative_pooled = encode(_padded(negative, n))
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }
