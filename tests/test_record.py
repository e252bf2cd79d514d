from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from deskgen import DeskGenerator, GenerationResult, RecordError, read_record
from deskgen._record import RECORD_KEY, a1111_parameters, atomic_write

from . import fakes  # noqa: F401  (registers the fake backend)


@pytest.fixture(scope="module")
def result() -> GenerationResult:
    gen = DeskGenerator("fake")
    return gen.generate(
        prompt="a tidy desk, warm light",
        negative_prompt="clutter, people",
        seed=7,
        steps=3,
        num_images=2,
    )


def test_save_embeds_parameters_and_record(result: GenerationResult, tmp_path: Path) -> None:
    (path,) = result.save(tmp_path / "out.png", index=1)
    with Image.open(path) as img:
        params = img.text["parameters"]  # type: ignore[attr-defined]
        record = json.loads(img.text[RECORD_KEY])  # type: ignore[attr-defined]
    assert params.splitlines()[0] == "a tidy desk, warm light"
    assert params.splitlines()[1] == "Negative prompt: clutter, people"
    assert "Steps: 3, Sampler: FakeScheduler, CFG scale: 1, Seed: 8, Size: 16x16" in params
    assert record["request"]["seed"] == 8
    assert record["request"]["num_images"] == 1
    assert record["batch_seeds"] == [7, 8]
    assert record["backend"] == "fake"


def test_read_record_replays_the_exact_image(result: GenerationResult, tmp_path: Path) -> None:
    paths = result.save(tmp_path / "batch.png")
    assert [p.name for p in paths] == ["batch-0.png", "batch-1.png"]
    request = read_record(paths[1])
    assert request.seed == 8 and request.num_images == 1
    again = DeskGenerator("fake").generate(request)
    assert again.images[0].tobytes() == result.images[1].tobytes()


def test_single_image_goes_to_the_given_path(tmp_path: Path) -> None:
    res = DeskGenerator("fake").generate(prompt="a desk", seed=1, steps=1)
    assert res.save(tmp_path / "one.png") == [tmp_path / "one.png"]
    assert res.save(tmp_path / "noext") == [tmp_path / "noext.png"]
    assert res.save(tmp_path / "makeover.v2") == [tmp_path / "makeover.v2.png"]
    with pytest.raises(RecordError, match=r"Use a \.png path"):
        res.save(tmp_path / "photo.jpg")
    assert not (tmp_path / "photo.jpg").exists()
    assert not (tmp_path / "photo.jpg.png").exists()


def test_records_name_local_models_without_their_path(tmp_path: Path) -> None:
    folder = tmp_path / "secret-user" / "my-sdxl-finetune"
    folder.mkdir(parents=True)
    res = DeskGenerator("fake", model=str(folder)).generate(prompt="a desk", seed=1, steps=1)
    assert res.model == str(folder)  # in memory: as given
    (path,) = res.save(tmp_path / "out.png")
    with Image.open(path) as img:
        text = img.text["parameters"] + img.text[RECORD_KEY]  # type: ignore[attr-defined]
    assert "my-sdxl-finetune" in text
    assert "secret-user" not in text
    hub = DeskGenerator("fake", model="org/model").generate(prompt="a desk", seed=1, steps=1)
    assert hub.record()["model"] == "org/model"


def test_index_out_of_range(result: GenerationResult, tmp_path: Path) -> None:
    with pytest.raises(IndexError):
        result.save(tmp_path / "x.png", index=5)


def test_a1111_parameters_of_img2img(tmp_path: Path) -> None:
    res = DeskGenerator("fake").generate(
        prompt="desk", image=Image.new("RGB", (8, 8)), seed=2, steps=1, strength=0.5
    )
    text = a1111_parameters(res, 0)
    assert "Denoising strength: 0.5" in text
    assert "Negative prompt" not in text


