"""Single-file checkpoints (the original LDM/civitai layout) for ``sd``, ``sdxl`` and
``sdxl-controlnet``: tiny checkpoints converted in-process from the tiny diffusers pipelines
load to the same pixels, the shipped configs describe the published models (checked on
real-size headers of sparse files, no weights), and wrong files are refused before loading."""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deskgen import (
    ConfigError,
    DeskGenerator,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    QuantConfig,
    read_record,
)
from deskgen.backends.diffusers._single_file import (
    detect_family,
    family_of,
    shipped_config,
    single_file_parameters,
)
from deskgen.testing import make_tiny_controlnet, make_tiny_lora, make_tiny_single_file
from deskgen.testing._single_file import ldm_state_dict

PROMPT = "a tidy desk with a lamp"


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


def _same(a: Any, b: Any) -> bool:
    return all(
        np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a.images, b.images, strict=True)
    )


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, tiny_sd_path: Path, tiny_sdxl_path: Path
) -> dict[str, tuple[Path, Path]]:
    """``kind: (single file, the diffusers folder it was converted from)``; the folders are the
    session's tiny pipelines (same seed: same weights)."""
    root = tmp_path_factory.mktemp("single-files")
    folders = {"sd": tiny_sd_path, "sd2": tiny_sd_path, "sdxl": tiny_sdxl_path}
    return {
        kind: (
            make_tiny_single_file(kind, root / f"tiny-{kind}.safetensors", diffusers_path=folder),  # type: ignore[arg-type]
            folder,
        )
        for kind, folder in folders.items()
    }


@pytest.fixture(scope="module")
def single_gens(files: dict[str, tuple[Path, Path]]) -> Iterator[dict[str, DeskGenerator]]:
    gens = {
        kind: DeskGenerator(
            "sdxl" if kind == "sdxl" else "sd", model=str(file), config=str(folder), device="cpu"
        )
        for kind, (file, folder) in files.items()
    }
    yield gens
    for gen in gens.values():
        gen.close()


# -- loading: the same model, the same pixels ------------------------------------------------


@pytest.mark.parametrize("kind", ["sd", "sd2", "sdxl"])
def test_single_file_gives_the_folders_pixels(
    kind: str,
    single_gens: dict[str, DeskGenerator],
    generators: dict[str, DeskGenerator],
    desk_photo: Image.Image,
) -> None:
    single = single_gens[kind]
    folder = generators["sdxl" if kind == "sdxl" else "sd"]
    assert _same(
        single.generate(prompt=PROMPT, seed=5, steps=3),
        folder.generate(prompt=PROMPT, seed=5, steps=3),
    )
    photo: dict[str, Any] = {
        "prompt": PROMPT,
        "image": desk_photo,
        "strength": 0.7,
        "seed": 2,
        "steps": 4,
    }
    mine, theirs = single.generate(**photo), folder.generate(**photo)
    assert mine.mode == "img2img"
    assert _same(mine, theirs)
    # and the images are not all alike: another seed changes them
    other = single.generate(prompt=PROMPT, seed=6, steps=3)
    assert not _same(other, single.generate(prompt=PROMPT, seed=5, steps=3))


def test_every_weight_round_trips(files: dict[str, tuple[Path, Path]]) -> None:
    from diffusers import StableDiffusionXLPipeline

    file, folder = files["sdxl"]
    gen = DeskGenerator("sdxl", model=str(file), config=str(folder), device="cpu")
    try:
        loaded = gen.backend.pipeline  # type: ignore[attr-defined]
        reference = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            theirs = getattr(reference, name).state_dict()
            mine = getattr(loaded, name).state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    finally:
        gen.close()


