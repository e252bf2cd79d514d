"""LoRAs on the tiny SDXL and SD pipelines: loaded through diffusers/peft, checked first, chosen
per request. "By hand" below means adding ``weight * alpha / rank * up @ down`` to the weights of
a LoRA-free copy of the model: what a LoRA must do, independently of diffusers and peft."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deskgen import (
    DeskGenerator,
    InvalidRequestError,
    LoraMismatchError,
    LoraSpec,
    ModelLoadError,
    UnsupportedOperationError,
    read_record,
)
from deskgen.testing import make_tiny_lora

from ..fakes import FakeBackend  # noqa: F401  (registers "fake")

PROMPT = "a tidy desk"

# kohya key -> (component, module) of the tiny SDXL; a realistic civitai file also changes the
# text encoders' whole attention (diffusers needs out_proj to recognise the layout)
_KOHYA = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (
        "unet",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    ),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (
        "unet",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (
        "text_encoder",
        "encoder.layers.0.self_attn.q_proj",
    ),
    "lora_te1_text_model_encoder_layers_0_self_attn_out_proj": (
        "text_encoder",
        "encoder.layers.0.self_attn.out_proj",
    ),
    "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": (
        "text_encoder_2",
        "text_model.encoder.layers.1.self_attn.v_proj",
    ),
    "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": (
        "text_encoder_2",
        "text_model.encoder.layers.1.self_attn.out_proj",
    ),
}


def _kohya_file(path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key in _KOHYA:
        width = 64 if key.startswith("lora_unet") else 32
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, width, generator=generator) * 0.5
        tensors[f"{key}.lora_up.weight"] = torch.randn(width, rank, generator=generator) * 0.5
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    tags = '{"10_office": {"3D 0ff1c3": 20, "office": 4}}'
    metadata = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_tag_frequency": tags,
        "ss_dataset_dirs": '{"10_office": {"n_repeats": 10, "img_count": 20}}',
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def _pixels(gen: DeskGenerator, **fields: Any) -> np.ndarray[Any, np.dtype[np.int16]]:
    fields = {"prompt": PROMPT, "seed": 3, "steps": 4, **fields}
    return np.asarray(gen.generate(**fields).image, dtype=np.int16)


def _peft_layers(gen: DeskGenerator) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = gen.backend.pipeline  # type: ignore[attr-defined]
    return sum(
        isinstance(m, BaseTunerLayer)
        for name in ("unet", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
        for m in getattr(pipe, name).modules()
    )


def _by_hand(gen: DeskGenerator, deltas: list[tuple[str, str, torch.Tensor]]) -> None:
    pipe = gen.backend.pipeline  # type: ignore[attr-defined]
    with torch.no_grad():
        for component, module, delta in deltas:
            getattr(pipe, component).get_submodule(module).weight += delta


def _kohya_deltas(path: Path, weight: float) -> list[tuple[str, str, torch.Tensor]]:
    tensors = load_file(str(path))
    deltas = []
    for key, (component, module) in _KOHYA.items():
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        scale = float(tensors[f"{key}.alpha"]) / down.shape[0]
        deltas.append((component, module, weight * scale * up @ down))
    return deltas


def _peft_deltas(path: Path, weight: float) -> list[tuple[str, str, torch.Tensor]]:
    tensors = load_file(str(path))
    deltas = []
    for key, down in tensors.items():
        if key.endswith(".lora_A.weight"):
            component, _, module = key.removesuffix(".lora_A.weight").partition(".")
            up = tensors[key.replace("lora_A", "lora_B")]
            deltas.append((component, module, weight * up @ down))  # alpha == rank
    return deltas


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl_path: Path) -> Path:
    root = tmp_path_factory.mktemp("loras")
    _kohya_file(root / "office3d.safetensors")
    make_tiny_lora(tiny_sdxl_path, root / "topview.safetensors", layout="peft", seed=1)
    make_tiny_lora(tiny_sdxl_path, root / "walnut.safetensors", seed=2, trigger_words=("walnut",))
    return root


@pytest.fixture
def gen(tiny_sdxl_path: Path) -> Any:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as generator:
        yield generator


@pytest.fixture(scope="module")
def plain(tiny_sdxl_path: Path) -> Any:
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as generator:
        yield generator


class TestApplied:
    def test_kohya_file_changes_the_output_as_its_weight_implies(
        self, gen: DeskGenerator, tiny_sdxl_path: Path, lora_dir: Path
    ) -> None:
        path = lora_dir / "office3d.safetensors"
        base = _pixels(gen)
        lora = gen.load_lora(LoraSpec(path=str(path), weight=0.8, trigger_words=[]))
        assert (lora.layout, lora.base, lora.rank) == ("kohya", "sdxl", 4)
        assert lora.components == ("text_encoder", "text_encoder_2", "unet")
        with_lora = _pixels(gen)
        assert np.abs(with_lora - base).mean() > 2  # it does something
        with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as by_hand:
            _by_hand(by_hand, _kohya_deltas(path, 0.8))
            assert np.abs(_pixels(by_hand) - with_lora).max() <= 1

    def test_sgm_block_names_load_like_diffusers_names(
        self, gen: DeskGenerator, tmp_path: Path
    ) -> None:
        # kohya's SDXL trainer names UNet blocks as SGM does: input_blocks.3.1 is down_blocks.1
        generator = torch.Generator().manual_seed(5)
        down, up = torch.randn(4, 64, generator=generator), torch.randn(64, 4, generator=generator)
        names = {
            "sgm": "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k",
            "diffusers": "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        }
        images = {}
        for label, key in names.items():
            path = tmp_path / f"{label}.safetensors"
            tensors = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
            save_file(tensors | {f"{key}.alpha": torch.tensor(4.0)}, str(path))
            gen.load_lora(path)
            images[label] = _pixels(gen, loras={label: 1.0})
        assert np.array_equal(images["sgm"], images["diffusers"])
        assert not np.array_equal(images["sgm"], _pixels(gen, loras={}))

    def test_peft_layout_matches_the_deltas_by_hand(
        self, gen: DeskGenerator, tiny_sdxl_path: Path, lora_dir: Path
    ) -> None:
        path = lora_dir / "topview.safetensors"
        gen.load_lora(LoraSpec(path=str(path), weight=0.5))
        with_lora = _pixels(gen)
        with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as by_hand:
            _by_hand(by_hand, _peft_deltas(path, 0.5))
            assert np.abs(_pixels(by_hand) - with_lora).max() <= 1

    def test_stacked_adapters_add_up(
        self, gen: DeskGenerator, tiny_sdxl_path: Path, lora_dir: Path
    ) -> None:
        first, second = lora_dir / "topview.safetensors", lora_dir / "office3d.safetensors"
        gen.load_lora(LoraSpec(path=str(first), weight=0.7))
        gen.load_lora(LoraSpec(path=str(second), weight=-0.3, trigger_words=[]))
        assert [lora.name for lora in gen.loras] == ["topview", "office3d"]
        stacked = _pixels(gen)
        with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as by_hand:
            _by_hand(by_hand, _peft_deltas(first, 0.7) + _kohya_deltas(second, -0.3))
            assert np.abs(_pixels(by_hand) - stacked).max() <= 1
        # per request: one of them, or none
        assert np.abs(_pixels(gen, loras={"topview": 0.7}) - stacked).max() > 2

    def test_fuse_gives_the_same_images_and_unfuse_restores(
        self, gen: DeskGenerator, lora_dir: Path
    ) -> None:
        base = _pixels(gen)
        gen.load_lora(LoraSpec(path=str(lora_dir / "topview.safetensors"), weight=0.6))
        unfused = _pixels(gen)
        gen.fuse_loras()
        assert _peft_layers(gen) > 0
        assert np.abs(_pixels(gen) - unfused).max() <= 1
        assert np.abs(_pixels(gen, loras={"topview": 0.6}) - unfused).max() <= 1
        with pytest.raises(InvalidRequestError, match="unfuse_loras"):
            gen.generate(prompt=PROMPT, loras={})
        with pytest.raises(InvalidRequestError, match="unfuse_loras"):
            gen.load_lora(lora_dir / "walnut.safetensors")
        gen.unfuse_loras()
        assert np.abs(_pixels(gen, loras={}) - base).max() <= 1
        assert np.abs(_pixels(gen) - unfused).max() <= 1

    def test_unload_restores_the_model_exactly(self, gen: DeskGenerator, lora_dir: Path) -> None:
        base = _pixels(gen)
        lora = gen.load_lora(lora_dir / "walnut.safetensors")
        assert not np.array_equal(_pixels(gen), base)
        assert np.array_equal(_pixels(gen, loras={}), base)
        gen.unload_lora(lora.name)
        assert gen.loras == []
        assert np.array_equal(_pixels(gen), base)
        with pytest.raises(InvalidRequestError, match="No adapter named"):
            gen.unload_lora(lora.name)

    def test_options_load_and_fuse_with_the_model(
        self, tiny_sdxl_path: Path, lora_dir: Path, plain: DeskGenerator
    ) -> None:
        spec = LoraSpec(path=str(lora_dir / "topview.safetensors"), weight=0.6)
        with DeskGenerator(
            "sdxl", model=str(tiny_sdxl_path), device="cpu", loras=[spec], fuse_loras=True
        ) as fused:
            assert [lora.name for lora in fused.loras] == ["topview"]
            result = fused.generate(prompt=PROMPT, seed=3, steps=4)
            assert result.request.loras == {"topview": 0.6}
        plain.load_lora(spec)
        try:
            unfused = _pixels(plain)
        finally:
            plain.unload_lora("topview")
        assert np.abs(np.asarray(result.image, dtype=np.int16) - unfused).max() <= 1


class TestRequests:
    def test_threads_with_other_adapters_get_what_they_would_alone(
        self, gen: DeskGenerator, lora_dir: Path
    ) -> None:
        gen.load_lora(LoraSpec(path=str(lora_dir / "topview.safetensors"), weight=0.6))
        gen.load_lora(LoraSpec(path=str(lora_dir / "walnut.safetensors"), trigger_words=[]))
        choices: list[dict[str, float] | None] = [
            None,
            {},
            {"topview": 1.0},
            {"walnut": 0.5},
            {"topview": 0.3, "walnut": -0.5},
        ]
        alone = [_pixels(gen, loras=choice, seed=i) for i, choice in enumerate(choices)]
        results: dict[int, Any] = {}

        def run(i: int) -> None:
            for _ in range(2):
                results[i] = _pixels(gen, loras=choices[i % 5], seed=i % 5)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i in range(10):
            assert np.array_equal(results[i], alone[i % 5]), choices[i % 5]

    def test_trigger_words_from_the_metadata_and_removed_on_request(
        self, gen: DeskGenerator, lora_dir: Path
    ) -> None:
        lora = gen.load_lora(lora_dir / "office3d.safetensors")
        assert lora.trigger_words == ("3D 0ff1c3",)  # "office" is in only 4 of 20 captions
        report = gen.check_prompt(prompt=PROMPT)
        assert report.prompt == f"3D 0ff1c3, {PROMPT}"
        # the seed's way with the 3D office LoRA: its trigger word taken out of the prompt
        report = gen.check_prompt(prompt=f"{PROMPT}, 3D 0ff1c3", remove_words=["3D 0ff1c3"])
        assert report.prompt == PROMPT
        assert gen.check_prompt(prompt=PROMPT, loras={"office3d": 0.0}).prompt == PROMPT
        assert gen.check_prompt(prompt=PROMPT, loras={}).prompt == PROMPT

    def test_unknown_adapter_in_a_request(self, gen: DeskGenerator) -> None:
        with pytest.raises(InvalidRequestError, match="not loaded: nope"):
            gen.generate(prompt=PROMPT, loras={"nope": 1.0})

    def test_record_names_the_loras_and_replays(
        self, gen: DeskGenerator, lora_dir: Path, tmp_path: Path
    ) -> None:
        lora = gen.load_lora(LoraSpec(path=str(lora_dir / "walnut.safetensors"), weight=0.7))
        result = gen.generate(prompt=PROMPT, seed=3, steps=4, loras={"walnut": 0.4})
        assert [(u.name, u.weight, u.sha256) for u in result.loras] == [
            ("walnut", 0.4, lora.sha256)
        ]
        [saved] = result.save(tmp_path / "out.png")
        record = result.record()
        assert record["loras"][0]["file"] == "walnut.safetensors"
        assert str(lora_dir) not in str(record)  # no local paths in what gets shared
        from deskgen._record import read_png_text

        text = read_png_text(saved)["parameters"]
        # A1111's addnet hash: SHA-256 of the bytes after the 8-byte length and the header
        data = (lora_dir / "walnut.safetensors").read_bytes()
        addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()
        assert lora.tensor_sha256 == addnet
        assert "<lora:walnut:0.4>" in text and f'Lora hashes: "walnut: {addnet[:12]}"' in text
        replay = gen.generate(read_record(saved))
        assert np.array_equal(np.asarray(replay.image), np.asarray(result.image))


class TestRefused:
    def test_pickle_refused_even_renamed_and_the_model_unchanged(
        self, gen: DeskGenerator, lora_dir: Path, tmp_path: Path
    ) -> None:
        base = _pixels(gen)
        tensors = load_file(str(lora_dir / "office3d.safetensors"))
        pickled = tmp_path / "office3d.pt"
        torch.save(tensors, pickled)
        renamed = tmp_path / "office3d_copy.safetensors"
        renamed.write_bytes(pickled.read_bytes())
        for path in (pickled, renamed):
            with pytest.raises(ModelLoadError, match="pickle file"):
                gen.load_lora(path)
        assert gen.loras == [] and _peft_layers(gen) == 0
        assert np.array_equal(_pixels(gen), base)
        # opted in: read with torch.load(weights_only=True), then the same checks
        lora = gen.load_lora(LoraSpec(path=str(pickled), allow_pickle=True, weight=0.8))
        assert (lora.layout, lora.base, lora.rank) == ("kohya", "sdxl", 4)  # from the keys

    def test_lora_for_another_base_refused_and_the_model_unchanged(
        self, gen: DeskGenerator, tiny_sd_path: Path, tmp_path: Path
    ) -> None:
        base = _pixels(gen)
        sd_lora = make_tiny_lora(tiny_sd_path, tmp_path / "sd15.safetensors")
        with pytest.raises(LoraMismatchError, match=r"for SD 1\.x, but this 'sdxl' model is SDXL"):
            gen.load_lora(sd_lora)
        # without metadata saying so, the shapes give it away
        no_metadata = make_tiny_lora(tiny_sd_path, tmp_path / "sd15p.safetensors", layout="peft")
        with pytest.raises(LoraMismatchError, match="does not fit a layer of 64 -> 64"):
            gen.load_lora(no_metadata)
        assert gen.loras == [] and _peft_layers(gen) == 0
        assert np.array_equal(_pixels(gen), base)

    def test_unknown_keys_refused(self, gen: DeskGenerator, tmp_path: Path) -> None:
        path = tmp_path / "odd.safetensors"
        save_file(
            {
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (
                    torch.zeros(4, 64)
                ),
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (
                    torch.zeros(64, 4)
                ),
                "unet.down_blocks.9.to_k.lora_A.weight": torch.zeros(4, 64),
                "unet.down_blocks.9.to_k.lora_B.weight": torch.zeros(64, 4),
            },
            str(path),
        )
        with pytest.raises(LoraMismatchError, match=r"down_blocks\.9\.to_k: no such module"):
            gen.load_lora(path)
        assert _peft_layers(gen) == 0

    def test_taken_name(self, gen: DeskGenerator, lora_dir: Path) -> None:
        gen.load_lora(lora_dir / "walnut.safetensors")
        with pytest.raises(InvalidRequestError, match="already loaded"):
            gen.load_lora(lora_dir / "walnut.safetensors")
        gen.load_lora(LoraSpec(path=str(lora_dir / "walnut.safetensors"), adapter_name="w2"))
        assert [lora.name for lora in gen.loras] == ["walnut", "w2"]

    def test_backends_without_loras(self) -> None:
        with DeskGenerator("fake") as fake:
            assert fake.loras == []
            with pytest.raises(UnsupportedOperationError, match="does not take LoRAs"):
                fake.load_lora("x.safetensors")
            with pytest.raises(UnsupportedOperationError, match="takes no LoRAs"):
                fake.generate(prompt=PROMPT, loras={"a": 1.0})
            fake.generate(prompt=PROMPT, loras={}, steps=1)


def test_sd_takes_loras_too(tiny_sd_path: Path, tmp_path: Path) -> None:
    path = make_tiny_lora(tiny_sd_path, tmp_path / "sd.safetensors", layout="peft")
    with DeskGenerator("sd", model=str(tiny_sd_path), device="cpu") as gen:
        base = _pixels(gen)
        gen.load_lora(LoraSpec(path=str(path), weight=0.5))
        with_lora = _pixels(gen)
    with DeskGenerator("sd", model=str(tiny_sd_path), device="cpu") as by_hand:
        _by_hand(by_hand, _peft_deltas(path, 0.5))
        assert np.abs(_pixels(by_hand) - with_lora).max() <= 1
    assert np.abs(with_lora - base).mean() > 2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_on_cuda(tiny_sdxl_path: Path, lora_dir: Path, dtype: str) -> None:
    path = lora_dir / "office3d.safetensors"
    options: dict[str, Any] = {"model": str(tiny_sdxl_path), "device": "cuda", "dtype": dtype}
    with DeskGenerator("sdxl", **options) as gen:
        base = _pixels(gen)
        gen.load_lora(LoraSpec(path=str(path), weight=0.8, trigger_words=[]))
        pipe = gen.backend.pipeline  # type: ignore[attr-defined]
        lora_params = [p for n, p in pipe.unet.named_parameters() if "lora_" in n]
        assert lora_params and all(p.device.type == "cuda" for p in lora_params)
        with_lora = _pixels(gen)
        off = _pixels(gen, loras={})
        gen.fuse_loras()
        fused = _pixels(gen)
    with DeskGenerator("sdxl", **options) as by_hand:
        _by_hand(by_hand, [(c, m, d.cuda()) for c, m, d in _kohya_deltas(path, 0.8)])
        expected = _pixels(by_hand)
    effect = np.abs(with_lora - base).mean()
    assert effect > 2
    assert np.array_equal(off, base)
    if dtype == "float32":
        assert np.abs(with_lora - expected).max() <= 1
        assert np.abs(fused - with_lora).max() <= 1
    else:
        # half precision rounds weights merged by hand or fused differently from the LoRA
        # path's separate low-rank product: close (a fraction of a level), not equal
        assert np.abs(with_lora - expected).mean() < effect / 4
        assert np.abs(fused - with_lora).mean() < effect / 4


class TestOrderAndRecords:
    def test_loading_order_decides_triggers_fused_or_not(
        self, gen: DeskGenerator, lora_dir: Path, tiny_sdxl_path: Path, tmp_path: Path
    ) -> None:
        second = make_tiny_lora(
            tiny_sdxl_path, tmp_path / "b.safetensors", seed=7, trigger_words=("bright",)
        )
        gen.load_lora(LoraSpec(path=str(lora_dir / "walnut.safetensors"), weight=0.3))
        gen.load_lora(LoraSpec(path=str(second), weight=0.2))
        expected = f"walnut, bright, {PROMPT}"
        assert gen.check_prompt(prompt=PROMPT).prompt == expected
        reordered = {"b": 0.2, "walnut": 0.3}
        assert gen.check_prompt(prompt=PROMPT, loras=reordered).prompt == expected
        unfused = gen.generate(prompt=PROMPT, seed=3, steps=4, loras=reordered)
        assert list(unfused.request.loras or {}) == ["walnut", "b"]
        gen.fuse_loras()
        fused = gen.generate(prompt=PROMPT, seed=3, steps=4)
        assert fused.prompt_report and fused.prompt_report.prompt == expected
        assert fused.request.loras == unfused.request.loras
        a, b = (np.asarray(r.image, dtype=np.int16) for r in (unfused, fused))
        assert np.abs(a - b).max() <= 1

    def test_zero_weight_is_not_used(self, gen: DeskGenerator, lora_dir: Path) -> None:
        gen.load_lora(lora_dir / "walnut.safetensors")
        result = gen.generate(prompt=PROMPT, seed=3, steps=2, loras={"walnut": 0.0})
        assert result.loras == [] and result.request.lora_sha256 is None
        assert result.request.loras == {"walnut": 0.0}

    def test_replay_with_another_file_under_the_name_warns(
        self, gen: DeskGenerator, lora_dir: Path, tiny_sdxl_path: Path, tmp_path: Path
    ) -> None:
        lora = gen.load_lora(lora_dir / "walnut.safetensors")
        result = gen.generate(prompt=PROMPT, seed=3, steps=2)
        assert result.request.lora_sha256 == {"walnut": lora.sha256}
        [saved] = result.save(tmp_path / "r.png")
        gen.unload_lora("walnut")
        other = make_tiny_lora(tiny_sdxl_path, tmp_path / "other.safetensors", seed=9)
        gen.load_lora(LoraSpec(path=str(other), adapter_name="walnut"))
        replay = gen.generate(read_record(saved))
        assert any("'walnut' is another file" in w for w in replay.warnings)


def test_sources_and_refusals_before_loading(tmp_path: Path, lora_dir: Path) -> None:
    from deskgen import inspect_lora
    from deskgen._lora import as_lora_spec

    assert inspect_lora(str(lora_dir / "walnut.safetensors")).trigger_words == ("walnut",)
    spec = as_lora_spec("someone/desk-loras/topview.safetensors")
    assert (spec.path, spec.weight_name) == ("someone/desk-loras", "topview.safetensors")
    with pytest.raises(UnsupportedOperationError, match="does not take LoRAs"):
        # refused before the (missing) weights are even looked at
        DeskGenerator("hidream", model=str(tmp_path / "none"), loras=["x.safetensors"])


class TestGate:
    """Regressions: adapters changed under a running request, or a queued one."""

    @staticmethod
    def _queued(gen: DeskGenerator, count: int) -> None:
        gate = gen.backend.lora_adapters._gate  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while gate._next_ticket < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate._next_ticket >= count

    def test_a_request_queued_behind_a_fuse_is_refused(
        self, gen: DeskGenerator, lora_dir: Path
    ) -> None:
        unet = gen.backend.pipeline.unet  # type: ignore[attr-defined]
        name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
        before = unet.get_submodule(name).weight.detach().clone()
        gen.load_lora(LoraSpec(path=str(lora_dir / "topview.safetensors"), weight=1.0))
        started, release = threading.Event(), threading.Event()

        def hold(_: Any) -> None:
            started.set()
            release.wait(10)

        first = threading.Thread(target=lambda: gen.generate(prompt=PROMPT, steps=2, on_step=hold))
        first.start()
        assert started.wait(10)
        base = gen.backend.lora_adapters._gate._next_ticket  # type: ignore[union-attr]
        fusing = threading.Thread(target=gen.fuse_loras)
        fusing.start()
        self._queued(gen, base + 1)
        errors: list[Exception] = []

        def other_weights() -> None:
            try:
                gen.generate(prompt=PROMPT, steps=2, loras={"topview": 0.25})
            except InvalidRequestError as exc:
                errors.append(exc)

        second = threading.Thread(target=other_weights)
        second.start()
        self._queued(gen, base + 2)
        release.set()
        for thread in (first, fusing, second):
            thread.join(20)
        assert errors and "fused as" in str(errors[0])
        gen.unfuse_loras()
        gen.unload_lora("topview")
        after = unet.get_submodule(name).get_base_layer().weight
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)

    def test_load_waits_for_a_request_running_without_loras(
        self, gen: DeskGenerator, lora_dir: Path
    ) -> None:
        started, release = threading.Event(), threading.Event()
        result: list[Any] = []

        def hold(_: Any) -> None:
            started.set()
            release.wait(10)

        request = threading.Thread(
            target=lambda: result.append(gen.generate(prompt=PROMPT, seed=3, steps=4, on_step=hold))
        )
        request.start()
        assert started.wait(10)
        loading = threading.Thread(target=lambda: gen.load_lora(lora_dir / "walnut.safetensors"))
        loading.start()
        loading.join(0.5)
        assert loading.is_alive()  # waits for the running request
        release.set()
        request.join(20)
        loading.join(20)
        assert result[0].loras == []
        assert np.array_equal(np.asarray(result[0].image, dtype=np.int16), _pixels(gen, loras={}))

    def test_an_interrupted_waiter_gives_up_its_turn(self) -> None:
        from deskgen.backends.diffusers._adapters import _Gate

        gate = _Gate()
        admitted: list[Any] = []
        with gate.shared("a", lambda key, _current: key):
            ticket = gate._next_ticket
            gate._next_ticket += 1  # a waiter that took a ticket, then was interrupted
            with gate._cond:
                gate._done_waiting(ticket)
        with gate.exclusive():
            admitted.append("exclusive")
        with gate.shared("b", lambda key, _current: key):
            admitted.append("b")
        assert admitted == ["exclusive", "b"]
