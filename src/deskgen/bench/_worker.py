"""``python -m deskgen.bench._worker``: one isolated benchmark configuration. Reads the job as
JSON on stdin (config, entry index, image and row paths, the mask found for every run),
measures it, writes the row; with ``progress`` in the job, one line per stage on stdout
(`deskgen.bench._run.progress_line`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    from ..cli._options import _quiet_libraries
    from ._config import BenchConfig
    from ._run import Stage, measure, progress_line, write_row

    job = json.loads(sys.stdin.read())
    config = BenchConfig.model_validate(job["config"])
    _quiet_libraries()

    def report(stage: Stage, index: int, count: int, seconds: float | None) -> None:
        # a line of its own on stdout, which the parent reads as the work goes on
        sys.stdout.write(progress_line(stage, index, count, seconds))
        sys.stdout.flush()

    progress = report if job.get("progress") else None
    row = measure(
        config,
        config.runs[job["index"]],
        Path(job["image_path"]),
        progress=progress,
        found_mask=job.get("found_mask"),
    )
    write_row(row, Path(job["result_path"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
