"""Tiny DAVIS / MOSE trees for the reader tests, with the label maps they contain.

Every frame's label map is built here by hand (rectangles at frame-dependent places),
so tests can compare the reader's masks with exactly what was drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# any palette will do: the reader must use the index values, not the colours
PALETTE = [c for i in range(256) for c in ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256)]


def labels(h: int, w: int, frame: int, ids: tuple[int, ...]) -> np.ndarray:
    """A uint8 label map: object k of `ids` is a 3x4 block that moves right by one per frame."""
    lab = np.zeros((h, w), np.uint8)
    for k, oid in enumerate(ids):
        y, x = 1 + 4 * k, (frame + 2 * k) % (w - 4)
        lab[y : y + 3, x : x + 4] = oid
    return lab


def write_png(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # frombytes keeps the raw values; convert("P") from "L" would requantise them
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), np.ascontiguousarray(lab).tobytes())
    im.putpalette(PALETTE)
    im.save(path)


def write_jpg(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=95)
    return img


def make_video(
    image_dir: Path,
    mask_dir: Path,
    *,
    frames: int,
    size: tuple[int, int],
    ids: tuple[int, ...],
    annotated: str = "all",
) -> dict[int, np.ndarray]:
    """Write `frames` JPEGs and the PNGs of the annotated ones ("all" or "first").

    Returns {frame number: label map} of the annotated frames.
    """
    h, w = size
    out = {}
    for f in range(frames):
        write_jpg(image_dir / f"{f:05d}.jpg", h, w, seed=f)
        if annotated == "all" or f == 0:
            out[f] = labels(h, w, f, ids)
            write_png(mask_dir / f"{f:05d}.png", out[f])
    return out


def make_davis(
    root: Path, videos: dict[str, dict], lists: dict[str, list[str]], res: str = "480p"
) -> dict:
    """A DAVIS 2017 tree. `videos`: name -> make_video kwargs; `lists`: split file -> video names.

    Returns {entry name: label map} for every annotated frame.
    """
    expected = {}
    for video, kw in videos.items():
        drawn = make_video(
            root / "JPEGImages" / res / video, root / "Annotations" / res / video, **kw
        )
        for f, lab in drawn.items():
            expected[f"JPEGImages/{res}/{video}/{f:05d}.jpg"] = lab
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return expected


def make_mose(root: Path, split: str, videos: dict[str, dict]) -> dict:
    """A MOSE split (train or valid) and its meta file; returns {entry name: label map}."""
    expected = {}
    meta = {"videos": {}}
    for video, kw in videos.items():
        drawn = make_video(
            root / split / "JPEGImages" / video, root / split / "Annotations" / video, **kw
        )
        meta["videos"][video] = {"length": kw["frames"], "objects": {}}
        for f, lab in drawn.items():
            expected[f"{split}/JPEGImages/{video}/{f:05d}.jpg"] = lab
    (root / f"meta_{split}.json").write_text(json.dumps(meta))
    return expected


# -- tracking: objects that enter late and vanish -----------------------------------------------
def rect(h: int, w: int, boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """A label map with one box (y0, y1, x0, x1) per object id."""
    lab = np.zeros((h, w), np.uint8)
    for oid, (y0, y1, x0, x1) in boxes.items():
        lab[y0:y1, x0:x1] = oid
    return lab


def tracking_davis(root: Path) -> Path:
    """Two videos: `dance` (4 frames) where object 3 vanishes after frame 1 and object 2
    enters on frame 1; `cars` (3 frames) with one object."""
    h, w = 64, 80
    dance = {
        0: {1: (5, 25, 5, 30), 3: (40, 60, 50, 75)},
        1: {1: (6, 26, 7, 32), 3: (40, 60, 52, 77), 2: (30, 38, 10, 20)},
        2: {1: (7, 27, 9, 34), 2: (30, 38, 12, 22)},
        3: {1: (8, 28, 11, 36), 2: (30, 38, 14, 24)},
    }
    cars = {f: {4: (10 + f, 40 + f, 20, 60)} for f in range(3)}
    for video, frames in (("dance", dance), ("cars", cars)):
        for f, boxes in frames.items():
            write_jpg(root / "JPEGImages" / "480p" / video / f"{f:05d}.jpg", h, w, seed=f)
            write_png(root / "Annotations" / "480p" / video / f"{f:05d}.png", rect(h, w, boxes))
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("dance\ncars\n")
    return root