def test_sdxl_encoders_of_different_widths(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    """As in the real SDXL (768 and 1280 wide), diffusers itself tells the encoders apart."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from deskgen.testing._transformers import _clip_text_config

    folder = tmp_path / "widths"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    torch.manual_seed(0)
    pipe.text_encoder = CLIPTextModel(_clip_text_config(16, 16))  # 16 + 48: the UNet's 64
    pipe.text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(48, 32))
    pipe.save_pretrained(folder)
    file = tmp_path / "widths.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_state_dict(folder).items()}, file)
    kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 2, "steps": 2}
    with (
        DeskGenerator("sdxl", model=str(file), config=str(folder), device="cpu") as a,
        DeskGenerator("sdxl", model=str(folder), device="cpu") as b,
    ):
        assert _same(a.generate(**kwargs), b.generate(**kwargs))
        mine = a.backend.pipeline.text_encoder_2.state_dict()  # type: ignore[attr-defined]
        theirs = b.backend.pipeline.text_encoder_2.state_dict()  # type: ignore[attr-defined]
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_record_names_the_file_and_replays(
    single_gens: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    gen = single_gens["sd"]
    result = gen.generate(prompt=PROMPT, seed=11, steps=3)
    (path,) = result.save(tmp_path / "made.png")
    from deskgen._record import read_record_data

    record = read_record_data(path)
    assert record["model"] == "tiny-sd.safetensors"  # the file's name, not the machine's path
    again = gen.generate(read_record(path))
    assert _same(again, result)


def test_loras_apply_as_on_the_folder(
    files: dict[str, tuple[Path, Path]], generators: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    file, folder = files["sd"]
    lora = make_tiny_lora(folder, tmp_path / "desk.safetensors")
    kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 3, "steps": 3}
    options: dict[str, Any] = {"loras": [str(lora)], "device": "cpu"}
    with (
        DeskGenerator("sd", model=str(file), config=str(folder), **options) as a,
        DeskGenerator("sd", model=str(folder), **options) as b,
    ):
        mine = a.generate(**kwargs)
        assert [lora.name for lora in mine.loras] == ["desk"]
        assert _same(mine, b.generate(**kwargs))
        assert not _same(mine, generators["sd"].generate(**kwargs))  # the LoRA changed it


def test_checkpoint_without_a_vae_takes_vae(
    files: dict[str, tuple[Path, Path]], generators: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    file, folder = files["sd"]
    bare = tmp_path / "no-vae.safetensors"
    tensors = load_file(file)
    save_file({k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}, bare)
    with pytest.raises(ModelLoadError, match=r"no VAE weights.*vae="):
        DeskGenerator("sd", model=str(bare), config=str(folder), device="cpu")
    with DeskGenerator(
        "sd", model=str(bare), config=str(folder), vae=str(folder / "vae"), device="cpu"
    ) as gen:
        kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 4, "steps": 2}
        assert _same(gen.generate(**kwargs), generators["sd"].generate(**kwargs))


def test_sdxl_v_prediction_checkpoints_get_a_v_scheduler(
    files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    file, folder = files["sdxl"]
    marked = tmp_path / "vpred.safetensors"  # as NoobAI-style v-prediction files mark themselves
    save_file({**load_file(file), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, marked)
    with DeskGenerator("sdxl", model=str(marked), config=str(folder), device="cpu") as gen:
        config = gen.backend.pipeline.scheduler.config  # type: ignore[attr-defined]
        assert config.prediction_type == "v_prediction"
        assert config.rescale_betas_zero_snr is True
        assert gen.generate(prompt=PROMPT, seed=1, steps=2).images
    with DeskGenerator("sdxl", model=str(file), config=str(folder), device="cpu") as plain:
        config = plain.backend.pipeline.scheduler.config  # type: ignore[attr-defined]
        assert config.prediction_type == "epsilon"


def test_sdxl_controlnet_on_a_single_file_base(
    files: dict[str, tuple[Path, Path]],
    tiny_control_paths: dict[str, Path],
    desk_photo: Image.Image,
) -> None:
    file, folder = files["sdxl"]
    options: dict[str, Any] = {
        "controlnet": str(tiny_control_paths["canny"]),
        "control": "canny",
        "device": "cpu",
    }
    with (
        DeskGenerator("sdxl-controlnet", model=str(file), config=str(folder), **options) as a,
        DeskGenerator("sdxl-controlnet", model=str(folder), **options) as b,
    ):
        for strength in (1.0, 0.8):  # controls only, then img2img with controls
            kwargs: dict[str, Any] = {
                "prompt": PROMPT,
                "image": desk_photo,
                "strength": strength,
                "seed": 1,
            }
            mine = a.generate(**kwargs, steps=3)
            assert mine.controls and mine.controls[0].kind == "canny"
            assert _same(mine, b.generate(**kwargs, steps=3))


def test_sdxl_controlnet_refuses_a_controlnet_that_does_not_fit(
    files: dict[str, tuple[Path, Path]], tiny_control_paths: dict[str, Path]
) -> None:
    file, folder = files["sdxl"]
    with pytest.raises(ModelMismatchError, match="does not fit"):
        DeskGenerator(
            "sdxl-controlnet",
            model=str(file),
            config=str(folder),
            controlnet=str(tiny_control_paths["sd"]),
            control="image",
            device="cpu",
        )


def test_quantized_in_place_as_the_folder_is_at_load(
    files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from deskgen.quant import save_quantized

    file, folder = files["sdxl"]
    config = QuantConfig(method="torchao", weights="int8")
    kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 8, "steps": 3}
    with DeskGenerator(
        "sdxl", model=str(file), config=str(folder), quantization=config, device="cpu"
    ) as a:
        unet = a.memory_report().components["unet"]
        assert unet.quantization == "int8 (torchao)"
        assert unet.ratio is not None and unet.ratio > 1.4
        assert a.memory_report().components["vae"].quantization is None
        mine = a.generate(**kwargs)
        save_quantized(a, tmp_path / "saved")  # a single file, kept as a quantized folder
    with DeskGenerator("sdxl", model=str(folder), quantization=config, device="cpu") as b:
        assert _same(mine, b.generate(**kwargs))
    with DeskGenerator("sdxl", model=str(tmp_path / "saved"), device="cpu") as c:
        assert _same(mine, c.generate(**kwargs))


def test_quantizing_a_component_the_file_lacks_is_refused_before_loading(
    files: dict[str, tuple[Path, Path]],
) -> None:
    file, folder = files["sd"]
    config = QuantConfig(method="torchao", components=("text_encoder_2",))
    with pytest.raises(ConfigError, match=r"'text_encoder_2'.*choose from text_encoder, unet, vae"):
        DeskGenerator("sd", model=str(file), config=str(folder), quantization=config, device="cpu")


def test_hub_file_from_the_cache_offline(
    files: dict[str, tuple[Path, Path]], generators: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    """``OWNER/REPO/FILE.safetensors`` read from a Hugging Face cache (HF_HUB_OFFLINE=1)."""
    file, folder = files["sd"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "weights").mkdir(parents=True)
    shutil.copyfile(file, repo / "snapshots" / commit / "weights" / "tiny.safetensors")
    cache = str(tmp_path / "hub")
    model = "someone/tiny-sd/weights/tiny.safetensors"
    with DeskGenerator("sd", model=model, config=str(folder), cache_dir=cache, device="cpu") as gen:
        kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 7, "steps": 2}
        result = gen.generate(**kwargs)
        assert result.model == model
        assert _same(result, generators["sd"].generate(**kwargs))
    with pytest.raises(ModelNotFoundError, match=r"hf download someone/tiny-sd weights/other"):
        DeskGenerator("sd", model="someone/tiny-sd/weights/other.safetensors", cache_dir=cache)


# -- refusals, before anything loads -----------------------------------------------------------


def test_pickle_checkpoint_needs_allow_pickle(
    files: dict[str, tuple[Path, Path]], generators: dict[str, DeskGenerator], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    file, folder = files["sd"]
    ckpt = tmp_path / "tiny-sd.ckpt"
    torch.save({"state_dict": load_file(file)}, ckpt)
    with pytest.raises(ModelLoadError, match=r"pickle.*allow_pickle=True") as info:
        DeskGenerator("sd", model=str(ckpt), config=str(folder), device="cpu")
    assert not isinstance(info.value, ModelMismatchError)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        detect_family(ckpt)
    assert detect_family(ckpt, allow_pickle=True).name == "sd15"
    with DeskGenerator(
        "sd", model=str(ckpt), config=str(folder), allow_pickle=True, device="cpu"
    ) as gen:
        kwargs: dict[str, Any] = {"prompt": PROMPT, "seed": 9, "steps": 2}
        assert _same(gen.generate(**kwargs), generators["sd"].generate(**kwargs))


def test_other_files_are_refused_with_what_they_are(
    files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    folder = files["sd"][1]
    lora = make_tiny_lora(folder, tmp_path / "lora.safetensors")
    peft = make_tiny_lora(folder, tmp_path / "peft.safetensors", layout="peft")
    net = make_tiny_controlnet(tmp_path / "net", base="sd")
    cases = {
        lora: "is a LoRA.*loras=",
        peft: "is a LoRA",
        folder / "vae" / "diffusion_pytorch_model.safetensors": "is a VAE.*vae=",
        folder / "unet" / "diffusion_pytorch_model.safetensors": "diffusers layout",
        net / "diffusion_pytorch_model.safetensors": "is a ControlNet",
    }
    for path, match in cases.items():
        with pytest.raises(ModelMismatchError, match=match):
            DeskGenerator("sd", model=str(path), device="cpu")


def test_wrong_family_named_by_the_backend_to_use(files: dict[str, tuple[Path, Path]]) -> None:
    (sd, sd_folder), (sdxl, sdxl_folder) = files["sd"], files["sdxl"]
    with pytest.raises(ModelMismatchError, match=r"Stable Diffusion 1\.x checkpoint.*'sd'"):
        DeskGenerator("sdxl", model=str(sd), config=str(sdxl_folder), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"SDXL checkpoint.*DeskGenerator\('sdxl'"):
        DeskGenerator("sd", model=str(sdxl), config=str(sd_folder), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"Stable Diffusion 1\.x checkpoint.*'sd'"):
        DeskGenerator("sdxl-controlnet", model=str(sd), device="cpu")


def test_configs_that_do_not_describe_the_file(files: dict[str, tuple[Path, Path]]) -> None:
    (sd, sd_folder), (sdxl, _) = files["sd"], files["sdxl"]
    # the shipped configs are the real model's: the tiny file says so before loading
    with pytest.raises(ModelMismatchError, match=r"\[0\] 32 where deskgen's configs for Stable"):
        DeskGenerator("sd", model=str(sd), device="cpu")
    with pytest.raises(ModelMismatchError, match="describes a StableDiffusionPipeline"):
        DeskGenerator("sdxl", model=str(sdxl), config=str(sd_folder), device="cpu")
    with pytest.raises(ModelNotFoundError, match="No config folder"):
        DeskGenerator("sd", model=str(sd), config=str(sd_folder / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        DeskGenerator("sd", model=str(sd), config=str(sd_folder / "unet"), device="cpu")


def test_options_that_do_not_apply(files: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    file, folder = files["sd"]
    with pytest.raises(ConfigError, match="config= describes a single-file checkpoint"):
        DeskGenerator("sd", model=str(folder), config=str(folder), device="cpu")
    with pytest.raises(ConfigError, match="variant="):
        DeskGenerator("sd", model=str(file), config=str(folder), variant="fp16", device="cpu")
    with pytest.raises(ModelNotFoundError, match="No checkpoint file"):
        DeskGenerator("sd", model=str(tmp_path / "missing.safetensors"), device="cpu")


def test_backends_without_single_files_refuse_them(files: dict[str, tuple[Path, Path]]) -> None:
    file, _ = files["sd"]
    with pytest.raises(ModelLoadError, match=r"single-file checkpoint.*'sd', 'sdxl' and"):
        DeskGenerator("hidream", model=str(file), device="cpu")


def test_damaged_files(files: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    file, folder = files["sd"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match="cut short"):
        DeskGenerator("sd", model=str(cut), config=str(folder), device="cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\0\0\0\0\0\0\0{not json at all")
    with pytest.raises(ModelLoadError, match="damaged safetensors header"):
        detect_family(junk)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "inpainting"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 7, 3, 3)}, "7 input channels"),
        ({"conditioner.embedders.0.model.positional_embedding": (77, 1280)}, "SDXL refiner"),
        ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (9, 3)}, "Flux"),
        ({"edm_mean": (1, 4, 1, 1), "conditioner.embedders.1.model.ln_final.weight": (8,)}, "EDM"),
        ({}, "no text encoder"),
    ],
)
def test_layouts_deskgen_does_not_load(extra: dict[str, tuple[int, ...]], match: str) -> None:
    header: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.diffusion_model.out.2.weight": ("F16", (4, 320, 3, 3))
    }
    header.update({k: ("F16", v) for k, v in extra.items()})
    with pytest.raises(ModelMismatchError, match=match):
        family_of(header, name="x.safetensors")


# -- the shipped configs: the published models' layouts, sizes and tokenizers -------------------


def _meta_model(folder: Path, name: str) -> dict[str, Any]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = json.loads((folder / name / "config.json").read_text())
    with init_empty_weights():
        if name == "unet":
            model: Any = UNet2DConditionModel.from_config(config)
        elif name == "vae":
            model = AutoencoderKL.from_config(config)
        else:
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig(**config))
    return dict(model.state_dict())


def _sparse_checkpoint(path: Path, tensors: dict[str, Any]) -> Path:
    """A safetensors file with the real header of ``tensors`` (meta: shapes only) and a sparse,
    all-zero data section: the size of the real checkpoint, no disk or memory used."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * 2
        header[name] = {
            "dtype": "F16",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, int]]]:
    """Real-size sparse checkpoints made from the shipped configs (the header a civitai file of
    that family has), with the parameters of each component."""
    root = tmp_path_factory.mktemp("published")
    out = {}
    for family in ("sd15", "sd21", "sdxl"):
        with shipped_config(family) as folder:
            names = [
                n
                for n in ("unet", "vae", "text_encoder", "text_encoder_2")
                if (folder / n).is_dir()
            ]
            weights = {name: _meta_model(folder, name) for name in names}
            counts = {name: sum(t.numel() for t in w.values()) for name, w in weights.items()}
            state = ldm_state_dict(folder, open_clip=family == "sd21", weights=weights.__getitem__)
        out[family] = (_sparse_checkpoint(root / f"{family}.safetensors", state), counts)
    return out


