"""SA-V reader on tiny trees whose answers are known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from usam.datasets import sav
from usam.datasets.sav import AUTO_ID_OFFSET, SAV
from usam.errors import SampleError, UsamError

H, W, N_FRAMES = 48, 64, 17  # annotated frames 0, 4, 8, 12, 16
COLORS = [((i * 53) % 256, (i * 97 + 40) % 256, (200 - i * 11) % 256) for i in range(N_FRAMES)]


def write_video(path: Path, n: int = N_FRAMES) -> None:
    """Flat-colored frames, frame i in RGB COLORS[i]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (W, H))
    assert vw.isOpened()
    for c in COLORS[:n]:
        vw.write(np.full((H, W, 3), c[::-1], np.uint8))  # BGR
    vw.release()


def frame_of(image: np.ndarray) -> int:
    """Which video frame an RGB image is, by its mean color (mp4v is lossy)."""
    mean = image.reshape(-1, 3).mean(0)
    dist = [np.abs(mean - np.array(c)).max() for c in COLORS]
    assert min(dist) < 12
    return int(np.argmin(dist))


def box(k: int, mid: int) -> np.ndarray:
    """Masklet `mid`'s mask in annotated frame k: a box that moves with k and mid."""
    m = np.zeros((H, W), bool)
    m[2 + k : 10 + k, 3 * mid : 3 * mid + 5 + k] = True
    return m


def rle(m: np.ndarray, size: tuple[int, int] | None = None) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(size or m.shape), "counts": r["counts"].decode()}


def masklet_json(path: Path, ids: list[int], n: int = 5, empty: set = frozenset()) -> dict:
    """A JSON where masklet `mid` is box(k, mid) in frame k, except (k, mid) in `empty`."""
    frames = [
        [rle(np.zeros((H, W), bool) if (k, i) in empty else box(k, i)) for i in ids]
        for k in range(n)
    ]
    data = {
        "video_id": path.name.rsplit("_", 1)[0],
        "video_frame_count": N_FRAMES,
        "masklet_id": ids,
        "masklet": frames,
    }
    path.write_text(json.dumps(data))
    return data


def make_train(root: Path) -> Path:
    """sav_000: vid_a (manual [0, 1] with 1 empty in frame 0; auto [0, 3]), vid_b (manual [2]);
    sav_001: vid_c (manual [1]); vid_c has 3 annotated frames only."""
    s0, s1 = root / "sav_train" / "sav_000", root / "sav_train" / "sav_001"
    for d, v in [(s0, "vid_a"), (s0, "vid_b"), (s1, "vid_c")]:
        write_video(d / f"{v}.mp4")
    masklet_json(s0 / "vid_a_manual.json", [0, 1], empty={(0, 1)})
    masklet_json(s0 / "vid_a_auto.json", [0, 3])
    masklet_json(s0 / "vid_b_manual.json", [2])
    masklet_json(s1 / "vid_c_manual.json", [1], n=3)
    return root


def make_val(root: Path, split: str = "val", videos=("v1", "v2")) -> Path:
    """v1: objects 1 and 7 over frames 0, 4, 8 (7 empty in frame 4); v2: object 2, frame 0.
    A video `v3` exists on disk but is not in the list."""
    d = root / f"sav_{split}"
    spec = {"v1": {1: [0, 4, 8], 7: [0, 4, 8]}, "v2": {2: [0]}, "v3": {5: [0]}}
    for v, objs in spec.items():
        for f in range(9):
            p = d / "JPEGImages_24fps" / v / f"{f:05d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), COLORS[f], np.uint8)).save(p, quality=95)
        for obj, frames in objs.items():
            for f in frames:
                p = d / "Annotations_6fps" / v / f"{obj:03d}" / f"{f:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                m = np.zeros((H, W), np.uint8) if (obj, f) == (7, 4) else box(f, obj) * 255
                Image.fromarray(m.astype(np.uint8)).save(p)
    (d / f"sav_{split}.txt").write_text("\n".join(videos) + "\n\n")
    return root


@pytest.fixture
def train_root(tmp_path):
    return make_train(tmp_path / "SAV")


@pytest.fixture
def val_root(tmp_path):
    return make_val(tmp_path / "SAV")


