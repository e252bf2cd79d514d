"""Where a generator's memory goes: `MemoryReport` (`DeskGenerator.memory_report`), one
`ComponentMemory` per pipeline component, quantized ones with their size before. A leaf: the
backends fill it, `deskgen.quant` and the facade return it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ._models import PeakMemory

__all__ = ["ComponentMemory", "MemoryReport"]


class ComponentMemory(BaseModel):
    """The weights of one pipeline component."""

    model_config = ConfigDict(frozen=True)

    bytes: int
    """What its weights occupy now (quantized ones counted by the data and scales they hold)."""
    bytes_before: int | None = None
    """Before quantization (``None``: not quantized)."""
    quantization: str | None = None
    """e.g. ``"int8 (quanto)"``."""

    @property
    def ratio(self) -> float | None:
        """``bytes_before / bytes``: how many times smaller quantization made it."""
        return self.bytes_before / self.bytes if self.bytes_before else None


class MemoryReport(BaseModel):
    """Where a generator's memory goes (`DeskGenerator.memory_report`)."""

    components: dict[str, ComponentMemory] = Field(default_factory=dict)
    load_peak: PeakMemory | None = None
    """Peak memory while the generator loaded (GPU allocator peak, or the process's RAM)."""

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components.values())
