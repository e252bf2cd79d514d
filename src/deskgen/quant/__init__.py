"""Quantization: `QuantConfig` for quantizing a generator's components as they load, and the
helpers underneath (weight-only int8/int4/fp8 through optimum-quanto or torchao, the real memory
of a module's weights, the saved quantized format). ``method="bitsandbytes"`` (nf4/fp4/int8 as
weights load onto a CUDA GPU) and ``method="gguf"`` (the denoiser from a GGUF file) load
through diffusers' own quantizers. A leaf: it imports neither the facade nor the backends (the
memory planner is `deskgen.plan_memory`).

```python
from deskgen import DeskGenerator, QuantConfig
from deskgen.quant import save_quantized

gen = DeskGenerator("sdxl", model=..., quantization=QuantConfig(method="quanto", weights="int8"))
print(gen.memory_report().components["unet"])  # bytes now and before, "int8 (quanto)"
save_quantized(gen, "sdxl-int8")  # DeskGenerator("sdxl", model="sdxl-int8") loads it quantized
```

Nothing here imports torch, optimum-quanto, torchao, gguf or bitsandbytes before it is
called.
"""

from __future__ import annotations

from ._config import ComponentMemory, MemoryReport, QuantConfig, quantize
from ._saved import save_quantized
from ._weights import QuantBackend, WeightBits, module_bytes, quantize_weights

__all__ = [
    "ComponentMemory",
    "MemoryReport",
    "QuantBackend",
    "QuantConfig",
    "WeightBits",
    "module_bytes",
    "quantize",
    "quantize_weights",
    "save_quantized",
]