def test_shipped_configs_are_the_published_models(
    published: dict[str, tuple[Path, dict[str, int]]],
) -> None:
    from deskgen._registry import get_backend_class

    sd = get_backend_class("sd").profile.memory
    sdxl = get_backend_class("sdxl").profile.memory
    assert sd is not None and sdxl is not None
    assert published["sd15"][1] == dict(sd.parameters)
    assert published["sdxl"][1] == dict(sdxl.parameters)
    assert published["sd21"][1]["unet"] == 865_910_724  # SD 2.x's UNet (1024-wide cross-attention)


@pytest.mark.parametrize(
    ("family", "diffusers_type"), [("sd15", "v1"), ("sd21", "v2"), ("sdxl", "xl_base")]
)
def test_detection_on_real_size_headers(
    published: dict[str, tuple[Path, dict[str, int]]], family: str, diffusers_type: str
) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    path, counts = published[family]
    assert detect_family(path).name == family
    assert single_file_parameters(path) == counts
    with safe_open(str(path), "pt") as fh:  # diffusers' own detector agrees (shapes only)
        names = list(fh.keys())
        meta = {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in names}
    assert infer_diffusers_model_type(meta) == diffusers_type


def test_real_size_wrong_family_is_refused_without_reading_weights(
    published: dict[str, tuple[Path, dict[str, int]]],
) -> None:
    """Gigabytes of (sparse) weights: refused in milliseconds, so none were read."""
    for backend, family, owner in (
        ("sdxl", "sd15", "'sd'"),
        ("sd", "sdxl", "'sdxl'"),
        ("sdxl-controlnet", "sd21", "'sd'"),
    ):
        start = time.perf_counter()
        with pytest.raises(ModelMismatchError, match=owner):
            DeskGenerator(backend, model=str(published[family][0]), device="cpu")
        assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_shipped_configs_parse_and_their_tokenizers_load_offline(family: str) -> None:
    from diffusers import DiffusionPipeline
    from transformers import CLIPTokenizer

    from deskgen.prompts._tokenizers import packaged_clip_tokenizer

    with shipped_config(family) as folder:  # type: ignore[arg-type]
        index = DiffusionPipeline.load_config(str(folder), local_files_only=True)
        assert index["_class_name"] == (
            "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
        )
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type" if family == "sd21" else "beta_schedule"] == (
            "v_prediction" if family == "sd21" else "scaled_linear"
        )
        for name in sorted(n for n in index if n.startswith("tokenizer")):
            tokenizer = CLIPTokenizer.from_pretrained(
                str(folder), subfolder=name, local_files_only=True
            )
            pad = "!" if name == "tokenizer_2" or family == "sd21" else "<|endoftext|>"
            reference = packaged_clip_tokenizer(pad)
            assert tokenizer.pad_token == pad and tokenizer.model_max_length == 77
            text = "a walnut desk, a lamp and a monitor"
            assert tokenizer(text).input_ids == reference(text).input_ids
    assert not folder.exists()  # the temporary copy is gone


