from __future__ import annotations

import base64
import contextlib
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageOps, features

from deskgen import ImageInputError, ImageTooLargeError, load_image
from deskgen._images import fit_size, prepare_image


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


HAS_AVIF = features.check("avif")


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


class TestWrongInputs:
    """Every mistaken kind of input is an ImageInputError whose message says what to pass."""

    @staticmethod
    def _photo(tmp_path: Path) -> Path:
        path = tmp_path / "desk.jpg"
        path.write_bytes(_encode(_two_tone(), "JPEG"))
        return path

    @pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
    def test_text_mode_file(self, tmp_path: Path, encoding: str) -> None:
        # utf-8 fails to decode a JPEG; latin-1 decodes it to a str: both are text-mode files
        with (
            open(self._photo(tmp_path), encoding=encoding) as fh,
            pytest.raises(ImageInputError, match=r"binary mode: open\(path, 'rb'\)"),
        ):
            load_image(fh)  # type: ignore[arg-type]

    def test_string_io(self) -> None:
        with pytest.raises(ImageInputError, match=r"text.*open\(path, 'rb'\)"):
            load_image(io.StringIO("not bytes"))  # type: ignore[arg-type]

    def test_read_returning_text(self) -> None:
        class TextStream:
            def read(self, size: int = -1) -> str:
                return "\xff\xd8 a JPEG read as text"

        with pytest.raises(ImageInputError, match=r"returned str.*open\(path, 'rb'\)"):
            load_image(TextStream())  # type: ignore[arg-type]

    @pytest.mark.parametrize("mode", ["wb", "ab", "w"])
    def test_file_opened_for_writing(self, tmp_path: Path, mode: str) -> None:
        with (
            open(tmp_path / "out.jpg", mode) as fh,
            pytest.raises(ImageInputError, match=r"not open for reading.*open\(path, 'rb'\)"),
        ):
            load_image(fh)

    def test_closed_file(self, tmp_path: Path) -> None:
        with open(self._photo(tmp_path), "rb") as fh:
            pass
        with pytest.raises(ImageInputError, match=r"closed.*while it is open"):
            load_image(fh)
        closed = io.BytesIO(b"data")
        closed.close()
        with pytest.raises(ImageInputError, match="closed"):
            load_image(closed)

    def test_read_failure(self) -> None:
        class Broken:
            def read(self, size: int = -1) -> bytes:
                raise OSError("connection reset")

        with pytest.raises(ImageInputError, match=r"connection reset.*pass the bytes"):
            load_image(Broken())  # type: ignore[arg-type]

    def test_a_stream_read_in_pieces_is_read_to_the_end(self) -> None:
        data = _encode(_two_tone(), "PNG")

        class Trickle:  # like a raw pipe or socket: each read returns what has arrived
            def __init__(self) -> None:
                self._buf = io.BytesIO(data)

            def read(self, size: int = -1) -> bytes:
                return self._buf.read(min(size, 7) if size > 0 else 7)

        img, _ = load_image(Trickle())  # type: ignore[arg-type]
        assert img.size == (40, 20)

    @pytest.mark.parametrize(
        "value", [12345, 1.5, True, None, [b"\xff\xd8"], {"image": "desk.jpg"}, object()]
    )
    def test_other_types(self, value: object) -> None:
        with pytest.raises(
            ImageInputError, match=r"Unsupported image input of type \w+: pass a path, bytes"
        ):
            load_image(value)  # type: ignore[arg-type]

    def test_path_like_giving_bytes(self) -> None:
        class BytesPath(os.PathLike[bytes]):
            def __fspath__(self) -> bytes:
                return b"/tmp/desk.jpg"

        with pytest.raises(ImageInputError, match=r"str path"):
            load_image(BytesPath())  # type: ignore[arg-type]

    def test_unreadable_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = self._photo(tmp_path)

        def refuse(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", refuse)
        with pytest.raises(ImageInputError, match=r"Could not read .*Permission denied"):
            load_image(path)

    def test_base64_text_instead_of_a_path(self) -> None:
        encoded = base64.b64encode(_encode(_two_tone(), "PNG")).decode()
        for text in (encoded, "data:image/png;base64," + encoded):
            with pytest.raises(ImageInputError, match="base64") as err:
                load_image(text)
            assert len(str(err.value)) < 400  # the message does not repeat the whole string


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

    @pytest.mark.parametrize(
        "fmt",
        [
            "JPEG",
            "PNG",
            "WEBP",
            "BMP",
            "TIFF",
            "GIF",
            pytest.param("AVIF", marks=pytest.mark.skipif(not HAS_AVIF, reason="no AVIF")),
        ],
    )
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


def _heic(img: Image.Image, **kwargs: object) -> bytes:
    """Encode with pillow-heif (x265), as a phone would; skips the test without the extra."""
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, format="HEIF", quality=95, **kwargs)
    return buf.getvalue()


