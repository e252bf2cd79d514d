"""``sdxl-controlnet`` on a tiny SDXL, tiny ControlNets and a tiny depth model, offline."""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deskgen import (
    ConfigError,
    Control,
    DeskGenerator,
    InvalidRequestError,
    MissingDependencyError,
    ModelMismatchError,
    ModelNotFoundError,
    UnsupportedOperationError,
    read_record,
)
from deskgen._images import load_image, prepare_image
from deskgen.testing.contract import BackendContract

from ..conftest import draw_desk

BACKEND = "sdxl-controlnet"


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


def _clean(photo: Image.Image) -> Image.Image:
    return load_image(photo)[0]


def _reference_canny(photo: Image.Image, size: tuple[int, int], low: int, high: int) -> Any:
    import cv2

    return cv2.Canny(np.asarray(prepare_image(_clean(photo), size)), low, high)


@pytest.fixture(scope="module")
def canny_gen(tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]) -> Any:
    gen = DeskGenerator(
        BACKEND,
        model=str(tiny_sdxl_path),
        controlnet=str(tiny_control_paths["canny"]),
        control="canny",
        device="cpu",
    )
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def multi_gen(tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]) -> Any:
    gen = DeskGenerator(
        BACKEND,
        model=str(tiny_sdxl_path),
        control=[
            Control(kind="canny", controlnet=str(tiny_control_paths["canny"]), scale=0.7),
            Control(kind="depth", controlnet=str(tiny_control_paths["depth"]), end=0.5),
        ],
        depth_model=str(tiny_control_paths["depth_model"]),
        device="cpu",
    )
    yield gen
    gen.close()