def test_parameters_of_a_tiny_file_match_its_folder(files: dict[str, tuple[Path, Path]]) -> None:
    from safetensors.torch import load_file

    file, folder = files["sdxl"]
    counts = single_file_parameters(file)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        weights = load_file(next((folder / name).glob("*.safetensors")))
        assert counts[name] == sum(t.numel() for t in weights.values()), name


def test_tiny_single_file_is_reused_and_deterministic(
    files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    file, folder = files["sdxl"]
    stamp = file.stat().st_mtime_ns
    assert make_tiny_single_file("sdxl", file, diffusers_path=folder) == file
    assert file.stat().st_mtime_ns == stamp  # the same build: not rewritten
    again = make_tiny_single_file("sdxl", tmp_path / "again.safetensors", diffusers_path=folder)
    assert again.read_bytes() == file.read_bytes()
    other = make_tiny_single_file("sdxl", tmp_path / "other.safetensors", seed=1)
    assert other.read_bytes() != file.read_bytes()
    assert (tmp_path / "other-diffusers" / "model_index.json").is_file()  # its folder, beside it
    with pytest.raises(ValueError, match="'sd', 'sd2' or 'sdxl'"):
        make_tiny_single_file("hidream", tmp_path / "x.safetensors")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\.safetensors file"):
        make_tiny_single_file("sd", tmp_path / "x.ckpt")
