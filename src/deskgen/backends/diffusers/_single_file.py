"""Single-file checkpoints: one ``.safetensors`` file in the original (LDM) layout, as civitai
shares SD 1.x, SD 2.x and SDXL fine-tunes, loaded with diffusers' ``from_single_file``.

```python
DeskGenerator("sdxl", model="~/models/juggernautXL.safetensors")          # a local file
DeskGenerator("sd", model="user/repo/model.safetensors")                  # a file on the Hub
DeskGenerator("sd", model="my.safetensors", config="~/diffusers-folder")  # its own configs
```

The family is read from the file's header (its tensor names and shapes; no weight is read) and a
wrong one is refused before anything loads. The pipeline's configs (model index, each
component's config, scheduler, tokenizers) come from ``config=`` (a local diffusers folder) or
from the ones deskgen ships for the family (`SHIPPED`: SD 1.5, SD 2.1 768 v-prediction, SDXL
base 1.0), so loading never contacts the Hub. Pickle files (``.ckpt``) only with
``allow_pickle=True``.

The planner sizes a file without loading it with `detect_family` and `single_file_parameters`
(header only, nothing heavy imported).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..._exceptions import ConfigError, ModelLoadError, ModelMismatchError, ModelNotFoundError
from ..._hub import offline

if TYPE_CHECKING:
    from ._load import LoadingBackend

__all__ = [
    "FAMILIES",
    "SHIPPED",
    "CheckpointFamily",
    "FamilyName",
    "detect_family",
    "family_of",
    "is_single_file",
    "load_single_file",
    "read_header",
    "shipped_config",
    "single_file_parameters",
]

FamilyName = Literal["sd15", "sd21", "sdxl"]


@dataclass(frozen=True)
class CheckpointFamily:
    """What a checkpoint's tensors say it is."""

    name: FamilyName
    """The shipped config folder that describes it (`shipped_config`)."""
    label: str
    pipeline: str
    """The diffusers pipeline class of the family (which backends load it)."""

    @property
    def article(self) -> str:
        """``"a Stable Diffusion 1.x"``, ``"an SDXL"``: the label in a sentence."""
        return f"{'an' if self.label.startswith('SD') else 'a'} {self.label}"