def check_train_sample(s, manual: dict, auto: dict = {}):  # noqa: B006 - read-only
    """Masks of an annotated frame k of a train video built by masklet_json."""
    k = int(s.name.rsplit("/", 1)[1]) // 4
    assert frame_of(s.image) == 4 * k
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    want = {**{i: box(k, i) for i in manual}, **{o + i: box(k, i) for i, o in auto.items()}}
    assert sorted(s.masks) == sorted(want)
    for i, m in want.items():
        assert np.array_equal(s.masks[i], m)


# -- train ---------------------------------------------------------------------------------------
def test_train_manual(train_root):
    r = SAV(root=train_root, split="train")
    names = [e.name for e in r.entries]
    assert names[:6] == [f"sav_train/sav_000/vid_a/{4 * k:05d}" for k in range(5)] + [
        "sav_train/sav_000/vid_b/00000"
    ]
    assert names[-3:] == [f"sav_train/sav_001/vid_c/{4 * k:05d}" for k in range(3)]
    assert len(r) == 13
    assert [e.index_in_group for e in r.entries[:5]] == [0, 1, 2, 3, 4]
    samples = list(r)
    assert [s.group for s in samples] == ["vid_a"] * 5 + ["vid_b"] * 5 + ["vid_c"] * 3
    assert [s.name for s in samples] == names
    for s in samples:
        ids = {"vid_a": [0, 1], "vid_b": [2], "vid_c": [1]}[s.group]
        if s.name == "sav_train/sav_000/vid_a/00000":
            ids = [0]  # masklet 1 is empty there
        check_train_sample(s, ids)
    assert r.stats.images == 13 and r.stats.instances == 2 * 5 - 1 + 5 + 3
    assert r.stats.unreadable == [] and r.stats.empty == 0
    assert r._cap is None  # released after iterating


def test_train_annotation_sets(train_root):
    sub = {"train_subsets": ["sav_000"]}
    auto = SAV(root=train_root, split="train", annotation_set="auto", **sub)
    # vid_b has no auto JSON: skipped, counted once
    assert [e.group for e in auto.entries] == ["vid_a"] * 5
    assert len(auto.stats.unreadable) == 1 and "vid_b" in auto.stats.unreadable[0]["file"]
    for s in auto:
        check_train_sample(s, [0, 3])
    both = SAV(root=train_root, split="train", annotation_set="both", **sub)
    samples = list(both)
    assert len(samples) == 10 and both.stats.unreadable == []
    for s in samples:
        if s.group == "vid_a":
            manual = [0] if s.name.endswith("/00000") else [0, 1]
            check_train_sample(s, manual, {0: AUTO_ID_OFFSET, 3: AUTO_ID_OFFSET})
        else:
            check_train_sample(s, [2])
    with pytest.raises(UsamError, match="annotation_set"):
        SAV(root=train_root, split="train", annotation_set="all")


def test_train_subsets(train_root):
    r = SAV(root=train_root, split="train", train_subsets=["sav_001"])
    assert {e.group for e in r.entries} == {"vid_c"} and len(r) == 3
    r = SAV(root=train_root, split="train", train_subsets="sav_000")  # a single name works too
    assert {e.group for e in r.entries} == {"vid_a", "vid_b"}
    with pytest.raises(UsamError, match="sav_007"):
        SAV(root=train_root, split="train", train_subsets=["sav_000", "sav_007"])


def test_train_sample_keeps_every_kth_annotated_frame(train_root):
    r = SAV(root=train_root, split="train", sample=2)
    assert [e.name.split("/", 2)[2] for e in r.entries] == [
        "vid_a/00000", "vid_a/00008", "vid_a/00016",
        "vid_b/00000", "vid_b/00008", "vid_b/00016",
        "vid_c/00000", "vid_c/00008",
    ]  # fmt: skip
    for s in r:
        assert frame_of(s.image) == int(s.name[-5:])


def test_train_shards_cover_split_and_start_mid_video(train_root):
    full = [e.name for e in SAV(root=train_root, split="train").entries]
    shards = [SAV(root=train_root, split="train", shard_index=i, shard_count=3) for i in range(3)]
    assert [e.name for s in shards for e in s.entries] == full
    # both later shards start mid-video, so their first read must seek, not read frame 0
    assert shards[1].entries[0].name == "sav_train/sav_000/vid_a/00016"
    assert shards[2].entries[0].name == "sav_train/sav_000/vid_b/00012"
    for shard in shards:
        for s in shard:
            ids = {"vid_a": [0, 1], "vid_b": [2], "vid_c": [1]}[s.group]
            check_train_sample(s, [0] if s.name.endswith("vid_a/00000") else ids)


