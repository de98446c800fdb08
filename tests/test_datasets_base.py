"""DatasetReader behaviour shared by every reader, on in-memory toy readers."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from usam.datasets.base import (
    DatasetReader,
    Entry,
    Sample,
    check_sample,
    masks_from_labels,
    read_label_png,
    read_rgb,
)
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


# -- from the mutation run (docs/testing.md) --------------------------------------------------


def test_refusals_name_the_option_and_the_value(root):
    with pytest.raises(UsamError) as err:
        Videos(root=root, split="test", name="toy")
    assert str(err.value) == (
        "dataset 'toy' has no split 'test'; it has: train, val (usam names splits train/val/test)"
    )

    class NoSplits(Videos):
        splits: ClassVar[dict[str, str]] = {}

    with pytest.raises(UsamError, match="has no split 'val'; it has: none "):
        NoSplits(root=root)
    with pytest.raises(UsamError, match=r"^dataset\.sample must be >= 1, got 0$"):
        Videos(root=root, sample=0)
    with pytest.raises(UsamError, match=r"^need 0 <= shard\.index < shard\.count, got 2 / 2$"):
        Videos(root=root, shard_index=2, shard_count=2)
    for bad in ("many", None, 0):
        with pytest.raises(UsamError) as err:
            Videos(root=root, max_instances=bad)
        assert str(err.value) == f"dataset.max_instances must be an integer >= 1, got {bad!r}"


def test_start_and_end_slice_the_subsampled_list_before_sharding(root):
    # every 5th image: 000 005 010 015 020; start=1, end=4 keeps 005 010 015
    names = [e.name for e in Stills(root=root, sample=5, start=1, end=4).entries]
    assert names == ["img005.jpg", "img010.jpg", "img015.jpg"]
    shards = [
        [e.name for e in Stills(root=root, sample=5, start=1, end=4, shard_index=i, shard_count=2)]
        for i in range(2)
    ]
    assert shards == [["img005.jpg"], ["img010.jpg", "img015.jpg"]]
    assert len(Stills(root=root, start=20)) == 3  # end=None: to the end


def test_instance_cap_keeps_a_count_equal_to_it_and_skips_more(root, caplog):
    # frame f has f % 3 instances: with a cap of 1, the frames with 2 are skipped
    r = Videos(root=root, max_instances=1)
    with caplog.at_level(logging.WARNING):
        names = [s.name for s in r]
    assert names == ["v0/0", "v0/1", "v0/3", "v0/4", "v0/6", "v1/0", "v1/1"] + [
        f"v2/{f}" for f in (0, 1, 3, 4, 6, 7, 9)
    ]
    why = (
        "2 instances, more than dataset.max_instances=1 "
        "(not a label map of objects? raise the cap if it is)"
    )
    assert r.stats.unreadable[0] == {"file": "v0/2", "reason": why}
    assert len(r.stats.unreadable) == 6 and f"skipping v0/2: {why}" in caplog.messages
    assert len(list(Videos(root=root, max_instances=2))) == 20


def test_skip_indexed_counts_once_over_the_shards_or_raises_when_strict(root, caplog):
    first, second = (Videos(root=root, shard_index=i, shard_count=2) for i in range(2))
    with caplog.at_level(logging.WARNING):
        first.skip_indexed("/data/a.json", "annotation 7 has no image")
        second.skip_indexed("/data/a.json", "annotation 7 has no image")
    assert first.stats.unreadable == [
        {"file": "/data/a.json", "reason": "annotation 7 has no image"}
    ]
    assert second.stats.unreadable == []
    assert caplog.messages == ["skipping /data/a.json: annotation 7 has no image"] * 2
    strict = Videos(root=root, strict=True)
    with pytest.raises(SampleError) as err:
        strict.skip_indexed("/data/a.json", "annotation 7 has no image")
    assert (err.value.path, err.value.reason) == ("/data/a.json", "annotation 7 has no image")


def test_name_problem_require_and_content_settings(root):
    r = Videos(root=root)
    assert r.name_problem("v0/3.jpg") is None
    assert (
        r.name_problem("v0/../../x") == "'v0/../../x' leaves the dataset root (has '..' segments)"
    )
    assert r.require(root, "the root") == root
    with pytest.raises(UsamError) as err:
        r.require(root / "lists", "video lists")
    assert str(err.value) == f"{root / 'lists'} not found (video lists); expected <toy>"
    assert r.content_settings() == {}


def test_stats_report_dropped_parts_by_reason(root):
    r = Videos(root=root)
    r.stats.dropped["polygon under 6 numbers"] += 2
    r.stats.dropped["crowd"] += 1
    assert r.stats.as_dict()["dropped"] == {"polygon under 6 numbers": 2, "crowd": 1}


def test_read_rgb_gives_three_channels_or_names_the_file(tmp_path, monkeypatch):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    rgb = read_rgb(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 2], grey)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(SampleError) as err:
        read_rgb(tmp_path / "bad.jpg")
    assert err.value.path == str(tmp_path / "bad.jpg")
    assert err.value.reason.startswith("unreadable image (")
    # over twice PIL's pixel limit is an error, not a warning: 12 px > 2 * 5
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5)
    with pytest.raises(SampleError) as err:
        read_rgb(tmp_path / "g.png")
    assert err.value.reason.startswith("image too large: ")
    assert err.value.reason.endswith(
        " (PIL's decompression-bomb guard: Image.MAX_IMAGE_PIXELS=5; "
        "raise it in your own code if the file is genuine)"
    )


@pytest.mark.parametrize("mode", ["P", "L", "1"])
def test_read_label_png_returns_the_raw_ids(tmp_path, mode):
    ids = np.array([[0, 3, 3], [7, 0, 1]], np.uint8)
    if mode == "1":
        ids = ids > 2
    Image.fromarray(ids, mode="L" if mode != "1" else None).convert(mode).save(tmp_path / "m.png")
    got = read_label_png(tmp_path / "m.png")
    assert got.shape == (2, 3) and np.array_equal(got.astype(np.uint8), ids.astype(np.uint8))


def test_read_label_png_refuses_colour_and_broken_masks(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(SampleError) as err:
        read_label_png(tmp_path / "rgb.png")
    assert (err.value.path, err.value.reason) == (
        str(tmp_path / "rgb.png"),
        "mask is a RGB image; expected a palette (P) or 8-bit single-channel (L) PNG "
        "whose pixel values are ids",
    )
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(SampleError, match=r"cut\.png: unreadable mask \("):
        read_label_png(tmp_path / "cut.png")
    Image.fromarray(np.zeros((3, 4), np.uint8), mode="L").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5)
    with pytest.raises(SampleError, match=r"big\.png: mask too large: .*MAX_IMAGE_PIXELS=5;"):
        read_label_png(tmp_path / "big.png")


def test_shape_errors_name_the_entry_and_bool_masks_are_not_copied(root):
    class Skewed(Videos):
        def load(self, entry):
            sample = super().load(entry)
            if entry.name == "v1/2":
                sample.masks[2] = np.zeros((5, 4), bool)  # transposed
            return sample

    r = Skewed(root=root, strict=True)
    entry = next(e for e in r.entries if e.name == "v1/2")
    with pytest.raises(SampleError) as err:
        r.try_load(entry)
    assert (err.value.path, err.value.reason) == ("v1/2", "mask of instance 2 is 4x5, image is 5x4")
    with pytest.raises(SampleError) as err:
        check_sample(Sample(np.zeros((4, 5), np.uint8), {}, "b.jpg", "b"), "b.jpg")
    assert err.value.path == "b.jpg"
    # masks that are bool already are kept as they are (no copy of every mask per image)
    mask = np.eye(4, 5, dtype=bool)
    sample = Sample(np.zeros((4, 5, 3), np.uint8), {7: mask}, "c.jpg", "c")
    check_sample(sample, "c.jpg")
    assert sample.masks[7] is mask


def test_the_default_instance_cap_is_1000(root):
    r = Videos(root=root)
    r.check_count(1000, "a.png")
    with pytest.raises(SampleError, match="1001 instances, more than dataset.max_instances=1000"):
        r.check_count(1001, "a.png")


def test_too_large_files_keep_pils_reason_and_their_path(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((3, 4), np.uint8), mode="L").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5)
    for read, what in ((read_rgb, "image"), (read_label_png, "mask")):
        with pytest.raises(SampleError) as err:
            read(tmp_path / "big.png")
        assert err.value.path == str(tmp_path / "big.png")
        assert err.value.reason.startswith(f"{what} too large: Image size (12 pixels) exceeds")
