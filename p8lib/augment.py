"""Photo-like variants of a Fruits-360 image, for training a classifier that meets real photos.

Fruits-360 shows one fruit, centred, on white; people photograph a bin of them under shop
lights, between crates and price tags. ``p8 run --augment N`` adds N variants of every image:
the fruit is cut out of its white background and laid on a muted background — alone, at a
random scale and place, or as a bin of many overlapping copies — then tinted, re-lit, maybe
behind a plastic-bag veil or a price tag, blurred and JPEG re-compressed. Each variant is drawn
from a random generator seeded by the image's bytes and the variant's number: a run gives the
same variants every time.

Examples
--------
>>> img = np.full((100, 100, 3), 255, np.uint8); img[30:70, 25:75] = (200, 40, 30)
>>> a, b = variants(img, 2, size=64)
>>> a.shape, a.dtype, bool((a != b).any()), bool((variants(img, 2, size=64)[0] == a).all())
((64, 64, 3), dtype('uint8'), True, True)
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

# Recorded in the manifest: changing what a variant looks like changes this.
DESCRIPTOR = "cutout-bins-v1"
MAX_AUGMENT = 20
# How far from white (sum of the three channels' distances) a pixel is fruit, not background.
FRUIT_THRESHOLD = 60


def variants(image: np.ndarray, n: int, *, size: int | None = None) -> list[np.ndarray]:
    """``n`` photo-like variants of a uint8 RGB image (``size``² each, default: its size)."""
    if n <= 0:
        return []
    side = size or image.shape[0]
    seed = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
    fruit = cutout(image)
    return [scene(fruit, np.random.default_rng([seed, i]), side) for i in range(n)]


def cutout(image: np.ndarray) -> Any:
    """The fruit as an RGBA image cropped to it: near-white pixels become transparent."""
    from PIL import Image, ImageFilter

    distance = 765 - image.astype(np.int32).sum(axis=2)
    mask = Image.fromarray(((distance > FRUIT_THRESHOLD) * 255).astype(np.uint8))
    # Close small holes, then shave the pale rim left by JPEG and resizing.
    mask = mask.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(7))
    box = mask.getbbox()
    if box is None:  # nothing but white: keep the whole frame
        mask = Image.new("L", (image.shape[1], image.shape[0]), 255)
        box = (0, 0, image.shape[1], image.shape[0])
    rgba = Image.fromarray(image).convert("RGBA")
    rgba.putalpha(mask.filter(ImageFilter.GaussianBlur(1)))
    return rgba.crop(box)


def scene(fruit: Any, rng: np.random.Generator, size: int) -> np.ndarray:
    """One variant: the fruit alone or as a bin, on a background, then light and camera."""
    canvas = background(rng, size)
    if rng.random() < 0.75:
        _bin(canvas, fruit, rng)
    else:
        side = size * rng.uniform(0.45, 1.0)
        centre = (rng.uniform(side / 3, size - side / 3), rng.uniform(side / 3, size - side / 3))
        _place(canvas, _piece(fruit, rng, side), centre)
    if rng.random() < 0.3:
        _price_tag(canvas, rng)
    return _camera(canvas.convert("RGB"), rng)


def background(rng: np.random.Generator, size: int) -> Any:
    """A muted backdrop: flat, a gradient, blotches or crate slats, with sensor noise."""
    from PIL import Image

    kind = rng.integers(4)
    c1, c2 = rng.integers(0, 256, 3).astype(float), rng.integers(0, 256, 3).astype(float)
    if kind == 0:
        arr = np.ones((size, size, 3)) * c1
    elif kind == 1:
        t = np.linspace(0, 1, size)[:, None, None]
        arr = np.broadcast_to(c1 * (1 - t) + c2 * t, (size, size, 3)).copy()
    elif kind == 2:
        low = rng.integers(0, 256, (rng.integers(2, 8), rng.integers(2, 8), 3)).astype(np.uint8)
        arr = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), float)
    else:
        slats = (np.arange(size) * rng.integers(3, 12) // size) % 2
        arr = np.where(slats[:, None, None] == 1, c1, c2) * np.ones((size, size, 3))
    if rng.random() < 0.5:
        arr = arr.transpose(1, 0, 2)
    grey = arr.mean(axis=2, keepdims=True)
    arr = (grey + (arr - grey) * rng.uniform(0.1, 0.7)) * rng.uniform(0.3, 1.0)
    arr = arr + rng.normal(0, rng.uniform(0, 20), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGBA")


def _bin(canvas: Any, fruit: Any, rng: np.random.Generator) -> None:
    """Copies of the fruit on a jittered grid, overlapping, in random order: a shop's bin.

    Six differently turned, sized and lit copies are drawn once and laid many times (a bin
    has up to 64): rotating each copy anew cost 5 times more for no visible difference."""
    size = canvas.size[0]
    per_row = int(rng.integers(2, 8))
    step = size / per_row
    pieces = [_piece(fruit, rng, step * rng.uniform(1.1, 1.6)) for _ in range(6)]
    cells = [(i, j) for i in range(per_row + 1) for j in range(per_row + 1)]
    for k in rng.permutation(len(cells)):
        i, j = cells[k]
        centre = ((i + rng.uniform(-0.3, 0.3)) * step, (j + rng.uniform(-0.3, 0.3)) * step)
        _place(canvas, pieces[int(rng.integers(len(pieces)))], centre)


def _piece(fruit: Any, rng: np.random.Generator, side: float) -> Any:
    """The fruit scaled to ``side`` px, turned, maybe mirrored, lighter or darker."""
    from PIL import Image

    w, h = fruit.size
    f = side / max(w, h)
    piece = fruit.resize((max(1, int(w * f)), max(1, int(h * f))), Image.Resampling.BILINEAR)
    piece = piece.rotate(rng.uniform(0, 360), expand=True, resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(piece).astype(float)
    arr[..., :3] *= rng.uniform(0.75, 1.15)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")


def _place(canvas: Any, piece: Any, centre: tuple[float, float]) -> None:
    """``piece`` composited onto ``canvas`` centred on ``centre``, clipped at the edges."""
    x, y = int(centre[0] - piece.size[0] / 2), int(centre[1] - piece.size[1] / 2)
    width, height = canvas.size
    if x >= width or y >= height or x + piece.size[0] <= 0 or y + piece.size[1] <= 0:
        return
    canvas.alpha_composite(piece, (max(x, 0), max(y, 0)), (max(-x, 0), max(-y, 0)))


def _price_tag(canvas: Any, rng: np.random.Generator) -> None:
    """A white, yellow or red card with a few dark lines of 'text'."""
    from PIL import ImageDraw

    size = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    w, h = rng.uniform(0.15, 0.45) * size, rng.uniform(0.08, 0.2) * size
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    colour = ((245, 245, 240), (250, 220, 40), (230, 40, 40))[int(rng.integers(3))]
    draw.rectangle((x, y, x + w, y + h), fill=(*colour, 255))
    for k in range(int(rng.integers(1, 4))):
        line = y + h * (0.2 + 0.25 * k)
        right = x + w * rng.uniform(0.4, 0.9)
        draw.rectangle((x + w * 0.1, line, right, line + h * 0.12), fill=(20, 20, 20, 255))


def _camera(image: Any, rng: np.random.Generator) -> np.ndarray:
    """Colour, contrast and brightness jitter, a tint of the light, a bag's veil, blur, JPEG."""
    from PIL import Image, ImageEnhance, ImageFilter

    for enhance in (ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    arr = np.asarray(image).astype(float)
    if rng.random() < 0.5:  # warm or cool light
        arr *= 1.0 + rng.normal(0, 0.08, 3)
    if rng.random() < 0.2:  # a plastic bag: a whitish veil
        veil = rng.uniform(0.1, 0.35)
        arr = arr * (1 - veil) + 255 * veil
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 90)))
        image = Image.open(buffer).convert("RGB")
    return np.asarray(image, dtype=np.uint8)
