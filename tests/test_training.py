"""LoRA training on tiny models: the loss goes down, the LoRA reloads (in deskgen and in plain
diffusers) and changes the output, an interrupted run resumes exactly, SD and text encoders."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from deskgen import (
    ConfigError,
    DeskGenerator,
    LoraSpec,
    LoraTrainingConfig,
    ModelLoadError,
    TrainingProgress,
    train_lora,
)
from deskgen._training import _buckets, _nearest_bucket, _prepare


def _desk(size: tuple[int, int], seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, (200, 190, 170))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0, h * 2 // 3, w, h), fill=(120, 80, 40))  # the desk
    x = rng.randrange(w // 2)
    draw.rectangle((x, h // 4, x + w // 3, h // 2), fill=(20, 20, 30))  # a monitor
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six desks in three aspect ratios, as an imagefolder."""
    root = tmp_path_factory.mktemp("desks")
    (root / "train").mkdir()
    lines = []
    for i, size in enumerate([(64, 64), (64, 64), (96, 64), (96, 64), (64, 96), (48, 48)]):
        name = f"desk{i}.png"
        _desk(size, i).save(root / "train" / name)
        lines.append(json.dumps({"file_name": name, "caption": f"dskgn, a desk number {i}"}))
    (root / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _config(model: Path, data: Path, out: Path, **fields: Any) -> LoraTrainingConfig:
    base: dict[str, Any] = {
        "model": str(model),
        "data": str(data),
        "out": str(out),
        "rank": 4,
        "learning_rate": 5e-3,
        "batch_size": 2,
        "max_steps": 4,
        "checkpoint_every": 2,
        "trigger_words": ["dskgn"],
        "device": "cpu",
    }
    return LoraTrainingConfig(**(base | fields))


def test_buckets_and_crops() -> None:
    buckets = _buckets(1024, 64)
    assert (1024, 1024) in buckets and (1216, 832) in buckets and (832, 1216) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 for w, h in buckets)
    assert _nearest_bucket((4000, 3000), buckets) == (1152, 896)
    assert _nearest_bucket((1000, 1000), buckets) == (1024, 1024)
    crop, original, top_left = _prepare(
        Image.new("RGB", (200, 100)), (64, 64), center=True, flip=False, rng=random.Random(0)
    )
    assert crop.size == (64, 64) and original == (100, 200) and top_left == (0, 32)


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_lora_loads(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path
) -> None:
    seen: list[TrainingProgress] = []
    result = train_lora(
        _config(tiny_sdxl_path, data, tmp_path / "out", max_steps=12, checkpoint_every=None),
        progress=False,
        on_step=seen.append,
    )
    assert result.steps == 12 and result.images == 6 and result.resumed_from is None
    assert result.loss_after < result.loss_before
    assert [p.step for p in seen] == list(range(1, 13))
    log = [json.loads(line) for line in result.loss_log.read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 13))
    assert [c.name for c in result.checkpoints] == ["step-000012"]

    with safe_open(str(result.lora), framework="pt") as fh:
        metadata = fh.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.trigger_phrase"] == "dskgn"
    assert metadata["ss_network_dim"] == "4"
    assert json.loads(metadata["deskgen.training"])["learning_rate"] == 5e-3
    assert str(tmp_path) not in json.dumps(metadata)  # no local paths

    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        base = np.asarray(gen.generate(prompt="a desk", seed=1, steps=3).image, dtype=np.int16)
        lora = gen.load_lora(LoraSpec(path=str(result.lora)))
        assert (lora.layout, lora.base, lora.rank) == ("diffusers", "sdxl", 4)
        assert lora.trigger_words == ("dskgn",)
        ours = gen.generate(prompt="a desk", seed=1, steps=3)
    assert ours.prompt_report is not None and ours.prompt_report.prompt == "dskgn, a desk"
    mine = np.asarray(ours.image, dtype=np.int16)
    assert np.abs(mine - base).mean() > 0.5

    # plain diffusers loads it too, to the same pixels
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(result.lora))
    theirs = pipe(
        "dskgn, a desk",
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1),
    ).images[0]
    assert np.abs(np.asarray(theirs, dtype=np.int16) - mine).max() <= 1


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path
) -> None:
    whole = train_lora(_config(tiny_sdxl_path, data, tmp_path / "whole"), progress=False)

    def stop_at_three(progress: TrainingProgress) -> None:
        if progress.step == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_lora(_config(tiny_sdxl_path, data, out), progress=False, on_step=stop_at_three)
    assert [c.name for c in (out / "checkpoints").iterdir()] == ["step-000002"]
    assert len((out / "loss.jsonl").read_text().splitlines()) == 3
    resumed = train_lora(_config(tiny_sdxl_path, data, out), progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert resumed.loss_before == whole.loss_before
    assert resumed.loss_after == pytest.approx(whole.loss_after, abs=1e-6)
    a, b = load_file(str(whole.lora)), load_file(str(resumed.lora))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    losses = [json.loads(x)["loss"] for x in whole.loss_log.read_text().splitlines()]
    again = [json.loads(x)["loss"] for x in resumed.loss_log.read_text().splitlines()]
    assert again == pytest.approx(losses, abs=1e-6)

    # resuming with other settings is refused; resume=False starts over
    with pytest.raises(ConfigError, match="other settings"):
        train_lora(_config(tiny_sdxl_path, data, out, rank=8), progress=False)
    fresh = train_lora(
        _config(tiny_sdxl_path, data, out, max_steps=2, resume=False), progress=False
    )
    assert fresh.resumed_from is None and fresh.steps == 2


def test_a_metadata_line_cut_inside_a_character_is_skipped(data: Path, tmp_path: Path) -> None:
    import shutil

    from deskgen._training import _read_data

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    line = json.dumps(
        {"file_name": "desk0.png", "caption": "un bureau \u00e9l\u00e9gant"}, ensure_ascii=False
    )
    with (copy / "train" / "metadata.jsonl").open("ab") as fh:
        fh.write(line.encode("utf-8")[: line.encode("utf-8").index(b"\xc3\xa9") + 1])
    samples = _read_data(_config(Path("unused"), copy, tmp_path / "out"))
    assert [s.path.name for s in samples] == [f"desk{i}.png" for i in range(6)]


def _damage(folder: Path, how: str) -> None:
    if how == "cut state.pt":
        state = folder / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif how == "empty adapter":
        (folder / "adapter.safetensors").write_bytes(b"")
    else:  # a flipped byte in a tensor: the file still loads, its checksum does not match
        adapter = folder / "adapter.safetensors"
        data = bytearray(adapter.read_bytes())
        data[-3] ^= 0x40
        adapter.write_bytes(bytes(data))


def test_checkpoints_are_written_durably_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from deskgen._checkpoints import (
        DamagedCheckpointError,
        list_checkpoints,
        load_checkpoint,
        newest_good,
        save_checkpoint,
    )

    synced: list[str] = []  # what each fsync was for, by its path (Linux)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self") else "")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    adapter = {"unet.a.lora_A.weight": torch.arange(12.0).reshape(3, 4)}
    state: dict[str, Any] = {
        "format": 1,
        "config": "c",
        "step": 2,
        "epoch": 0,
        "next_batch": 4,
        "optimizer": {"state": {}, "param_groups": []},
        "schedule": {},
        "scaler": {},
        "generator": torch.Generator().get_state(),
        "rng": [3, [1, 2], None],
        "loss_before": 0.5,
        "data": "d",
        "total_steps": 4,
    }
    out = tmp_path / "out"
    for step in (1, 2):
        save_checkpoint(out / "checkpoints" / f"step-{step:06d}", adapter, state | {"step": step})
    folders = list_checkpoints(out)
    assert [f.name for f in folders] == ["step-000001", "step-000002"]
    assert not list(out.rglob("*.tmp"))
    if os.path.isdir("/proc/self"):  # every file, and the folders that name them, synced
        for name in ("adapter.safetensors", "state.pt", "checksums.json"):
            assert any(f"/.step-000002.tmp/.{name}." in path for path in synced), name
        assert str(out / "checkpoints" / ".step-000002.tmp") in synced  # before the rename
        assert synced[-1] == str(out / "checkpoints")  # after it
    tensors, loaded = load_checkpoint(folders[1])
    torch.testing.assert_close(tensors["unet.a.lora_A.weight"], adapter["unet.a.lora_A.weight"])
    assert loaded["step"] == 2

    for how, why in [
        ("cut state.pt", "state.pt does not match its checksum"),
        ("empty adapter", "adapter.safetensors does not match its checksum"),
        ("flipped byte", "adapter.safetensors does not match its checksum"),
    ]:
        save_checkpoint(folders[1], adapter, state)
        _damage(folders[1], how)
        with pytest.raises(DamagedCheckpointError, match=why):
            load_checkpoint(folders[1])
        resumable = newest_good(out)
        assert resumable is not None and resumable.folder == folders[0]
        assert [f for f, _ in resumable.damaged] == [folders[1]]
        assert resumable.state["step"] == 1
        if how != "flipped byte":  # without checksums (an older deskgen's) loading still tells
            (folders[1] / "checksums.json").unlink()
            with pytest.raises(DamagedCheckpointError, match="does not load"):
                load_checkpoint(folders[1])
    save_checkpoint(folders[1], adapter, state)
    (folders[1] / "state.pt").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"state\.pt is missing"):
        load_checkpoint(folders[1])
    _damage(folders[0], "empty adapter")
    with pytest.raises(ModelLoadError, match=r"Every checkpoint .* is damaged") as info:
        newest_good(out)
    assert "step-000002: state.pt is missing" in str(info.value)
    assert "resume=False" in str(info.value) and str(out / "checkpoints") in str(info.value)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path
) -> None:
    import shutil

    from deskgen._checkpoints import newest_good

    whole = train_lora(_config(tiny_sdxl_path, data, tmp_path / "whole"), progress=False)

    def stop_at_three(progress: TrainingProgress) -> None:
        if progress.step == 3:
            raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train_lora(
            _config(tiny_sdxl_path, data, stopped, checkpoint_every=1),
            progress=False,
            on_step=stop_at_three,
        )
    steps = ["step-000001", "step-000002", "step-000003"]
    assert sorted(c.name for c in (stopped / "checkpoints").iterdir()) == steps
    a = load_file(str(whole.lora))
    for how in ("cut state.pt", "empty adapter"):
        out = tmp_path / how.replace(" ", "-")
        shutil.copytree(stopped, out)
        _damage(out / "checkpoints" / "step-000003", how)
        resumed = train_lora(_config(tiny_sdxl_path, data, out, checkpoint_every=1), progress=False)
        assert resumed.resumed_from == 2 and resumed.steps == 4
        [warning] = resumed.warnings
        assert "step-000003" in warning and "damaged" in warning
        assert "resumed from step-000002" in warning
        assert ("state.pt" if how == "cut state.pt" else "adapter.safetensors") in warning
        assert resumed.loss_before == whole.loss_before
        b = load_file(str(resumed.lora))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
        losses = [json.loads(x)["loss"] for x in whole.loss_log.read_text().splitlines()]
        again = [json.loads(x)["loss"] for x in resumed.loss_log.read_text().splitlines()]
        assert again == pytest.approx(losses, abs=1e-6)
        # the damaged checkpoint was written again, whole
        assert [c.name for c in resumed.checkpoints] == [*steps[1:], "step-000004"]
        check = newest_good(out)
        assert check is not None and check.folder.name == "step-000004" and not check.damaged

    # nothing to resume from: a typed error that says what to do, before the model loads
    for folder in (stopped / "checkpoints").iterdir():
        _damage(folder, "cut state.pt")
    with pytest.raises(ModelLoadError, match="Every checkpoint") as info:
        train_lora(_config(tiny_sdxl_path, data, stopped), progress=False)
    assert "Delete the folder" in str(info.value) and "resume=False" in str(info.value)
    fresh = train_lora(_config(tiny_sdxl_path, data, stopped, resume=False), progress=False)
    assert fresh.resumed_from is None
    assert [c.name for c in fresh.checkpoints] == ["step-000002", "step-000004"]


