"""LoRA files read without loading: format by bytes, layout, base model, trigger words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deskgen import ModelLoadError, ModelNotFoundError
from deskgen._lora import LoraSpec, inspect_lora, sniff_format


def _kohya(path: Path, *, width: int = 2048, metadata: dict[str, str] | None = None) -> Path:
    down = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {
        f"{down}.lora_down.weight": torch.zeros(4, width),
        f"{down}.lora_up.weight": torch.zeros(640, 4),
        f"{down}.alpha": torch.tensor(4.0),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 8),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_kohya_sdxl_with_tag_frequency(tmp_path: Path) -> None:
    tags = {"10_desk": {"desk topview": 12, "photo": 10, "3D 0ff1c3": 2}, "5_more": {"photo": 1}}
    dirs = {"10_desk": {"n_repeats": 10, "img_count": 12}, "5_more": {"img_count": 3}}
    path = _kohya(
        tmp_path / "desk.safetensors",
        metadata={
            "ss_base_model_version": "sdxl_base_v1-0",
            "ss_tag_frequency": json.dumps(tags),
            "ss_dataset_dirs": json.dumps(dirs),
        },
    )
    info = inspect_lora(LoraSpec(path=str(path)))
    assert (info.format, info.layout, info.base, info.rank) == ("safetensors", "kohya", "sdxl", 4)
    # in every caption of its folder: a trigger word; the most frequent: only suggested
    assert info.trigger_words == ("desk topview",)
    assert info.suggested_trigger_words == ("desk topview", "photo", "3D 0ff1c3")
    without_counts = _kohya(
        tmp_path / "nodirs.safetensors", metadata={"ss_tag_frequency": json.dumps(tags)}
    )
    info = inspect_lora(LoraSpec(path=str(without_counts)))
    assert info.trigger_words == () and info.suggested_trigger_words[0] == "desk topview"
    down = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert info.keys[down] == [4, 2048]


@pytest.mark.parametrize(("width", "base"), [(2048, "sdxl"), (1024, "sd2"), (768, "sd1")])
def test_base_from_the_shapes_without_metadata(tmp_path: Path, width: int, base: str) -> None:
    path = _kohya(tmp_path / "x.safetensors", width=width)
    assert inspect_lora(LoraSpec(path=str(path))).base == base


def test_peft_layout_and_trigger_phrase(tmp_path: Path) -> None:
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    save_file(
        {f"{name}.lora_A.weight": torch.zeros(8, 768), f"{name}.lora_B.weight": torch.zeros(64, 8)},
        str(tmp_path / "p.safetensors"),
        metadata={"modelspec.trigger_phrase": "walnut desk, warm light"},
    )
    info = inspect_lora(LoraSpec(path=str(tmp_path)))  # the folder's only .safetensors file
    assert (info.layout, info.base, info.rank) == ("peft", "sd1", 8)
    assert info.trigger_words == ("walnut desk", "warm light")


def test_pickle_refused_even_when_renamed(tmp_path: Path) -> None:
    real = tmp_path / "lora.ckpt"
    torch.save({"w": torch.zeros(2)}, real)
    renamed = tmp_path / "innocent.safetensors"
    renamed.write_bytes(real.read_bytes())
    assert sniff_format(renamed) == "pickle"
    with pytest.raises(ModelLoadError, match=r"pickle file despite its \.safetensors name"):
        inspect_lora(LoraSpec(path=str(renamed)))
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        inspect_lora(LoraSpec(path=str(real)))
    assert inspect_lora(LoraSpec(path=str(real), allow_pickle=True)).format == "pickle"


def test_safetensors_header_length_starting_with_0x80(tmp_path: Path) -> None:
    # a header of 0x180 bytes starts the file with 0x80, the pickle PROTO opcode (a bug once)
    path = tmp_path / "x.safetensors"
    for pad in range(300):
        save_file({"w": torch.zeros(1)}, str(path), metadata={"p": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert sniff_format(path) == "safetensors"
    raw = tmp_path / "raw.pkl"
    import pickle

    raw.write_bytes(pickle.dumps({"w": 1}, protocol=4))
    assert sniff_format(raw) == "pickle"


def test_not_a_lora(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        inspect_lora(LoraSpec(path=str(junk)))


def test_where_the_file_is(tmp_path: Path) -> None:
    _kohya(tmp_path / "a.safetensors")
    _kohya(tmp_path / "b.safetensors")
    with pytest.raises(ModelNotFoundError, match="weight_name"):
        inspect_lora(LoraSpec(path=str(tmp_path)))
    assert inspect_lora(LoraSpec(path=str(tmp_path), weight_name="b.safetensors")).path.name == (
        "b.safetensors"
    )
    with pytest.raises(ModelNotFoundError, match="No LoRA file"):
        inspect_lora(LoraSpec(path="./missing/lora.safetensors"))
    with pytest.raises(ModelNotFoundError, match=r"hf download user/desk-lora desk\.safetensors"):
        inspect_lora(LoraSpec(path="user/desk-lora", weight_name="desk.safetensors"))  # offline


def test_canonical_safetensors_gives_the_same_bytes(tmp_path: Path) -> None:
    from safetensors.torch import load, save

    from deskgen._lora import canonical_safetensors

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    metadata = {f"key{i}": str(i) for i in range(20)}
    files = {canonical_safetensors(save(tensors, metadata=metadata)) for _ in range(5)}
    assert len(files) == 1
    [data] = files
    assert all(torch.equal(load(data)[k], v) for k, v in tensors.items())
    path = tmp_path / "c.safetensors"
    path.write_bytes(data)
    assert sniff_format(path) == "safetensors" and int.from_bytes(data[:8], "little") % 8 == 0
    assert inspect_lora(LoraSpec(path=str(path))).metadata == metadata
