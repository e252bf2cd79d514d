"""Performance presets and speed options of the diffusers backends.

A preset sets the defaults a request leaves ``None`` (steps, guidance) and the scheduler; the
speed options change how the denoiser runs, not what it computes (up to float rounding):

=========== ==============================================================================
``quality`` the model's own scheduler at 50 steps: the most detail, the slowest
``balanced`` DPM++ 2M with Karras sigmas (``DPMSolverMultistepScheduler``) at 25 steps
``fast``    a few-step distillation LoRA (LCM, SDXL-Lightning, Hyper-SD, TCD) given as a file,
            fused, with the scheduler, steps and guidance it was distilled for
=========== ==============================================================================

``None`` (no preset) keeps the backend's defaults (30 steps, the model's scheduler).

Speed options: ``compile`` (``torch.compile`` of the denoiser, in place), ``channels_last``
(UNet and VAE memory format), ``fuse_qkv`` (diffusers' fused QKV projections) and
``attention`` (``sdpa``: PyTorch's scaled-dot-product attention, diffusers' default;
``eager``: the classic matmul-softmax processor, for comparison).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..._exceptions import ConfigError
from ..._lora import LoraSpec

__all__ = [
    "DISTILLATION",
    "PRESETS",
    "SPEED_OPTIONS",
    "CompileMode",
    "DistillKind",
    "Preset",
    "Recipe",
    "apply_speed_options",
    "distill_kind",
    "preset_recipe",
    "use_scheduler",
]

SPEED_OPTIONS = frozenset({"compile", "channels_last", "fuse_qkv", "attention"})
"""The `DiffusersOptions` fields that change how the denoiser runs (`apply_speed_options`)."""

Preset = Literal["quality", "balanced", "fast"]
DistillKind = Literal["lcm", "lightning", "hyper-sd", "tcd"]


@dataclass(frozen=True)
class Recipe:
    """What a preset sets: defaults for requests that leave them ``None``, and the scheduler."""

    steps: int
    guidance: float | None
    """``None``: the backend's default guidance."""
    scheduler: str | None
    """A diffusers scheduler class, made ``from_config`` of the model's; ``None``: the model's."""
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)
    """Extra pipeline call arguments (e.g. TCD's ``eta``)."""

    def describe(self) -> str:
        scheduler = self.scheduler or "the model's scheduler"
        extra = "".join(f", {k}={v}" for k, v in self.scheduler_config.items())
        guidance = "" if self.guidance is None else f", guidance {self.guidance:g}"
        return f"{scheduler}{extra}, {self.steps} steps{guidance}"


