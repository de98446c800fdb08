"""DatasetReader behaviour shared by every reader, on in-memory toy readers."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pytest

from usam.datasets.base import DatasetReader, Entry, Sample, check_sample, masks_from_labels
from usam.errors import SampleError, UsamError


class Videos(DatasetReader):
    """Videos v0 (7 frames), v1 (3 frames), v2 (10 frames). Frame f of video v has f % 3 instances;
    names in `broken` raise SampleError."""

    splits: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    video = True
    layout = "<toy>"
    lengths = (7, 3, 10)
    broken: ClassVar[frozenset[str]] = frozenset()

    def index(self):
        return [
            Entry(name=f"v{v}/{f}", group=f"v{v}", index_in_group=f)
            for v, n in enumerate(self.lengths)
            for f in range(n)
        ]

    def load(self, entry):
        if entry.name in self.broken:
            raise SampleError(f"/data/{entry.name}.png", "unreadable mask (truncated)")
        k = entry.index_in_group % 3
        img = np.zeros((4, 5, 3), np.uint8)
        masks = {
            i + 1: np.eye(4, 5, i, dtype=np.uint8) for i in range(k)
        }  # ints: check_sample casts
        return Sample(image=img, masks=masks, name=entry.name, group=entry.group)


class Stills(Videos):
    video = False

    def index(self):
        return [Entry(name=f"img{i:03d}.jpg", group=f"img{i:03d}") for i in range(23)]


@pytest.fixture
def root(tmp_path):
    return tmp_path  # the toy readers only need an existing folder


def test_split_mapping(root):
    r = Videos(root=root, split="val")
    assert (r.split, r.native_split, r.name) == ("val", "validation", "videos")
    with pytest.raises(UsamError, match=r"dataset 'toy' has no split 'test'; it has: train, val"):
        Videos(root=root, split="test", name="toy")
    with pytest.raises(UsamError, match="no split 'validation'"):
        Videos(root=root, split="validation")  # native names are not usam names


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(UsamError, match=f"{tmp_path / 'x'} does not exist; expected <toy>"):
        Videos(root=tmp_path / "x")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sample": 0}, "sample must be >= 1"),
        ({"shard_index": 2, "shard_count": 2}, "shard.index < shard.count"),
        ({"shard_index": -1, "shard_count": 2}, "shard.index < shard.count"),
        ({"shard_count": 0}, "shard.index < shard.count"),
    ],
)
def test_bad_sample_or_shard(root, kw, match):
    with pytest.raises(UsamError, match=match):
        Videos(root=root, **kw)


def test_video_subsampling_keeps_every_kth_frame_of_each_video(root):
    r = Videos(root=root, sample=3)
    assert [e.name for e in r.entries] == [
        "v0/0",
        "v0/3",
        "v0/6",
        "v1/0",
        "v2/0",
        "v2/3",
        "v2/6",
        "v2/9",
    ]
    assert len(Videos(root=root, sample=1)) == 20
    # longer than every video: the first frame of each
    assert [e.name for e in Videos(root=root, sample=50).entries] == ["v0/0", "v1/0", "v2/0"]


def test_still_subsampling_keeps_every_kth_image(root):
    assert [e.name for e in Stills(root=root, sample=5).entries] == [
        "img000.jpg",
        "img005.jpg",
        "img010.jpg",
        "img015.jpg",
        "img020.jpg",
    ]
    assert len(Stills(root=root, sample=1)) == 23
    assert len(Stills(root=root, sample=23)) == 1


@pytest.mark.parametrize("cls", [Videos, Stills])
@pytest.mark.parametrize("sample", [1, 2, 4])
@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 30])
def test_shards_are_disjoint_and_cover_the_split(root, cls, sample, count):
    full = [e.name for e in cls(root=root, sample=sample).entries]
    shards = [
        [e.name for e in cls(root=root, sample=sample, shard_index=i, shard_count=count).entries]
        for i in range(count)
    ]
    assert [name for shard in shards for name in shard] == full
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_stats_count_images_instances_and_empty(root):
    r = Videos(root=root)
    samples = list(r)
    assert len(samples) == 20
    # frame f has f % 3 instances: v0 0120120 -> 6 (3 empty), v1 012 -> 3 (1),
    # v2 0120120120 -> 9 (4)
    assert r.stats.as_dict() == {
        "images": 20,
        "instances": 18,
        "images_without_instances": 8,
        "unreadable": 0,
        "unreadable_files": [],
        "dropped": {},
    }
    assert all(m.dtype == bool for s in samples for m in s.masks.values())


def test_broken_samples_are_skipped_counted_and_logged(root, caplog):
    class Broken(Videos):
        broken = frozenset({"v0/2", "v2/5"})

    r = Broken(root=root)
    with caplog.at_level(logging.WARNING):
        names = [s.name for s in r]
    assert len(names) == 18 and "v0/2" not in names and "v2/5" not in names
    assert r.stats.images == 18
    assert r.stats.unreadable == [
        {"file": "/data/v0/2.png", "reason": "unreadable mask (truncated)"},
        {"file": "/data/v2/5.png", "reason": "unreadable mask (truncated)"},
    ]
    assert "/data/v0/2.png" in caplog.text and "/data/v2/5.png" in caplog.text


def test_strict_mode_raises_on_the_first_broken_sample(root):
    class Broken(Videos):
        broken = frozenset({"v0/2", "v2/5"})

    r = Broken(root=root, strict=True)
    seen = []
    with pytest.raises(SampleError, match="/data/v0/2.png: unreadable mask") as err:
        for s in r:
            seen.append(s.name)
    assert err.value.path == "/data/v0/2.png"
    assert seen == ["v0/0", "v0/1"] and r.stats.unreadable == []


def test_check_sample_catches_bad_shapes(root):
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(SampleError, match="mask of instance 3 is 4x5, image is 5x4"):
        check_sample(Sample(img, {3: np.zeros((5, 4), bool)}, "a.jpg", "a"), "a.jpg")
    with pytest.raises(SampleError, match="expected H x W x 3 uint8"):
        check_sample(Sample(np.zeros((4, 5), np.uint8), {}, "a.jpg", "a"), "a.jpg")
    with pytest.raises(SampleError, match="expected H x W x 3 uint8"):
        check_sample(Sample(img.astype(np.float32), {}, "a.jpg", "a"), "a.jpg")


def test_masks_from_labels():
    lab = np.array([[0, 1, 1], [255, 4, 0]], np.uint8)
    masks = masks_from_labels(lab, ignore=(0, 255))
    assert sorted(masks) == [1, 4]
    np.testing.assert_array_equal(masks[1], [[False, True, True], [False, False, False]])
    np.testing.assert_array_equal(masks[4], [[False, False, False], [False, True, False]])
    assert sorted(masks_from_labels(lab)) == [1, 4, 255]
