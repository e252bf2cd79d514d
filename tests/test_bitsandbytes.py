"""bitsandbytes (``QuantConfig(method="bitsandbytes", weights="nf4"|"fp4"|"int8")``): the
configs of each component's own library, refusals before any weight loads where it can't run
(not installed; no CUDA/XPU GPU, as on this CPU-only torch build), what its weights really
hold (bitsandbytes' CPU kernels quantize single layers here), and the planner's sizes.

Loading a pipeline with it needs a CUDA GPU (diffusers' bitsandbytes quantizer refuses any
other device): that path runs on GPU machines only, in the test at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deskgen import ConfigError, DeskGenerator, MissingDependencyError, QuantConfig, plan_memory
from deskgen.backends._profile import GiB

NO_GPU = not __import__("torch").cuda.is_available()


def test_quant_config_takes_bitsandbytes_types() -> None:
    from pydantic import ValidationError

    assert QuantConfig(method="bitsandbytes").weights == "nf4"
    assert QuantConfig(method="bitsandbytes", weights="int8").label == "int8 (bitsandbytes)"
    assert QuantConfig(method="bitsandbytes", weights="fp4").weights == "fp4"
    for kwargs, words in [
        ({"weights": "int4"}, "'nf4' \\(the default\\), 'fp4' or 'int8'"),
        ({"activations": "int8"}, "activations= and exclude= are for quanto/torchao"),
        ({"exclude": ("conv_out",)}, "activations= and exclude="),
        ({"file": "x.gguf"}, "file= is for method='gguf'"),
    ]:
        with pytest.raises(ValidationError, match=words):
            QuantConfig(method="bitsandbytes", **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
def test_without_a_gpu_it_is_refused_before_any_weight_loads(tmp_path: Path) -> None:
    # the model folder does not exist: the refusal comes before the model is even looked for
    with pytest.raises(ConfigError, match="sees no CUDA or XPU GPU here") as info:
        DeskGenerator(
            "sdxl",
            model=str(tmp_path / "nowhere"),
            device="cpu",
            quantization=QuantConfig(method="bitsandbytes"),
        )
    assert "QuantConfig(method='gguf'" in str(info.value)  # what runs here instead


def test_on_a_gpu_machine_the_device_must_be_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from deskgen.quant._weights import check_bitsandbytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    with pytest.raises(ConfigError, match="the device is 'cpu'"):
        check_bitsandbytes("cpu")
    check_bitsandbytes("cuda:0")  # taken


def test_without_bitsandbytes_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_sdxl_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'deskgen\[bitsandbytes\]'"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=QuantConfig(method="bitsandbytes", weights="int8"),
        )


def test_components_it_cannot_quantize_are_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
) -> None:
    """Past the GPU check (let through here, as on a GPU machine), and before any weight is
    read: a component the profile does not quantize, and one loaded apart from an option."""
    import deskgen.quant._weights

    monkeypatch.setattr(deskgen.quant._weights, "check_bitsandbytes", lambda device: None)
    with pytest.raises(ConfigError, match="not tokenizer: choose components"):
        DeskGenerator(
            "sdxl",
            model=str(tiny_sdxl_path),
            device="cpu",
            quantization=QuantConfig(method="bitsandbytes", components=("unet", "tokenizer")),
        )
    with pytest.raises(ConfigError, match="controlnet is loaded from an option already"):
        DeskGenerator(
            "sdxl-controlnet",
            model=str(tiny_sdxl_path),
            controlnet=str(tiny_control_paths["canny"]),
            device="cpu",
            quantization=QuantConfig(method="bitsandbytes", components=("controlnet",)),
        )


def test_each_library_gets_its_own_config() -> None:
    import diffusers
    import torch
    import transformers

    from deskgen.backends.diffusers._quantized import bitsandbytes_config

    nf4 = QuantConfig(method="bitsandbytes")
    unet = bitsandbytes_config("diffusers", nf4, torch.bfloat16)
    text = bitsandbytes_config("transformers", nf4, torch.bfloat16)
    assert type(unet) is diffusers.BitsAndBytesConfig
    assert type(text) is transformers.BitsAndBytesConfig
    for config in (unet, text):
        assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
        assert config.bnb_4bit_use_double_quant
        assert config.bnb_4bit_compute_dtype == torch.bfloat16
    int8 = bitsandbytes_config("diffusers", QuantConfig(method="bitsandbytes", weights="int8"), 0)
    assert int8.load_in_8bit and not int8.load_in_4bit


def test_in_place_quantization_is_refused_with_the_fix(tiny_sdxl_path: Path) -> None:
    from deskgen.quant import quantize

    with (
        DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen,
        pytest.raises(ConfigError, match="quantizes weights as they load") as info,
    ):
        quantize(gen, QuantConfig(method="bitsandbytes", weights="int8"))
    assert "DeskGenerator(..., quantization=QuantConfig(method='bitsandbytes'" in str(info.value)


@pytest.mark.parametrize("weights", ["nf4", "fp4", "int8"])
def test_module_bytes_counts_what_bitsandbytes_stores(weights: str) -> None:
    """Its packed data and the scales it keeps beside them (``quant_state``, ``SCB``), which
    are not parameters: what the planner assumes a weight costs."""
    bnb = pytest.importorskip("bitsandbytes")
    import torch

    from deskgen._planner_sizes import BYTES_PER_WEIGHT
    from deskgen.quant import module_bytes
    from deskgen.quant._weights import logical_elements

    torch.manual_seed(0)
    if weights == "int8":
        layer = bnb.nn.Linear8bitLt(3072, 256, bias=False, has_fp16_weights=False)
        key = "int8 (bitsandbytes)"
    else:
        layer = bnb.nn.Linear4bit(
            3072, 256, bias=False, quant_type=weights, compress_statistics=True
        )
        key = weights
    original = layer.weight.data.clone()
    try:
        layer = layer.to("cpu")  # bitsandbytes quantizes as the weights are placed
    except (RuntimeError, NotImplementedError) as exc:  # builds without CPU kernels
        pytest.skip(f"this bitsandbytes can't quantize on the CPU: {exc}")
    stored = int(layer.weight.numel()) * layer.weight.element_size()
    assert logical_elements(layer) == original.numel()
    per_weight = module_bytes(layer) / original.numel()
    planned = BYTES_PER_WEIGHT[key]
    print(f"bitsandbytes {weights}: {per_weight:.4f} bytes a weight (planner: {planned:.4f})")
    assert module_bytes(layer) > stored  # the scales are counted
    assert per_weight == pytest.approx(BYTES_PER_WEIGHT[key], rel=0.01)
    x = torch.randn(2, 3072)
    error = (layer(x) - x @ original.T).norm() / (x @ original.T).norm()
    assert 0 < error < (0.01 if weights == "int8" else 0.2)  # quantized, and still the layer


def test_the_planner_proposes_nf4_where_int8_does_not_fit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from deskgen._planner import LINEAR_SHARE
    from deskgen._planner_sizes import BYTES_PER_WEIGHT
    from deskgen.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a card that is not here
    common = {"device": "cuda", "mode": "balanced", "dtype": "bfloat16"}
    plain = plan_memory("qwen-image-edit", budget_bytes=24 * GiB, **common)  # type: ignore[arg-type]
    assert plain.offload != "none"  # int8 alone leaves it too big for a 24 GB card
    assert any("with 4-bit weights the transformer takes" in n for n in plain.notes)
    plan = plan_memory(
        "qwen-image-edit",
        budget_bytes=24 * GiB,
        method="bitsandbytes",
        **common,  # type: ignore[arg-type]
    )
    assert plan.fits and plan.offload == "none"
    assert plan.quantization is not None and plan.quantization.method == "bitsandbytes"
    assert plan.quantization.weights == "nf4" and "transformer" in plan.quantization.components  # type: ignore[operator]
    params = plan_memory("qwen-image-edit", budget_bytes=200 * GiB, **common).component_bytes  # type: ignore[arg-type]
    whole = params["transformer"]  # bfloat16: 2 bytes a weight
    nf4 = whole * (1 - LINEAR_SHARE) + whole / 2 * LINEAR_SHARE * BYTES_PER_WEIGHT["nf4"]
    assert plan.component_bytes["transformer"] == int(nf4)
    # a given bitsandbytes int8: its components sized as such, the plan chooses the rest
    int8 = QuantConfig(method="bitsandbytes", weights="int8", components=("transformer",))
    given = plan_memory("qwen-image-edit", budget_bytes=24 * GiB, quantization=int8, **common)  # type: ignore[arg-type]
    bnb_int8 = whole * (1 - LINEAR_SHARE) + whole / 2 * LINEAR_SHARE * (1 + 4 / 3072)
    assert given.component_bytes["transformer"] == int(bnb_int8)
    assert given.quantization == int8
    with pytest.raises(ConfigError, match="bitsandbytes quantizes onto CUDA"):
        plan_memory("sdxl", device="cpu", budget_bytes=8 * GiB, method="bitsandbytes")
    argv = ["plan", "Qwen/Qwen-Image-Edit-2511", "--device", "cuda", "--budget", "24GiB"]
    assert main([*argv, "--method", "bitsandbytes", "--memory", "balanced"]) == 0
    assert "quantization: nf4 (bitsandbytes) of transformer" in capsys.readouterr().out


@pytest.mark.skipif(NO_GPU, reason="bitsandbytes loads pipelines onto CUDA GPUs only")
def test_on_a_gpu_an_nf4_unet_loads_and_generates(tiny_sdxl_path: Path) -> None:
    config = QuantConfig(method="bitsandbytes", weights="nf4")
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cuda", quantization=config
    ) as gen:
        unet = gen.memory_report().components["unet"]
        assert unet.quantization == "nf4 (bitsandbytes)" and unet.ratio and unet.ratio > 1.2
        assert gen.generate(prompt="a desk", seed=1, steps=2).image.size[0] > 0
