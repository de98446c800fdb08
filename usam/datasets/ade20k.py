"""ADE20k SceneParsing (ADEChallengeData2016): one "instance" per class present in an image.

Layout: images/{training,validation}/*.jpg with annotations/{training,validation}/<stem>.png,
whose pixel value is the class id (0 = unlabelled). The paper prompts SAM 2 with whole
class regions, so the instance id is the class id.
"""

from __future__ import annotations

import logging
from typing import Any

from usam.datasets.base import (
    DatasetReader,
    Entry,
    Sample,
    masks_from_labels,
    read_label_png,
    read_rgb,
)
from usam.errors import SampleError, UsamError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg")


class ADE20k(DatasetReader):
    """Reader for `ADEChallengeData2016`; splits train -> training, val -> validation."""

    splits = {"train": "training", "val": "validation"}
    video = False
    layout = (
        "<root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/"
        "<same stem>.png, root = .../ADEChallengeData2016"
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_dir = self.require(self.root / "images" / self.native_split, "image folder")
        self.label_dir = self.require(
            self.root / "annotations" / self.native_split, "annotation folder"
        )

    def index(self) -> list[Entry]:
        images = sorted(
            p
            for p in self.image_dir.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not images:
            raise UsamError(f"no .jpg images in {self.image_dir}; expected {self.layout}")
        return [Entry(name=p.relative_to(self.root).as_posix(), group=p.stem) for p in images]

    def load(self, entry: Entry) -> Sample:
        image_path = self.root / entry.name
        label_path = self.label_dir / f"{image_path.stem}.png"
        # a missing PNG is a broken sample, not a broken dataset: skip and count it
        if not label_path.is_file():
            raise SampleError(label_path, "no annotation")
        image = read_rgb(image_path)
        labels = read_label_png(label_path)
        if labels.ndim != 2:
            raise SampleError(label_path, f"mask has shape {labels.shape}, expected one channel")
        if labels.shape != image.shape[:2]:
            (h, w), (ih, iw) = labels.shape, image.shape[:2]
            raise SampleError(label_path, f"mask is {w}x{h}, image {image_path.name} is {iw}x{ih}")
        return Sample(
            image=image, masks=masks_from_labels(labels), name=entry.name, group=entry.group
        )
