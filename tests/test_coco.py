"""COCO 2017 reader on a tiny tree whose masks are known by construction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from usam.datasets.coco import Coco, rle_counts
from usam.errors import SampleError, UsamError

H, W = 20, 30


def rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """An axis-aligned polygon; pycocotools fills exactly rows y0..y1-1, columns x0..x1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def blob() -> np.ndarray:
    """A non-rectangular shape for the compressed RLE."""
    yy, xx = np.mgrid[:H, :W]
    return (yy - 10) ** 2 + (xx - 20) ** 2 <= 16


def compressed(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode()}


# uncompressed RLE by hand: column-major runs, 25 off, 5 on, rest off = column 1, rows 5..9
UNCOMPRESSED = {"size": [H, W], "counts": [25, 5, H * W - 30]}
UNCOMPRESSED_MASK = np.zeros((H, W), bool)
UNCOMPRESSED_MASK[5:10, 1] = True

# image id -> file name; names sort in this order, ids deliberately do not
IMAGES = {42: "a.jpg", 7: "b.jpg", 13: "c.jpg", 5: "d.jpg", 99: "e.jpg"}


def ann(aid: int, image_id: int, seg, area: float = 50.0, iscrowd: int = 0) -> dict:
    return {
        "id": aid,
        "image_id": image_id,
        "segmentation": seg,
        "area": area,
        "iscrowd": iscrowd,
        "bbox": [0, 0, 1, 1],
        "category_id": 1,
    }


ANNS = [
    ann(101, 42, [rect(2, 3, 10, 8)]),  # polygon
    ann(102, 42, [rect(0, 0, 3, 2), rect(20, 15, 25, 20)]),  # two polygons, one object
    ann(103, 42, UNCOMPRESSED),  # uncompressed RLE
    ann(104, 42, compressed(blob())),  # compressed RLE
    ann(105, 42, compressed(box(0, 0, W, H)), area=H * W, iscrowd=1),  # crowd: skipped
    ann(106, 42, [rect(12, 12, 14, 14)], area=4),  # area < 10: skipped
    ann(201, 13, compressed(box(5, 5, 9, 9)), area=16, iscrowd=1),  # image 13: only crowd
    ann(301, 5, [rect(10, 10, 12, 12)], area=4),  # image 5: only tiny
    ann(302, 5, [[1, 1, 5, 5]]),  # a 2-point "polygon": no mask, not a box
    ann(401, 99, [rect(0, 0, W, H)], area=H * W),
    ann(501, 12345, [rect(0, 0, 4, 4)]),  # refers to no image: ignored
]
EXPECTED = {
    "a.jpg": {
        101: box(2, 3, 10, 8),
        102: box(0, 0, 3, 2) | box(20, 15, 25, 20),
        103: UNCOMPRESSED_MASK,
        104: blob(),
    },
    "b.jpg": {},
    "c.jpg": {},
    "d.jpg": {},
    "e.jpg": {401: box(0, 0, W, H)},
}


def make_tree(root: Path, split: str = "val2017", anns: list[dict] = ANNS) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images = []
    for i, (iid, fname) in enumerate(IMAGES.items()):
        Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(root / split / fname)
        images.append({"id": iid, "file_name": fname, "height": H, "width": W})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "COCO")


def test_rle_counts_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((H, W)) < rng.random()
        counts = rle_counts(compressed(m)["counts"])
        flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
        np.testing.assert_array_equal(flat.reshape(W, H).T, m)


def test_reads_polygons_and_both_rles(root: Path) -> None:
    reader = Coco(root=root, split="val")
    samples = list(reader)
    assert [s.name for s in samples] == [f"val2017/{f}" for f in sorted(EXPECTED)]
    assert [s.group for s in samples] == ["42", "7", "13", "5", "99"]
    for s in samples:
        want = EXPECTED[s.name.split("/")[1]]
        assert sorted(s.masks) == sorted(want), s.name
        for aid, m in s.masks.items():
            assert m.dtype == bool and m.shape == (H, W)
            np.testing.assert_array_equal(m, want[aid], err_msg=f"{s.name} annotation {aid}")
        assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    st = reader.stats.as_dict()
    assert (st["images"], st["instances"], st["images_without_instances"]) == (5, 5, 3)
    assert st["unreadable"] == 0


def test_min_area_option(root: Path) -> None:
    by_name = {s.name: s for s in Coco(root=root, min_area=0)}
    assert sorted(by_name["val2017/a.jpg"].masks) == [101, 102, 103, 104, 106]
    np.testing.assert_array_equal(by_name["val2017/a.jpg"].masks[106], box(12, 12, 14, 14))
    assert sorted(by_name["val2017/d.jpg"].masks) == [301]  # 302 is still degenerate
    by_name = {s.name: s for s in Coco(root=root, min_area=100)}
    assert sorted(by_name["val2017/a.jpg"].masks) == []
    assert sorted(by_name["val2017/e.jpg"].masks) == [401]
    with pytest.raises(UsamError, match="min_area"):
        Coco(root=root, min_area="big")