PRESETS: dict[str, Recipe] = {
    "quality": Recipe(steps=50, guidance=None, scheduler=None),
    "balanced": Recipe(
        steps=25,
        guidance=None,
        scheduler="DPMSolverMultistepScheduler",
        scheduler_config={"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
}
"""The presets that need no extra weights."""

DISTILLATION: dict[DistillKind, Recipe] = {
    # latent-consistency/lcm-lora-sdxl, lcm-lora-sdv1-5: LCMScheduler, 2-8 steps, guidance 1-2
    "lcm": Recipe(steps=4, guidance=1.0, scheduler="LCMScheduler"),
    # ByteDance/SDXL-Lightning: Euler with trailing timesteps, no CFG; steps in the file name
    "lightning": Recipe(
        steps=4,
        guidance=0.0,
        scheduler="EulerDiscreteScheduler",
        scheduler_config={"timestep_spacing": "trailing"},
    ),
    # ByteDance/Hyper-SD N-step LoRAs: DDIM with trailing timesteps, no CFG (the 1-step
    # unified LoRA: TCD with eta 1.0, see preset_recipe)
    "hyper-sd": Recipe(
        steps=8,
        guidance=0.0,
        scheduler="DDIMScheduler",
        scheduler_config={"timestep_spacing": "trailing"},
    ),
    # h1t/TCD-SDXL-LoRA: TCDScheduler, eta 0.3 (lower: more detail), no CFG
    "tcd": Recipe(steps=4, guidance=0.0, scheduler="TCDScheduler", call={"eta": 0.3}),
}
"""The scheduler, steps and guidance each kind of few-step LoRA was distilled for (from the
LoRAs' model cards)."""

_KIND_WORDS: tuple[tuple[str, DistillKind], ...] = (
    ("lightning", "lightning"),
    ("hyper", "hyper-sd"),
    ("tcd", "tcd"),
    ("lcm", "lcm"),
)
_STEPS = re.compile(r"(\d+)[-_ ]?steps?", re.IGNORECASE)


def distill_kind(name: str | Path) -> DistillKind | None:
    """The kind of a distillation LoRA from a file or repo name (its last part only), e.g.
    ``sdxl_lightning_4step_lora.safetensors`` -> ``lightning``; ``None`` when the name says
    none."""
    last = Path(name).name.lower()
    return next((kind for word, kind in _KIND_WORDS if word in last), None)


def _names(lora: str | Path | LoraSpec) -> list[str]:
    """The names that may say a LoRA's kind and steps, most specific first: the file, then the
    folder or hub repo it is in (``latent-consistency/lcm-lora-sdxl``)."""
    if isinstance(lora, LoraSpec):
        names = [lora.weight_name] if lora.weight_name else []
        return [*names, Path(lora.path).name]
    return [Path(lora).name]


def preset_recipe(
    preset: Preset, *, kind: DistillKind | None = None, lora: str | Path | LoraSpec | None = None
) -> Recipe:
    """The recipe of ``preset``; ``fast`` needs the distillation LoRA's ``kind``, or a ``lora``
    whose file (or folder/repo) name says it. Steps in the name (``4step``, ``8-steps``) win
    over the kind's default; Hyper-SD's CFG-preserving LoRAs (``CFG`` in the name) keep the
    backend's guidance.

    Raises:
        ConfigError: ``fast`` without a LoRA, or a LoRA whose kind is not known.
    """
    if preset != "fast":
        return PRESETS[preset]
    if lora is None:
        raise ConfigError(
            "preset='fast' runs a few-step distillation LoRA: pass distill_lora= the path of an "
            "LCM, SDXL-Lightning, Hyper-SD or TCD LoRA for this model (e.g. "
            "latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors), or use "
            "preset='balanced'."
        )
    names = _names(lora)
    kind = kind or next((k for k in map(distill_kind, names) if k is not None), None)
    if kind is None:
        raise ConfigError(
            f"Can't tell which distillation {names[0]!r} is from its name: pass "
            "distill_kind='lcm', 'lightning', 'hyper-sd' or 'tcd'."
        )
    recipe = DISTILLATION[kind]
    found = next((m for m in map(_STEPS.search, names) if m is not None), None)
    steps = int(found.group(1)) if found else recipe.steps
    cfg = any("cfg" in name.lower() for name in names)
    guidance = None if kind == "hyper-sd" and cfg else recipe.guidance
    if kind == "hyper-sd" and steps == 1:  # the 1-step unified LoRA: TCD with eta 1.0
        recipe = Recipe(steps=1, guidance=0.0, scheduler="TCDScheduler", call={"eta": 1.0})
    return dataclasses.replace(recipe, steps=steps, guidance=guidance)


def use_scheduler(pipe: Any, recipe: Recipe) -> None:
    """Give ``pipe`` the recipe's scheduler, made from the model's scheduler config (so the
    model's own training settings, e.g. ``prediction_type``, carry over)."""
    if recipe.scheduler is None:
        return
    import diffusers

    cls = getattr(diffusers, recipe.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **recipe.scheduler_config)


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def apply_speed_options(
    pipe: Any,
    *,
    denoiser: str,
    compile: bool,
    compile_mode: CompileMode,
    channels_last: bool,
    fuse_qkv: bool,
    attention: Literal["sdpa", "eager"],
) -> list[str]:
    """Apply the speed options to a placed pipeline; returns what was applied, in words."""
    import torch

    done: list[str] = []
    model = getattr(pipe, denoiser)
    if attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        model.set_attn_processor(AttnProcessor())
        done.append("eager attention")
    if fuse_qkv:
        pipe.fuse_qkv_projections()
        done.append("fused QKV projections")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if getattr(pipe, "vae", None) is not None:
            pipe.vae.to(memory_format=torch.channels_last)
        done.append("channels_last")
    if compile:
        # in place: the module keeps its class and config (pipelines read them)
        model.compile(mode=compile_mode)
        done.append(f"torch.compile({denoiser}, mode={compile_mode!r})")
    return done