@pytest.mark.slow
def test_sd_with_text_encoders_and_accumulation(
    tiny_sd_path: Path, data: Path, tmp_path: Path
) -> None:
    result = train_lora(
        _config(
            tiny_sd_path,
            data,
            tmp_path / "sd",
            train_text_encoders=True,
            gradient_accumulation_steps=2,
            buckets=False,
            random_flip=True,
            center_crop=False,
            max_steps=None,
            epochs=2,
            lr_scheduler="cosine",
        ),
        progress=False,
    )
    # 6 images in batches of 2 (one bucket): 3 batches, 2 optimizer steps an epoch
    assert (result.steps, result.epochs) == (4, 2)
    with DeskGenerator("sd", model=str(tiny_sd_path), device="cpu") as gen:
        lora = gen.load_lora(str(result.lora))
    assert lora.components == ("text_encoder", "unet") and lora.base == "sd1"


def test_bad_runs(tiny_sdxl_path: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No metadata\.jsonl"):
        train_lora(_config(tiny_sdxl_path, tmp_path, tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train_lora(_config(tiny_sdxl_path, data, tmp_path / "o", mixed_precision="fp16"))
    with pytest.raises(ValueError, match="name"):
        _config(tiny_sdxl_path, data, tmp_path, name="../escape")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path, precision: str
) -> None:
    config = _config(
        tiny_sdxl_path,
        data,
        tmp_path / precision,
        device="cuda",
        mixed_precision=precision,
        max_steps=12,
        checkpoint_every=6,
        train_text_encoders=True,
    )
    result = train_lora(config, progress=False)
    assert result.loss_after < result.loss_before
    tensors = load_file(str(result.lora))
    assert all(t.dtype == torch.float32 for t in tensors.values())  # trained in float32
    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cuda") as gen:
        base = np.asarray(gen.generate(prompt="a desk", seed=1, steps=3).image, dtype=np.int16)
        gen.load_lora(str(result.lora))
        mine = np.asarray(gen.generate(prompt="a desk", seed=1, steps=3).image, dtype=np.int16)
    assert np.abs(mine - base).mean() > 0.5
    # an interrupted GPU run resumes to (nearly) the same LoRA
    out = tmp_path / f"{precision}-resumed"

    def stop(progress: TrainingProgress) -> None:
        if progress.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(config.model_copy(update={"out": str(out)}), progress=False, on_step=stop)
    resumed = train_lora(config.model_copy(update={"out": str(out)}), progress=False)
    assert resumed.resumed_from == 6
    for key, value in load_file(str(resumed.lora)).items():
        torch.testing.assert_close(value, tensors[key], rtol=1e-3, atol=1e-4)


def test_data_and_length_changes_refuse_a_resume(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "out"
    before = torch.random.get_rng_state()
    train_lora(_config(tiny_sdxl_path, copy, out, max_steps=2), progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG untouched
    cosine = _config(tiny_sdxl_path, copy, tmp_path / "cos", max_steps=2, lr_scheduler="cosine")
    train_lora(cosine, progress=False)
    with pytest.raises(ConfigError, match="depends on the length"):
        train_lora(cosine.model_copy(update={"max_steps": 4}), progress=False)
    # a new name or trigger word resumes; more steps on a constant schedule too
    renamed = _config(tiny_sdxl_path, copy, out, max_steps=4, name="renamed", trigger_words=[])
    assert train_lora(renamed, progress=False).resumed_from == 2
    with (copy / "train" / "metadata.jsonl").open("a") as fh:
        fh.write(json.dumps({"file_name": "desk0.png", "caption": "another caption"}) + "\n")
    with pytest.raises(ConfigError, match="data changed"):
        train_lora(_config(tiny_sdxl_path, copy, out, max_steps=6), progress=False)
    # a fresh start keeps the old checkpoints until it has one of its own
    fresh = _config(tiny_sdxl_path, copy, out, max_steps=2, resume=False, checkpoint_every=None)
    result = train_lora(fresh, progress=False)
    assert [c.name for c in result.checkpoints] == ["step-000002"]


def test_captions_outside_the_folder_or_too_long(
    tiny_sdxl_path: Path, data: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    metadata = copy / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    long = json.loads(lines[0]) | {"caption": "a desk " * 60}
    metadata.write_text("\n".join([json.dumps(long), *lines[1:]]) + "\n")
    result = train_lora(_config(tiny_sdxl_path, copy, tmp_path / "o", max_steps=1), progress=False)
    assert result.warnings and "1 of 6 captions are longer" in result.warnings[0]
    metadata.write_text(json.dumps({"file_name": "../../x.png", "caption": "x"}) + "\n")
    with pytest.raises(ConfigError, match="outside the dataset folder"):
        train_lora(_config(tiny_sdxl_path, copy, tmp_path / "o2"), progress=False)


def test_an_empty_base_model_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blank model is not the current folder: refused before any model index is read."""
    from pydantic import ValidationError

    from deskgen._training import _family
    from deskgen.cli import main

    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    monkeypatch.chdir(tmp_path)  # what "" would have read
    for model in ("", "  "):
        with pytest.raises(ValidationError, match="give a hub id or a pipeline folder"):
            LoraTrainingConfig(model=model, data="d", out="o")
        # a copy skips the validator: the model index is not read either
        copy = LoraTrainingConfig(model="m", data="d", out="o").model_copy(update={"model": model})
        with pytest.raises(ConfigError, match="The model name is empty"):
            _family(copy)
    # the command: deskgen's ConfigError, no traceback
    assert main(["train-lora", "--model", "", "--data", "d", "--out", "o"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid training settings: model:"), err
    assert "give a hub id or a pipeline folder" in err
