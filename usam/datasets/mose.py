"""MOSE: DAVIS-like video folders, with the video list in meta_{train,valid}.json.

Layout: meta_<split>.json (`{"videos": {name: {"length": N, ...}}}`),
<split>/JPEGImages/<video>/%05d.jpg and <split>/Annotations/<video>/%05d.png (palette,
pixel value = object id, 0 = background). valid annotates only the first frame of each
video, so it has one entry per video. A video in the meta file but missing on disk is
warned about and counted as unreadable; a missing split folder is an error at once.
"""

from __future__ import annotations

from typing import ClassVar

from usam.datasets.base import Entry
from usam.datasets.davis import VideoFolders
from usam.errors import UsamError
from usam.storage import read_json


class Mose(VideoFolders):
    """MOSE reader; splits train -> train, val -> valid (MOSE's test set has no masks)."""

    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "valid"}
    layout = (
        "<root>/meta_{train,valid}.json, <root>/{train,valid}/JPEGImages/<video>/%05d.jpg and "
        "<root>/{train,valid}/Annotations/<video>/%05d.png"
    )

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        split_dir = self.require(self.root / self.native_split, "split folder")
        self.meta_file = self.require(self.root / f"meta_{self.native_split}.json", "video list")
        self.image_root = self.require(split_dir / "JPEGImages", "frame folder")
        self.mask_root = self.require(split_dir / "Annotations", "annotation folder")

    def videos(self) -> list[str]:
        """Sorted video names from the meta file."""
        meta = read_json(self.meta_file)
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            expected = '{"videos": {name: {"length": N, ...}}}'
            raise UsamError(f'{self.meta_file} has no "videos" object; expected {expected}')
        if not videos:
            raise UsamError(f"{self.meta_file} lists no videos")
        return sorted(videos)

    def index(self) -> list[Entry]:
        entries = []
        for video in self.videos():
            if self.listed_video_ok(video, self.meta_file):
                entries += self.video_entries(
                    video, self.image_root / video, self.mask_root / video
                )
        return entries
