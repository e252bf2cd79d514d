"""Generate the sample "before" desk photo shipped with deskgen.

The image at ``src/deskgen/_data/sample/desk.jpg`` is drawn procedurally by this
script (no third-party imagery, no downloads): a cluttered desk seen from the front
at eye level, with a monitor, laptop, keyboard, mug, lamp, plant, papers and cables.
It was made by the deskgen project and is dedicated to the public domain (CC0 1.0).

Usage::

    .venv/bin/python scripts/make_sample_desk.py [OUTPUT_PATH]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

W, H = 768, 576
SEED = 20240607
DESK_BACK, DESK_FRONT = 330, 520  # image rows of the desk top's back and front edges
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/deskgen/_data/sample/desk.jpg"

Pt = tuple[float, float]


def background(rng: np.random.Generator) -> Image.Image:
    """Wall with a window-lit gradient, a wooden desk top in perspective and the floor."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    light = 1.0 - 0.28 * (xs / W) - 0.12 * (ys / H) + 0.10 * np.exp(-((xs - 300) / 160) ** 2)
    img = np.stack([232 * light, 224 * light, 208 * light], axis=-1)
    # Desk top: grain runs left-right, compressed towards the back edge (perspective).
    t = np.clip((ys - DESK_BACK) / (DESK_FRONT - DESK_BACK), 0.0, 1.0)
    z = 1.0 / (1 / 2.4 + t * (1 - 1 / 2.4))  # depth: 2.4 at the back, 1.0 at the front
    xw = (xs - W / 2) * z / W
    wobble = sum(a * np.sin(f * xw + p) for a, f, p in rng.uniform([0.2, 3, 0], [0.6, 9, 6], (4, 3)))
    grain = np.sin(2 * np.pi * (z * 9 + wobble * 0.35)) * 0.5 + 0.5
    fine = np.sin(2 * np.pi * (z * 55 + wobble * 1.7)) * 0.5 + 0.5
    shade = (0.78 + 0.14 * grain + 0.06 * fine) * (0.85 + 0.2 * t) * (1.05 - 0.25 * xs / W)
    wood = np.stack([168 * shade, 118 * shade, 74 * shade], axis=-1)
    half = 330 + 120 * t  # half width of the desk top at each row
    on_desk = (ys >= DESK_BACK) & (ys < DESK_FRONT) & (np.abs(xs - W / 2) < half)
    img[on_desk] = wood[on_desk]
    img[(ys >= DESK_FRONT) & (ys < DESK_FRONT + 16)] = (92, 62, 38)  # front edge of the top
    img[ys >= DESK_FRONT + 16] = (48, 42, 40)  # shadowed space under the desk
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def window(draw: ImageDraw.ImageDraw) -> None:
    """Daylight window on the left wall with a sky gradient, distant roofs and mullions."""
    x0, y0, x1, y1 = 36, 36, 236, 276
    for y in range(y0, y1):
        k = (y - y0) / (y1 - y0)
        draw.line([(x0, y), (x1, y)], fill=(int(170 + 70 * k), int(205 + 40 * k), 250))
    draw.polygon([(x0, 250), (80, 226), (120, 236), (160, 214), (210, 230), (x1, 222),
                  (x1, y1), (x0, y1)], fill=(150, 160, 168))
    draw.rectangle([x0 - 10, y0 - 10, x1 + 10, y1 + 10], outline=(248, 246, 240), width=12)
    draw.line([((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1)], fill=(248, 246, 240), width=8)
    draw.line([(x0, 160), (x1, 160)], fill=(248, 246, 240), width=8)
    draw.rectangle([x0 - 18, y1 + 10, x1 + 18, y1 + 20], fill=(236, 232, 224))  # sill


def shadows(img: Image.Image) -> Image.Image:
    """Soft contact shadows under the objects, multiplied onto the desk."""
    mask = Image.new("L", img.size, 255)
    d = ImageDraw.Draw(mask)
    for box in [(300, 328, 470, 352), (500, 372, 720, 400), (268, 425, 520, 462),
                (90, 440, 215, 462), (80, 352, 180, 368), (630, 338, 720, 356),
                (30, 445, 250, 505), (560, 440, 760, 510)]:
        d.ellipse(box, fill=150)
    return ImageChops.multiply(img, mask.filter(ImageFilter.GaussianBlur(9)).convert("RGB"))


def monitor(draw: ImageDraw.ImageDraw, rnd: random.Random) -> None:
    """Monitor on a stand with a code editor and a couple of windows on screen."""
    draw.ellipse([312, 326, 456, 348], fill=(58, 58, 62))
    draw.polygon([(372, 280), (396, 280), (400, 338), (368, 338)], fill=(78, 78, 84))
    draw.rounded_rectangle([228, 96, 540, 290], radius=6, fill=(24, 24, 27))
    draw.rectangle([238, 106, 530, 276], fill=(34, 40, 56))
    draw.rectangle([238, 106, 530, 114], fill=(58, 64, 80))
    for i in range(18):
        x = 246 + rnd.randint(0, 4) * 8
        draw.line([(x, 122 + i * 8), (x + rnd.randint(30, 150), 122 + i * 8)],
                  fill=rnd.choice([(120, 190, 250), (230, 200, 120), (170, 220, 150)]), width=3)
    draw.rectangle([410, 140, 522, 230], fill=(226, 230, 236), outline=(90, 96, 110))
    draw.rectangle([410, 140, 522, 150], fill=(70, 120, 200))
    draw.polygon([(238, 106), (300, 106), (238, 200)], fill=(52, 58, 74))  # glare


def laptop(draw: ImageDraw.ImageDraw) -> None:
    """Open laptop at the right, screen slightly tilted back."""
    draw.polygon([(528, 232), (690, 226), (700, 372), (520, 376)], fill=(46, 48, 52))
    draw.polygon([(536, 240), (682, 235), (690, 364), (529, 367)], fill=(214, 226, 238))
    for i in range(7):
        draw.line([(548, 258 + i * 14), (620 + (i * 23) % 50, 257 + i * 14)],
                  fill=(120, 130, 150), width=3)
    draw.polygon([(520, 376), (700, 372), (728, 400), (500, 404)], fill=(178, 180, 186))
    draw.polygon([(530, 380), (692, 377), (704, 390), (522, 393)], fill=(92, 94, 100))
    draw.line([(500, 404), (728, 400)], fill=(120, 122, 128), width=3)


def keyboard(draw: ImageDraw.ImageDraw) -> None:
    """Keyboard in front of the monitor, drawn as a perspective grid of keys."""
    draw.polygon([(292, 402), (486, 402), (500, 446), (278, 446)], fill=(40, 40, 44))
    for r in range(5):
        ya, yb = 406 + r * 8, 412 + r * 8
        xl, xr = 296 - r * 2.6, 482 + r * 2.6
        n = 14
        for c in range(n):
            xa = xl + (xr - xl) * c / n
            draw.rectangle([xa + 1, ya, xa + (xr - xl) / n - 1, yb], fill=(72, 72, 78))
    draw.rectangle([340, 438, 440, 443], fill=(72, 72, 78))  # space bar


def mug_lamp_plant(draw: ImageDraw.ImageDraw) -> None:
    """Coffee mug, articulated desk lamp (left) and a small potted plant (right back)."""
    draw.rectangle([118, 392, 178, 450], fill=(196, 64, 52))
    draw.ellipse([118, 440, 178, 458], fill=(176, 54, 44))
    draw.ellipse([118, 384, 178, 400], fill=(214, 84, 70))
    draw.ellipse([124, 387, 172, 398], fill=(62, 38, 26))  # coffee
    draw.arc([166, 402, 196, 436], start=-90, end=90, fill=(186, 60, 48), width=7)
    draw.ellipse([86, 346, 170, 366], fill=(40, 42, 46))
    draw.line([(128, 354), (154, 236), (238, 190)], fill=(52, 54, 58), width=7, joint="curve")
    draw.polygon([(226, 176), (256, 170), (292, 226), (250, 246)], fill=(60, 62, 68))
    draw.ellipse([250, 222, 294, 248], fill=(255, 244, 200))
    draw.polygon([(650, 300), (702, 300), (694, 346), (658, 346)], fill=(188, 110, 74))
    draw.rectangle([646, 294, 706, 304], fill=(198, 120, 84))
    for ang, length, col in [(-60, 70, (62, 126, 58)), (-95, 84, (48, 110, 50)),
                             (-125, 66, (74, 140, 66)), (-30, 52, (56, 118, 54)),
                             (-150, 50, (44, 100, 46)), (-80, 60, (80, 150, 70))]:
        v = np.array([np.cos(np.radians(ang)), np.sin(np.radians(ang))])
        base = np.array([676.0, 298.0])
        tip, side = base + v * length, np.array([-v[1], v[0]]) * 11
        mid = base + v * length * 0.55
        draw.polygon([tuple(base), tuple(mid + side), tuple(tip), tuple(mid - side)], fill=col)


def papers(img: Image.Image, rnd: random.Random) -> None:
    """Loose, rotated paper sheets with faint text lines, flattened onto the desk."""
    for cx, cy, ang in [(120, 482, 14), (190, 474, -9), (640, 470, 6), (700, 488, -18)]:
        sheet = Image.new("RGBA", (150, 190), (246, 244, 238, 255))
        d = ImageDraw.Draw(sheet)
        for i in range(12):
            d.line([(14, 20 + i * 13), (14 + rnd.randint(60, 122), 20 + i * 13)],
                   fill=(150, 150, 160, 255), width=2)
        sheet = sheet.rotate(ang, expand=True, resample=Image.BICUBIC)
        sheet = sheet.resize((sheet.width, int(sheet.height * 0.32)), Image.LANCZOS)
        img.paste(sheet, (cx - sheet.width // 2, cy - sheet.height // 2), sheet)


def catmull_rom(pts: list[Pt], steps: int = 16) -> list[Pt]:
    """Smooth polyline through the given points (Catmull-Rom spline)."""
    p = [pts[0], *pts, pts[-1]]
    out: list[Pt] = []
    for i in range(1, len(p) - 2):
        for s in range(steps):
            t = s / steps
            out.append(tuple(0.5 * ((2 * p[i][k]) + (-p[i - 1][k] + p[i + 1][k]) * t
                                    + (2 * p[i - 1][k] - 5 * p[i][k] + 4 * p[i + 1][k]
                                       - p[i + 2][k]) * t * t
                                    + (-p[i - 1][k] + 3 * p[i][k] - 3 * p[i + 1][k]
                                       + p[i + 2][k]) * t ** 3) for k in range(2)))
    return [*out, pts[-1]]


def cables(draw: ImageDraw.ImageDraw, rnd: random.Random) -> None:
    """Tangled cables snaking from the devices across the desk and off its front edge."""
    routes = [[(384, 338), (330, 360), (250, 372), (232, 400), (268, 416), (240, 440),
               (300, 470), (360, 500), (340, 540)],
              [(520, 390), (470, 380), (430, 372), (420, 392), (455, 400), (440, 376),
               (380, 368), (300, 356), (220, 362), (150, 360)],
              [(500, 446), (540, 470), (600, 450), (588, 424), (556, 432), (575, 460),
               (640, 500), (610, 540)],
              [(660, 344), (600, 352), (560, 408), (530, 420)]]
    for route in routes:
        pts = [(x + rnd.uniform(-3, 3), y + rnd.uniform(-3, 3)) for x, y in route]
        draw.line(catmull_rom(pts), fill=(26, 26, 28), width=4, joint="curve")


def finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lamp glow, lens softness, vignette and mild sensor noise so it reads as a photo."""
    glow = Image.new("L", img.size, 0)
    ImageDraw.Draw(glow).ellipse([190, 250, 360, 400], fill=60)
    img = ImageChops.add(img, glow.filter(ImageFilter.GaussianBlur(40)).convert("RGB"))
    img = img.filter(ImageFilter.GaussianBlur(0.9))
    a = np.asarray(img).astype(np.float32)
    ys, xs = np.mgrid[0:H, 0:W]
    vignette = 1 - 0.22 * (((xs - W / 2) / W) ** 2 + ((ys - H / 2) / H) ** 2) * 2
    noise = rng.normal(0, 2.6, (H, W, 1)) + rng.normal(0, 0.8, (H, W, 3))
    a = a * vignette[..., None] + noise
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_desk() -> Image.Image:
    """Draw the full scene deterministically and return it as an RGB image."""
    rng, rnd = np.random.default_rng(SEED), random.Random(SEED)
    img = background(rng)
    window(ImageDraw.Draw(img))
    img = shadows(img)
    papers(img, rnd)
    draw = ImageDraw.Draw(img)
    monitor(draw, rnd)
    mug_lamp_plant(draw)
    laptop(draw)
    keyboard(draw)
    cables(draw, rnd)
    return finish(img, rng)


def main(out: str | Path | None = None) -> Path:
    """Render the sample desk and save it as a metadata-free baseline JPEG."""
    path = Path(out) if out is not None else DEFAULT_OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    make_desk().save(path, "JPEG", quality=85, optimize=True, progressive=False)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