def _hand_written(tiny_sdxl_path: Path, nets: list[Path], *, img2img: bool) -> Any:
    import diffusers

    controlnets = [diffusers.ControlNetModel.from_pretrained(n, use_safetensors=True) for n in nets]
    cls = (
        diffusers.StableDiffusionXLControlNetImg2ImgPipeline
        if img2img
        else diffusers.StableDiffusionXLControlNetPipeline
    )
    pipe = cls.from_pretrained(
        tiny_sdxl_path,
        controlnet=controlnets[0] if len(controlnets) == 1 else controlnets,
        use_safetensors=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TestControlImages:
    def test_canny_is_opencv_on_the_prepared_photo(self, canny_gen: DeskGenerator) -> None:
        photo = draw_desk((96, 72))
        result = canny_gen.generate(prompt="a tidy desk", image=photo, seed=1, steps=3)
        assert (result.width, result.height) == (64, 48)
        [edges] = result.control_images
        assert edges.size == (64, 48) and edges.mode == "RGB"
        expected = _reference_canny(photo, (64, 48), 100, 200)
        assert expected.any()  # the drawn desk has edges
        for channel in range(3):
            assert np.array_equal(np.asarray(edges)[:, :, channel], expected)
        [control] = result.controls
        assert control.kind == "canny" and control.scale == 0.5
        assert control.controlnet is not None and control.controlnet.endswith("controlnet-a")
        assert result.request.control_scale == [0.5]

    def test_canny_thresholds_are_configurable(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        photo = draw_desk((96, 72))
        with DeskGenerator(
            BACKEND,
            model=str(tiny_sdxl_path),
            controlnet=str(tiny_control_paths["canny"]),
            control=Control(kind="canny", low_threshold=400, high_threshold=900),
            device="cpu",
        ) as gen:
            result = gen.generate(prompt="a desk", image=photo, seed=1, steps=2)
        expected = _reference_canny(photo, (64, 48), 400, 900)
        assert np.array_equal(np.asarray(result.control_images[0])[:, :, 0], expected)
        assert result.controls[0].low_threshold == 400

    def test_depth_matches_transformers_depth_pipeline(
        self, multi_gen: DeskGenerator, tiny_control_paths: dict[str, Path]
    ) -> None:
        from transformers import pipeline

        photo = draw_desk((96, 72))
        result = multi_gen.generate(prompt="a desk", image=photo, seed=1, steps=2)
        depth = result.control_images[1]
        assert depth.size == (64, 48)
        estimator = pipeline(
            "depth-estimation", model=str(tiny_control_paths["depth_model"]), device="cpu"
        )
        reference = estimator(prepare_image(_clean(photo), (64, 48)))["depth"]
        ours = np.asarray(depth).astype(np.int16)
        assert np.abs(ours[:, :, 0] - np.asarray(reference).astype(np.int16)).max() <= 1
        assert ours.min() == 0 and ours.max() == 255  # normalised

    def test_depth_follows_the_photo(self, multi_gen: DeskGenerator) -> None:
        first = multi_gen.generate(prompt="a desk", image=draw_desk((96, 72)), seed=1, steps=2)
        flipped = draw_desk((96, 72)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        second = multi_gen.generate(prompt="a desk", image=flipped, seed=1, steps=2)
        assert not np.array_equal(
            np.asarray(first.control_images[1]), np.asarray(second.control_images[1])
        )

    def test_given_control_image_is_used_as_is_at_the_output_size(
        self, canny_gen: DeskGenerator
    ) -> None:
        edges = Image.new("RGB", (128, 96), "black")
        edges.paste((255, 255, 255), (10, 10, 100, 12))
        result = canny_gen.generate(prompt="a desk", control_image=edges, seed=1, steps=2)
        assert result.mode == "txt2img"
        assert (result.width, result.height) == (64, 48)  # the control image's aspect
        assert np.array_equal(
            np.asarray(result.control_images[0]), np.asarray(prepare_image(edges, (64, 48)))
        )
        assert result.request.control_image_sha256 == [load_image(edges)[1].sha256]


class TestControlSteersTheImage:
    def test_another_control_image_changes_the_output(self, canny_gen: DeskGenerator) -> None:
        a = Image.new("RGB", (64, 64), "black")
        b = a.copy()
        b.paste((255, 255, 255), (0, 30, 64, 34))
        first = canny_gen.generate(prompt="a desk", control_image=a, seed=3, steps=3)
        second = canny_gen.generate(prompt="a desk", control_image=b, seed=3, steps=3)
        assert np.abs(_pixels(first.image) - _pixels(second.image)).max() > 10

    def test_scale_zero_is_no_control(self, canny_gen: DeskGenerator) -> None:
        photo = draw_desk((96, 72))
        off = canny_gen.generate(
            prompt="a desk", image=photo, seed=3, steps=3, strength=1.0, control_scale=0.0
        )
        on = canny_gen.generate(
            prompt="a desk", image=photo, seed=3, steps=3, strength=1.0, control_scale=1.0
        )
        assert np.abs(_pixels(off.image) - _pixels(on.image)).max() > 10
        assert off.controls[0].scale == 0.0 and on.request.control_scale == [1.0]


class TestParity:
    """Same inputs, same pixels as diffusers' own ControlNet pipelines."""

    def test_photo_as_control_only(
        self, canny_gen: DeskGenerator, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        photo = draw_desk((96, 72))
        result = canny_gen.generate(
            prompt="a tidy desk",
            negative_prompt="clutter",
            image=photo,
            strength=1.0,
            seed=4,
            steps=4,
        )
        assert result.mode == "txt2img" and result.denoising_steps == 4
        pipe = _hand_written(tiny_sdxl_path, [tiny_control_paths["canny"]], img2img=False)
        ref = pipe(
            "a tidy desk",
            negative_prompt="clutter",
            image=result.control_images[0],
            width=64,
            height=48,
            num_inference_steps=4,
            guidance_scale=5.0,
            controlnet_conditioning_scale=0.5,
            generator=torch.Generator().manual_seed(4),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.image))

    def test_img2img_with_two_controlnets(
        self, multi_gen: DeskGenerator, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        photo = draw_desk((96, 72))
        result = multi_gen.generate(prompt="a tidy desk", image=photo, seed=5, steps=5)
        assert result.mode == "img2img"
        assert result.request.strength == 0.8 and result.denoising_steps == 4  # int(5 * 0.8)
        assert [c.kind for c in result.controls] == ["canny", "depth"]
        assert result.request.control_scale == [0.7, 0.5]
        nets = [tiny_control_paths["canny"], tiny_control_paths["depth"]]
        pipe = _hand_written(tiny_sdxl_path, nets, img2img=True)
        ref = pipe(
            "a tidy desk",
            image=prepare_image(_clean(photo), (64, 48)),
            control_image=result.control_images,
            strength=0.8,
            num_inference_steps=5,
            guidance_scale=5.0,
            controlnet_conditioning_scale=[0.7, 0.5],
            control_guidance_start=[0.0, 0.0],
            control_guidance_end=[1.0, 0.5],
            generator=torch.Generator().manual_seed(5),
        ).images[0]
        assert np.array_equal(_pixels(ref), _pixels(result.image))


class TestRequests:
    def test_default_negative_preset_is_the_seeds_controlnet_one(
        self, canny_gen: DeskGenerator
    ) -> None:
        report = canny_gen.check_prompt(prompt="a desk", negative_prompt="preset:default")
        assert report.negative_prompt == "low quality, bad quality, sketches"

    def test_threads_get_what_they_would_alone(self, canny_gen: DeskGenerator) -> None:
        photos = [draw_desk((96, 72)), draw_desk((72, 96)), draw_desk((80, 80))]
        jobs = [
            {
                "prompt": "a desk",
                "image": photos[i % 3],
                "seed": i,
                "steps": 3,
                "strength": 1.0 if i % 2 else 0.7,
            }
            for i in range(6)
        ]
        with ThreadPoolExecutor(max_workers=3) as pool:
            together = list(pool.map(lambda job: canny_gen.generate(**job), jobs))
        for job, result in zip(jobs, together, strict=True):
            alone = canny_gen.generate(**job)
            assert np.array_equal(_pixels(alone.image), _pixels(result.image))
            assert np.array_equal(
                np.asarray(alone.control_images[0]), np.asarray(result.control_images[0])
            )

    def test_record_keeps_the_controls_and_replays(
        self, canny_gen: DeskGenerator, tmp_path: Path
    ) -> None:
        photo = draw_desk((96, 72))
        result = canny_gen.generate(prompt="a desk", image=photo, seed=2, steps=3)
        [path] = result.save(tmp_path / "out.png")
        record = json.loads(Image.open(path).text["deskgen"])
        assert record["controls"][0]["kind"] == "canny"
        assert record["controls"][0]["controlnet"] == "controlnet-a"  # no local path leaks
        assert (
            'ControlNet 0: "Module: canny, Model: controlnet-a'
            in Image.open(path).text["parameters"]
        )
        again = canny_gen.generate(read_record(path), image=photo)
        assert np.array_equal(_pixels(again.image), _pixels(result.image))

    def test_replay_without_the_control_image_is_refused(
        self, canny_gen: DeskGenerator, tmp_path: Path
    ) -> None:
        edges = Image.new("RGB", (64, 64), "black")
        result = canny_gen.generate(prompt="a desk", control_image=edges, seed=2, steps=2)
        [path] = result.save(tmp_path / "out.png")
        with pytest.raises(InvalidRequestError, match="control_image"):
            canny_gen.generate(read_record(path))
        assert canny_gen.generate(read_record(path), control_image=edges).images


class TestBadInputs:
    def test_no_photo_and_no_control_image(self, canny_gen: DeskGenerator) -> None:
        with pytest.raises(InvalidRequestError, match=r"canny control.*image=\.\.\."):
            canny_gen.generate(prompt="a desk", steps=2)

    def test_wrong_number_of_control_images(self, multi_gen: DeskGenerator) -> None:
        with pytest.raises(InvalidRequestError, match=r"1 image\(s\).*2 control\(s\)"):
            multi_gen.generate(prompt="a desk", control_image=Image.new("RGB", (8, 8)), steps=2)

    def test_wrong_number_of_scales(self, multi_gen: DeskGenerator) -> None:
        with pytest.raises(InvalidRequestError, match=r"3 value\(s\) for 2"):
            multi_gen.generate(
                prompt="a desk", image=draw_desk(), control_scale=[0.1, 0.2, 0.3], steps=2
            )

    def test_one_computed_and_one_given(self, multi_gen: DeskGenerator) -> None:
        depth = Image.new("RGB", (96, 72), (128, 128, 128))
        result = multi_gen.generate(
            prompt="a desk", image=draw_desk(), control_image=[None, depth], seed=1, steps=2
        )
        assert np.asarray(result.control_images[1]).std() == 0  # the given one, as is
        assert result.request.control_image_sha256 is not None
        assert result.request.control_image_sha256[0] is None

    def test_other_backends_refuse_control_images(
        self, generators: dict[str, DeskGenerator]
    ) -> None:
        with pytest.raises(UnsupportedOperationError, match="sdxl-controlnet"):
            generators["sdxl"].generate(prompt="a desk", control_image=Image.new("RGB", (8, 8)))
        with pytest.raises(UnsupportedOperationError):
            generators["sd"].generate(prompt="a desk", control_scale=0.5)

    def test_sd_controlnet_on_sdxl_is_a_mismatch(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        with pytest.raises(ModelMismatchError, match=r"Stable Diffusion 1\.x|cross_attention"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["sd"]),
                device="cpu",
            )

    def test_a_pipeline_folder_is_not_a_controlnet(self, tiny_sdxl_path: Path) -> None:
        with pytest.raises(ModelMismatchError, match="whole pipeline"):
            DeskGenerator(
                BACKEND, model=str(tiny_sdxl_path), controlnet=str(tiny_sdxl_path), device="cpu"
            )

    def test_missing_depth_model_says_how_to_get_it(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        with pytest.raises(ModelNotFoundError, match="hf download depth-anything/"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["depth"]),
                control="depth",
                device="cpu",
            )

    def test_missing_controlnet_on_the_hub_says_how_to_get_it(self, tiny_sdxl_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="hf download diffusers/controlnet-canny"):
            DeskGenerator(BACKEND, model=str(tiny_sdxl_path), device="cpu")

    def test_not_a_depth_model(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        with pytest.raises(ModelMismatchError, match="not a depth-estimation model"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["depth"]),
                control="depth",
                depth_model=str(tiny_sdxl_path / "text_encoder"),
                device="cpu",
            )

    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"controlnet": ["a", "b"], "control": "canny"}, "2 ControlNet"),
            ({"control": []}, "empty"),
            ({"control": "image"}, "needs controlnet"),
            ({"control": "[{broken"}, "not valid JSON"),
            ({"control": "edges"}, "Input should be 'canny', 'depth' or 'image'"),
            ({"control": {"kind": "canny", "start": 0.9, "end": 0.2}}, "below end"),
            ({"control": {"kind": "depth", "low_threshold": 5}}, "canny controls only"),
            (
                {"controlnet": "a", "control": {"kind": "canny", "controlnet": "b"}},
                "one place",
            ),
        ],
    )
    def test_bad_options(self, tiny_sdxl_path: Path, options: dict[str, Any], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            DeskGenerator(BACKEND, model=str(tiny_sdxl_path), device="cpu", **options)

    def test_comma_lists_from_the_command_line(self) -> None:
        from deskgen.backends.diffusers.sdxl_controlnet import ControlNetOptions

        opts = ControlNetOptions(model="m", controlnet="a, b", control="canny,depth")
        assert [(c.kind, c.controlnet) for c in opts.resolved_controls()] == [
            ("canny", "a"),
            ("depth", "b"),
        ]

    def test_missing_opencv_names_the_extra(
        self,
        tiny_sdxl_path: Path,
        tiny_control_paths: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
        with pytest.raises(MissingDependencyError, match=r"deskgen\[controlnet\]"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["canny"]),
                device="cpu",
            )

    def test_corrupt_controlnet_weights(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path], tmp_path: Path
    ) -> None:
        broken = tmp_path / "broken"
        shutil.copytree(tiny_control_paths["canny"], broken)
        weights = broken / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        from deskgen import ModelLoadError

        with pytest.raises(ModelLoadError, match="broken"):
            DeskGenerator(BACKEND, model=str(tiny_sdxl_path), controlnet=str(broken), device="cpu")


