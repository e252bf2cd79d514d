"""The ``sdxl`` and ``sd`` backends on tiny random-weight pipelines, loaded from disk, offline."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deskgen import (
    ConfigError,
    DeskGenerator,
    GenerationCancelledError,
    GenerationResult,
    InvalidOutputError,
    InvalidRequestError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    StepProgress,
)
from deskgen._images import load_image, prepare_image
from deskgen.backends import DiffusersBackend
from deskgen.testing.contract import BackendContract

from ..conftest import draw_desk

KINDS = ["sdxl", "sd"]
PIPELINES = {
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", 5.0),
    "sd": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", 7.5),
}


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


def _hand_written(kind: str, path: Path, *, img2img: bool) -> Any:
    import diffusers

    txt, i2i, _ = PIPELINES[kind]
    pipe = getattr(diffusers, i2i if img2img else txt).from_pretrained(path, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gen(kind: str, generators: dict[str, DeskGenerator]) -> DeskGenerator:
    return generators[kind]


class TestParity:
    """deskgen adds no hidden change to the numbers: same inputs, same pixels as diffusers."""

    def test_txt2img(self, kind: str, gen: DeskGenerator, tiny_paths: dict[str, Path]) -> None:
        result = gen.generate(prompt="a tidy desk", negative_prompt="clutter", seed=42, steps=6)
        pipe = _hand_written(kind, tiny_paths[kind], img2img=False)
        ref = pipe(
            "a tidy desk",
            negative_prompt="clutter",
            num_inference_steps=6,
            guidance_scale=PIPELINES[kind][2],
            generator=torch.Generator().manual_seed(42),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.images[0]))
        assert result.request.guidance_scale == PIPELINES[kind][2]

    def test_img2img(self, kind: str, gen: DeskGenerator, tiny_paths: dict[str, Path]) -> None:
        photo = draw_desk((96, 72))
        result = gen.generate(
            prompt="a tidy desk", image=photo, strength=0.7, seed=3, steps=10, guidance_scale=6.0
        )
        clean, _ = load_image(photo)
        pipe = _hand_written(kind, tiny_paths[kind], img2img=True)
        ref = pipe(
            "a tidy desk",
            image=prepare_image(clean, (result.width, result.height)),
            strength=0.7,
            num_inference_steps=10,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(3),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.images[0]))
        assert result.mode == "img2img"
        # int(10 * 0.7) = 7 steps of the schedule; PNDM's PLMS schedule repeats one timestep
        assert result.denoising_steps == (7 if kind == "sdxl" else 8)

    def test_no_guidance(self, kind: str, gen: DeskGenerator, tiny_paths: dict[str, Path]) -> None:
        result = gen.generate(prompt="a desk", seed=1, steps=4, guidance_scale=1.0)
        pipe = _hand_written(kind, tiny_paths[kind], img2img=False)
        ref = pipe(
            "a desk",
            num_inference_steps=4,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(1),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.images[0]))


class TestSeeds:
    def test_same_seed_same_image(self, gen: DeskGenerator) -> None:
        a = gen.generate(prompt="a desk", seed=11, steps=4)
        b = gen.generate(prompt="a desk", seed=11, steps=4)
        c = gen.generate(prompt="a desk", seed=12, steps=4)
        assert a.images[0].tobytes() == b.images[0].tobytes()
        assert a.images[0].tobytes() != c.images[0].tobytes()

    def test_each_image_of_a_batch_replays_alone(self, gen: DeskGenerator) -> None:
        batch = gen.generate(prompt="a desk", seed=20, steps=4, num_images=3)
        assert batch.seeds == [20, 21, 22]
        assert len(batch.images) == 3
        for i, seed in enumerate(batch.seeds):
            alone = gen.generate(batch.request, seed=seed, num_images=1)
            # batched and single forward passes may differ by float rounding only
            assert np.abs(_pixels(alone.images[0]) - _pixels(batch.images[i])).max() <= 1

    def test_default_strength_is_resolved(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        edit = gen.generate(prompt="a desk", image=desk_photo, seed=1, steps=5)
        assert edit.request.strength == 0.6
        assert edit.denoising_steps in (3, 4)  # int(5 * 0.6); PNDM repeats one timestep
        assert gen.generate(prompt="a desk", seed=1, steps=2).request.strength is None

    def test_img2img_batch_replays_alone(self, gen: DeskGenerator, desk_photo: Image.Image) -> None:
        batch = gen.generate(prompt="a desk", image=desk_photo, seed=5, steps=5, num_images=2)
        alone = gen.generate(prompt="a desk", image=desk_photo, seed=6, steps=5)
        assert np.abs(_pixels(alone.images[0]) - _pixels(batch.images[1])).max() <= 1

    def test_random_seed_is_recorded_and_replays(self, gen: DeskGenerator) -> None:
        first = gen.generate(prompt="a desk", steps=3)
        assert first.request.seed == first.seeds[0]
        again = gen.generate(first.request)
        assert again.images[0].tobytes() == first.images[0].tobytes()


class TestSizes:
    def test_txt2img_defaults_to_the_native_size(self, gen: DeskGenerator) -> None:
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)
        result = gen.generate(prompt="a desk", seed=1, steps=2)
        assert (result.width, result.height) == (backend.native_size, backend.native_size)
        assert result.images[0].size == (backend.native_size, backend.native_size)
        assert (result.request.width, result.request.height) == result.images[0].size

    def test_photo_aspect_is_kept(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a desk", image=draw_desk((400, 300)), seed=1, steps=2)
        assert result.images[0].size == (64, 48)  # 4:3 at the tiny model's 64x64 area
        assert result.warnings == []
        portrait = gen.generate(prompt="a desk", image=draw_desk((300, 400)), seed=1, steps=2)
        assert portrait.images[0].size == (48, 64)

    def test_explicit_size(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a desk", width=80, height=48, seed=1, steps=2)
        assert result.images[0].size == (80, 48)

    def test_one_side_keeps_the_aspect(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a desk", image=draw_desk((400, 200)), width=96, steps=2)
        assert result.images[0].size == (96, 48)

    def test_no_crop_warning_for_sizes_deskgen_chose(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a desk", image=draw_desk((100, 30)), steps=2)
        assert result.images[0].size == (112, 32)  # nearest grid size to 10:3
        assert result.warnings == []

    def test_crop_is_reported(self, gen: DeskGenerator) -> None:
        result = gen.generate(
            prompt="a desk", image=draw_desk((400, 100)), width=64, height=64, steps=2
        )
        assert any("centre-cropped" in w for w in result.warnings)

    def test_extreme_photos_cannot_force_huge_outputs(self, gen: DeskGenerator) -> None:
        sliver = Image.new("RGB", (1, 2000), (120, 80, 40))
        result = gen.generate(prompt="a desk", image=sliver, steps=2, seed=1)
        w, h = result.images[0].size
        assert h / w <= 4.0
        assert any("beyond 4:1" in warning for warning in result.warnings)
        with pytest.raises(InvalidRequestError, match="limit"):
            gen.generate(prompt="a desk", image=sliver, width=4096, steps=2)

    def test_size_not_on_the_grid_is_rejected(self, gen: DeskGenerator) -> None:
        with pytest.raises(InvalidRequestError, match="multiple of 8"):
            gen.generate(prompt="a desk", width=70, height=64)


class TestStrength:
    def test_zero_denoising_steps_is_rejected(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        with pytest.raises(InvalidRequestError, match=r"0 denoising steps.*strength >= 0\.100"):
            gen.generate(prompt="a desk", image=desk_photo, strength=0.05, steps=10)

    def test_suggested_minimum_strength_really_runs_a_step(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        with pytest.raises(InvalidRequestError, match=r"strength >= 0\.334") as info:
            gen.generate(prompt="a desk", image=desk_photo, strength=0.3, steps=3)
        assert "0.334" in str(info.value) and int(3 * 0.334) == 1
        assert gen.generate(prompt="a desk", image=desk_photo, strength=0.334, steps=3).images

    def test_strength_follows_diffusers_rounding(
        self, gen: DeskGenerator, desk_photo: Image.Image
    ) -> None:
        seen: list[StepProgress] = []
        result = gen.generate(
            prompt="a desk", image=desk_photo, strength=0.29, steps=100, on_step=seen.append
        )
        # diffusers runs the last int(100 * 0.29) = 28 of the schedule's steps (PNDM's PLMS
        # schedule repeats one timestep, so the sd tiny model makes one more UNet call)
        expected = {"EulerDiscreteScheduler": 28, "PNDMScheduler": 29}[result.scheduler]
        assert result.denoising_steps == expected
        assert len(seen) == expected
        assert seen[-1].total_steps == seen[-1].step == expected

    def test_strength_is_ignored_without_a_photo(self, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a desk", strength=0.01, steps=3)
        assert result.denoising_steps >= 3


class TestProgressAndCancel:
    def test_progress_for_every_step(self, gen: DeskGenerator) -> None:
        seen: list[StepProgress] = []
        result = gen.generate(prompt="a desk", steps=5, on_step=seen.append)
        assert [p.step for p in seen] == list(range(1, result.denoising_steps + 1))
        assert {p.total_steps for p in seen} == {result.denoising_steps}
        assert result.denoising_steps == (5 if result.scheduler == "EulerDiscreteScheduler" else 6)

    def test_cancel_mid_run_then_the_generator_still_works(self, gen: DeskGenerator) -> None:
        flag = threading.Event()

        def cancel_at(progress: StepProgress) -> None:
            if progress.step == 2:
                flag.set()

        with pytest.raises(GenerationCancelledError) as info:
            gen.generate(prompt="a desk", steps=8, on_step=cancel_at, cancel=flag)
        assert info.value.step == 2
        ok = gen.generate(prompt="a desk", steps=2, seed=1)
        assert len(ok.images) == 1


class TestThreads:
    def test_shared_generator_gives_each_request_its_own_result(self, gen: DeskGenerator) -> None:
        photo = draw_desk((96, 72))
        requests: list[dict[str, Any]] = [
            {"prompt": "a tidy desk", "seed": 1, "steps": 6},
            {"prompt": "a gaming desk with RGB lights", "seed": 2, "steps": 9},
            {"prompt": "a wooden desk", "seed": 3, "steps": 4, "image": photo, "strength": 0.8},
            {"prompt": "a white desk", "seed": 4, "steps": 7, "guidance_scale": 1.0},
            {"prompt": "a standing desk", "seed": 5, "steps": 5, "num_images": 2},
        ]
        alone = [gen.generate(**r) for r in requests]
        jobs = requests * 3
        with ThreadPoolExecutor(max_workers=6) as pool:
            together = list(pool.map(lambda r: gen.generate(**r), jobs))
        for i, result in enumerate(together):
            expected = alone[i % len(requests)]
            assert [im.tobytes() for im in result.images] == [
                im.tobytes() for im in expected.images
            ]


class TestSafetyChecker:
    def test_flagged_images_are_left_out_and_the_rest_returned(
        self, tiny_paths: dict[str, Path]
    ) -> None:
        gen = DeskGenerator("sd", model=str(tiny_paths["sd"]), device="cpu")
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)

        class Features:
            def __init__(self) -> None:
                self.pixel_values = torch.zeros(1)

            def to(self, device: Any) -> Features:
                return self

        class Checker(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))

            @property
            def device(self) -> torch.device:  # pipelines ask their modules for it
                return self.weight.device

            @property
            def dtype(self) -> torch.dtype:
                return self.weight.dtype

            def forward(self, images: Any, clip_input: Any) -> tuple[Any, list[bool]]:
                images[0] = 0.0  # what diffusers' checker does to a flagged image
                return images, [True] + [False] * (len(images) - 1)

        for pipe in (backend._txt2img, backend._img2img):
            pipe.register_modules(
                safety_checker=Checker(), feature_extractor=lambda *a, **k: Features()
            )
        result = gen.generate(prompt="a desk", seed=10, steps=2, num_images=3)
        assert result.seeds == [11, 12]
        assert len(result.images) == 2
        assert any("seed(s) [10]" in w for w in result.warnings)
        with pytest.raises(InvalidOutputError, match="every image"):
            gen.generate(prompt="a desk", seed=10, steps=2)


class TestOutputChecks:
    @pytest.fixture
    def fresh(self, kind: str, tiny_paths: dict[str, Path]) -> DeskGenerator:
        return DeskGenerator(kind, model=str(tiny_paths[kind]), device="cpu")

    def test_nan_output_is_never_returned(self, fresh: DeskGenerator) -> None:
        backend = fresh.backend
        assert isinstance(backend, DiffusersBackend)
        with torch.no_grad():
            backend.pipeline.vae.decoder.conv_out.bias.fill_(float("nan"))
        with pytest.raises(InvalidOutputError, match="NaN"):
            fresh.generate(prompt="a desk", steps=2, seed=1)

    def test_black_output_is_never_returned(self, fresh: DeskGenerator) -> None:
        backend = fresh.backend
        assert isinstance(backend, DiffusersBackend)
        conv = backend.pipeline.vae.decoder.conv_out
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.fill_(-10.0)
        with pytest.raises(InvalidOutputError, match="black"):
            fresh.generate(prompt="a desk", steps=2, seed=1)


class TestRecordAndMeasurements:
    def test_result_fields(self, kind: str, gen: DeskGenerator, tmp_path: Path) -> None:
        result = gen.generate(prompt="a desk", seed=9, steps=3)
        assert result.backend == kind
        assert result.device == "cpu" and result.dtype == "float32"
        t = result.timings
        assert min(t.encode, t.denoise, t.decode) > 0
        assert t.total >= t.encode + t.denoise + t.decode
        assert t.load > 0
        assert result.peak_memory.bytes > 50 * 2**20
        assert result.scheduler in ("EulerDiscreteScheduler", "PNDMScheduler")

    def test_saved_record_regenerates_the_image(
        self, gen: DeskGenerator, desk_photo: Image.Image, tmp_path: Path
    ) -> None:
        from deskgen import read_record

        result: GenerationResult = gen.generate(
            prompt="a desk", image=desk_photo, seed=4, steps=4, num_images=2
        )
        paths = result.save(tmp_path / "m.png")
        request = read_record(paths[0])
        again = gen.generate(request, image=desk_photo)
        assert np.abs(_pixels(again.images[0]) - _pixels(result.images[0])).max() <= 1
        with Image.open(paths[0]) as saved:
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(result.images[0]))


class TestLoading:
    def test_wrong_family_is_refused_with_a_hint(self, tiny_paths: dict[str, Path]) -> None:
        with pytest.raises(ModelMismatchError, match=r"DeskGenerator\('sd'"):
            DeskGenerator("sdxl", model=str(tiny_paths["sd"]), device="cpu")
        with pytest.raises(ModelMismatchError, match=r"DeskGenerator\('sdxl'"):
            DeskGenerator("sd", model=str(tiny_paths["sdxl"]), device="cpu")

    def test_hub_id_missing_offline_says_how_to_get_it(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError) as info:
            DeskGenerator(
                "sdxl",
                model="stabilityai/stable-diffusion-xl-base-1.0",
                device="cpu",
                cache_dir=str(tmp_path),
            )
        message = str(info.value)
        assert "stabilityai/stable-diffusion-xl-base-1.0" in message
        assert "HF_HUB_OFFLINE" in message
        assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in message

    def test_missing_local_folder(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="No model folder"):
            DeskGenerator("sd", model=str(tmp_path / "nothing"), device="cpu")

    def test_folder_without_model_index(self, tmp_path: Path) -> None:
        with pytest.raises(ModelLoadError, match=r"model_index\.json"):
            DeskGenerator("sd", model=str(tmp_path), device="cpu")

    def test_single_file_checkpoint_is_explained(self, tmp_path: Path) -> None:
        ckpt = tmp_path / "model.safetensors"
        ckpt.write_bytes(b"\0" * 16)
        with pytest.raises(ModelLoadError, match="Single-file checkpoints"):
            DeskGenerator("sdxl", model=str(ckpt), device="cpu")

    def test_pickle_weights_need_an_explicit_opt_in(
        self, tiny_paths: dict[str, Path], tmp_path: Path
    ) -> None:
        from safetensors.torch import load_file

        pickled = tmp_path / "pickled-sd"
        shutil.copytree(tiny_paths["sd"], pickled)
        names = {"model.safetensors": "pytorch_model.bin"}
        for weights in pickled.rglob("*.safetensors"):
            name = names.get(weights.name, "diffusion_pytorch_model.bin")
            torch.save(load_file(weights), weights.with_name(name))
            weights.unlink()
        with pytest.raises(ModelLoadError, match="allow_pickle=True"):
            DeskGenerator("sd", model=str(pickled), device="cpu")
        gen = DeskGenerator("sd", model=str(pickled), device="cpu", allow_pickle=True)
        assert gen.generate(prompt="a desk", steps=2, seed=1).images

    def test_corrupt_weights(self, tiny_paths: dict[str, Path], tmp_path: Path) -> None:
        broken = tmp_path / "broken"
        shutil.copytree(tiny_paths["sd"], broken)
        (weights,) = (broken / "unet").glob("*.safetensors")
        weights.write_bytes(weights.read_bytes()[:5000])  # a download cut short
        with pytest.raises(ModelLoadError) as info:
            DeskGenerator("sd", model=str(broken), device="cpu")
        assert "download it again" in str(info.value)
        assert "allow_pickle" not in str(info.value)

    def test_corrupt_model_index(self, tmp_path: Path) -> None:
        (tmp_path / "model_index.json").write_text("{not json")
        with pytest.raises(ModelLoadError, match="not valid JSON"):
            DeskGenerator("sd", model=str(tmp_path), device="cpu")

    def test_refiner_layout_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "refiner"
        folder.mkdir()
        index = {
            "_class_name": "StableDiffusionXLImg2ImgPipeline",
            "requires_aesthetics_score": True,
            "text_encoder": [None, None],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        }
        (folder / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ModelMismatchError, match="refiner"):
            DeskGenerator("sdxl", model=str(folder), device="cpu")

    def test_other_family_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "other"
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        with pytest.raises(ModelMismatchError, match="FluxPipeline"):
            DeskGenerator("sdxl", model=str(folder), device="cpu")

    def test_separate_vae(self, tiny_paths: dict[str, Path], tmp_path: Path) -> None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(tiny_paths["sdxl"] / "vae")
        with torch.no_grad():
            vae.decoder.conv_out.bias.add_(0.25)
        vae.save_pretrained(tmp_path / "fixed-vae")
        gen = DeskGenerator(
            "sdxl", model=str(tiny_paths["sdxl"]), device="cpu", vae=str(tmp_path / "fixed-vae")
        )
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)
        loaded = backend.pipeline.vae.decoder.conv_out.bias
        assert torch.equal(loaded, vae.decoder.conv_out.bias)
        with pytest.raises(ModelNotFoundError, match="VAE"):
            DeskGenerator(
                "sdxl", model=str(tiny_paths["sdxl"]), device="cpu", vae=str(tmp_path / "none")
            )

    def test_cuda_without_cuda(self, tiny_paths: dict[str, Path]) -> None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            DeskGenerator("sd", model=str(tiny_paths["sd"]), device="cuda")

    @pytest.mark.parametrize("device", ["tpu", "gpu"])
    def test_unknown_device(self, device: str, tiny_paths: dict[str, Path]) -> None:
        with pytest.raises(ConfigError, match="Unknown device"):
            DeskGenerator("sd", model=str(tiny_paths["sd"]), device=device)

    def test_unknown_dtype(self, tiny_paths: dict[str, Path]) -> None:
        with pytest.raises(ConfigError, match="Unknown dtype"):
            DeskGenerator("sd", model=str(tiny_paths["sd"]), device="cpu", dtype="int8")

    def test_auto_on_cpu_is_float32(self, tiny_paths: dict[str, Path]) -> None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        gen = DeskGenerator("sd", model=str(tiny_paths["sd"]))
        assert (gen.device, gen.dtype) == ("cpu", "float32")

    def test_close_frees_and_blocks(self, tiny_paths: dict[str, Path]) -> None:
        import gc
        import weakref

        from deskgen import GeneratorClosedError

        gen = DeskGenerator("sd", model=str(tiny_paths["sd"]), device="cpu")
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)
        unet = weakref.ref(backend.pipeline.unet)
        del backend
        gen.close()
        gc.collect()
        assert unet() is None
        with pytest.raises(GeneratorClosedError):
            gen.generate(prompt="a desk")


class TestHalfPrecisionSDXL:
    """diffusers flips the shared VAE between bfloat16/float16 and float32 inside SDXL calls;
    deskgen serialises those calls so concurrent requests never see a half-switched VAE."""

    def test_threads_on_bfloat16_match_alone(self, tiny_sdxl_path: Path) -> None:
        gen = DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu", dtype="bfloat16")
        backend = gen.backend
        assert isinstance(backend, DiffusersBackend)
        assert backend._call_lock is not None
        assert gen.dtype == "bfloat16"
        photo = draw_desk((96, 72))
        requests: list[dict[str, Any]] = [
            {"prompt": "a tidy desk", "seed": 1, "steps": 3},
            {"prompt": "a wooden desk", "seed": 2, "steps": 3, "image": photo},
        ]
        alone = [gen.generate(**r) for r in requests]
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(lambda r: gen.generate(**r), requests * 2))
        for i, result in enumerate(together):
            assert result.images[0].tobytes() == alone[i % 2].images[0].tobytes()
        assert backend.pipeline.vae.dtype == torch.bfloat16  # restored after each call

    def test_float32_runs_concurrently(self, generators: dict[str, DeskGenerator]) -> None:
        backend = generators["sdxl"].backend
        assert isinstance(backend, DiffusersBackend)
        assert backend._call_lock is None


class TestSDXLContract(BackendContract):
    """``sdxl`` passes the backend contract (`deskgen.testing.contract`)."""

    def make_generator(self, tmp_path: Path, tiny_sdxl_path: Path) -> DeskGenerator:
        return DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu")


class TestSDContract(BackendContract):
    """``sd`` passes the backend contract (`deskgen.testing.contract`)."""

    def make_generator(self, tmp_path: Path, tiny_sd_path: Path) -> DeskGenerator:
        return DeskGenerator("sd", model=str(tiny_sd_path), device="cpu")
