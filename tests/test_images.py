from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from deskgen import ImageInputError, ImageTooLargeError, load_image
from deskgen._images import fit_size, prepare_image


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _two_tone(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: orientation is visible."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return img


class TestInputKinds:
    def test_path_bytes_fileobj_and_pil_give_the_same_pixels(self, tmp_path: Path) -> None:
        src = _two_tone()
        data = _encode(src, "PNG")
        path = tmp_path / "desk.png"
        path.write_bytes(data)
        results = [
            load_image(str(path)),
            load_image(path),
            load_image(data),
            load_image(io.BytesIO(data)),
            load_image(src),
        ]
        digests = {info.sha256 for _, info in results}
        assert len(digests) == 1
        assert all(img.mode == "RGB" and img.size == (40, 20) for img, _ in results)
        assert results[0][1].source == "path"  # never the file name: it can be personal
        assert results[2][1].source == "bytes"
        assert results[3][1].source == "file"
        assert results[4][1].source == "PIL.Image"

    def test_read_only_file_like_objects(self) -> None:
        class Stream:
            def __init__(self, data: bytes) -> None:
                self._buf = io.BytesIO(data)

            def read(self, size: int = -1) -> bytes:
                return self._buf.read(size)

        stream = Stream(_encode(_two_tone(), "PNG"))
        img, info = load_image(stream)  # type: ignore[arg-type]
        assert img.size == (40, 20) and info.source == "file"
        with pytest.raises(ImageInputError, match="read to the end already"):
            load_image(stream)  # type: ignore[arg-type]

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ImageInputError, match="No image file"):
            load_image(tmp_path / "nope.jpg")

    def test_wrong_type(self) -> None:
        with pytest.raises(ImageInputError, match="Unsupported image input"):
            load_image(12345)  # type: ignore[arg-type]

    def test_garbage_bytes(self) -> None:
        with pytest.raises(ImageInputError, match="accepted formats"):
            load_image(b"definitely not an image")

    def test_truncated_jpeg(self) -> None:
        data = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
        with pytest.raises(ImageInputError, match=r"corrupt|decode"):
            load_image(data[: len(data) // 3])


class TestAllowlist:
    @pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "SGI"])
    def test_formats_outside_the_allowlist_are_refused(self, fmt: str) -> None:
        data = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
        with pytest.raises(ImageInputError, match="accepted formats"):
            load_image(data)

    def test_format_is_sniffed_not_taken_from_the_name(self, tmp_path: Path) -> None:
        path = tmp_path / "photo.jpg"  # an ICO file with a JPEG name
        path.write_bytes(_encode(Image.new("RGB", (16, 16)), "ICO"))
        with pytest.raises(ImageInputError):
            load_image(path)

    @pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
    def test_allowed_formats(self, fmt: str) -> None:
        img, info = load_image(_encode(Image.new("RGB", (16, 12), (90, 120, 150)), fmt))
        assert img.size == (16, 12)
        assert info.format == fmt


class TestBombs:
    @staticmethod
    def _png_header_only(width: int, height: int) -> bytes:
        """A PNG that claims a huge size but has no pixel data: decoding it would fail."""

        def chunk(kind: bytes, body: bytes) -> bytes:
            return (
                struct.pack(">I", len(body))
                + kind
                + body
                + struct.pack(">I", zlib.crc32(kind + body))
            )

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b"")
        )

    def test_refused_before_decoding_above_twice_the_limit(self) -> None:
        with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
            load_image(self._png_header_only(30000, 30000))

    def test_refused_between_one_and_two_times_the_limit(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        data = _encode(Image.new("RGB", (40, 40)), "PNG")  # 1600 px: warns in Pillow, we refuse
        with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLargeError):
            load_image(data)

    def test_pil_image_over_the_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        with pytest.raises(ImageTooLargeError):
            load_image(Image.new("RGB", (20, 20)))


class TestOrientationAndMetadata:
    @staticmethod
    def _jpeg_with_exif(orientation: int, gps: bool = True) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "PhoneMaker"
        if gps:
            exif[0x8825] = {1: "N", 2: (37.0, 33.0, 59.0), 3: "E", 4: (126.0, 58.0, 41.0)}
        return _encode(_two_tone(), "JPEG", exif=exif.tobytes(), quality=95)

    def test_exif_orientation_is_applied(self) -> None:
        img, info = load_image(self._jpeg_with_exif(6))  # 6: rotate 90 degrees clockwise
        assert img.size == (20, 40)
        assert (info.original_width, info.original_height) == (40, 20)
        top = img.getpixel((10, 5))
        bottom = img.getpixel((10, 35))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert top[0] > 200 and top[2] < 60  # red half now on top
        assert bottom[2] > 200 and bottom[0] < 60

    def test_no_metadata_survives(self) -> None:
        raw = self._jpeg_with_exif(1)
        assert Image.open(io.BytesIO(raw)).getexif().get_ifd(0x8825)  # the input has GPS
        img, _ = load_image(raw)
        assert img.info == {}
        assert len(img.getexif()) == 0
        out = _encode(img, "PNG")
        reread = Image.open(io.BytesIO(out))
        assert len(reread.getexif()) == 0
        assert "exif" not in reread.info

    def test_png_text_chunks_are_dropped(self) -> None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "home address 12 Example St")
        img, _ = load_image(_encode(_two_tone(), "PNG", pnginfo=info))
        assert img.info == {}


