from __future__ import annotations

import pytest
import torch

from deskgen import ConfigError
from deskgen._device import PeakMemorySampler, dtype_name, resolve_device, resolve_dtype


def test_cpu_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert dtype_name(torch.float16) == "float16"


def test_auto_device_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") in ("cpu", "mps")


def test_cuda_index_out_of_range_or_missing() -> None:
    with pytest.raises(ConfigError):
        resolve_device("cuda:99")


def test_peak_memory_sees_an_allocation() -> None:
    import time

    with PeakMemorySampler("cpu", interval=0.001) as baseline:
        pass
    with PeakMemorySampler("cpu", interval=0.001) as sampler:
        block = torch.ones(256 * 2**20, dtype=torch.uint8)  # 256 MiB, touched
        block.add_(1)
        time.sleep(0.05)  # let the sampler see it
        del block
    assert sampler.kind == "process_rss"
    assert sampler.peak_bytes - baseline.peak_bytes >= 200 * 2**20


def test_cuda_index_that_is_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve_device("cuda:x")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_auto_dtype_on_cuda_follows_native_bf16_support(
    capability: tuple[int, int], expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[torch.device] = []

    def fake_capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", fake_capability)
    assert resolve_dtype("auto", "cuda:1") == expected
    assert asked == [torch.device("cuda:1")]  # the chosen GPU, not the current one
