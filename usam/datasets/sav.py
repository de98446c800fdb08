"""SA-V (Segment Anything Video) as Meta distributes it.

train: `sav_train/sav_NNN/<video>.mp4` with `<video>_manual.json` and/or `<video>_auto.json`.
  A JSON holds `masklet_id` (ids) and `masklet`: per annotated frame, one COCO RLE per id.
  Annotations come every 4th frame of the 24 fps video, so `masklet[k]` is video frame 4k.
  One entry per annotated frame, named `sav_train/<subset>/<video>/<frame:05d>` (the video
  frame number, no extension: the frame lives inside the mp4, not in a file of its own).
  Instance id = masklet id; with `annotation_set=both`, auto ids become AUTO_ID_OFFSET + id
  so they never clash with manual ones.
val/test: `sav_{val,test}/JPEGImages_24fps/<video>/%05d.jpg`,
  `sav_{val,test}/Annotations_6fps/<video>/<obj_id>/%05d.png` (non-zero = object) and the
  video list `sav_{val,test}/sav_{val,test}.txt`. One entry per frame that has annotation
  PNGs, named by its JPEG path; instance id = int(obj_id).

A masklet/object that is empty in a frame is not an instance of that frame. A broken or
missing JSON, or a missing mp4, or a listed video without annotations, makes its whole video
unusable: it is logged, counted once as unreadable and skipped at indexing time (every
shard indexes the whole split, so only shard 0 counts it, to keep the shards' sum right).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from usam.datasets.base import DatasetReader, Entry, Sample, read_label_png, read_rgb
from usam.datasets.coco import rle_counts
from usam.errors import SampleError, UsamError

log = logging.getLogger(__name__)

FRAME_STEP = 4  # SA-V annotates every 4th frame of its 24 fps videos (6 fps)
AUTO_ID_OFFSET = 100_000  # auto masklet ids in annotation_set=both
ANNOTATION_SETS = ("manual", "auto", "both")
_MAX_GRAB = 96  # read forward up to this many frames; farther jumps seek instead

LAYOUT = (
    "SA-V as downloaded: <root>/sav_train/sav_NNN/<video>.mp4 + <video>_manual.json / "
    "<video>_auto.json; <root>/sav_{val,test}/JPEGImages_24fps/<video>/%05d.jpg, "
    "<root>/sav_{val,test}/Annotations_6fps/<video>/<obj_id>/%05d.png and "
    "<root>/sav_{val,test}/sav_{val,test}.txt"
)


def read_annotation(path: Path) -> dict[str, Any]:
    """An SA-V masklet JSON, checked for the structure `load` relies on."""
    try:
        with open(path) as f:
            data = json.load(f)
        ids = [int(i) for i in data["masklet_id"]]
        frames = data["masklet"]
        if not isinstance(frames, list):
            raise TypeError("'masklet' is not a list")
        for k, rles in enumerate(frames):
            if not isinstance(rles, list) or len(rles) != len(ids):
                raise TypeError(f"annotated frame {k} does not hold one RLE per masklet id")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SampleError(path, f"broken annotation file ({type(err).__name__}: {err})") from None
    return {"masklet_id": ids, "masklet": frames}


def decode_rle(rle: dict[str, Any] | None, shape: tuple[int, int], path: Path, what: str):
    """One COCO RLE as an H x W bool mask, or None when it is empty."""
    if rle is None:
        return None
    try:
        size = [int(s) for s in rle["size"]]
        counts = rle["counts"]
        counts = counts.encode() if isinstance(counts, str) else counts
    except (KeyError, TypeError, ValueError) as err:
        raise SampleError(path, f"{what}: malformed RLE ({err!r})") from None
    if size != list(shape):
        raise SampleError(
            path, f"{what} is {size[1]}x{size[0]} but the video frame is {shape[1]}x{shape[0]}"
        )
    # pycocotools trusts the run lengths: a too-short RLE decodes uninitialised memory
    try:
        runs = rle_counts(counts) if isinstance(counts, bytes) else None
    except ValueError as err:
        raise SampleError(path, f"{what}: undecodable RLE ({err})") from None
    if runs is None:
        raise SampleError(path, f"{what}: RLE counts must be a compressed RLE string")
    if min(runs, default=0) < 0:
        raise SampleError(path, f"{what}: RLE has a negative run ({min(runs)} pixels)")
    if sum(runs) != size[0] * size[1]:
        raise SampleError(
            path, f"{what}: RLE runs cover {sum(runs)} pixels, the frame has {size[0] * size[1]}"
        )
    try:
        m = mask_utils.decode({"size": size, "counts": counts})
    except (TypeError, ValueError) as err:
        raise SampleError(path, f"{what}: undecodable RLE ({err})") from None
    return m.astype(bool) if m.any() else None


class SAV(DatasetReader):
    """SA-V reader; see the module docstring for layout, names and instance ids."""

    splits = {"train": "sav_train", "val": "sav_val", "test": "sav_test"}
    video = True
    layout = LAYOUT

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "val",
        train_subsets: list[str] | str | None = None,
        annotation_set: str = "manual",
        **kwargs: Any,
    ):
        super().__init__(root=root, split=split, **kwargs)
        if annotation_set not in ANNOTATION_SETS:
            raise UsamError(
                f"dataset.annotation_set must be one of {', '.join(ANNOTATION_SETS)}, "
                f"got {annotation_set!r}"
            )
        self.annotation_set = annotation_set
        # train frames come from one open video read forward: one loader thread at a time
        self.parallel_load = split != "train"
        if isinstance(train_subsets, str):
            train_subsets = [train_subsets]
        self.train_subsets = None if train_subsets is None else [str(s) for s in train_subsets]
        self.split_dir = self.require(self.root / self.native_split, f"SA-V {split} folder")
        if split == "train":
            self.subsets = self._find_subsets()
        else:
            self.list_file = self.require(
                self.split_dir / f"{self.native_split}.txt", f"SA-V {split} video list"
            )
            self.require(self.split_dir / "JPEGImages_24fps", f"SA-V {split} frames")
            self.require(self.split_dir / "Annotations_6fps", f"SA-V {split} annotations")
        # the open video; entries of a video are consecutive, so it is read forward
        self._cap: cv2.VideoCapture | None = None
        self._cap_path: Path | None = None
        self._pos = 0  # index of the frame the next read() returns
        self._ann_video: Path | None = None
        self._ann: list[tuple[dict[str, Any], int, Path]] = []
        self._broken: set[Path] = set()  # videos that failed to read: counted once, then skipped

    def content_settings(self) -> dict[str, Any]:
        return {"annotation_set": self.annotation_set}

    def try_load(self, entry: Entry) -> Sample | None:
        if entry.info.get("video") in self._broken:
            return None  # its first failure was counted; the rest of the video goes with it
        return super().try_load(entry)

    def _find_subsets(self) -> list[Path]:
        have = sorted(p.name for p in self.split_dir.iterdir() if p.is_dir())
        if self.train_subsets is None:
            if not have:
                raise UsamError(f"{self.split_dir} has no sav_NNN folders; expected {self.layout}")
            return [self.split_dir / s for s in have]
        missing = [s for s in self.train_subsets if s not in have]
        if missing:
            raise UsamError(
                f"dataset.train_subsets names {', '.join(missing)}, not found in {self.split_dir} "
                f"(present: {', '.join(have) or 'none'})"
            )
        return [self.split_dir / s for s in self.train_subsets]

    def _skip_video(self, err: SampleError) -> None:
        if self.strict:
            raise err
        log.warning("skipping video: %s: %s", err.path, err.reason)
        if self.shard_index == 0:
            self.stats.unreadable.append({"file": err.path, "reason": err.reason})

    # -- index ----------------------------------------------------------------------------
    def index(self) -> list[Entry]:
        return self._index_train() if self.split == "train" else self._index_frames()

    def _index_train(self) -> list[Entry]:
        sets = [("manual", 0)] if self.annotation_set == "manual" else [("auto", 0)]
        if self.annotation_set == "both":
            sets = [("manual", 0), ("auto", AUTO_ID_OFFSET)]
        entries = []
        for subset in self.subsets:
            stems = {p.stem for p in subset.glob("*.mp4")}
            stems |= {p.name.rsplit("_", 1)[0] for s, _ in sets for p in subset.glob(f"*_{s}.json")}
            for video in sorted(stems):
                mp4 = subset / f"{video}.mp4"
                try:
                    if not mp4.is_file():
                        raise SampleError(mp4, "video file missing (its annotations exist)")
                    anns, n = [], 0
                    for s, offset in sets:
                        path = subset / f"{video}_{s}.json"
                        if path.is_file():
                            data = read_annotation(path)
                            self._check_ids(data["masklet_id"], path)
                            anns.append((path, offset))
                            n = max(n, len(data["masklet"]))
                    if not anns:
                        want = " or ".join(f"{video}_{s}.json" for s, _ in sets)
                        raise SampleError(mp4, f"no annotation file ({want})")
                except SampleError as err:
                    self._skip_video(err)
                    continue
                # one info dict per video, shared by its entries (millions of frames in train)
                info = {"video": mp4, "annotations": anns}
                rel = f"{self.native_split}/{subset.name}/{video}"
                entries += [Entry(f"{rel}/{FRAME_STEP * k:05d}", video, k, info) for k in range(n)]
        return entries

    def _check_ids(self, ids: list[int], path: Path) -> None:
        if self.annotation_set == "both" and any(not 0 <= i < AUTO_ID_OFFSET for i in ids):
            raise SampleError(
                path, f"masklet ids must lie in [0, {AUTO_ID_OFFSET}) to merge manual and auto"
            )

    def _index_frames(self) -> list[Entry]:
        videos = [v.strip() for v in self.list_file.read_text().splitlines() if v.strip()]
        entries = []
        for video in dict.fromkeys(videos):  # unique, in list order
            problem = self.name_problem(video)
            if problem:
                self._skip_video(SampleError(self.list_file, f"video {problem}; skipped"))
                continue
            ann_dir = self.split_dir / "Annotations_6fps" / video
            objects, frames = {}, set()
            for d in sorted(ann_dir.iterdir()) if ann_dir.is_dir() else []:
                if not (d.is_dir() and d.name.isdigit()):
                    log.warning("ignoring %s: not an <obj_id> folder", d)
                    continue
                objects[int(d.name)] = d
                frames |= {p.stem for p in d.glob("*.png")}
            if not frames:
                self._skip_video(SampleError(ann_dir, "listed video has no annotation PNGs"))
                continue
            frames = sorted(frames, key=int) if all(f.isdigit() for f in frames) else sorted(frames)
            info = {"objects": objects, "frames": frames}
            jpg_dir = f"{self.native_split}/JPEGImages_24fps/{video}"
            entries += [Entry(f"{jpg_dir}/{f}.jpg", video, k, info) for k, f in enumerate(frames)]
        return entries

    # -- load -----------------------------------------------------------------------------
    def load(self, entry: Entry) -> Sample:
        if self.split == "train":
            return self._load_train(entry)
        image = read_rgb(self.root / entry.name)
        frame = entry.info["frames"][entry.index_in_group]
        masks = {}
        for obj_id, obj_dir in entry.info["objects"].items():
            png = obj_dir / f"{frame}.png"
            if not png.is_file():
                continue  # object not annotated in this frame
            labels = read_label_png(png)
            if labels.shape[:2] != image.shape[:2]:
                raise SampleError(
                    png,
                    f"mask is {labels.shape[1]}x{labels.shape[0]}, "
                    f"frame is {image.shape[1]}x{image.shape[0]}",
                )
            m = labels != 0
            if m.any():
                masks[obj_id] = m
        return Sample(image, masks, entry.name, entry.group)

    def _load_train(self, entry: Entry) -> Sample:
        k = entry.index_in_group
        try:
            image = self.read_frame(entry.info["video"], FRAME_STEP * k)
        except SampleError as err:
            self._broken.add(entry.info["video"])
            raise SampleError(
                err.path, f"{err.reason}; the video's remaining frames are skipped with it"
            ) from None
        anns = self._annotations(entry.info)
        self.check_count(sum(len(d["masklet_id"]) for d, _, _ in anns), entry.info["video"])
        masks = {}
        for data, offset, path in anns:
            if k >= len(data["masklet"]):
                continue
            # read_annotation refused any frame without one RLE per masklet id
            for mid, rle in zip(data["masklet_id"], data["masklet"][k], strict=True):
                m = decode_rle(rle, image.shape[:2], path, f"masklet {mid} in annotated frame {k}")
                if m is not None:
                    masks[offset + mid] = m
        return Sample(image, masks, entry.name, entry.group)

    def _annotations(self, info: dict[str, Any]) -> list[tuple[dict[str, Any], int, Path]]:
        """The parsed JSONs of the current video, parsed once per video."""
        if self._ann_video != info["video"]:
            self._ann_video, self._ann = None, []
            self._ann = [(read_annotation(p), off, p) for p, off in info["annotations"]]
            self._ann_video = info["video"]
        return self._ann

    def read_frame(self, path: Path, n: int) -> np.ndarray:
        """Frame `n` of a video as RGB; reads forward from the last frame, seeks when behind."""
        if path != self._cap_path:
            self.close()
            self._cap_path = path  # kept on failure too, so a broken video fails fast
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                raise SampleError(path, "cannot open video (missing, corrupt or unknown codec)")
            self._cap, self._pos = cap, 0
        if self._cap is None:
            raise SampleError(path, "cannot open video (missing, corrupt or unknown codec)")
        cap = self._cap
        try:
            if n < self._pos or n - self._pos > _MAX_GRAB:
                cap.set(cv2.CAP_PROP_POS_FRAMES, n)
                self._pos = n
            while self._pos < n and cap.grab():
                self._pos += 1
            ok, bgr = cap.read() if self._pos == n else (False, None)
        except cv2.error as err:
            ok, bgr = False, err
        if not ok or bgr is None:
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.close()  # position unknown now; the next request reopens
            raise SampleError(path, f"cannot read frame {n} (the video reports {total} frames)")
        self._pos = n + 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the open video."""
        if self._cap is not None:
            self._cap.release()
        self._cap, self._cap_path, self._pos = None, None, 0

    def __iter__(self) -> Iterator[Sample]:
        try:
            yield from super().__iter__()
        finally:
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        # a VideoCapture cannot cross process boundaries (DataLoader workers); reopen there
        state = self.__dict__.copy()
        state.update(_cap=None, _cap_path=None, _pos=0, _ann_video=None, _ann=[])
        return state
