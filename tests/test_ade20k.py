"""ADE20k reader on tiny trees whose class layouts are known by construction."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usam.datasets.ade20k import ADE20k
from usam.errors import SampleError, UsamError

H, W = 12, 16


def labels_for(i: int) -> np.ndarray:
    """Image i: class 3 on the left half, class 7+i in a top-right block, rest unlabelled."""
    lab = np.zeros((H, W), np.uint8)
    lab[:, : W // 2] = 3
    lab[:4, W - 5 :] = 7 + i
    return lab


def make_tree(root: Path, split: str = "validation", n: int = 5) -> Path:
    prefix = "ADE_val" if split == "validation" else "ADE_train"
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stem = f"{prefix}_{i + 1:08d}"
        img = np.full((H, W, 3), 40 * i, np.uint8)
        Image.fromarray(img).save(root / "images" / split / f"{stem}.jpg")
        Image.fromarray(labels_for(i), mode="L").save(root / "annotations" / split / f"{stem}.png")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "ADEChallengeData2016")


def test_reads_classes_as_instances(root: Path) -> None:
    reader = ADE20k(root=root, split="val")
    assert reader.native_split == "validation"
    samples = list(reader)
    assert len(samples) == len(reader) == 5
    for i, s in enumerate(samples):
        stem = f"ADE_val_{i + 1:08d}"
        assert s.name == f"images/validation/{stem}.jpg"
        assert s.group == stem
        assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
        lab = labels_for(i)
        assert sorted(s.masks) == [3, 7 + i]
        for cid, m in s.masks.items():
            assert m.dtype == bool
            np.testing.assert_array_equal(m, lab == cid)
        assert s.masks[3].sum() == H * W // 2 and s.masks[7 + i].sum() == 4 * 5
    assert reader.stats.as_dict()["images"] == 5
    assert reader.stats.instances == 10 and reader.stats.empty == 0
    assert reader.stats.unreadable == []


def test_train_split_and_empty_image(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ADE", split="training", n=2)
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(
        root / "annotations/training/ADE_train_00000002.png"
    )
    reader = ADE20k(root=root, split="train")
    samples = list(reader)
    assert [s.name for s in samples] == [
        "images/training/ADE_train_00000001.jpg",
        "images/training/ADE_train_00000002.jpg",
    ]
    assert samples[1].masks == {}
    assert reader.stats.empty == 1 and reader.stats.instances == 2


def test_no_test_split(root: Path) -> None:
    with pytest.raises(UsamError, match="no split 'test'.*train, val"):
        ADE20k(root=root, split="test")


def test_subsample_every_kth_image_and_shards(root: Path) -> None:
    names = [e.name for e in ADE20k(root=root).entries]
    assert [e.name for e in ADE20k(root=root, sample=2).entries] == names[::2]
    assert [e.name for e in ADE20k(root=root, sample=3).entries] == [names[0], names[3]]
    shards = [[e.name for e in ADE20k(root=root, shard_index=i, shard_count=2)] for i in range(2)]
    assert shards == [names[:2], names[2:]]
    shards = [ADE20k(root=root, sample=2, shard_index=i, shard_count=3).entries for i in range(3)]
    assert [e.name for s in shards for e in s] == names[::2]


def test_missing_root_and_folders(tmp_path: Path, root: Path) -> None:
    with pytest.raises(UsamError, match="does not exist.*images/"):
        ADE20k(root=tmp_path / "nope")
    with pytest.raises(UsamError, match=r"images/training not found.*expected"):
        ADE20k(root=root, split="train")
    (root / "annotations/validation").rename(root / "annotations/val")
    with pytest.raises(UsamError, match=r"annotations/validation not found.*expected"):
        ADE20k(root=root)


def test_no_images_is_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ADE", n=0)
    with pytest.raises(UsamError, match="no .jpg images"):
        len(ADE20k(root=root))


def test_broken_samples_are_skipped_and_counted(root: Path, caplog) -> None:
    ann = root / "annotations/validation"
    (ann / "ADE_val_00000001.png").unlink()  # no annotation
    (root / "images/validation/ADE_val_00000002.jpg").write_bytes(b"not a jpeg")
    (ann / "ADE_val_00000003.png").write_bytes(b"\x89PNG broken")
    Image.fromarray(np.zeros((H + 1, W), np.uint8), mode="L").save(ann / "ADE_val_00000004.png")
    reader = ADE20k(root=root)
    with caplog.at_level(logging.WARNING):
        samples = list(reader)
    assert [s.name for s in samples] == ["images/validation/ADE_val_00000005.jpg"]
    bad = reader.stats.unreadable
    assert [Path(b["file"]).name for b in bad] == [
        "ADE_val_00000001.png",
        "ADE_val_00000002.jpg",
        "ADE_val_00000003.png",
        "ADE_val_00000004.png",
    ]
    assert bad[0]["reason"] == "no annotation"
    assert "unreadable image" in bad[1]["reason"] and "unreadable mask" in bad[2]["reason"]
    assert f"mask is {W}x{H + 1}" in bad[3]["reason"]
    assert reader.stats.images == 1 and reader.stats.as_dict()["unreadable"] == 4
    for b in bad:  # each skip is logged with its file
        assert Path(b["file"]).name in caplog.text

    with pytest.raises(SampleError, match="no annotation"):
        list(ADE20k(root=root, strict=True))


def test_compose_and_instantiate(root: Path, compose_cfg) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg("datasets", ["dataset=ade20k", f"dataset.root={root}"])
    reader = instantiate(cfg.dataset)
    assert isinstance(reader, ADE20k)
    assert (reader.name, reader.split, reader.shard_count) == ("ade20k", "val", 1)
    assert len(reader) == 5


# -- from the mutation run (docs/testing.md) --------------------------------------------------


def test_missing_folders_are_named_with_what_they_hold(tmp_path: Path, root: Path) -> None:
    with pytest.raises(UsamError, match=r"images/training not found \(image folder\); expected"):
        ADE20k(root=root, split="train")
    (root / "annotations/validation").rename(root / "annotations/val")
    with pytest.raises(
        UsamError, match=r"annotations/validation not found \(annotation folder\); expected"
    ):
        ADE20k(root=root)


def test_only_jpeg_files_are_images(root: Path) -> None:
    images = root / "images/validation"
    (images / "index.txt").write_text("not an image")
    (images / "ADE_val_00000009.png").write_bytes(b"")
    (images / "folder.jpg").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(images / "ADE_val_00000006.JPEG", "JPEG")
    names = [e.name for e in ADE20k(root=root).entries]
    assert names == [f"images/validation/ADE_val_{i:08d}.jpg" for i in range(1, 6)] + [
        "images/validation/ADE_val_00000006.JPEG"
    ]


def test_a_label_map_with_channels_is_refused_naming_it(root: Path, monkeypatch) -> None:
    # read_label_png returns 2-D ids for every mode it accepts; the check guards the shape
    # contract in case it ever lets another mode through
    monkeypatch.setattr("usam.datasets.ade20k.read_label_png", lambda p: np.zeros((H, W, 2)))
    reader = ADE20k(root=root, strict=True)
    with pytest.raises(SampleError) as err:
        reader.try_load(reader.entries[1])
    assert err.value.path == str(root / "annotations/validation/ADE_val_00000002.png")
    assert err.value.reason == f"mask has shape ({H}, {W}, 2), expected one channel"
