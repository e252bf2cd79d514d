"""The request memory estimate (`deskgen.backends._request_memory`) against measured peaks.

Each phase of a request runs alone in a fresh process on SD 1.5's real VAE and UNet (random
weights, float32, CPU): the VAE decode, the VAE encode of an img2img photo and one UNet step
(batch 2: classifier-free guidance), at two sizes. The process's resident memory is sampled
every 3 ms; the peak over the baseline (weights loaded) is the phase's working memory, compared
with the phase's estimate plus the fixed allowance every request gets (`FIXED_BYTES`), as the
check compares them. PASS when every estimate covers its measured peak, and at the largest size
stays within 2x of it (refusing requests that would fit is the other way to fail; at small sizes
the fixed allowance dominates).

    .venv/bin/python benchmarks/request_memory.py            # 256 and 512 px (about a minute)
    .venv/bin/python benchmarks/request_memory.py --sizes 512 768
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent

_PHASE = r"""
import gc, json, sys, threading
sys.path.insert(0, {here!r})
import psutil, torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from presets import SD15_UNET, SD_VAE
phase, size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = (AutoencoderKL(**SD_VAE) if phase != "unet" else UNet2DConditionModel(**SD15_UNET)).eval()
n = size // 8
if phase == "decode":
    x = torch.randn(1, 4, n, n); run = lambda: model.decode(x).sample
elif phase == "encode":
    x = torch.randn(1, 3, size, size); run = lambda: model.encode(x).latent_dist.sample()
else:
    x = torch.randn(2, 4, n, n); text = torch.randn(2, 77, 768)
    run = lambda: model(x, 10, text).sample
gc.collect()
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
stop = threading.Event()
def sample():
    while not stop.wait(0.003):
        peak[0] = max(peak[0], proc.memory_info().rss)
thread = threading.Thread(target=sample)
thread.start()
with torch.no_grad():
    run()
stop.set(); thread.join()
print(json.dumps({{"bytes": peak[0] - base}}))
"""


def measured(phase: str, size: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PHASE.format(here=str(HERE)), phase, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["bytes"])


def estimated(phase: str, size: int) -> int:
    from presets import SD15_UNET, SD_VAE  # type: ignore[import-not-found]

    from deskgen.backends._request_memory import FIXED_BYTES, estimate_request_memory

    # what the estimate reads of a pipeline: its components' configs and the VAE's scale
    with_configs = SimpleNamespace(
        vae=SimpleNamespace(config=SimpleNamespace(**SD_VAE)),
        unet=SimpleNamespace(config=SimpleNamespace(**SD15_UNET)),
        vae_scale_factor=8,
    )
    estimate = estimate_request_memory(
        with_configs,
        denoiser="unet",
        width=size,
        height=size,
        images=1,
        guidance_branches=2,
        img2img=phase == "encode",
        element_bytes=4,
        vae_element_bytes=4,
    )
    phases = {"decode": estimate.vae_decode, "encode": estimate.vae_encode}
    return phases.get(phase, estimate.denoise) + FIXED_BYTES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    ok = True
    print("| phase | size | measured MiB | estimated MiB | estimate / measured |")
    print("|---|---|---|---|---|")
    for phase in ("decode", "encode", "unet"):
        for size in args.sizes:
            real = measured(phase, size)
            guess = estimated(phase, size)
            ratio = guess / real if real > 0 else float("inf")
            ok &= ratio >= 1.0 and (size != max(args.sizes) or ratio <= 2.0)
            print(f"| {phase} | {size} | {real / 2**20:.0f} | {guess / 2**20:.0f} | {ratio:.2f} |")
    print("PASS" if ok else "FAIL: an estimate is under its peak, or over 2x it at the top size")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