FAMILIES: dict[FamilyName, CheckpointFamily] = {
    "sd15": CheckpointFamily("sd15", "Stable Diffusion 1.x", "StableDiffusionPipeline"),
    "sd21": CheckpointFamily("sd21", "Stable Diffusion 2.x", "StableDiffusionPipeline"),
    "sdxl": CheckpointFamily("sdxl", "SDXL", "StableDiffusionXLPipeline"),
}
SHIPPED: dict[FamilyName, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1: 768 px, v-prediction",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
"""The published model each shipped config folder copies."""

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
_PICKLE = (".ckpt", ".pt", ".pth")
_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
_GROUPS = (  # key prefix -> diffusers component (single_file_parameters)
    (_UNET, "unet"),
    (_VAE, "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
)
_FLOAT = re.compile(r"^B?F\d")
_CLIP_L_POSITIONS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
)
_HOW = (
    "Single-file checkpoints are .safetensors files in the original layout (as civitai shares "
    "them); if this one is incomplete, delete it and download it again."
)

Header = dict[str, tuple[str, tuple[int, ...]]]
"""Tensor name -> (dtype, shape), from a checkpoint's header."""


def is_single_file(model: str) -> bool:
    """Whether ``model`` names one checkpoint file: a local file, or a hub file
    ``OWNER/REPO/[FOLDER/]FILE.safetensors`` (or ``.ckpt``) that is not a local path."""
    expanded = os.path.expanduser(model)
    # a missing local file or a hub file: `_local_file` tells them apart
    return os.path.isfile(expanded) or (
        not os.path.isdir(expanded) and model.lower().endswith(SUFFIXES)
    )


def _hub_file(model: str) -> tuple[str, str] | None:
    """``(repo id, file in it)`` for ``OWNER/REPO/PATH``; ``None`` for a local path."""
    if os.path.isabs(os.path.expanduser(model)) or model.startswith((".", "~")):
        return None
    parts = model.split("/")
    if len(parts) < 3 or not all(re.fullmatch(r"[\w.-]+", part) for part in parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def read_header(path: str | os.PathLike[str]) -> Header:
    """The tensor names, dtypes and shapes of a ``.safetensors`` file, from its header alone
    (checked against the file's size: a file cut short is refused).

    Raises:
        ModelLoadError: not a readable safetensors file.
    """
    file = Path(path)
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= length <= min(size - 8, 100 * 2**20):
            raise ModelLoadError(
                f"{file.name!r} can't be read as a single-file checkpoint (no safetensors "
                f"header). {_HOW}"
            )
        raw = fh.read(length)
    try:
        data = json.loads(raw)
        header: Header = {}
        end = 0
        for name, info in data.items():
            if name == "__metadata__":
                continue
            header[name] = (str(info["dtype"]), tuple(int(n) for n in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ModelLoadError(
            f"{file.name!r} can't be read as a single-file checkpoint (damaged safetensors "
            f"header: {exc}). {_HOW}"
        ) from exc
    if 8 + length + end > size:
        raise ModelLoadError(
            f"{file.name!r} is cut short ({size} of {8 + length + end} bytes). {_HOW}"
        )
    return header


def _pickle_state(path: Path, device: str) -> dict[str, Any]:
    """A pickle checkpoint's tensors (``torch.load(weights_only=True)``) on ``device``
    (``meta``: names and shapes only)."""
    import torch

    try:
        data = torch.load(
            path, map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name!r} can't be read as a checkpoint ({type(exc).__name__}: {exc}). {_HOW}"
        ) from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _checked_pickle(path: Path, allow_pickle: bool) -> None:
    if path.suffix.lower() in _PICKLE and not allow_pickle:
        raise ModelLoadError(
            f"{path.name!r} is a pickle checkpoint ({path.suffix}): pickle files can run code "
            "when loaded, so deskgen reads them only with allow_pickle=True, for checkpoints "
            "you trust. Prefer the .safetensors version of the model, or convert it."
        )


def family_of(header: Mapping[str, tuple[str, tuple[int, ...]]], *, name: str) -> CheckpointFamily:
    """The family a checkpoint's tensor names (and a few shapes) say it is; ``name`` words the
    errors.

    Raises:
        ModelMismatchError: not a whole SD 1.x, SD 2.x or SDXL base checkpoint (a LoRA, a VAE,
            a ControlNet, an SDXL refiner, an inpainting model, another architecture).
    """
    keys = list(header)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has(_UNET):
        raise ModelMismatchError(f"{name!r} {_not_a_checkpoint(keys)}")
    if has(_UNET + "double_blocks.") or has(_UNET + "joint_blocks."):
        raise ModelMismatchError(
            f"{name!r} is a transformer model (Flux or SD3 layout), not an SD 1.x/2.x/SDXL "
            "UNet checkpoint: deskgen's sd and sdxl backends load Stable Diffusion UNets."
        )
    conv_in = header.get(_UNET + "input_blocks.0.0.weight")
    channels = conv_in[1][1] if conv_in and len(conv_in[1]) == 4 else None
    if channels == 9:
        raise ModelMismatchError(
            f"{name!r} is an inpainting checkpoint (its UNet takes 9 input channels: latents, "
            "mask and masked image); deskgen reads single files of base models only. Use the "
            "inpainting model's diffusers folder (e.g. stable-diffusion-v1-5/stable-diffusion-"
            "inpainting), or the base model with mask=... (its inpainting pipeline)."
        )
    if channels not in (None, 4):
        raise ModelMismatchError(
            f"{name!r} has a UNet with {channels} input channels (an upscaler, depth or "
            "instruct model?); deskgen loads text-to-image base models (4 channels)."
        )
    if "edm_mean" in header or "edm_vpred.sigma_max" in header:
        raise ModelMismatchError(
            f"{name!r} is an EDM model (Playground v2.5 layout), which deskgen's sdxl backend "
            "does not sample correctly."
        )
    if has("conditioner.embedders.1."):
        return FAMILIES["sdxl"]
    if has("conditioner.embedders.0.model."):
        raise ModelMismatchError(
            f"{name!r} is an SDXL refiner (one OpenCLIP encoder, aesthetic-score conditioning); "
            "deskgen's backends load base models. Use an SDXL base checkpoint, e.g. "
            "stabilityai/stable-diffusion-xl-base-1.0."
        )
    if has("cond_stage_model.model."):
        return FAMILIES["sd21"]
    if has("cond_stage_model.transformer."):
        return FAMILIES["sd15"]
    raise ModelMismatchError(
        f"{name!r} has UNet weights but no text encoder (no cond_stage_model.* or "
        "conditioner.embedders.* tensors): deskgen loads whole checkpoints. Use the full "
        "version of the model (civitai's 'full' or 'pruned' file, not 'unet only')."
    )


def _not_a_checkpoint(keys: list[str]) -> str:
    """What a file without UNet weights is, and where it goes instead."""
    text = " ".join(keys[:2000])
    if re.search(r"lora_|\.lora\.|lora_[AB]\.|lora_(up|down)|hada_|lokr_", text):
        return "is a LoRA, not a model checkpoint: pass it as loras=... on the base model."
    if re.search(r"(^| )(control_model\.|controlnet_|input_hint_block\.)", text):
        return (
            "is a ControlNet, not a model checkpoint: give the sdxl-controlnet backend a "
            "diffusers ControlNet folder as controlnet=... and a base model as model=...."
        )
    if re.search(r"(^| )(first_stage_model\.)?(encoder|decoder)\.(down|up|mid)", text):
        return (
            "is a VAE, not a model checkpoint: pass a diffusers VAE folder or hub id as "
            "vae=... beside a whole model."
        )
    if re.search(r"(^| )(unet\.)?down_blocks\.", text):
        return (
            "holds a UNet in the diffusers layout, not a whole checkpoint in the original "
            "layout: pass the diffusers pipeline folder it belongs to as model=...."
        )
    return (
        "is not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors). "
        "Single-file checkpoints are whole SD 1.x, SD 2.x or SDXL base models in the original "
        "layout; use a diffusers pipeline folder or hub id for anything else."
    )


def detect_family(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> CheckpointFamily:
    """The family of the local checkpoint ``path`` (SD 1.x, SD 2.x or SDXL base), from its
    header alone: nothing is loaded, nothing heavy imported (pickle files, with
    ``allow_pickle``, are read onto torch's meta device).

    Raises:
        ModelMismatchError: another kind of file or model (`family_of`).
        ModelLoadError: unreadable, or a pickle file without ``allow_pickle``.
    """
    file = Path(path)
    return family_of(_header(file, allow_pickle=allow_pickle), name=file.name)


def _header(file: Path, *, allow_pickle: bool) -> Header:
    if not file.is_file():
        raise ModelNotFoundError(f"No checkpoint file at {str(file)!r}.")
    _checked_pickle(file, allow_pickle)
    if file.suffix.lower() not in _PICKLE:
        return read_header(file)
    state = _pickle_state(file, "meta")
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}


def single_file_parameters(path: str | os.PathLike[str]) -> dict[str, int]:
    """Parameters of each component in the ``.safetensors`` checkpoint ``path`` (``unet``,
    ``vae``, ``text_encoder``, ``text_encoder_2``), counted from its header: floating-point
    tensors only (not position ids), EMA copies and other extras left out."""
    counts: dict[str, int] = {}
    for name, (dtype, shape) in read_header(path).items():
        component = next((c for prefix, c in _GROUPS if name.startswith(prefix)), None)
        if component is None or not _FLOAT.match(dtype):
            continue
        elements = 1
        for n in shape:
            elements *= n
        counts[component] = counts.get(component, 0) + elements
    return counts


@contextlib.contextmanager
def shipped_config(family: FamilyName) -> Iterator[Path]:
    """A complete diffusers config folder (no weights) for ``family``: the configs deskgen
    ships (`SHIPPED`) with the CLIP vocabulary it ships copied into each tokenizer folder, in a
    temporary folder removed on exit."""
    from ...prompts._tokenizers import clip_tokenizer_dir

    source = Path(str(resources.files("deskgen") / "_data" / "single_file" / family))
    with tempfile.TemporaryDirectory(prefix=f"deskgen-{family}-") as tmp:
        folder = Path(tmp) / family
        shutil.copytree(source, folder)
        vocabulary = clip_tokenizer_dir()
        for tokenizer in folder.glob("tokenizer*"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(vocabulary / name, tokenizer / name)
        yield folder


# -- loading ---------------------------------------------------------------------------------


def load_single_file(backend: LoadingBackend, model: str) -> Any:
    """Load the checkpoint file ``model`` for ``backend`` with ``from_single_file``: its family
    and configs checked first, the backend's components given (``vae=``, ControlNets), the
    components ``quantization=`` names quantized in place (a single file is read whole)."""
    opts = backend.opts
    if opts.variant is not None:
        raise ConfigError(
            f"variant={opts.variant!r} picks weight files in a diffusers folder; a single file "
            "has one set of weights: leave it out (dtype='float16' loads it in half precision)."
        )
    path, header = _local_file(backend, model)
    family = family_of(header, name=model)
    _check_backend(backend, family, model)
    if opts.vae is None and not any(k.startswith(_VAE) for k in header):
        raise ModelLoadError(
            f"{model!r} has no VAE weights (no first_stage_model.* tensors): pass vae=... a "
            f"diffusers VAE folder or hub id for {family.label}."
        )
    with _config_folder(opts.config, family) as (folder, where):
        index = _config_index(backend, folder, where, header, family, model)
        extra: dict[str, Any] = {}
        if opts.vae is not None:
            extra["vae"] = backend._load_vae(opts.vae)
        extra.update(backend._extra_components(str(folder), index))
        extra.update(_scheduler(header, folder))
        extra.update(_second_encoder(backend, header, path, folder))
        later = _quantize_given(backend, index, extra)
        cls = backend._pipeline_class(backend._load_class(index))
        with _single_file_errors(backend, model):
            pipe = cls.from_single_file(
                str(path),
                config=str(folder),
                local_files_only=True,  # the configs are local and the file is here
                dtype=backend._torch_dtype,
                **extra,
            )
    if opts.quantization is not None:
        for name in later:
            backend._quantize_component(name, getattr(pipe, name), opts.quantization)
    return pipe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _local_file(backend: LoadingBackend, model: str) -> tuple[Path, Header]:
    """The checkpoint as a local file and its header; a hub file is downloaded, when online
    after its header (read remotely) passed the family checks, so a wrong file costs no
    download."""
    opts = backend.opts
    expanded = Path(os.path.expanduser(model))
    hub = None if expanded.is_file() else _hub_file(model)
    if hub is None:
        if not expanded.is_file():
            raise ModelNotFoundError(
                f"No checkpoint file at {model!r}: pass an existing .safetensors file, a hub "
                "file as OWNER/REPO/FILE.safetensors, or a diffusers folder or hub id."
            )
        return expanded, _header(expanded, allow_pickle=opts.allow_pickle)
    from huggingface_hub import hf_hub_download, parse_safetensors_file_metadata

    repo, filename = hub
    _checked_pickle(Path(filename), opts.allow_pickle)
    local_only = opts.local_files_only or offline()
    remote: Header | None = None
    try:
        if not local_only and filename.lower().endswith(".safetensors"):
            meta = parse_safetensors_file_metadata(repo, filename, revision=opts.revision)
            remote = {k: (v.dtype, tuple(v.shape)) for k, v in meta.tensors.items()}
            _check_backend(backend, family_of(remote, name=model), model)
        path = Path(
            hf_hub_download(
                repo,
                filename,
                revision=opts.revision,
                cache_dir=opts.cache_dir,
                local_files_only=local_only,
            )
        )
    except (ModelMismatchError, ModelLoadError):
        raise
    except Exception as exc:
        why = (
            "is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1 "
            "or local_files_only=True)"
            if local_only
            else "could not be fetched from the Hub (wrong name, gated or private repo "
            "without a token, or no network)"
        )
        raise ModelNotFoundError(
            f"The checkpoint {model!r} {why}. Download it once on a machine with network "
            f"(`hf download {repo} {filename}`) and point HF_HOME at that cache, or pass the "
            f"local file. Details: {_first_line(exc)}"
        ) from exc
    return path, remote if remote is not None else _header(path, allow_pickle=opts.allow_pickle)


def _check_backend(backend: LoadingBackend, family: CheckpointFamily, model: str) -> None:
    """Refuse a checkpoint of a family the backend does not load, naming the backend that
    does (before any weight is read)."""
    if family.pipeline in backend.accepted_pipelines:
        return
    from ..._registry import backends_for_pipeline, get_backend_class

    owners = [
        name
        for name in backends_for_pipeline(family.pipeline)
        if get_backend_class(name, check_installed=False).profile.single_file
    ]
    hint = f" Use DeskGenerator({owners[0]!r}, model=...) for it." if owners else ""
    raise ModelMismatchError(
        f"{model!r} is {family.article} checkpoint, but the {backend.name!r} backend loads "
        f"{backend.family} weights.{hint}"
    )


@contextlib.contextmanager
def _config_folder(config: str | None, family: CheckpointFamily) -> Iterator[tuple[Path, str]]:
    """The config folder (``config=``, else the shipped one) and how messages name it."""
    if config is None:
        with shipped_config(family.name) as folder:
            yield folder, f"deskgen's configs for {family.label} ({SHIPPED[family.name]})"
        return
    folder = Path(os.path.expanduser(config))
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"No config folder at {config!r}: config= takes a local diffusers pipeline folder "
            "whose model_index.json and component configs describe the checkpoint (weights "
            "are not needed)."
        )
    yield folder, f"config= {config!r}"


def _config_index(
    backend: LoadingBackend,
    folder: Path,
    where: str,
    header: Header,
    family: CheckpointFamily,
    model: str,
) -> dict[str, Any]:
    """The config folder's ``model_index.json``, checked against the backend and the
    checkpoint (its family, its UNet's widths): a wrong config is refused before loading."""
    try:
        index: dict[str, Any] = json.loads((folder / "model_index.json").read_text("utf-8"))
        unet: dict[str, Any] = json.loads((folder / "unet" / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{where} has no readable model_index.json and unet/config.json ({exc}): pass a "
            "local diffusers pipeline folder (saved with save_pretrained(), or `hf download "
            "REPO --include '*.json' '*.txt'`) whose configs describe the checkpoint."
        ) from exc
    xl = str(index.get("_class_name", "")).startswith("StableDiffusionXL")
    if xl != (family.name == "sdxl"):
        raise ModelMismatchError(
            f"{model!r} is {family.article} checkpoint but {where} describes a "
            f"{index.get('_class_name')}: pass the config folder of {family.article} model."
        )
    backend._check_family(index, where)
    conv_in = header.get(_UNET + "input_blocks.0.0.weight", ("", ()))[1]
    keys = next((s for k, (_, s) in header.items() if k.endswith("attn2.to_k.weight")), ())
    widths = unet.get("block_out_channels") or [None]
    found = {  # name: (what the tensors say, what the config says)
        "in_channels": (conv_in[1] if len(conv_in) == 4 else None, unet.get("in_channels", 4)),
        "block_out_channels[0]": (conv_in[0] if conv_in else None, widths[0]),
        "cross_attention_dim": (keys[-1] if keys else None, unet.get("cross_attention_dim")),
    }
    for key, (value, configured) in found.items():
        if None not in (value, configured) and value != configured:
            raise ModelMismatchError(
                f"The configs do not describe {model!r}: its UNet has {key} {value} where "
                f"{where} says {configured}. Pass config= the diffusers folder of the model it "
                "was made from (a tiny or custom model needs its own)."
            )
    return index


@contextlib.contextmanager
def _single_file_errors(backend: LoadingBackend, model: str) -> Iterator[None]:
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    with backend._translating_load_errors(model, local=True, variant=None):
        try:
            yield
        except SingleFileComponentError as exc:
            raise ModelLoadError(
                f"{model!r} lacks weights the pipeline needs ({_first_line(exc)}). Use the "
                "whole checkpoint, or pass the missing part (e.g. vae=...)."
            ) from exc


def _scheduler(header: Header, folder: Path) -> dict[str, Any]:
    """SDXL v-prediction checkpoints mark themselves with a ``v_pred`` tensor (and ``ztsnr``
    for zero terminal SNR): their scheduler predicts v."""
    if "v_pred" not in header:
        return {}
    import diffusers

    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    config["prediction_type"] = "v_prediction"
    if "ztsnr" in header:
        config["rescale_betas_zero_snr"] = True
    return {"scheduler": getattr(diffusers, str(config["_class_name"])).from_config(config)}


def _second_encoder(
    backend: LoadingBackend, header: Header, path: Path, folder: Path
) -> dict[str, Any]:
    """SDXL's OpenCLIP encoder, read apart when both encoders have the same width: diffusers
    tells them apart by width and would fill ``text_encoder_2`` with the CLIP-L weights (tiny
    models only: the real SDXL's are 768 and 1280 wide)."""
    positions = header.get(_CLIP_L_POSITIONS)
    config = folder / "text_encoder_2" / "config.json"
    if positions is None or not config.is_file():
        return {}
    if positions[1][-1] != json.loads(config.read_text("utf-8")).get("hidden_size"):
        return {}
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    prefix = "conditioner.embedders.1."
    if path.suffix.lower() in _PICKLE:
        state = _pickle_state(path, "cpu")
        weights = {k: v for k, v in state.items() if k.startswith(prefix)}
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as file:
            names = [k for k in file.keys() if k.startswith(prefix)]  # noqa: SIM118 (no dict)
            weights = {k: file.get_tensor(k) for k in names}
    index = json.loads((folder / "model_index.json").read_text("utf-8"))
    with _single_file_errors(backend, path.name):
        module = create_diffusers_clip_model_from_ldm(
            getattr(transformers, str(index["text_encoder_2"][1])),
            checkpoint=weights,
            subfolder="text_encoder_2",
            config=str(folder),
            torch_dtype=backend._torch_dtype,
            local_files_only=True,
        )
    return {"text_encoder_2": module}


def _quantize_given(
    backend: LoadingBackend, index: dict[str, Any], extra: dict[str, Any]
) -> list[str]:
    """Check the components ``quantization=`` names against the model before it loads,
    quantize those given to the loader (ControlNets, a ``vae=``) now, as
    `QuantizingBackend._quantize_at_load` does, and return the others (quantized once
    loaded)."""
    config = backend.opts.quantization
    if config is None:
        return []
    names = (
        config.components if config.components is not None else backend.profile.default_quantized
    )
    weighted = sorted(
        k
        for k, v in index.items()
        if isinstance(v, list) and v[0] is not None and not k.startswith(("scheduler", "token"))
    )
    later = []
    for name in names:
        if name in extra:
            backend._quantize_component(name, extra[name], config)
        elif name in weighted:
            later.append(name)
        else:
            raise ConfigError(
                f"QuantConfig names the component {name!r}, which this {backend.family} model "
                f"lacks or which has no weights: choose from {', '.join(weighted)}."
            )
    return later
