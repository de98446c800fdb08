"""The bundled sample: present in the package, readable, small, and reproducible by its script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

import usam
from usam.datasets.davis import davis_palette
from usam.datasets.sample import SAMPLE_ROOT, SampleDataset
from usam.errors import UsamError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_sample.py"


def test_shipped_in_the_package():
    assert SAMPLE_ROOT == Path(usam.__file__).resolve().parent / "sample"
    files = [p for p in SAMPLE_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    assert (SAMPLE_ROOT / "README.md").read_text().lower().count("synthetic") >= 1
    assert (SAMPLE_ROOT / "ImageSets/2017/val.txt").read_text().split() == ["shapes-a", "shapes-b"]


def test_reads_six_frames_with_three_objects_each():
    r = SampleDataset()
    assert r.root == SAMPLE_ROOT and r.name == "sample" and r.resolution == "480p"
    samples = list(r)
    assert [s.name for s in samples] == [
        f"JPEGImages/480p/shapes-{v}/{f:05d}.jpg" for v in "ab" for f in range(3)
    ]
    assert [s.group for s in samples] == ["shapes-a"] * 3 + ["shapes-b"] * 3
    assert [s.image.shape for s in samples] == [(240, 320, 3)] * 3 + [(192, 256, 3)] * 3
    for s in samples:
        assert sorted(s.masks) == [1, 2, 3]
        # non-trivial instances: each covers a real area but not the whole frame
        for m in s.masks.values():
            assert 500 < m.sum() < 0.2 * m.size
        # instances do not overlap (one id per pixel)
        assert sum(m.astype(int) for m in s.masks.values()).max() == 1
    assert r.stats.images == 6 and r.stats.instances == 18 and r.stats.unreadable == []


def test_annotations_are_davis_palette_pngs():
    for png in sorted((SAMPLE_ROOT / "Annotations/480p").rglob("*.png")):
        with Image.open(png) as im:
            assert im.mode == "P"
            assert im.getpalette()[:12] == davis_palette()[:12]


def test_objects_move_between_frames():
    a = [s.masks for s in SampleDataset() if s.group == "shapes-a"]
    for oid in (1, 2, 3):
        assert not np.array_equal(a[0][oid], a[1][oid])


def test_only_val_split():
    with pytest.raises(UsamError, match="no split 'train'; it has: val"):
        SampleDataset(split="train")


def test_default_config_is_the_sample(compose_cfg):
    cfg = compose_cfg("datasets", ["dataset.sample=2"])
    r = instantiate(cfg.dataset)
    assert isinstance(r, SampleDataset) and r.root == SAMPLE_ROOT
    assert [(e.group, e.index_in_group) for e in r.entries] == [
        ("shapes-a", 0),
        ("shapes-a", 2),
        ("shapes-b", 0),
        ("shapes-b", 2),
    ]


def test_script_reproduces_the_shipped_data(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.make(tmp_path)
    shipped = sorted(p.relative_to(SAMPLE_ROOT) for p in SAMPLE_ROOT.rglob("*") if p.is_file())
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == shipped
    for rel in shipped:
        if rel.suffix == ".png":
            np.testing.assert_array_equal(
                np.asarray(Image.open(tmp_path / rel)), np.asarray(Image.open(SAMPLE_ROOT / rel))
            )
        elif rel.suffix == ".jpg":
            # JPEG bytes may differ between libjpeg builds; the pixels barely do
            a = np.asarray(Image.open(tmp_path / rel), dtype=float)
            b = np.asarray(Image.open(SAMPLE_ROOT / rel), dtype=float)
            assert np.abs(a - b).mean() < 1.0
        else:
            assert (tmp_path / rel).read_bytes() == (SAMPLE_ROOT / rel).read_bytes()