class TestReviewFindings:
    """Cases found in review: each failed before its fix."""

    def test_image_kind_with_controlnet_given_apart(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        net = str(tiny_control_paths["canny"])
        with DeskGenerator(
            BACKEND, model=str(tiny_sdxl_path), controlnet=net, control="image", device="cpu"
        ) as gen:
            photo = draw_desk((96, 72))
            result = gen.generate(prompt="a desk", image=photo, seed=1, steps=2)
            # no preprocessing: the photo itself, at the output size
            expected = prepare_image(_clean(photo), (64, 48))
            assert np.array_equal(np.asarray(result.control_images[0]), np.asarray(expected))
        from deskgen.backends.diffusers.sdxl_controlnet import ControlNetOptions

        opts = ControlNetOptions(model="m", controlnet="a,b", control="canny,image")
        assert [c.kind for c in opts.resolved_controls()] == ["canny", "image"]

    def test_json_controls_from_the_command_line(self) -> None:
        from deskgen.backends.diffusers.sdxl_controlnet import ControlNetOptions

        opts = ControlNetOptions(
            model="m",
            controlnet='["a,1", "b"]',  # a folder name with a comma survives in JSON
            control='[{"kind": "canny", "low_threshold": 150, "high_threshold": 300}, "depth"]',
        )
        canny, depth = opts.resolved_controls()
        assert (canny.controlnet, canny.low_threshold, depth.controlnet) == ("a,1", 150, "b")

    def test_same_controlnet_twice_loads_once(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        net = str(tiny_control_paths["canny"])
        strict = Control(kind="canny", low_threshold=300, high_threshold=600)
        with DeskGenerator(
            BACKEND,
            model=str(tiny_sdxl_path),
            controlnet=[net, net],
            control=["canny", strict],
            device="cpu",
        ) as gen:
            nets = gen.backend.pipeline.controlnet.nets  # type: ignore[attr-defined]
            assert nets[0] is nets[1]
            result = gen.generate(prompt="a desk", image=draw_desk(), seed=1, steps=2)
            first, second = (np.asarray(image) for image in result.control_images)
            assert first.sum() > second.sum()  # higher thresholds, fewer edges

    def test_variant_falls_back_to_plain_controlnet_weights(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path], tmp_path: Path
    ) -> None:
        from diffusers import StableDiffusionXLPipeline

        base = tmp_path / "fp16-base"
        StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path).save_pretrained(
            base, variant="fp16"
        )
        assert list(base.rglob("*.fp16.safetensors"))
        with DeskGenerator(
            BACKEND,
            model=str(base),
            variant="fp16",
            controlnet=str(tiny_control_paths["canny"]),  # has no fp16 files
            device="cpu",
        ) as gen:
            assert gen.generate(prompt="a desk", image=draw_desk(), seed=1, steps=2).images

    def test_metric_depth_models_are_refused(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path], tmp_path: Path
    ) -> None:
        metric = tmp_path / "metric-depth"
        shutil.copytree(tiny_control_paths["depth_model"], metric)
        config = json.loads((metric / "config.json").read_text())
        config["depth_estimation_type"] = "metric"
        (metric / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelMismatchError, match="metric depth"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["depth"]),
                control="depth",
                depth_model=str(metric),
                device="cpu",
            )

    def test_pickle_only_depth_model_names_allow_pickle(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path], tmp_path: Path
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        source = tiny_control_paths["depth_model"]
        pickled = tmp_path / "pickled-depth"
        model = AutoModelForDepthEstimation.from_pretrained(source)
        model.save_pretrained(pickled)
        (pickled / "model.safetensors").unlink()  # transformers 5 writes safetensors only
        torch.save(model.state_dict(), pickled / "pytorch_model.bin")
        AutoImageProcessor.from_pretrained(source, backend="pil").save_pretrained(pickled)
        assert not list(pickled.glob("*.safetensors"))
        from deskgen import ModelLoadError

        with pytest.raises(ModelLoadError, match="allow_pickle=True"):
            DeskGenerator(
                BACKEND,
                model=str(tiny_sdxl_path),
                controlnet=str(tiny_control_paths["depth"]),
                control="depth",
                depth_model=str(pickled),
                device="cpu",
            )

    def test_missing_controlnet_folder_is_not_found(self, tiny_sdxl_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="No ControlNet folder"):
            DeskGenerator(
                BACKEND, model=str(tiny_sdxl_path), controlnet="./no/such/net", device="cpu"
            )

    def test_control_image_sets_the_size_with_one_warning(self, canny_gen: DeskGenerator) -> None:
        edges = Image.new("RGB", (128, 64), "black")
        result = canny_gen.generate(
            prompt="a desk", control_image=edges, width=64, height=64, seed=1, steps=2
        )
        [warning] = result.warnings
        assert warning.startswith("The control image (128x64) was centre-cropped")

    def test_unused_photo_is_reported(self, canny_gen: DeskGenerator) -> None:
        edges = Image.new("RGB", (96, 72), "black")
        result = canny_gen.generate(
            prompt="a desk", image=draw_desk(), control_image=edges, strength=1.0, steps=2
        )
        assert any("photo was not used" in w for w in result.warnings)

    def test_transparent_control_image_has_a_black_background(
        self, canny_gen: DeskGenerator
    ) -> None:
        drawing = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        drawing.paste((255, 255, 255, 255), (0, 30, 64, 34))
        result = canny_gen.generate(prompt="a desk", control_image=drawing, seed=1, steps=2)
        pixels = np.asarray(result.control_images[0])
        assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[32, 10].tolist() == [255, 255, 255]

    def test_no_photo_batch_parity(
        self, canny_gen: DeskGenerator, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        edges = Image.fromarray(
            np.repeat(_reference_canny(draw_desk((64, 64)), (64, 64), 100, 200)[:, :, None], 3, 2)
        )
        result = canny_gen.generate(
            prompt="a tidy desk", control_image=edges, seed=7, steps=3, num_images=2
        )
        pipe = _hand_written(tiny_sdxl_path, [tiny_control_paths["canny"]], img2img=False)
        ref = pipe(
            "a tidy desk",
            image=edges,
            width=64,
            height=64,
            num_inference_steps=3,
            guidance_scale=5.0,
            controlnet_conditioning_scale=0.5,
            num_images_per_prompt=2,
            generator=[torch.Generator().manual_seed(s) for s in (7, 8)],
        ).images
        for mine, theirs in zip(result.images, ref, strict=True):
            assert np.array_equal(_pixels(mine), _pixels(theirs))

    @pytest.mark.slow
    def test_threads_in_half_precision_with_two_controls(
        self, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> None:
        # bfloat16 takes the call lock (diffusers flips the shared VAE's dtype) and shares the
        # depth model between threads
        with DeskGenerator(
            BACKEND,
            model=str(tiny_sdxl_path),
            controlnet=[str(tiny_control_paths["canny"]), str(tiny_control_paths["depth"])],
            control=["canny", "depth"],
            depth_model=str(tiny_control_paths["depth_model"]),
            device="cpu",
            dtype="bfloat16",
        ) as gen:
            photos = [draw_desk((96, 72)), draw_desk((72, 96))]
            jobs = [
                {
                    "prompt": "a desk",
                    "image": photos[i % 2],
                    "seed": i,
                    "steps": 3,
                    "strength": 1.0 if i % 2 else 0.7,
                }
                for i in range(4)
            ]
            with ThreadPoolExecutor(max_workers=2) as pool:
                together = list(pool.map(lambda job: gen.generate(**job), jobs))
            for job, result in zip(jobs, together, strict=True):
                alone = gen.generate(**job)
                assert np.array_equal(_pixels(alone.image), _pixels(result.image))
                for a, b in zip(alone.control_images, result.control_images, strict=True):
                    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_tuples_of_controls_and_controlnets_are_lists() -> None:
    """Options are strict; a tuple of controls or ControlNets is still the list it means."""
    from deskgen.backends.diffusers.sdxl_controlnet import ControlNetOptions

    opts = ControlNetOptions(model="m", control=("canny", "depth"), controlnet=("a", "b"))
    assert [c.kind for c in opts.resolved_controls()] == ["canny", "depth"]
    assert opts.controlnet == ["a", "b"]


class TestSDXLControlNetContract(BackendContract):
    """``sdxl-controlnet`` passes the backend contract (`deskgen.testing.contract`); its
    controls come from the photo, so every request carries one."""

    needs_photo = True

    def make_generator(
        self, tmp_path: Path, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
    ) -> DeskGenerator:
        return DeskGenerator(
            BACKEND,
            model=str(tiny_sdxl_path),
            controlnet=str(tiny_control_paths["canny"]),
            control="canny",
            device="cpu",
        )
