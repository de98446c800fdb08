"""Make the bundled sample dataset (usam/sample): 2 synthetic videos x 3 frames, DAVIS layout.

    python scripts/make_sample.py [--out usam/sample]

Seeded and deterministic: textured backgrounds with an ellipse (id 1), a polygon (id 2) and
a rectangle (id 3) moving across the frames, drawn in id order so later shapes occlude
earlier ones; the palette PNG holds the id of the shape on top at each pixel.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from usam.datasets.davis import davis_palette

SEED = 0
FRAMES = 3
RES = "480p"
# name, (width, height), per object: (kind, start box x0 y0 x1 y1, velocity dx dy per frame)
VIDEOS = [
    (
        "shapes-a",
        (320, 240),
        [
            ("ellipse", (30, 40, 130, 120), (22, 6)),
            ("polygon", (170, 60, 260, 170), (-18, 10)),
            ("rectangle", (120, 150, 220, 210), (10, -14)),
        ],
    ),
    (
        "shapes-b",
        (256, 192),
        [
            ("ellipse", (150, 20, 230, 90), (-20, 12)),
            ("polygon", (20, 80, 110, 170), (16, -8)),
            ("rectangle", (90, 50, 160, 120), (6, 18)),
        ],
    ),
]

README = """# Bundled sample dataset (synthetic)

Two tiny synthetic "videos" (`shapes-a` 320x240, `shapes-b` 256x192, 3 frames each) in
DAVIS 2017 layout, so every usam stage can run without downloading a dataset:

    JPEGImages/480p/<video>/%05d.jpg
    Annotations/480p/<video>/%05d.png   palette PNG, pixel value = object id, 0 = background
    ImageSets/2017/val.txt

Each frame shows a textured background with an ellipse (id 1), a polygon (id 2) and a
rectangle (id 3) that move between frames and may occlude each other (higher ids on top).
No real images are included. Read it with `dataset=sample` (split `val` only).

Regenerate (seeded, deterministic): `python scripts/make_sample.py`
"""


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, cells * w // h + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)).clip(0, 1)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured H x W x 3 float image: two colours mixed by smooth noise, plus a gradient."""
    a, b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = smooth_noise(rng, h, w, 6)[..., None]
    ramp = np.linspace(-25, 25, w, dtype=np.float32)[None, :, None]
    return a * t + b * (1 - t) + ramp + 12 * smooth_noise(rng, h, w, 24)[..., None]


def outline(
    kind: str, box: tuple[float, ...], rng: np.random.Generator
) -> list[tuple[float, float]] | None:
    """Polygon vertices inside `box` (fixed per object), or None for ellipse/rectangle."""
    if kind != "polygon":
        return None
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    # evenly spread angles with jitter: an irregular but compact, non-convex outline
    angles = np.linspace(0, 2 * np.pi, 7, endpoint=False) + rng.uniform(-0.3, 0.3, 7)
    radii = rng.uniform(0.55, 1.0, 7)
    return [
        (cx + r * rx * np.cos(t), cy + r * ry * np.sin(t))
        for t, r in zip(angles, radii, strict=True)
    ]


def shape_mask(
    kind: str, box: tuple[float, ...], shift: tuple[float, float], poly, size
) -> np.ndarray:
    """Boolean mask of one shape moved by `shift`, drawn without anti-aliasing."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    dx, dy = shift
    x0, y0, x1, y1 = box
    moved = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    if kind == "ellipse":
        draw.ellipse(moved, fill=1)
    elif kind == "rectangle":
        draw.rectangle(moved, fill=1)
    else:
        draw.polygon([(x + dx, y + dy) for x, y in poly], fill=1)
    return np.asarray(canvas, dtype=bool)


def make(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    for sub in ("JPEGImages", "Annotations", "ImageSets"):
        shutil.rmtree(out / sub, ignore_errors=True)
    palette = davis_palette()
    for video, (w, h), objects in VIDEOS:
        bg = background(rng, h, w)
        looks = [(rng.uniform(20, 235, 3), rng.uniform(15, 35)) for _ in objects]
        polys = [outline(kind, box, rng) for kind, box, _ in objects]
        for d in ("JPEGImages", "Annotations"):
            (out / d / RES / video).mkdir(parents=True, exist_ok=True)
        for f in range(FRAMES):
            image = bg.copy()
            labels = np.zeros((h, w), np.uint8)
            for oid, ((kind, box, (vx, vy)), (colour, stripe), poly) in enumerate(
                zip(objects, looks, polys, strict=True), start=1
            ):
                m = shape_mask(kind, box, (vx * f, vy * f), poly, (w, h))
                assert m.any(), f"{video} frame {f}: object {oid} left the frame"
                # diagonal stripes give each object a texture that moves with it
                yy, xx = np.mgrid[0:h, 0:w]
                stripes = 18 * np.sin((xx - vx * f + yy - vy * f) / stripe * np.pi)[..., None]
                image[m] = (colour + stripes)[m]
                labels[m] = oid
            rgb = Image.fromarray(image.clip(0, 255).astype(np.uint8), mode="RGB")
            rgb.save(out / "JPEGImages" / RES / video / f"{f:05d}.jpg", quality=90)
            png = Image.fromarray(labels, mode="P")
            png.putpalette(palette)
            png.save(out / "Annotations" / RES / video / f"{f:05d}.png")
    (out / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{v}\n" for v, _, _ in VIDEOS))
    (out / "README.md").write_text(README)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "usam" / "sample"
    )
    make(parser.parse_args().out)


if __name__ == "__main__":
    main()
