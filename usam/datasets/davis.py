"""DAVIS 2017: one folder of JPEG frames and one of palette PNG masks per video.

Layout: JPEGImages/<res>/<video>/%05d.jpg, Annotations/<res>/<video>/%05d.png (pixel value =
object id, 0 = background, 255 = void) and ImageSets/2017/{train,val,test-dev}.txt listing
the videos. Every annotated frame is a sample; test-dev annotates only the first frame, so
frames without a PNG are simply not entries. `VideoFolders` holds what MOSE shares.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

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


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS (= PASCAL VOC) masks, flat RGB: colour i marks object i."""
    palette = []
    for i in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((i >> (3 * bit)) & 1) << (7 - bit)
            g |= ((i >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((i >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [r, g, b]
    return palette


def _frame_number(stem: str, position: int) -> int:
    # frames are named %05d, so the name is the frame's position in the video; anything
    # else falls back to the position among the annotated frames
    return int(stem) if stem.isdigit() else position


class VideoFolders(DatasetReader):
    """Base for layouts with <images>/<video>/*.jpg beside <masks>/<video>/*.png (palette ids)."""

    video = True
    ignore_ids: tuple[int, ...] = (0,)  # label values that are not objects

    def skip_video(self, path: Path, reason: str) -> None:
        """A listed video whose folder is unusable: counted as unreadable, or an error if strict."""
        if self.strict:
            raise SampleError(path, reason)
        log.warning("skipping video %s: %s", path, reason)
        self.stats.unreadable.append({"file": str(path), "reason": reason})

    def listed_video_ok(self, video: str, source: Path) -> bool:
        """False (counted skip) for a listed name that would leave the dataset's folders."""
        problem = self.name_problem(video)
        if problem:
            self.skip_video(source, f"video {problem}; skipped")
        return problem is None

    def video_entries(self, video: str, image_dir: Path, mask_dir: Path) -> list[Entry]:
        """One entry per annotated frame of `video`, in frame order."""
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                self.skip_video(folder, f"video {video!r} is listed but its folder is missing")
                return []
        masks = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        if not masks:
            self.skip_video(mask_dir, f"video {video!r} has no annotated frame (.png)")
            return []
        frames = sorted(
            ((_frame_number(p.stem, i), p) for i, p in enumerate(masks)),
            key=lambda t: (t[0], t[1].name),
        )
        entries = []
        for number, mask in frames:
            image = image_dir / f"{mask.stem}.jpg"
            entries.append(
                Entry(
                    name=image.relative_to(self.root).as_posix(),
                    group=video,
                    index_in_group=number,
                    info={"image": str(image), "mask": str(mask)},
                )
            )
        return entries

    def load(self, entry: Entry) -> Sample:
        image_path, mask_path = Path(entry.info["image"]), Path(entry.info["mask"])
        if not image_path.is_file():
            raise SampleError(
                image_path, f"frame has an annotation ({mask_path.name}) but no image"
            )
        image = read_rgb(image_path)
        labels = read_label_png(mask_path)
        if labels.ndim != 2:
            raise SampleError(
                mask_path, f"mask has shape {labels.shape}, expected one channel of ids"
            )
        if labels.shape != image.shape[:2]:
            (h, w), (ih, iw) = labels.shape, image.shape[:2]
            raise SampleError(mask_path, f"mask is {w}x{h}, image {image_path.name} is {iw}x{ih}")
        masks = masks_from_labels(labels, ignore=self.ignore_ids)
        return Sample(image=image, masks=masks, name=entry.name, group=entry.group)


class Davis(VideoFolders):
    """DAVIS 2017 reader; splits train -> train, val -> val, test -> test-dev."""

    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test-dev"}
    ignore_ids = (0, 255)  # 255 marks void/ignore regions in some DAVIS masks
    layout = (
        "<root>/JPEGImages/<res>/<video>/%05d.jpg, <root>/Annotations/<res>/<video>/%05d.png and "
        "<root>/ImageSets/2017/{train,val,test-dev}.txt, res = Full-Resolution or 480p"
    )

    def __init__(self, *, resolution: str = "Full-Resolution", **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution = str(resolution)
        self.list_file = self.require(
            self.root / "ImageSets" / "2017" / f"{self.native_split}.txt", "video list of the split"
        )
        self.image_root = self._resolution_dir("JPEGImages")
        self.mask_root = self._resolution_dir("Annotations")

    def _resolution_dir(self, kind: str) -> Path:
        path = self.root / kind / self.resolution
        if not path.is_dir():
            parent = self.root / kind
            found = (
                sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            )
            hint = f"; found: {', '.join(found)} (set dataset.resolution)" if found else ""
            raise UsamError(f"{path} not found{hint}; expected {self.layout}")
        return path

    def videos(self) -> list[str]:
        """Video names of the split, in the list file's order, without blanks or repeats."""
        try:
            lines = self.list_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UsamError(f"cannot read the video list {self.list_file} ({err})") from None
        videos = list(dict.fromkeys(s.strip() for s in lines if s.strip()))
        if not videos:
            raise UsamError(f"{self.list_file} lists no videos; expected one video name per line")
        return videos

    def index(self) -> list[Entry]:
        entries = []
        for video in self.videos():
            if self.listed_video_ok(video, self.list_file):
                entries += self.video_entries(
                    video, self.image_root / video, self.mask_root / video
                )
        return entries
