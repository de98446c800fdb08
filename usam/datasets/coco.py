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

    def content_settings(self) -> dict[str, Any]:
        return {"min_area": self.min_area}

    def index(self) -> list[Entry]:
        """Parse the JSON once; keep per image only its file, size and kept segmentations.

        Refused at index time (counted): a `file_name` that leaves the split folder, and
        every image of an id or a file name listed twice (their annotations cannot be told
        apart, so none of them is used).
        """
        log.info("reading %s", self.ann_file)
        data = read_json(self.ann_file)
        try:
            images: dict[int, Entry] = {}
            by_id: dict[int, list[str]] = {}
            by_name: dict[str, list[int]] = {}
            for im in data["images"]:
                iid, file_name = int(im["id"]), im["file_name"]
                if not isinstance(file_name, str):
                    raise TypeError(f"image {iid}: file_name {file_name!r} is not a string")
                by_id.setdefault(iid, []).append(file_name)
                by_name.setdefault(file_name, []).append(iid)
                problem = self.name_problem(file_name)
                if problem:
                    self.skip_indexed(self.ann_file, f"image {iid}: file_name {problem}")
                    continue
                images[iid] = Entry(
                    name=f"{self.native_split}/{file_name}",
                    group=str(iid),
                    info={"height": int(im["height"]), "width": int(im["width"]), "anns": []},
                )
            refused: set[int] = set()
            for iid, names in by_id.items():
                if len(names) > 1:
                    self.skip_indexed(
                        self.ann_file,
                        f"image id {iid} is listed {len(names)} times ({', '.join(map(repr, names))}): "
                        "its annotations cannot be attributed; all of them skipped",
                    )
                    refused.add(iid)
            for name, ids in by_name.items():
                if len(ids) > 1:
                    self.skip_indexed(
                        self.ann_file,
                        f"file_name {name!r} is listed under {len(ids)} image ids {ids}: "
                        "all of them skipped",
                    )
                    refused.update(ids)
            orphans = crowd = small = 0
            for ann in data["annotations"]:
                iid = int(ann["image_id"])
                entry = images.get(iid)
                if iid in refused:
                    continue
                if entry is None:
                    orphans += 1
                elif ann.get("iscrowd", 0) == 1:
                    crowd += 1
                elif float(ann["area"]) < self.min_area:
                    small += 1
                else:
                    entry.info["anns"].append((int(ann["id"]), ann["segmentation"]))
            for iid in refused:
                images.pop(iid, None)
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
        # before decoding anything: a huge annotation list would cost one H x W mask each
        self.check_count(len(entry.info["anns"]), path)
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
        """One COCO segmentation (polygons, uncompressed or compressed RLE) -> H x W bool.

        Everything pycocotools would trust is checked first: polygon coordinates finite
        and near the image (it allocates by the polygon's extent: a NaN or 1e30 exhausts
        memory), RLE sizes equal to the image and run lengths covering it exactly.
        Polygons under 6 numbers (not a shape) are dropped and counted.
        """
        from pycocotools import mask as mask_utils

        try:
            if isinstance(seg, list):
                polys = []
                for poly in seg:
                    xy = np.asarray(poly, dtype=np.float64)
                    if xy.ndim != 1:
                        raise ValueError("a polygon must be a flat list of numbers")
                    # pycocotools reads a 4-number list as a box: never pass one on
                    if len(xy) < 6 or len(xy) % 2:
                        why = "under_6_numbers" if len(xy) < 6 else "odd_length"
                        self.stats.dropped[f"coco_polygons_{why}"] += 1
                        log.debug("annotation %s: polygon of %d numbers dropped", ann_id, len(xy))
                        continue
                    check_polygon(xy, h, w)
                    polys.append(xy.tolist())
                if not polys:
                    return np.zeros((h, w), bool)
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                size = seg["size"]
                if (
                    not isinstance(size, list)
                    or size != [h, w]
                    or not all(type(v) is int for v in size)
                ):
                    raise ValueError(f"RLE size {size!r} differs from image size [{h}, {w}]")
                counts = seg["counts"]
                if isinstance(counts, (str, bytes)):
                    runs = rle_counts(counts)
                elif isinstance(counts, list) and all(type(c) is int for c in counts):
                    runs = counts
                else:
                    raise ValueError("RLE counts must be a string or a list of integers")
                # pycocotools fills a too-short RLE with uninitialised memory: check first
                if sum(runs) != h * w or min(runs, default=0) < 0:
                    raise ValueError(f"RLE counts cover {sum(runs)} pixels, image has {h * w}")
                rle = {"size": [h, w], "counts": counts}
                if isinstance(counts, list):
                    rle = mask_utils.frPyObjects(rle, h, w)
            else:
                raise ValueError("neither a polygon list nor an RLE dict")
            mask = mask_utils.decode(rle)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
            raise SampleError(
                self.ann_file, f"annotation {ann_id}: bad segmentation ({err})"
            ) from None
        return mask.astype(bool)


def check_polygon(xy: np.ndarray, h: int, w: int) -> None:
    """ValueError unless every coordinate is finite and within one image size of the image."""
    if not np.isfinite(xy).all():
        raise ValueError("polygon has a NaN or infinite coordinate")
    x, y = xy[0::2], xy[1::2]
    if x.min() < -w or x.max() > 2 * w or y.min() < -h or y.max() > 2 * h:
        raise ValueError(
            f"polygon coordinate out of range: x in [{x.min():g}, {x.max():g}], "
            f"y in [{y.min():g}, {y.max():g}] for a {w}x{h} image"
        )


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
