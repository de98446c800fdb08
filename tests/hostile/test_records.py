"""Records and bundles: stale resume, half-replaced pairs, leftovers of killed runs.

A record carries the settings that made it and the digest of its tensor file; a bundle's
config.json the digest of its weights. Resuming over other settings is an error naming
what differs; a pair that is not one version is recomputed (extract), skipped and counted
(container) or refused (estimator bundles).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_extract import FakeModel, FakeModels
from video_trees import make_davis

from usam.augment import Augmentations
from usam.container import ContainerWriter
from usam.datasets.davis import Davis
from usam.errors import UsamError
from usam.extract import Extractor, RecordWriter
from usam.mlp import UsamMLP, load_bundle, save_bundle
from usam.storage import _HOST, STALE_AFTER, write_tensors
from usam.synthetic import make_record

NAMES = ["JPEGImages/480p/v/00000.jpg", "JPEGImages/480p/v/00001.jpg"]


@pytest.fixture
def davis(tmp_path):
    root = tmp_path / "DAVIS"
    make_davis(root, {"v": {"frames": 2, "size": (8, 8), "ids": (1,)}}, {"val": ["v"]})
    return root


class Models(FakeModels):
    """FakeModels with recorded weights, as usam.sam.SamModels reports them."""

    def __init__(self, sizes, weights):
        super().__init__([FakeModel(s, 1.0 - 0.25 * i) for i, s in enumerate(sizes)])
        self.weights = weights


def extract(davis, out, *, sizes=("tiny",), weights=None, seed=0, augment_seed=0, resume=True):
    ex = Extractor(
        models=Models(list(sizes), weights or {s: f"sha-{s}" for s in sizes}),
        augment=Augmentations(seed=augment_seed),
        writer=RecordWriter(root=out, dataset="davis", split="val"),
        seed=seed,
        resume=resume,
    )
    return ex.run(Davis(root=davis, split="val", resolution="480p"))


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def record(out: Path, i: int = 0) -> dict:
    return json.loads((out / NAMES[i]).with_suffix(".json").read_text())


# -- stale resume ---------------------------------------------------------------------------------
def test_records_carry_the_settings_that_made_them(davis, tmp_path):
    out = tmp_path / "out"
    extract(davis, out, sizes=("tiny", "large"), seed=3)
    assert record(out, 1)["settings"] == {
        "sam_version": "fake",
        "models": ["tiny", "large"],
        "weights": {"tiny": "sha-tiny", "large": "sha-large"},
        "random_weights": True,
        "image_size": None,
        "augment": {"seed": 0, "variants": {}},
        "seed": 3,
        "n_samples": 7,
        "dataset": {},
    }


@pytest.mark.parametrize(
    "change,diff",
    [
        (
            {"sizes": ("tiny", "large")},
            "models: ['tiny'] there, ['tiny', 'large'] now; weights: {'tiny': 'sha-tiny'} "
            "there, {'tiny': 'sha-tiny', 'large': 'sha-large'} now",
        ),
        ({"seed": 1}, "seed: 0 there, 1 now"),
        (
            {"augment_seed": 2},
            "augment: {'seed': 0, 'variants': {}} there, {'seed': 2, 'variants': {}} now",
        ),
        (
            {"weights": {"tiny": "sha-other"}},
            "weights: {'tiny': 'sha-tiny'} there, {'tiny': 'sha-other'} now",
        ),
    ],
)
def test_resuming_with_other_settings_is_an_error_and_keeps_the_records(
    davis, tmp_path, change, diff
):
    out = tmp_path / "out"
    assert extract(davis, out)["done"] == 2
    before = files(out)
    with pytest.raises(UsamError) as err:
        extract(davis, out, **change)
    assert str(err.value) == (
        f"{(out / NAMES[0]).with_suffix('.json')} was extracted with other settings ({diff}); "
        f"resuming would mix the two in {out}: choose another out_dir, or pass "
        "extractor.resume=false to recompute and replace its records"
    )
    assert files(out) == before


def test_the_settings_are_checked_before_anything_is_written(davis, tmp_path):
    """Only the second image has an old record: without the up-front check the run would
    write the first image with the new settings, then stop, leaving a mixed folder."""
    out = tmp_path / "out"
    extract(davis, out)
    for suffix in (".json", ".safetensors"):
        (out / NAMES[0]).with_suffix(suffix).unlink()
    before = files(out)
    with pytest.raises(UsamError, match=r"00001\.json was extracted with other settings \(seed"):
        extract(davis, out, seed=5)
    assert files(out) == before


def test_resume_false_recomputes_with_the_new_settings(davis, tmp_path):
    out = tmp_path / "out"
    extract(davis, out)
    summary = extract(davis, out, sizes=("tiny", "large"), resume=False)
    assert (summary["done"], summary["skipped"]) == (2, 0)
    assert [record(out, i)["settings"]["models"] for i in (0, 1)] == [["tiny", "large"]] * 2
    assert extract(davis, out, sizes=("tiny", "large"))["skipped"] == 2  # same settings: resumed


def test_records_from_before_settings_were_recorded_are_not_resumed_over(davis, tmp_path):
    out = tmp_path / "out"
    extract(davis, out)
    for i in (0, 1):
        path = (out / NAMES[i]).with_suffix(".json")
        rec = json.loads(path.read_text())
        del rec["settings"]
        path.write_text(json.dumps(rec))
    with pytest.raises(UsamError, match=r"00000\.json was extracted by a usam that did not record"):
        extract(davis, out)


# -- half-replaced pairs ---------------------------------------------------------------------------
def swap_tensors(out: Path) -> None:
    """What a rewrite killed between its two renames leaves: record 1's JSON beside record 0's
    (valid, complete) tensor file."""
    a, b = ((out / n).with_suffix(".safetensors") for n in NAMES)
    shutil.copyfile(a, b)


def test_a_half_replaced_record_is_extracted_again(davis, tmp_path, caplog):
    out = tmp_path / "out"
    extract(davis, out, sizes=("tiny", "large"))
    good = (out / NAMES[1]).with_suffix(".safetensors").read_bytes()
    swap_tensors(out)
    w = RecordWriter(root=out, dataset="davis", split="val")
    assert [w.done(n) for n in NAMES] == [True, False]
    with caplog.at_level(logging.WARNING):
        summary = extract(davis, out, sizes=("tiny", "large"))
    assert (summary["done"], summary["skipped"]) == (1, 1)
    assert "00001.safetensors is not the file" in caplog.text and "sha256 differs" in caplog.text
    assert (out / NAMES[1]).with_suffix(".safetensors").read_bytes() == good


def test_the_container_skips_and_counts_a_half_replaced_record(tmp_path):
    out = tmp_path / "records"
    w = RecordWriter(root=out, dataset="davis", split="val")
    for k, name in enumerate(NAMES):
        rec, tensors = make_record(name, "v", instances=((1, 100 + k), (2, 50)))
        w.write(name, rec, tensors)
    # a rewrite of record 1 killed between its renames: new tensors (same shapes), old JSON
    write_tensors(
        (out / NAMES[1]).with_suffix(".safetensors"), {k: v + 0.5 for k, v in tensors.items()}
    )
    summary = ContainerWriter(roots=[out], out=tmp_path / "ctgt").write()
    assert summary["images"] == 1 and summary["rows"] == 4 * 2
    assert summary["skipped_by_reason"] == {"mismatched_pair": 1}
    (skip,) = summary["skipped_files"]
    assert skip["file"] == str((out / NAMES[1]).with_suffix(".safetensors"))
    assert skip["reason"].endswith(
        "describes (sha256 differs: the pair was half replaced or edited); re-extract it"
    )
    assert summary["records_without_digest"] == 0


def test_a_half_replaced_bundle_is_refused(tmp_path):
    torch.manual_seed(0)
    save_bundle(tmp_path / "a", UsamMLP(hidden=[4]), {"target": "iou_tiny", "output_shift": 0.0})
    save_bundle(tmp_path / "b", UsamMLP(hidden=[4]), {"target": "iou_tiny", "output_shift": 0.0})
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(UsamError) as err:
        load_bundle(tmp_path / "a")
    a = tmp_path / "a"
    assert str(err.value) == (
        f"{a / 'model.safetensors'} is not the file {a / 'config.json'} describes (sha256 "
        "differs: the pair was half replaced or edited); retrain the estimator"
    )
    load_bundle(tmp_path / "b")  # the intact pair loads


def test_a_bundle_from_before_digests_loads_with_a_warning(tmp_path, caplog):
    model = UsamMLP(hidden=[4])
    save_bundle(tmp_path / "old", model, {"target": "iou_tiny", "output_shift": 0.0})
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["weights_sha256"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        loaded, _ = load_bundle(tmp_path / "old")
    assert "records no weights_sha256" in caplog.text
    x = torch.arange(512, dtype=torch.float32).view(1, 512) / 512
    assert torch.equal(loaded(x), model.eval()(x))


# -- leftovers of killed runs ---------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_temps(folder: Path, name: str, *, is_dir: bool = False) -> dict[str, bool]:
    """Temporaries named as usam names them; -> {name: should survive the next run}."""
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - STALE_AFTER - 60
    temps = {
        f".{name}.tmp-{dead_pid()}@{_HOST}-dead0001": False,  # killed run on this host
        f".{name}.tmp-{os.getpid()}@{_HOST}-live0001": True,  # a live run (a parallel shard)
        f".{name}.tmp-1@otherhost-remote01": True,  # other host, recent: may be running
        f".{name}.tmp-oldstyle": True,  # no owner in the name, recent
        f".{name}.tmp-oldstale": False,  # no owner, untouched for longer than STALE_AFTER
    }
    for t in temps:
        (folder / t).mkdir() if is_dir else (folder / t).write_bytes(b"half")
    os.utime(folder / f".{name}.tmp-oldstale", (old, old))
    return temps


def survivors(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name}


def test_record_temporaries_of_killed_runs_are_removed_on_the_next_run(davis, tmp_path):
    out = tmp_path / "out"
    folder = (out / NAMES[0]).parent
    temps = make_temps(folder, "00000.safetensors")
    extract(davis, out)
    assert survivors(folder) == {t for t, keep in temps.items() if keep}


def test_container_builds_of_killed_runs_are_removed_on_the_next_build(tmp_path):
    records = tmp_path / "records"
    rec, tensors = make_record(NAMES[0], "v")
    RecordWriter(root=records, dataset="davis", split="val").write(NAMES[0], rec, tensors)
    temps = make_temps(tmp_path, "ctgt", is_dir=True)
    killed_old = f".ctgt.old-{dead_pid()}@{_HOST}-dead0002"
    other = f".other.tmp-{dead_pid()}@{_HOST}-dead0003"  # another container's: not ours to touch
    (tmp_path / killed_old).mkdir()
    (tmp_path / other).mkdir()
    ContainerWriter(roots=[records], out=tmp_path / "ctgt").write()
    assert survivors(tmp_path) == {t for t, keep in temps.items() if keep} | {other}


def test_bundle_temporaries_of_killed_saves_are_removed(tmp_path):
    temps = make_temps(tmp_path / "b", "model.safetensors")
    save_bundle(tmp_path / "b", UsamMLP(hidden=[4]), {"target": "iou_tiny", "output_shift": 0.0})
    assert survivors(tmp_path / "b") == {t for t, keep in temps.items() if keep}
