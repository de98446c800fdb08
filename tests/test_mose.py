"""MOSE reader on tiny trees whose masks are known by construction."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from hydra.utils import instantiate
from video_trees import labels, make_mose, write_png

from usam.datasets.mose import Mose
from usam.errors import SampleError, UsamError


@pytest.fixture
def tree(tmp_path):
    """train: b-vid (4 frames, ids 1 2 5), a-vid (2 frames, id 1);
    valid: c, d (first frame annotated only)."""
    root = tmp_path / "MOSE"
    train = make_mose(
        root,
        "train",
        {
            "b-vid": {"frames": 4, "size": (16, 20), "ids": (1, 2, 5)},
            "a-vid": {"frames": 2, "size": (12, 14), "ids": (1,)},
        },
    )
    valid = make_mose(
        root,
        "valid",
        {
            "c": {"frames": 5, "size": (16, 20), "ids": (1, 2), "annotated": "first"},
            "d": {"frames": 3, "size": (10, 12), "ids": (3,), "annotated": "first"},
        },
    )
    return root, {**train, **valid}


def check_masks(samples, expected):
    for s in samples:
        lab = expected[s.name]
        assert s.image.shape == (*lab.shape, 3)
        assert sorted(s.masks) == sorted(int(v) for v in np.unique(lab) if v)
        for oid, m in s.masks.items():
            np.testing.assert_array_equal(m, lab == oid)


def test_train_every_frame_in_meta_order(tree):
    root, expected = tree
    r = Mose(root=root, split="train")
    assert r.native_split == "train"
    # videos sorted by name, frames in order
    assert [e.name for e in r.entries] == [
        "train/JPEGImages/a-vid/00000.jpg",
        "train/JPEGImages/a-vid/00001.jpg",
        *(f"train/JPEGImages/b-vid/{f:05d}.jpg" for f in range(4)),
    ]
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("a-vid", 0),
        ("a-vid", 1),
        ("b-vid", 0),
        ("b-vid", 1),
        ("b-vid", 2),
        ("b-vid", 3),
    ]
    samples = list(r)
    check_masks(samples, expected)
    assert r.stats.images == 6 and r.stats.instances == 2 * 1 + 4 * 3 and r.stats.unreadable == []


def test_val_is_valid_first_frames_only(tree):
    root, expected = tree
    r = Mose(root=root, split="val")
    assert r.native_split == "valid"
    assert [e.name for e in r.entries] == [
        "valid/JPEGImages/c/00000.jpg",
        "valid/JPEGImages/d/00000.jpg",
    ]
    samples = list(r)
    check_masks(samples, expected)
    assert [sorted(s.masks) for s in samples] == [[1, 2], [3]]


def test_no_test_split(tree):
    root, _ = tree
    with pytest.raises(UsamError, match="no split 'test'; it has: train, val"):
        Mose(root=root, split="test")


def test_subsample_and_shards(tree):
    root, _ = tree
    r = Mose(root=root, split="train", sample=2)
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("a-vid", 0),
        ("b-vid", 0),
        ("b-vid", 2),
    ]
    for count in (1, 2, 4, 7):
        shards = [
            [
                e.name
                for e in Mose(root=root, split="train", shard_index=i, shard_count=count).entries
            ]
            for i in range(count)
        ]
        assert [name for shard in shards for name in shard] == [
            e.name for e in Mose(root=root, split="train").entries
        ]


def test_video_in_meta_but_not_on_disk(tree, caplog):
    root, _ = tree
    meta = json.loads((root / "meta_valid.json").read_text())
    meta["videos"]["zzz"] = {"length": 3}
    (root / "meta_valid.json").write_text(json.dumps(meta))
    r = Mose(root=root, split="val")
    with caplog.at_level(logging.WARNING):
        assert [e.group for e in r.entries] == ["c", "d"]
    assert r.stats.unreadable == [
        {
            "file": str(root / "valid/JPEGImages/zzz"),
            "reason": "video 'zzz' is listed but its folder is missing",
        }
    ]
    assert "zzz" in caplog.text
    assert len(list(r)) == 2 and r.stats.images == 2
    with pytest.raises(SampleError, match="zzz"):
        _ = Mose(root=root, split="val", strict=True).entries


def test_missing_annotation_folder_of_one_video(tree):
    root, _ = tree
    shutil.rmtree(root / "train/Annotations/a-vid")
    r = Mose(root=root, split="train")
    assert {e.group for e in r.entries} == {"b-vid"}
    assert r.stats.unreadable[0]["file"] == str(root / "train/Annotations/a-vid")


@pytest.mark.parametrize(
    "remove, split, match",
    [
        ("train", "train", r"MOSE/train not found \(split folder\)"),
        ("meta_valid.json", "val", r"meta_valid.json not found"),
        ("valid/Annotations", "val", r"valid/Annotations not found"),
        ("train/JPEGImages", "train", r"train/JPEGImages not found"),
    ],
)
def test_not_a_mose_tree_fails_at_once(tree, remove, split, match):
    root, _ = tree
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UsamError, match=match) as err:
        Mose(root=root, split=split)
    assert "expected <root>/meta_{train,valid}.json" in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(UsamError, match=f"{tmp_path / 'MOSE'} does not exist"):
        Mose(root=tmp_path / "MOSE", split="train")


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "is not valid JSON"),
        ('{"vids": {}}', 'has no "videos" object'),
        ('{"videos": {}}', "lists no videos"),
    ],
)
def test_bad_meta_file(tree, text, match):
    root, _ = tree
    (root / "meta_train.json").write_text(text)
    with pytest.raises(UsamError, match=match) as err:
        _ = Mose(root=root, split="train").entries
    assert "meta_train.json" in str(err.value)


def test_broken_frames_skipped_or_strict(tree):
    root, _ = tree
    (root / "train/JPEGImages/b-vid/00002.jpg").write_bytes(b"\xff\xd8garbage")
    bad_mask = root / "train/Annotations/b-vid/00003.png"
    write_png(bad_mask, labels(16, 21, 3, (1,)))  # one column too wide
    r = Mose(root=root, split="train")
    assert len(list(r)) == 4
    assert [u["file"] for u in r.stats.unreadable] == [
        str(root / "train/JPEGImages/b-vid/00002.jpg"),
        str(bad_mask),
    ]
    assert "mask is 21x16, image 00003.jpg is 20x16" in r.stats.unreadable[1]["reason"]
    with pytest.raises(SampleError, match="b-vid/00002.jpg"):
        list(Mose(root=root, split="train", strict=True))


def test_instantiate_from_config(tree, compose_cfg):
    root, expected = tree
    cfg = compose_cfg("datasets", ["dataset=mose", f"dataset.root={root}", "dataset.split=val"])
    r = instantiate(cfg.dataset)
    assert isinstance(r, Mose) and r.name == "mose" and r.split == "val"
    check_masks(list(r), expected)
    assert r.stats.images == 2


# -- from the mutation run (issue 16) --
LAYOUT = (
    "<root>/meta_{train,valid}.json, <root>/{train,valid}/JPEGImages/<video>/%05d.jpg and "
    "<root>/{train,valid}/Annotations/<video>/%05d.png"
)


@pytest.mark.parametrize(
    "remove, split, what",
    [
        ("meta_valid.json", "val", "video list"),
        ("train/JPEGImages", "train", "frame folder"),
        ("valid/Annotations", "val", "annotation folder"),
    ],
)
def test_a_missing_part_is_named_in_the_exact_message(tree, remove, split, what):
    """The user reads which part is missing: the path, its role and the expected layout."""
    root, _ = tree
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UsamError) as err:
        Mose(root=root, split=split)
    assert str(err.value) == f"{target} not found ({what}); expected {LAYOUT}"


@pytest.mark.parametrize("text", ['{"vids": {}}', '["a-vid", "b-vid"]', '"a-vid"'])
def test_meta_without_a_videos_object_exact_message(tree, text):
    """A JSON list or string is refused with the same message as a dict lacking "videos"."""
    root, _ = tree
    (root / "meta_train.json").write_text(text)
    with pytest.raises(UsamError) as err:
        _ = Mose(root=root, split="train").entries
    assert str(err.value) == (
        f'{root / "meta_train.json"} has no "videos" object; '
        'expected {"videos": {name: {"length": N, ...}}}'
    )


def test_a_listed_name_leaving_the_root_is_blamed_on_the_meta_file(tree, caplog):
    """The skip names the meta file the bad name came from (skipped, or the strict error)."""
    root, _ = tree
    meta_file = root / "meta_valid.json"
    meta = json.loads(meta_file.read_text())
    meta["videos"]["../c"] = {"length": 5}
    meta_file.write_text(json.dumps(meta))
    why = "video '../c' leaves the dataset root (has '..' segments); skipped"
    r = Mose(root=root, split="val")
    with caplog.at_level(logging.WARNING):
        assert [e.group for e in r.entries] == ["c", "d"]
    assert r.stats.unreadable == [{"file": str(meta_file), "reason": why}]
    assert [rec.getMessage() for rec in caplog.records] == [f"skipping video {meta_file}: {why}"]
    with pytest.raises(SampleError) as err:
        _ = Mose(root=root, split="val", strict=True).entries
    assert (err.value.path, err.value.reason) == (str(meta_file), why)
