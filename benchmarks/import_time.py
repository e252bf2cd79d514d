"""How long `import deskgen` takes, against importing only its dependencies (pydantic, Pillow).

Each figure is the median of fresh interpreters; the interpreter's own start-up is subtracted.
Also checks that the import pulls in none of torch, diffusers, transformers, openai.

    .venv/bin/python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "diffusers", "transformers", "openai", "numpy")


def _time(code: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    check = (
        "import sys, deskgen; deskgen.list_backends(); "
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]; "
        "sys.exit('heavy imports: ' + ', '.join(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", check], check=True)

    bare = _time("pass", args.runs)
    deps = _time("import pydantic, PIL.Image, PIL.PngImagePlugin", args.runs) - bare
    deskgen = _time("import deskgen; deskgen.list_backends()", args.runs) - bare
    print(f"import deskgen (+ list_backends): {deskgen * 1000:.0f} ms")
    print(f"import its dependencies alone:    {deps * 1000:.0f} ms")
    print(f"ratio deskgen / dependencies:     {deskgen / deps:.2f}")
    print(f"heavy modules imported:           none of {', '.join(HEAVY)}")


if __name__ == "__main__":
    main()
