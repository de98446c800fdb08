"""DAVIS 2017 reader on tiny trees whose masks are known by construction."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image
from video_trees import labels, make_davis, write_jpg, write_png

from usam.datasets.davis import Davis, davis_palette
from usam.errors import SampleError, UsamError


@pytest.fixture
def tree(tmp_path):
    """train: bear (5 frames, ids 1 2), cows (3 frames, ids 1 3 7); val: dog (4 frames, id 1);
    test-dev: goat (4 frames, first annotated)."""
    root = tmp_path / "DAVIS"
    expected = make_davis(
        root,
        {
            "bear": {"frames": 5, "size": (16, 20), "ids": (1, 2)},
            "cows": {"frames": 3, "size": (18, 24), "ids": (1, 3, 7)},
            "dog": {"frames": 4, "size": (16, 20), "ids": (1,)},
            "goat": {"frames": 4, "size": (16, 20), "ids": (1, 2), "annotated": "first"},
        },
        {"train": ["bear", "cows"], "val": ["dog"], "test-dev": ["goat"]},
    )
    return root, expected


def reader(root, **kw):
    kw.setdefault("resolution", "480p")
    return Davis(root=root, **kw)


def test_train_split_entries_and_masks(tree):
    root, expected = tree
    r = reader(root, split="train")
    names = [e.name for e in r.entries]
    assert names == [f"JPEGImages/480p/bear/{f:05d}.jpg" for f in range(5)] + [
        f"JPEGImages/480p/cows/{f:05d}.jpg" for f in range(3)
    ]
    assert [e.group for e in r.entries] == ["bear"] * 5 + ["cows"] * 3
    assert [e.index_in_group for e in r.entries] == [0, 1, 2, 3, 4, 0, 1, 2]
    samples = list(r)
    assert len(samples) == 8
    for s in samples:
        lab = expected[s.name]
        assert s.image.shape == (*lab.shape, 3) and s.image.dtype == np.uint8
        assert sorted(s.masks) == sorted(int(v) for v in np.unique(lab) if v)
        for oid, m in s.masks.items():
            assert m.dtype == bool
            np.testing.assert_array_equal(m, lab == oid)
    assert sorted(samples[5].masks) == [1, 3, 7]  # ids kept as written, not renumbered
    assert r.stats.as_dict()["images"] == 8
    assert r.stats.instances == 5 * 2 + 3 * 3
    assert r.stats.empty == 0 and r.stats.unreadable == []


def test_split_names(tree):
    root, _ = tree
    val = reader(root, split="val")
    assert val.native_split == "val" and {e.group for e in val.entries} == {"dog"} and len(val) == 4
    test = reader(root, split="test")
    assert test.native_split == "test-dev"
    # goat has 4 JPEGs but only the first frame annotated: one entry
    assert [(e.name, e.index_in_group) for e in test.entries] == [
        ("JPEGImages/480p/goat/00000.jpg", 0)
    ]
    with pytest.raises(UsamError, match="no split 'valid'"):
        reader(root, split="valid")


def test_void_255_is_ignored_and_empty_frames_counted(tree):
    root, _ = tree
    lab = labels(16, 20, 0, (1,))
    lab[10:, :5] = 255
    write_png(root / "Annotations/480p/dog/00001.png", lab)
    write_png(root / "Annotations/480p/dog/00002.png", np.zeros((16, 20), np.uint8))
    samples = {s.name: s for s in reader(root, split="val")}
    s1 = samples["JPEGImages/480p/dog/00001.jpg"]
    assert list(s1.masks) == [1]
    np.testing.assert_array_equal(s1.masks[1], lab == 1)
    assert samples["JPEGImages/480p/dog/00002.jpg"].masks == {}
    r = reader(root, split="val")
    list(r)
    assert r.stats.empty == 1 and r.stats.images == 4 and r.stats.instances == 3


def test_subsample_every_kth_frame_of_each_video(tree):
    root, _ = tree
    r = reader(root, split="train", sample=2)
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("bear", 0),
        ("bear", 2),
        ("bear", 4),
        ("cows", 0),
        ("cows", 2),
    ]
    r = reader(root, split="train", sample=3)
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("bear", 0),
        ("bear", 3),
        ("cows", 0),
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 11])
def test_shards_partition_the_split(tree, count):
    root, _ = tree
    full = [e.name for e in reader(root, split="train").entries]
    shards = [
        [e.name for e in reader(root, split="train", shard_index=i, shard_count=count).entries]
        for i in range(count)
    ]
    assert [name for shard in shards for name in shard] == full  # disjoint, complete, in order


def test_resolution_folder(tree):
    root, _ = tree
    with pytest.raises(UsamError, match=r"Full-Resolution not found; found: 480p"):
        Davis(root=root, split="train")  # default resolution is Full-Resolution
    bear = {"frames": 2, "size": (20, 24), "ids": (4,)}
    expected = make_davis(root, {"bear": bear}, {}, res="Full-Resolution")
    r = Davis(root=root, split="train", resolution="Full-Resolution")
    # cows is listed in train.txt but has no Full-Resolution folders: counted, not fatal
    assert [e.name for e in r.entries] == list(expected)
    samples = list(r)
    assert [s.image.shape for s in samples] == [(20, 24, 3)] * 2
    assert len(r.stats.unreadable) == 1 and "cows" in r.stats.unreadable[0]["file"]


@pytest.mark.parametrize(
    "remove, match",
    [
        ("", "does not exist"),
        ("ImageSets", "ImageSets/2017/train.txt not found"),
        ("ImageSets/2017/train.txt", "ImageSets/2017/train.txt not found"),
        ("JPEGImages", "JPEGImages/480p not found"),
        ("Annotations/480p", "Annotations/480p not found"),
    ],
)
def test_not_a_davis_tree_fails_at_once(tree, remove, match):
    import shutil

    root, _ = tree
    if remove:
        target = root / remove
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:
        root = root / "nope"
    with pytest.raises(UsamError, match=match) as err:
        reader(root, split="train")
    assert "expected <root>/JPEGImages/<res>" in str(err.value)
    assert str(root) in str(err.value)


def test_empty_video_list_is_an_error(tree):
    root, _ = tree
    (root / "ImageSets/2017/val.txt").write_text("\n  \n")
    with pytest.raises(UsamError, match="lists no videos"):
        _ = reader(root, split="val").entries


def break_files(root: Path) -> dict[str, str]:
    """Break four train frames in four ways; returns {file: reason fragment}."""
    (root / "JPEGImages/480p/bear/00001.jpg").write_bytes(b"not a jpeg at all")
    png = root / "Annotations/480p/bear/00002.png"
    png.write_bytes(png.read_bytes()[:30])  # truncated
    write_png(root / "Annotations/480p/bear/00003.png", labels(15, 20, 3, (1, 2)))  # one row short
    (root / "JPEGImages/480p/cows/00001.jpg").unlink()
    return {
        str(root / "JPEGImages/480p/bear/00001.jpg"): "unreadable image",
        str(png): "unreadable mask",
        str(root / "Annotations/480p/bear/00003.png"): "mask is 20x15, image 00003.jpg is 20x16",
        str(root / "JPEGImages/480p/cows/00001.jpg"): "no image",
    }


def test_broken_files_are_skipped_counted_and_named(tree, caplog):
    root, _ = tree
    broken = break_files(root)
    r = reader(root, split="train")
    with caplog.at_level(logging.WARNING):
        names = [s.name for s in r]
    assert len(names) == 8 - 4
    assert r.stats.images == 4 and r.stats.as_dict()["unreadable"] == 4
    got = {u["file"]: u["reason"] for u in r.stats.unreadable}
    assert set(got) == set(broken)
    for f, why in broken.items():
        assert why in got[f]
        assert f in caplog.text


@pytest.mark.parametrize("which", range(4))
def test_strict_raises_sample_error_naming_the_file(tree, which):
    root, _ = tree
    broken = list(break_files(root).items())
    path, why = broken[which]
    r = reader(root, split="train", strict=True)
    entry = next(
        e
        for e in r.entries
        if Path(path).stem == Path(e.name).stem and Path(path).parent.name == e.group
    )
    with pytest.raises(SampleError, match=why) as err:
        r.try_load(entry)
    assert err.value.path == path


def test_strict_iteration_stops_at_first_broken(tree):
    root, _ = tree
    break_files(root)
    r = reader(root, split="train", strict=True)
    with pytest.raises(SampleError, match="bear/00001.jpg"):
        list(r)


def test_missing_video_folder(tree, caplog):
    root, _ = tree
    (root / "ImageSets/2017/val.txt").write_text("ghost\ndog\n")
    r = reader(root, split="val")
    with caplog.at_level(logging.WARNING):
        assert len(r) == 4
    assert r.stats.unreadable[0]["file"] == str(root / "JPEGImages/480p/ghost")
    assert "ghost" in caplog.text
    with pytest.raises(SampleError, match="ghost"):
        _ = reader(root, split="val", strict=True).entries


def test_palette_is_davis():
    pal = davis_palette()
    assert len(pal) == 768
    # DAVIS colours: background, dark red, dark green, olive, navy, ...; void 255 is (224, 224, 192)
    assert pal[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert pal[255 * 3 :] == [224, 224, 192]


def test_ids_come_from_palette_indices_not_colours(tree):
    # the tree's PNGs use a non-DAVIS palette: ids must still be the raw index values
    root, expected = tree
    path = root / "Annotations/480p/dog/00000.png"
    with Image.open(path) as im:
        assert im.mode == "P"
    s = next(iter(reader(root, split="val")))
    np.testing.assert_array_equal(s.masks[1], expected[s.name] == 1)


def test_instantiate_from_config(tree, compose_cfg):
    root, expected = tree
    cfg = compose_cfg(
        "datasets",
        [
            "dataset=davis",
            f"dataset.root={root}",
            "dataset.split=train",
            "dataset.resolution=480p",
            "dataset.sample=2",
            "shard.count=2",
            "shard.index=1",
        ],
    )
    r = instantiate(cfg.dataset)
    assert isinstance(r, Davis) and r.name == "davis" and r.root == root
    # 5 subsampled entries (bear 0 2 4, cows 0 2), second half
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("bear", 4),
        ("cows", 0),
        ("cows", 2),
    ]
    for s in r:
        for oid, m in s.masks.items():
            np.testing.assert_array_equal(m, expected[s.name] == oid)


# -- from the mutation run (docs/testing.md) --------------------------------------------------


def add_video(root: Path, video: str, stems: list[str], split: str = "val") -> None:
    """Frames named by `stems` (each annotated with object 1 in its own place), listed in
    the split after the videos already there."""
    for k, stem in enumerate(stems):
        write_jpg(root / "JPEGImages/480p" / video / f"{stem}.jpg", 16, 20, seed=k)
        write_png(root / "Annotations/480p" / video / f"{stem}.png", labels(16, 20, k, (1,)))
    with (root / "ImageSets/2017" / f"{split}.txt").open("a") as f:
        f.write(f"{video}\n")


def test_frames_are_ordered_by_number_and_unnumbered_ones_by_position(tree):
    root, _ = tree
    # unpadded numbers with a gap: the name order (10, 8, 9) is not the frame order
    add_video(root, "ants", ["8", "10", "9"])
    add_video(root, "bees", ["c", "a", "b"])  # no numbers: position among the sorted names
    # a stray file beside the masks is not a frame
    (root / "Annotations/480p/ants/notes.txt").write_text("not a mask")
    r = reader(root, split="val")
    got = [(e.name, e.index_in_group) for e in r.entries if e.group != "dog"]
    assert got == [
        ("JPEGImages/480p/ants/8.jpg", 8),
        ("JPEGImages/480p/ants/9.jpg", 9),
        ("JPEGImages/480p/ants/10.jpg", 10),
        ("JPEGImages/480p/bees/a.jpg", 0),
        ("JPEGImages/480p/bees/b.jpg", 1),
        ("JPEGImages/480p/bees/c.jpg", 2),
    ]
    samples = [s for s in r if s.group != "dog"]
    assert [s.group for s in samples] == ["ants"] * 3 + ["bees"] * 3


def test_samples_carry_their_video_as_group(tree):
    root, _ = tree
    assert [s.group for s in reader(root, split="train")] == ["bear"] * 5 + ["cows"] * 3


def test_unusable_listed_videos_are_counted_with_file_and_reason(tree, caplog):
    root, _ = tree
    (root / "Annotations/480p/empty").mkdir()
    (root / "JPEGImages/480p/empty").mkdir()
    (root / "ImageSets/2017/val.txt").write_text("ghost\n../dog\nempty\ndog\n")
    r = reader(root, split="val")
    with caplog.at_level(logging.WARNING):
        assert len(r) == 4
    list_file = str(root / "ImageSets/2017/val.txt")
    want = [
        (str(root / "JPEGImages/480p/ghost"), "video 'ghost' is listed but its folder is missing"),
        (list_file, "video '../dog' leaves the dataset root (has '..' segments); skipped"),
        (str(root / "Annotations/480p/empty"), "video 'empty' has no annotated frame (.png)"),
    ]
    assert r.stats.unreadable == [{"file": f, "reason": why} for f, why in want]
    logged = [rec.getMessage() for rec in caplog.records]
    assert logged == [f"skipping video {f}: {why}" for f, why in want]
    for video, (path, why) in zip(["ghost", "../dog", "empty"], want, strict=True):
        (root / "ImageSets/2017/val.txt").write_text(f"{video}\ndog\n")
        with pytest.raises(SampleError) as err:
            _ = reader(root, split="val", strict=True).entries
        assert (err.value.path, err.value.reason) == (path, why)


def test_a_mask_with_channels_is_refused_naming_it(tree, monkeypatch):
    # read_label_png returns 2-D ids for every mode it accepts; the check guards the shape
    # contract in case it ever lets another mode through
    root, _ = tree
    monkeypatch.setattr("usam.datasets.davis.read_label_png", lambda p: np.zeros((16, 20, 2)))
    r = reader(root, split="val", strict=True)
    with pytest.raises(SampleError) as err:
        r.try_load(r.entries[0])
    assert err.value.path == str(root / "Annotations/480p/dog/00000.png")
    assert err.value.reason == "mask has shape (16, 20, 2), expected one channel of ids"


def test_resolution_errors_list_what_is_there(tree):
    root, _ = tree
    (root / "JPEGImages/1080p").mkdir()
    with pytest.raises(UsamError, match=r"Full-Resolution not found; found: 1080p, 480p \(set"):
        Davis(root=root, split="train")
    shutil.rmtree(root / "JPEGImages")
    with pytest.raises(UsamError) as err:
        reader(root, split="train")
    assert str(err.value).startswith(f"{root / 'JPEGImages/480p'} not found; expected <root>/")
    (root / "ImageSets/2017/train.txt").unlink()
    with pytest.raises(UsamError, match=r"train\.txt not found \(video list of the split\)"):
        reader(root, split="train")


def test_an_undecodable_video_list_is_named(tree):
    root, _ = tree
    (root / "ImageSets/2017/val.txt").write_bytes(b"dog\n\xff\xfe\n")
    with pytest.raises(UsamError, match=r"^cannot read the video list .*val\.txt \("):
        _ = reader(root, split="val").entries


def test_palette_bits_are_spread_over_red_green_and_blue():
    # colour i reverses the bits of i into r (bits 0, 3, 6), g (1, 4, 7), b (2, 5): id 32
    # has only bit 5 set, the second blue bit -> b = 64; id 20 = bits 2 and 4 -> (0, 64, 128)
    pal = davis_palette()
    assert pal[32 * 3 : 33 * 3] == [0, 0, 64]
    assert pal[20 * 3 : 21 * 3] == [0, 64, 128]
