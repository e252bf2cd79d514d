"""LoRA adapters on a diffusers pipeline: checked before they are applied, chosen per request.

- **Loading.** `deskgen._lora.inspect_lora` finds the file and checks its format by its bytes
  (pickle refused unless allowed); the tensors are read once; diffusers' own key conversion
  (kohya ``lora_unet_``/``lora_te1_``/``lora_te2_`` with alphas, SGM block names, the diffusers
  and peft layouts) runs on a copy; then every LoRA module must exist in the pipeline with the
  LoRA's shapes, or `LoraMismatchError` says why and the pipeline is not touched. Only then
  ``load_lora_weights`` applies it, and the LoRA layers it made are counted against the check:
  anything dropped deletes the adapter again.
- **Per-request adapters.** Adapters are state of the shared modules (peft#804), so a gate
  admits requests in arrival order: those that need the same adapter weights run together, one
  that needs others waits for them to finish, then ``set_adapters`` switches; loading, unloading
  and fusing wait for every running request.
- **Fusing** merges adapters into the weights (no LoRA matmuls per step); until unfused,
  requests must use exactly the fused weights.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._exceptions import (
    DeskgenError,
    InvalidRequestError,
    LoraMismatchError,
    ModelLoadError,
    UnsupportedOperationError,
)
from ..._lora import LoadedLora, LoraBase, LoraSpec, inspect_lora, read_lora_tensors
from ..._quiet import quiet_logs

if TYPE_CHECKING:
    import torch

__all__ = ["LoraAdapters"]

Weights = tuple[tuple[str, float], ...]
"""Adapter weights as the gate compares them: sorted (name, weight) pairs."""

_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
_DENOISERS = ("unet", "transformer")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<kind>weight|bias)$")
_BASE_NAMES = {"sdxl": "SDXL", "sd1": "SD 1.x", "sd2": "SD 2.x", "unknown": "an unknown model"}


class _Gate:
    """Admits users in arrival order. Users with the same key share; one with another key waits
    until they leave. ``admit(key, current)`` runs under the gate's lock when a user is let in,
    with the key the pipeline is in (``None``: unknown), and returns the key it is in now (it
    switches, or raises to refuse the user). ``exclusive`` waits for everyone; afterwards the
    pipeline's key is unknown. A waiter interrupted (e.g. Ctrl-C) gives up its turn."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._key: Any = None
        self._users = 0
        self._exclusive = False
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def _take_ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    def _done_waiting(self, ticket: int) -> None:
        """``ticket`` leaves the queue (admitted, refused or interrupted); under the lock."""
        if ticket == self._serving:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
        else:
            self._abandoned.add(ticket)
        self._cond.notify_all()

    @contextlib.contextmanager
    def shared(self, key: Any, admit: Callable[[Any, Any], Any]) -> Iterator[None]:
        with self._cond:
            ticket = self._take_ticket()
            try:
                while not (
                    ticket == self._serving
                    and not self._exclusive
                    and (self._users == 0 or self._key == key)
                ):
                    self._cond.wait()
                current, self._key = self._key, None  # unknown if admit fails half-way
                self._key = admit(key, current)
                self._users += 1
            finally:
                self._done_waiting(ticket)
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            ticket = self._take_ticket()
            try:
                while not (ticket == self._serving and not self._exclusive and self._users == 0):
                    self._cond.wait()
                self._exclusive = True
            finally:
                self._done_waiting(ticket)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._key = None  # the adapters changed: the next request sets its own
                self._cond.notify_all()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence what loading an adapter says that is no news: transformers' load report (every
    base weight "MISSING" from the LoRA), diffusers' note on encoders a LoRA leaves alone ("No
    LoRA keys associated to CLIPTextModel..."), and peft's warning about a second adapter."""
    with quiet_logs(transformers=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield


def _model_base(pipe: Any) -> LoraBase:
    if type(pipe).__name__.startswith("StableDiffusionXL"):
        return "sdxl"
    if getattr(pipe, "unet", None) is None:  # transformer models: checked by names and shapes
        return "unknown"
    width = getattr(pipe.unet.config, "cross_attention_dim", None)
    return "sd2" if width == 1024 else "sd1" if width == 768 else "unknown"


def _adapter_name(spec: LoraSpec, path: Path) -> str:
    if spec.adapter_name is not None:
        return spec.adapter_name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:64].strip("_") or "lora"