def _quadrants() -> Image.Image:
    """Red, green / blue, white quadrants: every rotation and mirroring is visible."""
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 255, 0), (32, 0, 64, 16))
    img.paste((0, 0, 255), (0, 16, 32, 32))
    img.paste((255, 255, 255), (32, 16, 64, 32))
    return img


def _corners(img: Image.Image) -> list[tuple[int, ...]]:
    """The colour of each corner, each channel rounded to 0 or 1 (lossy codecs shift values)."""
    w, h = img.size
    points = ((4, 4), (w - 5, 4), (4, h - 5), (w - 5, h - 5))
    return [tuple(round(v / 255) for v in img.convert("RGB").getpixel(p)) for p in points]  # type: ignore[union-attr]


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF ``ftyp`` box followed by junk: what sniffing sees of a HEIC/AVIF file."""
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 64


class TestPhonePhotos:
    """HEIC/HEIF through the deskgen[heic] extra (pillow-heif), AVIF through Pillow itself."""

    def test_heic_is_read(self) -> None:
        img, info = load_image(_heic(Image.new("RGB", (64, 48), (200, 100, 50))))
        assert img.mode == "RGB" and img.size == (64, 48)
        assert info.format == "HEIF"
        value = img.getpixel((10, 10))
        assert isinstance(value, tuple)
        assert all(abs(a - b) <= 6 for a, b in zip(value, (200, 100, 50), strict=True))

    @pytest.mark.parametrize("orientation", range(1, 9))
    def test_heic_orientation_is_applied_exactly_once(self, orientation: int) -> None:
        pillow_heif = pytest.importorskip("pillow_heif")
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _heic(_quadrants(), exif=exif.tobytes())
        # like an iPhone's: the transform in the container (irot/imir) and the EXIF tag both
        stored = Image.Exif()
        stored.load(pillow_heif.open_heif(io.BytesIO(data)).info["exif"])
        assert stored[0x0112] == orientation
        if orientation != 1:
            assert b"irot" in data or b"imir" in data
        tagged = _quadrants()
        tagged.getexif()[0x0112] = orientation
        expected = ImageOps.exif_transpose(tagged)
        img, _ = load_image(data)
        assert img.size == expected.size
        assert _corners(img) == _corners(expected)

    def test_heic_colour_profile_is_converted_to_srgb(self) -> None:
        profile = TestModes._swapped_primaries_profile()
        data = _heic(Image.new("RGB", (64, 64), (200, 100, 50)), icc_profile=profile)
        img, _ = load_image(data)
        value = img.getpixel((10, 10))
        assert isinstance(value, tuple)
        assert value[2] > value[0]  # what the file calls red is really blue
        assert img.info == {}

    def test_heic_metadata_is_dropped(self) -> None:
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"
        exif[0x8825] = {1: "N", 2: (37.0, 33.0, 59.0), 3: "E", 4: (126.0, 58.0, 41.0)}
        xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
        data = _heic(_two_tone((64, 32)), exif=exif.tobytes(), xmp=xmp)
        img, _ = load_image(data)
        assert img.info == {}
        assert len(img.getexif()) == 0
        reread = Image.open(io.BytesIO(_encode(img, "PNG")))
        assert len(reread.getexif()) == 0 and "xmp" not in reread.info

    def test_heic_primary_image_is_the_photo(self) -> None:
        pillow_heif = pytest.importorskip("pillow_heif")
        heif = pillow_heif.from_pillow(Image.new("RGB", (64, 64), (255, 0, 0)))
        heif.add_from_pillow(Image.new("RGB", (64, 64), (0, 0, 255)))
        buf = io.BytesIO()
        heif.save(buf, format="HEIF", quality=95, primary_index=1)
        img, _ = load_image(buf.getvalue())
        value = img.getpixel((10, 10))
        assert isinstance(value, tuple)
        assert value[2] > 200 and value[0] < 60  # the primary image, not the first one stored

    def test_heic_claiming_a_huge_size_is_refused_before_decoding(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pillow_heif = pytest.importorskip("pillow_heif")
        data = bytearray(_heic(Image.new("RGB", (64, 64), (1, 2, 3))))
        at = data.find(b"ispe")  # the image's spatial extents: version/flags, width, height
        assert at > 0 and struct.unpack(">II", data[at + 8 : at + 16]) == (64, 64)
        data[at + 8 : at + 16] = struct.pack(">II", 30000, 30000)

        def no_decoding(self: object) -> None:
            raise AssertionError("decoded a bomb")

        monkeypatch.setattr(pillow_heif.HeifImageFile, "load", no_decoding)
        with pytest.raises(ImageTooLargeError, match=r"30000x30000.*MAX_IMAGE_PIXELS"):
            load_image(bytes(data))

    def test_heic_over_a_lowered_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        data = _heic(Image.new("RGB", (64, 64), (1, 2, 3)))
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        with pytest.raises(ImageTooLargeError, match="64x64"):
            load_image(data)

    def test_heic_support_is_lazy_and_leaves_pillow_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "IMG_1205.HEIC"
        path.write_bytes(_heic(_two_tone((64, 32))))
        code = (
            "import sys; from pathlib import Path; import deskgen; from PIL import Image\n"
            "assert 'pillow_heif' not in sys.modules, 'import deskgen imported pillow_heif'\n"
            "deskgen.load_image(Image.new('RGB', (8, 8)))\n"
            "assert 'pillow_heif' not in sys.modules, 'a PIL image imported pillow_heif'\n"
            "img, info = deskgen.load_image(Path(sys.argv[1]))\n"
            "assert info.format == 'HEIF' and img.size == (64, 32)\n"
            "Image.init()\n"
            "assert 'HEIF' not in Image.OPEN and 'HEIF' not in Image.SAVE, 'registered globally'\n"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)

    @pytest.mark.parametrize(
        "brands",
        [
            (b"heic", b"mif1", b"heic"),
            (b"heix", b"mif1"),
            (b"mif1", b"heic", b"miaf"),
            (b"msf1", b"hevc"),
            (b"hevc", b"msf1"),
        ],
    )
    def test_heic_without_the_extra_names_format_and_extra(
        self, monkeypatch: pytest.MonkeyPatch, brands: tuple[bytes, ...]
    ) -> None:
        monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` now fails
        with pytest.raises(ImageInputError, match=r"HEIC/HEIF.*pip install 'deskgen\[heic\]'"):
            load_image(_ftyp(*brands))

    def test_other_iso_media_files_are_not_called_heic(self) -> None:
        with pytest.raises(ImageInputError, match="accepted formats") as err:
            load_image(_ftyp(b"isom", b"isom", b"mp41"))  # an MP4 video
        assert "brand" not in str(err.value) and "pillow-heif" not in str(err.value)

    def test_corrupt_heic_is_an_image_input_error(self) -> None:
        pytest.importorskip("pillow_heif")
        with pytest.raises(ImageInputError, match="HEIF"):
            load_image(_ftyp(b"heic", b"mif1", b"heic"))
        data = _heic(Image.new("RGB", (64, 64), (1, 2, 3)))
        with pytest.raises(ImageInputError):
            load_image(data[: len(data) - 40])

    @pytest.mark.skipif(not HAS_AVIF, reason="this Pillow has no AVIF codec")
    @pytest.mark.parametrize("orientation", [1, 3, 6, 8])
    def test_avif_with_orientation(self, orientation: int) -> None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x8825] = {1: "N", 2: (37.0, 33.0, 59.0)}
        data = _encode(_quadrants(), "AVIF", exif=exif.tobytes(), quality=95)
        tagged = _quadrants()
        tagged.getexif()[0x0112] = orientation
        expected = ImageOps.exif_transpose(tagged)
        img, info = load_image(data)
        assert info.format == "AVIF"
        assert img.size == expected.size and _corners(img) == _corners(expected)
        assert img.info == {} and len(img.getexif()) == 0

    @pytest.mark.skipif(not HAS_AVIF, reason="this Pillow has no AVIF codec")
    def test_avif_colour_profile_and_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        profile = TestModes._swapped_primaries_profile()
        data = _encode(Image.new("RGB", (64, 64), (200, 100, 50)), "AVIF", icc_profile=profile)
        img, _ = load_image(data)
        value = img.getpixel((10, 10))
        assert isinstance(value, tuple) and value[2] > value[0]
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 px: Pillow only warns
        with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLargeError):
            load_image(data)

    def test_avif_without_a_codec_says_so(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "PIL._avif", None)  # a Pillow built without libavif
        with pytest.raises(ImageInputError, match=r"AVIF.*Pillow 11\.3"):
            load_image(_ftyp(b"avif", b"avif", b"mif1", b"miaf"))

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_damaged_phone_photos_only_ever_raise_image_input_errors(self) -> None:
        import random

        rng = random.Random(1)
        seeds = [_encode(_quadrants(), "AVIF")] if HAS_AVIF else []
        with contextlib.suppress(ImportError):
            import pillow_heif  # noqa: F401

            seeds.append(_heic(_quadrants()))
        if not seeds:
            pytest.skip("neither pillow-heif nor Pillow's AVIF codec is installed")
        for _ in range(300):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(8, len(data))]
            with contextlib.suppress(ImageInputError):
                load_image(bytes(data))


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
