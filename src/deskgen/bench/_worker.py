"""``python -m deskgen.bench._worker``: one isolated benchmark configuration. Reads the job as
JSON on stdin (config, entry index, image and row paths), measures it, writes the row."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    from ..cli import _quiet_libraries
    from ._config import BenchConfig
    from ._run import measure, write_row

    job = json.loads(sys.stdin.read())
    config = BenchConfig.model_validate(job["config"])
    _quiet_libraries()
    row = measure(config, config.runs[job["index"]], Path(job["image_path"]))
    write_row(row, Path(job["result_path"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
