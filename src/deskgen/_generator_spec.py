"""`GeneratorSpec`: how a `DeskGenerator` was built, to build the same one elsewhere.

A loaded generator can't travel to another process (its pipeline is gigabytes of tensors, on a
device); its spec can: the constructor's arguments, what was done to its LoRAs since, and no
weights. ``DeskGenerator.spec`` gives it, `GeneratorSpec.build` loads the weights again, e.g.
once in each Ray worker of ``generate_dataset(engine="ray")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ._lora import LoraSpec
from ._planner import MemoryMode

if TYPE_CHECKING:
    from ._generator import DeskGenerator

__all__ = ["GeneratorSpec"]


class GeneratorSpec(BaseModel):
    """The arguments a `DeskGenerator` was built with and its LoRA changes since: picklable,
    without weights. ``spec.build()`` makes the same generator again (where it runs: hub ids
    are fetched or read from that machine's cache, local paths must exist there).

    The options are kept as given, API keys included: keep a spec as private as the key (its
    ``repr`` leaves the options out).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    backend: str
    model: str
    device: str = "auto"
    dtype: str = "auto"
    """As given (``"auto"`` is resolved again where the spec is built)."""
    memory: MemoryMode | None = None
    options: dict[str, Any] = Field(default_factory=dict, repr=False)
    """The backend options as given to the constructor (``loras=...`` among them)."""
    unloaded: tuple[str, ...] = ()
    """Adapters the constructor loaded that `DeskGenerator.unload_lora` removed since."""
    loras: tuple[LoraSpec, ...] = ()
    """LoRAs loaded with `DeskGenerator.load_lora` since, in order, each with its adapter name."""
    fused: dict[str, float] | None = None
    """The adapters fused into the weights, with their weights (``None``: none fused)."""

    def with_lora(self, lora: LoraSpec, name: str) -> GeneratorSpec:
        """This spec with ``lora`` loaded after the others, as adapter ``name``."""
        named = lora.model_copy(update={"adapter_name": name})
        return self.model_copy(update={"loras": (*self.loras, named)})

    def without_lora(self, name: str) -> GeneratorSpec:
        """This spec with adapter ``name`` unloaded."""
        later = [lora for lora in self.loras if lora.adapter_name != name]
        if len(later) < len(self.loras):
            return self.model_copy(update={"loras": tuple(later)})
        return self.model_copy(update={"unloaded": (*self.unloaded, name)})

    def build(self, *, device: str | None = None) -> DeskGenerator:
        """Load the generator: the constructor with these arguments, then the LoRA changes.

        Args:
            device: instead of the spec's device (e.g. ``"cuda"`` on a worker given one GPU).

        Raises:
            DeskgenError: what `DeskGenerator` and its LoRA methods raise.
        """
        from ._generator import DeskGenerator

        gen = DeskGenerator(
            self.backend,
            model=self.model,
            device=device or self.device,
            dtype=self.dtype,
            memory=self.memory,
            **self.options,
        )
        try:
            adapters = gen.backend.lora_adapters
            fused = adapters.fused if adapters is not None else None
            if fused is not None and (self.unloaded or self.loras or fused != self.fused):
                gen.unfuse_loras()
                fused = None
            for name in self.unloaded:
                gen.unload_lora(name)
            for lora in self.loras:
                gen.load_lora(lora)
            if self.fused is not None and fused != self.fused:
                gen.fuse_loras(loras=self.fused)
        except BaseException:
            gen.close()
            raise
        return gen
