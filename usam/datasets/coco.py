"""COCO 2017 instance segmentation: one instance per kept annotation.

Layout: annotations/instances_{train,val}2017.json and {train,val}2017/*.jpg. Crowd
annotations and those whose `area` is below `min_area` are dropped at index time, as
in the paper. Segmentations are polygons, uncompressed RLE (`counts` a list) or
compressed RLE (`counts` a string); pycocotools decodes all three.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from usam.datasets.base import DatasetReader, Entry, Sample, read_rgb
from usam.errors import SampleError, UsamError
from usam.storage import read_json

log = logging.getLogger(__name__)


class Coco(DatasetReader):
    """Reader for COCO 2017; splits train -> train2017, val -> val2017 (test has no masks)."""

    splits = {"train": "train2017", "val": "val2017"}
    video = False
    layout = "<root>/annotations/instances_{train,val}2017.json and <root>/{train,val}2017/*.jpg"

    def __init__(self, *, min_area: float = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self.min_area = float(min_area)
        except (TypeError, ValueError):
            raise UsamError(f"dataset.min_area must be a number, got {min_area!r}") from None
        self.ann_file = self.require(
            self.root / "annotations" / f"instances_{self.native_split}.json", "annotation file"
        )
        self.image_dir = self.require(self.root / self.native_split, "image folder")

    def index(self) -> list[Entry]:
        """Parse the JSON once; keep per image only its file, size and kept segmentations."""
        log.info("reading %s", self.ann_file)
        data = read_json(self.ann_file)
        try:
            images = {
                int(im["id"]): Entry(
                    name=f"{self.native_split}/{im['file_name']}",
                    group=str(int(im["id"])),
                    info={"height": int(im["height"]), "width": int(im["width"]), "anns": []},
                )
                for im in data["images"]
            }
            orphans = crowd = small = 0
            for ann in data["annotations"]:
                entry = images.get(int(ann["image_id"]))
                if entry is None:
                    orphans += 1
                elif ann.get("iscrowd", 0) == 1:
                    crowd += 1
                elif float(ann["area"]) < self.min_area:
                    small += 1
                else:
                    entry.info["anns"].append((int(ann["id"]), ann["segmentation"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsamError(
                f"{self.ann_file} is not a COCO instances file ({type(err).__name__}: {err}); "
                "expected 'images' with id/file_name/width/height and 'annotations' with "
                "id/image_id/area/iscrowd/segmentation"
            ) from None
        del data  # the train JSON is ~450 MB; only the entries survive
        if orphans:
            log.warning(
                "%s: %d annotations refer to no listed image; ignored", self.ann_file, orphans
            )
        log.info(
            "%s: %d images; dropped %d crowd and %d annotations with area < %g",
            self.ann_file.name,
            len(images),
            crowd,
            small,
            self.min_area,
        )
        return sorted(images.values(), key=lambda e: e.name)

    def load(self, entry: Entry) -> Sample:
        path = self.root / entry.name
        image = read_rgb(path)
        h, w = entry.info["height"], entry.info["width"]
        if image.shape[:2] != (h, w):
            raise SampleError(
                path,
                f"image is {image.shape[1]}x{image.shape[0]} but {self.ann_file.name} says {w}x{h}",
            )
        masks = {}
        for ann_id, seg in entry.info["anns"]:
            mask = self.decode(seg, h, w, ann_id)
            if mask.any():  # a polygon wholly outside the image gives nothing to prompt
                masks[ann_id] = mask
        return Sample(image=image, masks=masks, name=entry.name, group=entry.group)

    def decode(self, seg: Any, h: int, w: int, ann_id: int) -> np.ndarray:
        """One COCO segmentation (polygons, uncompressed or compressed RLE) -> H x W bool."""
        from pycocotools import mask as mask_utils

        try:
            if isinstance(seg, list):
                # pycocotools reads a 4-number list as a box: drop degenerate polygons first
                polys = [p for p in seg if len(p) >= 6]
                if not polys:
                    return np.zeros((h, w), bool)
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [h, w]:
                    raise ValueError(f"RLE size {seg['size']} differs from image size [{h}, {w}]")
                counts = seg["counts"]
                if isinstance(counts, (str, bytes)):
                    rle, counts = seg, rle_counts(counts)
                else:
                    rle = mask_utils.frPyObjects(seg, h, w)
                # pycocotools fills a too-short RLE with uninitialised memory: check first
                if sum(counts) != h * w or min(counts, default=0) < 0:
                    raise ValueError(f"RLE counts cover {sum(counts)} pixels, image has {h * w}")
            else:
                raise ValueError("neither a polygon list nor an RLE dict")
            mask = mask_utils.decode(rle)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
            raise SampleError(
                self.ann_file, f"annotation {ann_id}: bad segmentation ({err})"
            ) from None
        return mask.astype(bool)


def rle_counts(s: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString, in Python)."""
    data = s.encode() if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE string ends inside a number")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]  # from the third run on, counts are stored as differences
        counts.append(x)
    return counts