def test_train_split(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "COCO", split="train2017")
    reader = Coco(root=root, split="train")
    assert reader.native_split == "train2017"
    assert [e.name for e in reader.entries][:2] == ["train2017/a.jpg", "train2017/b.jpg"]
    with pytest.raises(UsamError, match="val2017"):  # the val split is absent from this tree
        Coco(root=root, split="val")


def test_no_test_split(root: Path) -> None:
    with pytest.raises(UsamError, match="no split 'test'.*train, val"):
        Coco(root=root, split="test")


def test_subsample_and_shards(root: Path) -> None:
    names = [e.name for e in Coco(root=root).entries]
    assert names == [f"val2017/{f}" for f in "abcde" for f in [f + ".jpg"]]
    assert [e.name for e in Coco(root=root, sample=2).entries] == names[::2]
    shards = [[e.name for e in Coco(root=root, shard_index=i, shard_count=3)] for i in range(3)]
    assert shards == [names[:1], names[1:3], names[3:]]
    # a shard keeps the annotations of its own images only
    (s,) = list(Coco(root=root, sample=4, shard_index=1, shard_count=2))
    assert s.name == "val2017/e.jpg" and sorted(s.masks) == [401]


def test_missing_paths(tmp_path: Path, root: Path) -> None:
    with pytest.raises(UsamError, match=r"does not exist.*instances_\{train,val\}2017\.json"):
        Coco(root=tmp_path / "nope")
    (root / "val2017").rename(root / "val")
    with pytest.raises(UsamError, match=r"COCO/val2017 not found \(image folder\); expected"):
        Coco(root=root)
    (root / "annotations/instances_val2017.json").unlink()
    with pytest.raises(UsamError, match=r"instances_val2017\.json not found \(annotation file\)"):
        Coco(root=root)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"images": [', "is not valid JSON"),
        ('{"annotations": []}', "not a COCO instances file"),
        ('{"images": [{"id": 1}], "annotations": []}', "not a COCO instances file"),
        ('{"images": [], "annotations": [3]}', "not a COCO instances file"),
        ("[1, 2]", "not a COCO instances file"),
    ],
)
def test_broken_json_fails_at_once(root: Path, text: str, match: str) -> None:
    ann_file = root / "annotations/instances_val2017.json"
    ann_file.write_text(text)
    reader = Coco(root=root)
    with pytest.raises(UsamError, match=match) as err:
        len(reader)
    assert str(ann_file) in str(err.value)


