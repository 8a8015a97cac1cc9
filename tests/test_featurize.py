"""Decoding odd images (made here with Pillow) and the model's shape."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from p8lib.featurize import load_image


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _heic(img: Image.Image) -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    return _encode(img, "HEIF", quality=95)


def _gradient(mode: str = "RGB", size: tuple[int, int] = (100, 80)) -> Image.Image:
    x = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    return Image.fromarray(x, "RGB").convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
    ],
)
def test_any_color_mode_becomes_rgb_of_the_asked_size(mode: str, fmt: str) -> None:
    out = load_image(_encode(_gradient(mode), fmt), 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert out.std() > 10


def test_transparency_is_flattened_onto_white() -> None:
    img = Image.new("RGBA", (50, 50), (255, 0, 0, 0))
    out = load_image(_encode(img, "PNG"), 32)
    assert (out == 255).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = load_image(_encode(Image.fromarray(ramp, "I;16"), "PNG"), 64)
    assert out.min() < 10 and out.max() > 245


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (100, 50), (0, 0, 255))
    img.paste((255, 255, 255), (0, 0, 50, 50))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_encode(img, "JPEG", exif=exif, quality=95), 100)
    # After rotation the white half is on top.
    assert out[:40].mean() > 200 and out[60:, :, 2].mean() > 200 and out[60:, :, 0].mean() < 60


def test_a_phones_heic_is_read_upright_and_as_encoded() -> None:
    """HEIC as an iPhone writes it (libheif's x265 encoder, through Pillow's save and
    pillow-heif): the rotation in the container (irot, from EXIF orientation 6, which stays in
    the EXIF too) is applied once, and the pixels are the photo's, within HEVC's loss. (That
    p8 teaches Pillow HEIF by itself: `p8 predict` on a .HEIC, test_real_photos.)"""
    img = Image.new("RGB", (100, 50), (0, 0, 255))
    img.paste((255, 255, 255), (0, 0, 50, 50))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    img.info["exif"] = exif.tobytes()
    heic = _heic(img)
    assert heic[4:12] == b"ftypheic" and b"irot" in heic
    out = load_image(heic, 100)
    assert out[:40].mean() > 200 and out[60:, :, 2].mean() > 200 and out[60:, :, 0].mean() < 60
    photo = _gradient(size=(96, 96))
    decoded = load_image(_heic(photo), 96)
    assert np.abs(decoded.astype(int) - np.asarray(photo, dtype=int)).mean() < 4


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a JPEG", "not a readable image"),
    ],
)
def test_unusable_files_raise_a_short_reason(content: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        load_image(content, 224)


def test_truncated_jpeg_is_an_error() -> None:
    data = _encode(_gradient(size=(400, 400)), "JPEG")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(data[: len(data) // 2], 224)


def test_truncated_heic_is_a_one_line_reason() -> None:
    """A phone photo cut short in a copy: pillow-heif's own ValueError becomes the same
    "not a readable image" as a broken JPEG, on one line (it was passed through as it was)."""
    data = _heic(_gradient(size=(300, 200)))
    with pytest.raises(ValueError, match=r"^not a readable image: \w+: [^\n]+$"):
        load_image(data[: len(data) // 2], 224)


def test_decompression_bomb_is_refused() -> None:
    from p8lib.featurize import MAX_PIXELS

    side = int(MAX_PIXELS**0.5) + 100
    data = _encode(Image.new("1", (side, side)), "PNG")
    with pytest.raises(ValueError, match="too large"):
        load_image(data, 224)


def test_color_histogram_counts_hsv_cells_of_every_other_pixel() -> None:
    from p8lib.featurize import COLOR_DIM, color_histogram

    # On the sampled grid (even rows and columns): 3/4 pure green, 1/4 pure blue; the odd
    # rows and columns are red and are not counted.
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    grid = np.zeros((4, 4, 3), np.uint8)
    grid[..., 1] = 255
    grid[:1] = (0, 0, 255)
    image[::2, ::2] = grid
    h = color_histogram(image)
    assert h.shape == (COLOR_DIM,) and h.dtype == np.float32
    # PIL's HSV: green hue 85 → bin 5, blue 170 → bin 10; saturation and value 255 → bin 7.
    green, blue = 5 * 64 + 7 * 8 + 7, 10 * 64 + 7 * 8 + 7
    assert h[green] == pytest.approx(np.sqrt(0.75)) and h[blue] == pytest.approx(np.sqrt(0.25))
    assert np.count_nonzero(h) == 2
    # A solid colour has the same histogram at any size.
    solid = np.full((224, 224, 3), (200, 120, 40), np.uint8)
    np.testing.assert_array_equal(color_histogram(solid), color_histogram(solid[:10, :10]))
