"""Quantization helpers: weight-only int8/int4 through optimum-quanto or torchao, and the real
memory of a module's weights.

```python
from deskgen.quant import module_bytes, quantize_weights

before = module_bytes(llama)
used = quantize_weights(llama, weights="int8")  # "quanto" or "torchao", whichever is installed
print(used, before, module_bytes(llama))         # about 2x smaller for int8, 3-4x for int4
```

Nothing here imports torch, optimum-quanto or torchao before it is called.
"""

from __future__ import annotations

from ._weights import QuantBackend, WeightBits, module_bytes, quantize_weights

__all__ = ["QuantBackend", "WeightBits", "module_bytes", "quantize_weights"]
