"""Benchmarks and side-by-side comparisons: the seed's model table as numbers anyone can rerun.

```python
from deskgen.bench import BenchConfig, BenchEntry, run_bench, write_comparison

config = BenchConfig(
    prompt="a tidy minimalist desk, warm light",
    image="desk.jpg",
    runs=[
        BenchEntry(backend="sdxl", options={"preset": "balanced"}),
        BenchEntry(backend="sdxl", label="int8", options={"quantization": {"weights": "int8"}}),
    ],
)
report = run_bench(config, out="bench-out")  # bench.md / bench.csv / bench.json + images
print(report.to_markdown())
write_comparison(report, "bench-out")  # sheet.png and report.html
```

With ``BenchConfig(mask="auto", ...)`` (or a mask image's path) every run from the photo changes
only the desk, all with the same mask, and the table adds the structure kept outside and inside
it (`masked_edge_ssim`); the HTML report has a before/after slider for each run.

Nothing here imports torch before it runs a configuration.
"""

from __future__ import annotations

from ._config import BenchConfig, BenchEntry, load_bench_config
from ._quality import ClipScorer, edge_ssim, masked_edge_ssim
from ._report import BenchMode, BenchReport, BenchRow
from ._run import run_bench
from ._sheet import contact_sheet, html_report, write_comparison

__all__ = [
    "BenchConfig",
    "BenchEntry",
    "BenchMode",
    "BenchReport",
    "BenchRow",
    "ClipScorer",
    "contact_sheet",
    "edge_ssim",
    "html_report",
    "load_bench_config",
    "masked_edge_ssim",
    "run_bench",
    "write_comparison",
]