def test_train_frames_out_of_order(train_root):
    r = SAV(root=train_root, split="train", train_subsets=["sav_000"])
    order = [7, 2, 3, 0, 9, 4, 4, 1, 8, 5]  # backwards, repeats, jumps across videos
    for i in order:
        e = r.entries[i]
        s = r.load(e)
        assert frame_of(s.image) == 4 * e.index_in_group, e.name
        check_train_sample(
            s, [0] if e.name.endswith("vid_a/00000") else {"vid_a": [0, 1]}.get(s.group, [2])
        )
    video = r.entries[0].info["video"]
    assert [frame_of(r.read_frame(video, n)) for n in (16, 1, 15)] == [16, 1, 15]


def test_train_far_jump_ahead_seeks(train_root, monkeypatch):
    monkeypatch.setattr(sav, "_MAX_GRAB", 2)
    r = SAV(root=train_root, split="train")
    video = r.entries[0].info["video"]
    assert [frame_of(r.read_frame(video, n)) for n in (0, 2, 13, 16)] == [0, 2, 13, 16]
    r.close()


# -- val / test ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_val_test(tmp_path, split):
    root = make_val(tmp_path / "SAV", split)
    r = SAV(root=root, split=split)
    d = f"sav_{split}/JPEGImages_24fps"
    assert [e.name for e in r.entries] == [
        f"{d}/v1/00000.jpg",
        f"{d}/v1/00004.jpg",
        f"{d}/v1/00008.jpg",
        f"{d}/v2/00000.jpg",
    ]  # fmt: skip  (v3 is not listed)
    assert [e.index_in_group for e in r.entries] == [0, 1, 2, 0]
    samples = list(r)
    assert [s.group for s in samples] == ["v1", "v1", "v1", "v2"]
    for s in samples:
        f = int(s.name[-9:-4])
        assert np.abs(s.image.reshape(-1, 3).mean(0) - COLORS[f]).max() < 4
        want = {"v1": [1, 7], "v2": [2]}[s.group]
        if s.name.endswith("v1/00004.jpg"):
            want = [1]  # object 7's PNG is empty there
        assert sorted(s.masks) == want
        for i in want:
            assert np.array_equal(s.masks[i], box(f, i))
    assert r.stats.images == 4 and r.stats.instances == 2 + 1 + 2 + 1
    r = SAV(root=root, split=split, sample=2)
    assert [e.name[-12:] for e in r.entries] == ["v1/00000.jpg", "v1/00008.jpg", "v2/00000.jpg"]


# -- bad input -----------------------------------------------------------------------------------
def test_missing_layout_fails_at_once(tmp_path, val_root):
    with pytest.raises(UsamError, match="nowhere"):
        SAV(root=tmp_path / "nowhere", split="val")
    with pytest.raises(UsamError, match="sav_train"):
        SAV(root=val_root, split="train")
    with pytest.raises(UsamError, match="sav_test"):
        SAV(root=val_root, split="test")
    (val_root / "sav_val" / "sav_val.txt").unlink()
    with pytest.raises(UsamError, match=r"sav_val\.txt.*expected SA-V"):
        SAV(root=val_root, split="val")
    (tmp_path / "empty" / "sav_train").mkdir(parents=True)
    with pytest.raises(UsamError, match="no sav_NNN"):
        SAV(root=tmp_path / "empty", split="train")