class TestModes:
    def test_rgba_is_composited_over_white(self) -> None:
        img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
        out, _ = load_image(_encode(img, "PNG"))
        assert out.getpixel((0, 0)) == (255, 255, 255)

    def test_half_transparent(self) -> None:
        img = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
        out, _ = load_image(img)
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert 120 <= value[0] <= 135

    def test_la(self) -> None:
        out, _ = load_image(Image.new("LA", (8, 8), (0, 0)))
        assert out.getpixel((0, 0)) == (255, 255, 255)

    def test_palette_with_transparency(self) -> None:
        img = Image.new("P", (8, 8), 0)
        img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
        img.info["transparency"] = 0
        out, _ = load_image(_encode(img, "PNG"))
        assert out.getpixel((0, 0)) == (255, 255, 255)

    def test_palette_without_transparency(self) -> None:
        img = Image.new("P", (8, 8), 1)
        img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
        out, _ = load_image(_encode(img, "PNG"))
        assert out.getpixel((0, 0)) == (0, 0, 255)

    def test_cmyk(self) -> None:
        img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
        out, _ = load_image(_encode(img, "JPEG", quality=100))
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert value[0] > 200 and value[1] < 60 and value[2] < 60

    def test_sixteen_bit_is_scaled_not_clipped(self) -> None:
        img = Image.new("I;16", (8, 8), 32768)  # mid grey in 16 bits
        out, _ = load_image(_encode(img, "PNG"))
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert 126 <= value[0] <= 129  # a plain convert would clip to 255

    def test_sixteen_bit_full_white(self) -> None:
        out, _ = load_image(Image.new("I;16", (4, 4), 65535))
        assert out.getpixel((0, 0)) == (255, 255, 255)

    def test_one_bit(self) -> None:
        img = Image.new("1", (8, 8), 1)
        out, _ = load_image(_encode(img, "PNG"))
        assert out.getpixel((0, 0)) == (255, 255, 255)

    def test_float_mode_in_unit_range(self) -> None:
        out, _ = load_image(Image.new("F", (4, 4), 0.5))
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert 126 <= value[0] <= 129

    def test_srgb_profile_changes_nothing(self) -> None:
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        img = Image.new("RGB", (4, 4), (200, 100, 50))
        out, _ = load_image(_encode(img, "PNG", icc_profile=profile))
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert all(abs(a - b) <= 2 for a, b in zip(value, (200, 100, 50), strict=True))
        assert out.info == {}

    @staticmethod
    def _swapped_primaries_profile() -> bytes:
        """sRGB with its red and blue primaries swapped: another RGB space, like a phone's
        Display P3, where the same numbers mean other colours."""
        data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
        (count,) = struct.unpack(">I", data[128:132])
        entries = {}
        for i in range(count):
            at = 132 + 12 * i
            entries[bytes(data[at : at + 4])] = at
        red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
        data[red + 4 : red + 12], data[blue + 4 : blue + 12] = (
            data[blue + 4 : blue + 12],
            data[red + 4 : red + 12],
        )
        return bytes(data)

    def test_other_profiles_are_converted_to_srgb(self) -> None:
        img = Image.new("RGB", (4, 4), (200, 100, 50))
        tagged, _ = load_image(_encode(img, "PNG", icc_profile=self._swapped_primaries_profile()))
        value = tagged.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert value[2] > value[0]  # what the file calls red is really blue
        assert tagged.info == {}

    def test_animated_gif_takes_the_first_frame(self) -> None:
        frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        out, _ = load_image(buf.getvalue())
        value = out.getpixel((0, 0))
        assert isinstance(value, tuple)
        assert value[0] > 200 and value[1] < 60


class TestFuzz:
    @pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on skipped TIFF tags
    def test_damaged_files_only_ever_raise_image_input_errors(self) -> None:
        import random

        rng = random.Random(0)
        seeds = [
            _encode(_two_tone((24, 16)), fmt)
            for fmt in ("PNG", "JPEG", "TIFF", "GIF", "WEBP", "BMP")
        ]
        for _ in range(600):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(8, len(data))]
            with contextlib.suppress(ImageInputError):
                load_image(bytes(data))


class TestSizing:
    @pytest.mark.parametrize(
        ("aspect", "native", "multiple", "expected"),
        [
            (4 / 3, (1024, 1024), 64, (1216, 896)),
            (3 / 4, (1024, 1024), 64, (896, 1216)),
            (1.0, (1024, 1024), 64, (1024, 1024)),
            (16 / 9, (1024, 1024), 64, (1344, 768)),
            (4 / 3, (512, 512), 64, (576, 448)),
            (4 / 3, (64, 64), 16, (64, 48)),
        ],
    )
    def test_fit_size(
        self,
        aspect: float,
        native: tuple[int, int],
        multiple: int,
        expected: tuple[int, int],
    ) -> None:
        w, h = fit_size(aspect, native=native, multiple=multiple)
        assert (w, h) == expected
        assert w % multiple == 0 and h % multiple == 0

    def test_extreme_aspect_keeps_a_minimum_side(self) -> None:
        w, h = fit_size(50.0, native=(512, 512), multiple=64)
        assert h >= 64 and w % 64 == 0

    def test_prepare_image_crops_instead_of_stretching(self) -> None:
        img = _two_tone((80, 20))
        out = prepare_image(img, (20, 20))
        assert out.size == (20, 20)
        left = out.getpixel((2, 10))
        right = out.getpixel((17, 10))
        assert isinstance(left, tuple) and isinstance(right, tuple)
        assert left[0] > 200 and right[2] > 200  # the centre of the photo, both halves kept