def test_no_input_metadata_reaches_the_output(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 59.0)}
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=exif.tobytes())
    res = DeskGenerator("fake").generate(prompt="desk", image=buf.getvalue(), seed=1, steps=1)
    (path,) = res.save(tmp_path / "clean.png")
    with Image.open(path) as img:
        assert set(img.info) <= {"parameters", RECORD_KEY}
        assert len(img.getexif()) == 0


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def fail(fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_save_failure_leaves_no_partial_png(result: GenerationResult, tmp_path: Path) -> None:
    class Broken:
        def save(self, *args: object, **kwargs: object) -> None:
            raise OSError("no space left on device")

    broken = result.model_copy(update={"images": [Broken(), Broken()]})
    with pytest.raises(OSError, match="no space"):
        broken.save(tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_unicode_prompts_round_trip(tmp_path: Path) -> None:
    res = DeskGenerator("fake").generate(prompt="책상 위 정리된 모니터", seed=1, steps=1)
    (path,) = res.save(tmp_path / "ko.png")
    assert read_record(path).prompt == "책상 위 정리된 모니터"


class TestRecordErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(RecordError, match="No file"):
            read_record(tmp_path / "none.png")

    def test_not_a_png(self, tmp_path: Path) -> None:
        path = tmp_path / "x.jpg"
        Image.new("RGB", (4, 4)).save(path, format="JPEG")
        with pytest.raises(RecordError, match="not a readable PNG"):
            read_record(path)

    def test_png_without_record(self, tmp_path: Path) -> None:
        path = tmp_path / "plain.png"
        Image.new("RGB", (4, 4)).save(path)
        with pytest.raises(RecordError, match="no deskgen record"):
            read_record(path)

    def test_broken_json(self, tmp_path: Path) -> None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(RECORD_KEY, "{not json")
        path = tmp_path / "bad.png"
        Image.new("RGB", (4, 4)).save(path, pnginfo=info)
        with pytest.raises(RecordError, match="not valid JSON"):
            read_record(path)

    def test_invalid_request(self, tmp_path: Path) -> None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(RECORD_KEY, json.dumps({"request": {"prompt": "x", "steps": -3}}))
        path = tmp_path / "bad.png"
        Image.new("RGB", (4, 4)).save(path, pnginfo=info)
        with pytest.raises(RecordError, match="invalid"):
            read_record(path)


def test_saved_files_get_normal_permissions(result: GenerationResult, tmp_path: Path) -> None:
    import os
    import stat

    (path,) = result.save(tmp_path / "perm.png", index=0)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    result.save(path, index=1)  # replacing keeps the file's mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_records_from_a_newer_deskgen_still_replay(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    record = {"format": 2, "request": {"prompt": "a desk", "seed": 3, "new_field": [1]}}
    info.add_text(RECORD_KEY, json.dumps(record))
    path = tmp_path / "newer.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    request = read_record(path)
    assert (request.prompt, request.seed) == ("a desk", 3)


def test_bombs_and_huge_text_chunks_are_record_errors(tmp_path: Path) -> None:
    from .test_images import TestBombs

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(TestBombs._png_header_only(30000, 30000))
    with pytest.raises(RecordError):
        read_record(bomb)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * (2**21), zip=True)  # over Pillow's text-chunk limit
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4, 4)).save(huge, pnginfo=info)
    with pytest.raises(RecordError):
        read_record(huge)


def test_parameters_show_the_texts_as_encoded(tmp_path: Path) -> None:
    res = DeskGenerator("fake").generate(
        prompt="3D 0ff1c3, a desk",
        negative_prompt="preset:controlnet_short",
        remove_words=["3D 0ff1c3"],
        trigger_words=["topview"],
        seed=1,
        steps=1,
    )
    text = a1111_parameters(res, 0)
    assert text.splitlines()[0] == "topview, a desk"
    assert text.splitlines()[1] == "Negative prompt: low quality, bad quality, sketches"
    assert read_record(res.save(tmp_path / "p.png")[0]).negative_prompt == (
        "preset:controlnet_short"
    )


def _png_with_record(path: Path, record: object) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, record if isinstance(record, str) else json.dumps(record))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("field", ["image", "mask", "control_image"])
def test_a_record_naming_an_input_file_is_refused(tmp_path: Path, field: str) -> None:
    """An edited record must not make a replay read a file of the editor's choosing."""
    server_file = tmp_path / "server-secret.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(server_file)
    value: object = str(server_file) if field != "control_image" else [str(server_file)]
    record = {"format": 1, "request": {"prompt": "a desk", "seed": 3, field: value}}
    path = _png_with_record(tmp_path / "edited.png", record)
    with pytest.raises(RecordError, match=rf"names input files \({field}\).*edited"):
        read_record(path)


def test_a_record_with_null_inputs_replays_without_them(tmp_path: Path) -> None:
    record = {"request": {"prompt": "a desk", "seed": 3, "image": None, "mask": None}}
    request = read_record(_png_with_record(tmp_path / "nulls.png", record))
    assert request.image is None and request.mask is None and request.mode == "txt2img"


def test_deeply_nested_record_json_is_a_record_error(tmp_path: Path) -> None:
    deep = '{"request": {"prompt": "a desk", "x": ' + "[" * 50_000 + "]" * 50_000 + "}}"
    path = _png_with_record(tmp_path / "deep.png", deep)
    with pytest.raises(RecordError, match="nested too deeply"):
        read_record(path)
    from deskgen._record import read_record_data

    with pytest.raises(RecordError, match="nested too deeply"):
        read_record_data(path)