def test_train_broken_inputs_are_skipped_and_counted(train_root):
    s0 = train_root / "sav_train" / "sav_000"
    (s0 / "vid_a.mp4").write_bytes(b"not a video")  # 5 entries: one broken video, counted once
    (s0 / "vid_b_manual.json").write_text('{"masklet_id": [2], "masklet": [')  # broken JSON
    s1 = train_root / "sav_train" / "sav_001"
    data = masklet_json(s1 / "vid_c_manual.json", [1], n=6)  # frame 20 is past the end
    data["masklet"][1][0] = rle(box(1, 1)[:40], (40, W))  # wrong size in annotated frame 1
    (s1 / "vid_c_manual.json").write_text(json.dumps(data))
    r = SAV(root=train_root, split="train")
    assert len(r) == 5 + 6  # vid_b is gone
    samples = list(r)
    assert [s.name[-5:] for s in samples] == ["00000", "00008", "00012", "00016"]
    files = [u["file"] for u in r.stats.unreadable]
    assert files.count(str(s0 / "vid_b_manual.json")) == 1
    assert files.count(str(s0 / "vid_a.mp4")) == 1
    assert files.count(str(s1 / "vid_c_manual.json")) == 1  # the size mismatch
    assert files.count(str(s1 / "vid_c.mp4")) == 1  # frame 20
    assert len(files) == 4 and r.stats.images == 4
    reasons = " ".join(u["reason"] for u in r.stats.unreadable)
    assert "64x40 but the video frame is 64x48" in reasons and "cannot read frame 20" in reasons
    # only shard 0 counts index-time skips, so summing shards counts each once
    shard1 = SAV(root=train_root, split="train", shard_index=1, shard_count=2)
    assert len(shard1) > 0 and shard1.stats.unreadable == []

    with pytest.raises(SampleError, match="vid_b_manual.json.*broken annotation"):
        SAV(root=train_root, split="train", strict=True).entries  # noqa: B018
    with pytest.raises(SampleError, match="64x40"):
        list(SAV(root=train_root, split="train", strict=True, train_subsets=["sav_001"]))
    (s0 / "vid_b.mp4").unlink()
    (s0 / "vid_b_manual.json").unlink()
    with pytest.raises(SampleError, match="vid_a.mp4.*cannot open video"):
        list(SAV(root=train_root, split="train", strict=True, train_subsets=["sav_000"]))


def test_train_missing_video_or_annotation(train_root):
    s0 = train_root / "sav_train" / "sav_000"
    (s0 / "vid_b.mp4").unlink()
    write_video(s0 / "vid_z.mp4")  # no JSON at all
    r = SAV(root=train_root, split="train", train_subsets=["sav_000"])
    assert {e.group for e in r.entries} == {"vid_a"}
    reasons = {Path(u["file"]).name: u["reason"] for u in r.stats.unreadable}
    assert reasons["vid_b.mp4"].startswith("video file missing")
    assert reasons["vid_z.mp4"].startswith("no annotation file")


def test_val_broken_inputs_are_skipped_and_counted(val_root):
    d = val_root / "sav_val"
    (d / "JPEGImages_24fps" / "v1" / "00004.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (d / "Annotations_6fps" / "v1" / "001" / "00008.png").write_bytes(b"\x89PNG broken")
    small = np.zeros((H // 2, W), np.uint8)
    Image.fromarray(small).save(d / "Annotations_6fps" / "v2" / "002" / "00000.png")
    (d / "sav_val.txt").write_text("v1\nv2\nv_missing\n")
    r = SAV(root=val_root, split="val")
    assert len(r) == 4
    samples = list(r)
    assert [s.name[-12:] for s in samples] == ["v1/00000.jpg"]
    files = sorted(Path(u["file"]).relative_to(d).as_posix() for u in r.stats.unreadable)
    assert files == [
        "Annotations_6fps/v1/001/00008.png",
        "Annotations_6fps/v2/002/00000.png",
        "Annotations_6fps/v_missing",
        "JPEGImages_24fps/v1/00004.jpg",
    ]
    with pytest.raises(SampleError, match="v_missing: listed video has no annotation"):
        SAV(root=val_root, split="val", strict=True).entries  # noqa: B018
    (d / "sav_val.txt").write_text("v1\nv2\n")
    with pytest.raises(SampleError, match="00004.jpg"):
        list(SAV(root=val_root, split="val", strict=True, shard_index=1, shard_count=4))


# -- config --------------------------------------------------------------------------------------
def test_hydra_config_instantiates(train_root, compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "datasets",
        [
            "dataset=sav",
            f"dataset.root={train_root}",
            "dataset.split=train",
            "dataset.train_subsets=[sav_001]",
            "dataset.annotation_set=both",
        ],
    )
    reader = instantiate(cfg.dataset)
    assert isinstance(reader, SAV) and reader.name == "sav" and len(reader) == 3
    assert reader.train_subsets == ["sav_001"]