class LoraAdapters:
    """The LoRA adapters of one pipeline (its modules are shared by every pipeline view)."""

    def __init__(self, pipe: Any, *, backend: str, quantized: list[str] | None = None) -> None:
        self._pipe = pipe
        self._backend = backend
        self._quantized = quantized or []
        self._loaded: dict[str, LoadedLora] = {}
        self._fused: Weights | None = None
        self._pinned: str | None = None
        self._required: dict[str, str] = {}
        self._gate = _Gate()
        self._components = [
            name
            for name in _COMPONENTS
            if getattr(pipe, name, None) is not None
            and name in getattr(pipe, "_lora_loadable_modules", ())
        ]

    # -- what is loaded ----------------------------------------------------------------------

    @property
    def loaded(self) -> list[LoadedLora]:
        return list(self._loaded.values())

    @property
    def fused(self) -> dict[str, float] | None:
        return dict(self._fused) if self._fused is not None else None

    def require(self, name: str, reason: str) -> None:
        """Every request uses adapter ``name`` (at its weight unless the request gives one)
        and it can't be unloaded, for ``reason`` (e.g. a preset's distillation LoRA)."""
        self._required[name] = reason

    def resolve(self, requested: dict[str, float] | None) -> dict[str, float]:
        """The adapter weights a request runs with, in loading order (which orders trigger
        words and records, whatever order a request names them in): ``None`` is every loaded
        adapter at its own weight (the fused ones while fused); names must be loaded.
        Required adapters (`require`) are added at their weight when a request leaves them
        out."""
        if requested is None:
            if self._fused is not None:
                fused = dict(self._fused)
                return {name: fused[name] for name in self._loaded if name in fused}
            return {name: lora.weight for name, lora in self._loaded.items()}
        unknown = sorted(set(requested) - set(self._loaded))
        if unknown:
            have = ", ".join(self._loaded) or "none"
            raise InvalidRequestError(
                f"loras names adapters that are not loaded: {', '.join(unknown)} (loaded: "
                f"{have}). Load them first with gen.load_lora(LoraSpec(...)), or leave them out."
            )
        requested = {
            **{n: self._loaded[n].weight for n in self._required if n not in requested},
            **requested,
        }
        return {name: requested[name] for name in self._loaded if name in requested}

    def trigger_words(self, weights: dict[str, float]) -> list[str]:
        """The trigger words of the adapters a request uses (weight other than 0)."""
        return [word for lora in self.used(weights) for word in lora.trigger_words]

    def used(self, weights: dict[str, float]) -> list[LoadedLora]:
        """The adapters a request uses (weight other than 0), in loading order, each with the
        request's weight."""
        return [
            lora.model_copy(update={"weight": weights[name]})
            for name, lora in self._loaded.items()
            if weights.get(name, 0) != 0
        ]

    # -- per request -------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, weights: dict[str, float]) -> Iterator[None]:
        """Hold the pipeline's adapters at ``weights`` while the body runs. Whether the LoRAs
        are fused, and which are loaded, is checked once the request is let in: loading,
        unloading and fusing happen only while no request runs."""
        key: Weights = tuple(sorted((n, float(w)) for n, w in weights.items() if w != 0))
        with self._gate.shared(key, self._admit):
            yield

    def _admit(self, key: Weights, current: Weights | None) -> Weights:
        """Put the pipeline in ``key``'s state for a request let in (under the gate's lock)."""
        missing = [name for name, _ in key if name not in self._loaded]
        if missing:
            raise InvalidRequestError(
                f"The LoRA(s) {', '.join(missing)} were unloaded while this request waited: "
                "load them again, or leave them out of loras."
            )
        if self._fused is not None:
            fused = tuple(sorted((n, w) for n, w in self._fused if w != 0))
            if key != fused:
                raise InvalidRequestError(
                    f"The LoRAs are fused as {dict(self._fused)}; this request asks for "
                    f"{dict(key) or 'none'}. Leave loras unset, or call gen.unfuse_loras() "
                    "first to choose adapters per request."
                )
            return key  # the fused weights are the state; adapters must not be touched
        if key != current and self._loaded:
            self._switch(key)
        return key

    def _switch(self, key: Weights) -> None:
        pipe = self._pipe
        if not key:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([name for name, _ in key], [weight for _, weight in key])

    # -- changes -----------------------------------------------------------------------------

    def exclusive(self) -> Any:
        """Hold every request back while the pipeline's weights change (e.g. quantization)."""
        return self._gate.exclusive()

    def pin(self, reason: str) -> None:
        """The adapters can't change from here on (loading, unloading, fusing, unfusing are
        refused with ``reason``), e.g. once the projections they change are fused."""
        self._pinned = reason

    def _check_pinned(self) -> None:
        if self._pinned is not None:
            raise UnsupportedOperationError(f"LoRAs can't change now: {self._pinned}")

    def mark_quantized(self, components: list[str]) -> None:
        """The weights of ``components`` are quantized now: LoRAs are refused from here on."""
        self._quantized = components

    def load(self, spec: LoraSpec) -> LoadedLora:
        """Check a LoRA against the pipeline and apply it (see the module's docstring).

        Raises:
            ModelNotFoundError, ModelLoadError: the file (see `inspect_lora`).
            LoraMismatchError: made for another base model, or names modules or shapes this
                model lacks; nothing was applied.
            InvalidRequestError: the adapter name is taken, or LoRAs are fused.
        """
        self._check_pinned()
        if self._quantized:
            raise UnsupportedOperationError(
                f"This generator's {', '.join(self._quantized)} weights are quantized, and LoRAs "
                "can't be applied to quantized weights: to use LoRAs, load the original, "
                "unquantized model (without quantization=..., not a saved quantized folder)."
            )
        info = inspect_lora(spec)
        name = _adapter_name(spec, info.path)
        tensors, (digest, tensor_digest), info = read_lora_tensors(info)
        expected = self._check(tensors, info.base, info.path)
        with self._gate.exclusive():
            if name in self._loaded:
                raise InvalidRequestError(
                    f"An adapter named {name!r} is already loaded: pass "
                    f"LoraSpec(..., adapter_name='another_name'), or unload_lora({name!r}) first."
                )
            if self._fused is not None:
                raise InvalidRequestError(
                    "LoRAs are fused into the weights: call gen.unfuse_loras() before loading "
                    "another, then fuse again."
                )
            self._apply(name, tensors, expected, info.path)
            lora = LoadedLora(
                name=name,
                path=str(info.path),
                weight=spec.weight,
                trigger_words=(
                    spec.trigger_words if spec.trigger_words is not None else info.trigger_words
                ),
                sha256=digest,
                tensor_sha256=tensor_digest,
                layout=info.layout,
                base=info.base,
                rank=info.rank,
                components=tuple(sorted(expected)),
            )
            self._loaded[name] = lora
        return lora

    def unload(self, name: str) -> None:
        self._check_pinned()
        if name in self._required:
            raise UnsupportedOperationError(
                f"The LoRA {name!r} can't be unloaded: {self._required[name]}. Create a "
                "generator without it instead."
            )
        with self._gate.exclusive():
            if name not in self._loaded:
                have = ", ".join(sorted(self._loaded)) or "none"
                raise InvalidRequestError(f"No adapter named {name!r} is loaded (loaded: {have}).")
            if self._fused is not None:
                raise InvalidRequestError(
                    "LoRAs are fused into the weights: call gen.unfuse_loras() before unloading."
                )
            self._pipe.delete_adapters([name])
            del self._loaded[name]

    def fuse(self, weights: dict[str, float]) -> None:
        self._check_pinned()
        with self._gate.exclusive():
            if self._fused is not None:
                raise InvalidRequestError(
                    "LoRAs are already fused: call gen.unfuse_loras() first to fuse others."
                )
            key: Weights = tuple(sorted((n, float(w)) for n, w in weights.items() if w != 0))
            if not key:
                raise InvalidRequestError(
                    "Nothing to fuse: load a LoRA first, or give a weight other than 0."
                )
            self._switch(key)
            try:
                self._pipe.fuse_lora(
                    components=self._components,
                    lora_scale=1.0,
                    adapter_names=[name for name, _ in key],
                )
            except Exception:
                with contextlib.suppress(Exception):
                    self._pipe.unfuse_lora(components=self._components)
                raise
            self._fused = key

    def unfuse(self) -> None:
        with self._gate.exclusive():
            if self._fused is None:
                return
            self._check_pinned()
            self._pipe.unfuse_lora(components=self._components)
            self._fused = None

    # -- checking and applying ---------------------------------------------------------------

    def _convert(
        self, tensors: dict[str, torch.Tensor], path: Path
    ) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
        """The LoRA's tensors per pipeline component, in peft's layout, as diffusers converts
        them when it loads the file; and the keys diffusers would give to no component."""
        from diffusers.utils import (
            convert_state_dict_to_diffusers,
            convert_state_dict_to_peft,
            convert_unet_state_dict_to_peft,
        )

        pipe = self._pipe
        try:
            unet = getattr(pipe, "unet", None)
            extra = {"unet_config": unet.config} if unet is not None else {}
            read = pipe.lora_state_dict(dict(tensors), **extra)
            # (state, alphas) from the UNet families' loaders, the state alone from the others'
            state = read[0] if isinstance(read, tuple) else read
        except Exception as exc:  # diffusers' conversion refused the keys
            raise LoraMismatchError(
                f"diffusers can't read the LoRA {str(path)!r} ({type(exc).__name__}: {exc}). "
                "It may be a LoRA for another kind of model, or a variant diffusers does not "
                "convert (LyCORIS/LoHa); use a LoRA in the kohya or diffusers layout."
            ) from exc
        parts: dict[str, dict[str, torch.Tensor]] = {}
        unknown: list[str] = []
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix in self._components and rest:
                parts.setdefault(prefix, {})[rest] = value
            else:
                unknown.append(key)
        for component, part in parts.items():
            try:
                if component in _DENOISERS:
                    if "lora_A" not in next(iter(part)):
                        part = convert_unet_state_dict_to_peft(part)
                else:
                    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
                    if not hasattr(getattr(pipe, component), "text_model"):
                        part = {k.removeprefix("text_model."): v for k, v in part.items()}
            except Exception as exc:
                raise LoraMismatchError(
                    f"diffusers can't read the {component} part of the LoRA {str(path)!r} "
                    f"({type(exc).__name__}: {exc}); use a LoRA in the kohya or diffusers layout."
                ) from exc
            parts[component] = part
        return parts, unknown

    def _check(
        self, tensors: dict[str, torch.Tensor], base: LoraBase, path: Path
    ) -> dict[str, set[str]]:
        """The modules per component the LoRA changes, once every one is known to fit."""
        import torch

        model_base = _model_base(self._pipe)
        if "unknown" not in (base, model_base) and base != model_base:
            raise LoraMismatchError(
                f"{path.name!r} is a LoRA for {_BASE_NAMES[base]}, but this {self._backend!r} "
                f"model is {_BASE_NAMES[model_base]}: use a LoRA made for "
                f"{_BASE_NAMES[model_base]}."
            )
        parts, unknown = self._convert(tensors, path)
        problems: list[str] = [f"{key}: no pipeline module takes it" for key in unknown]
        expected: dict[str, set[str]] = {}
        for component, part in parts.items():
            model = getattr(self._pipe, component)
            for key, value in part.items():
                match = _PEFT_KEY.match(key)
                if match is None:
                    problems.append(f"{component}.{key}: not a LoRA weight")
                    continue
                module_name = match["module"]
                try:
                    module = model.get_submodule(module_name)
                except AttributeError:
                    problems.append(f"{component}.{module_name}: no such module")
                    continue
                if hasattr(module, "get_base_layer"):  # wrapped by an adapter loaded before
                    module = module.get_base_layer()
                if isinstance(module, torch.nn.Linear):
                    fan_in, fan_out = module.in_features, module.out_features
                elif isinstance(module, torch.nn.Conv2d):
                    fan_in, fan_out = module.in_channels, module.out_channels
                else:
                    problems.append(
                        f"{component}.{module_name}: a {type(module).__name__}, which a LoRA "
                        "can't change"
                    )
                    continue
                shape = tuple(value.shape)
                if match["kind"] == "bias":
                    fits = shape == (fan_out,)
                elif match["part"] == "lora_A":
                    fits = len(shape) >= 2 and shape[1] == fan_in
                else:
                    fits = len(shape) >= 2 and shape[0] == fan_out
                if not fits:
                    problems.append(
                        f"{component}.{module_name}: {match['part']} of shape {list(shape)} "
                        f"does not fit a layer of {fan_in} -> {fan_out}"
                    )
                    continue
                expected.setdefault(component, set()).add(module_name)
        if problems:
            shown = "; ".join(problems[:3]) + (
                f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            raise LoraMismatchError(
                f"{path.name!r} does not fit this {self._backend!r} model ({len(problems)} "
                f"problem(s): {shown}). It was made for another base model or architecture: "
                "use a LoRA trained on this model's family. Nothing was applied."
            )
        if not expected:
            raise LoraMismatchError(f"{path.name!r} changes no module of this model.")
        return expected

    def _layers(self, name: str) -> dict[str, set[str]]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        found: dict[str, set[str]] = {}
        for component in self._components:
            for module_name, module in getattr(self._pipe, component).named_modules():
                if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                    found.setdefault(component, set()).add(module_name)
        return found

    def _apply(
        self,
        name: str,
        tensors: dict[str, torch.Tensor],
        expected: dict[str, set[str]],
        path: Path,
    ) -> None:
        pipe = self._pipe
        try:
            with _quiet_transformers():  # its load report lists every base weight as MISSING
                pipe.load_lora_weights(dict(tensors), adapter_name=name)
            found = self._layers(name)
            if found != expected:
                missing = sorted(
                    f"{c}.{m}" for c, mods in expected.items() for m in mods - found.get(c, set())
                )
                raise LoraMismatchError(
                    f"diffusers applied only part of {path.name!r} (left out: "
                    f"{', '.join(missing[:3]) or 'none'}...); it was not loaded."
                )
        except DeskgenError:
            self._delete(name)
            raise
        except Exception as exc:
            self._delete(name)
            raise ModelLoadError(
                f"Could not apply the LoRA {path.name!r} ({type(exc).__name__}: {exc}); the "
                "pipeline was left as it was."
            ) from exc
        # a new adapter becomes active alone: the gate sets every request's own adapters
        pipe.disable_lora()

    def _delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self._pipe.delete_adapters([name])