def test_broken_samples_are_skipped_and_counted(root: Path, caplog) -> None:
    img = root / "val2017"
    (img / "a.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((H, W + 2, 3), np.uint8)).save(img / "b.jpg")  # JSON says W x H
    (img / "c.jpg").unlink()
    reader = Coco(root=root)
    with caplog.at_level(logging.WARNING):
        samples = list(reader)
    assert [s.name for s in samples] == ["val2017/d.jpg", "val2017/e.jpg"]
    bad = reader.stats.unreadable
    assert [b["file"] for b in bad] == [str(img / f) for f in ("a.jpg", "b.jpg", "c.jpg")]
    assert "unreadable image" in bad[0]["reason"]
    assert bad[1]["reason"] == f"image is {W + 2}x{H} but instances_val2017.json says {W}x{H}"
    assert reader.stats.images == 2 and reader.stats.as_dict()["unreadable"] == 3
    assert "b.jpg" in caplog.text and "skipping" in caplog.text

    with pytest.raises(SampleError, match="a.jpg"):
        list(Coco(root=root, strict=True))


@pytest.mark.parametrize(
    "seg, match",
    [
        ({"size": [H, W], "counts": [3, 2]}, "cover 5 pixels"),  # too short: would read garbage
        ({"size": [H, W], "counts": "0"}, "cover"),
        ({"size": [H, W], "counts": [H * W, 5]}, "cover"),
        ({"size": [H + 1, W], "counts": [(H + 1) * W]}, "differs from image size"),
        ({"size": [H, W]}, "neither"),
        ("oops", "neither"),
        ([["a", "b", "c", "d", "e", "f"]], "bad segmentation"),
    ],
)
def test_bad_segmentation_skips_its_image(tmp_path: Path, seg, match: str) -> None:
    anns = [ann(1, 42, seg), ann(2, 7, [rect(0, 0, 4, 4)])]
    root = make_tree(tmp_path / "COCO", anns=anns)
    reader = Coco(root=root)
    samples = list(reader)
    assert [s.name for s in samples] == [f"val2017/{f}" for f in "bcde" for f in [f + ".jpg"]]
    (bad,) = reader.stats.unreadable
    assert bad["file"] == str(root / "annotations/instances_val2017.json")
    assert "annotation 1" in bad["reason"] and match in bad["reason"]


def test_compose_and_instantiate(root: Path, compose_cfg) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg("datasets", ["dataset=coco", f"dataset.root={root}"])
    reader = instantiate(cfg.dataset)
    assert isinstance(reader, Coco)
    assert (reader.name, reader.split, reader.min_area) == ("coco", "val", 10)
    assert len(reader) == 5


def test_min_area_boundary_keeps_area_equal_to_it(tmp_path: Path) -> None:
    """SPEC: skip annotations with area < 10; exactly 10 is kept, 9.99 is not (the `area`
    field decides, not the decoded pixel count)."""
    anns = [
        ann(11, 42, [rect(0, 0, 2, 5)], area=10.0),  # on the boundary: kept
        ann(12, 42, [rect(4, 0, 6, 5)], area=9.99),  # just below: dropped
        ann(13, 42, [rect(8, 0, 9, 5)], area=10.5),  # just above: kept
        ann(14, 7, [rect(0, 0, 3, 3)], area=9.0),  # b.jpg: dropped
    ]
    root = make_tree(tmp_path / "COCO", anns=anns)
    by_name = {s.name: s for s in Coco(root=root)}
    assert sorted(by_name["val2017/a.jpg"].masks) == [11, 13]
    np.testing.assert_array_equal(by_name["val2017/a.jpg"].masks[11], box(0, 0, 2, 5))
    assert by_name["val2017/b.jpg"].masks == {}
    # a user threshold on the boundary behaves the same way
    by_name = {s.name: s for s in Coco(root=root, min_area=9)}
    assert sorted(by_name["val2017/a.jpg"].masks) == [11, 12, 13]
    assert sorted(by_name["val2017/b.jpg"].masks) == [14]


# -- from the mutation run (docs/testing.md): each test kills mutants that survived ----------
def test_index_logs_what_it_read_and_dropped(tmp_path: Path, caplog) -> None:
    """3 crowd, 2 small, 2 orphans (all counts differ); an annotation without `iscrowd` is kept."""
    no_flag = ann(601, 7, [rect(0, 0, 5, 5)])
    del no_flag["iscrowd"]
    extra = [
        ann(107, 7, [rect(0, 0, 4, 4)], iscrowd=1),
        ann(502, 777, [rect(0, 0, 4, 4)]),
        no_flag,
    ]
    root = make_tree(tmp_path / "COCO", anns=ANNS + extra)
    ann_file = root / "annotations/instances_val2017.json"
    with caplog.at_level(logging.INFO, logger="usam.datasets.coco"):
        reader = Coco(root=root)
        entries = reader.entries
    assert [r.getMessage() for r in caplog.records] == [
        f"reading {ann_file}",
        f"{ann_file}: 2 annotations refer to no listed image; ignored",
        "instances_val2017.json: 5 images; dropped 3 crowd and 2 annotations with area < 10",
    ]
    b = next(e for e in entries if e.name == "val2017/b.jpg")
    assert [a for a, _ in b.info["anns"]] == [601]


def test_bad_input_messages_are_exact(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        rle_counts("P")  # 'P' - 48 has the continuation bit set and nothing follows
    assert str(err.value) == "compressed RLE string ends inside a number"
    assert rle_counts(b"52") == rle_counts("52") == [5, 2]  # bytes as well as str
    reader = Coco(root=make_tree(tmp_path / "COCO"))
    cases = [
        ({"size": [H, W], "counts": [3, 2]}, f"RLE counts cover 5 pixels, image has {H * W}"),
        ("oops", "neither a polygon list nor an RLE dict"),
    ]
    for seg, message in cases:
        with pytest.raises(SampleError) as err:
            reader.decode(seg, H, W, 9)
        assert err.value.reason == f"annotation 9: bad segmentation ({message})"
    (tmp_path / "COCO/annotations/instances_val2017.json").write_text('{"annotations": []}')
    with pytest.raises(UsamError) as err:
        len(Coco(root=tmp_path / "COCO"))
    assert str(err.value).endswith(
        "is not a COCO instances file (KeyError: 'images'); expected 'images' with "
        "id/file_name/width/height and 'annotations' with id/image_id/area/iscrowd/segmentation"
    )


def test_decode_gives_bool_masks_and_takes_zero_length_runs(tmp_path: Path) -> None:
    reader = Coco(root=make_tree(tmp_path / "COCO"))
    assert reader.decode([[1, 1, 5, 5]], H, W, 1).dtype == bool  # degenerate polygon: empty
    polygon = reader.decode([rect(2, 3, 10, 8)], H, W, 1)
    assert polygon.dtype == bool and polygon.sum() == 40
    # an RLE may start with a zero-length background run (the mask starts at pixel 0)
    starts_on = reader.decode({"size": [H, W], "counts": [0, 5, H * W - 5]}, H, W, 2)
    np.testing.assert_array_equal(starts_on, box(0, 0, 1, 5))
