"""Extraction input read ahead in background threads (usam.prefetch) and several images per
encoder call: the same records, order, resume and skip accounting as one image at a time."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_extract import GT, FakeModel, FakeModels, H, TwoVariants, W

from usam.datasets.base import DatasetReader, Entry, Sample
from usam.errors import SampleError, UsamError
from usam.extract import Extractor, RecordWriter
from usam.prefetch import SKIPPED, prefetch


# -- the prefetcher alone -----------------------------------------------------------------------
def test_results_come_in_entry_order_although_later_ones_finish_first():
    def load(i):
        time.sleep(0.02 * (5 - i))  # entry 0 is the slowest
        return i * 10

    got = list(prefetch(range(5), load, skip=lambda i: i == 3, workers=4))
    assert got == [(0, 0), (1, 10), (2, 20), (3, SKIPPED), (4, 40)]


def test_at_most_depth_loads_are_in_flight():
    lock, now, peak = threading.Lock(), [0], [0]
    release = threading.Event()

    def load(i):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        release.wait(0.05)
        with lock:
            now[0] -= 1
        return i

    assert [r for _, r in prefetch(range(20), load, workers=4, depth=3)] == list(range(20))
    assert peak[0] == 3


def test_a_load_error_is_raised_at_its_entry_and_later_loads_are_dropped():
    started = []

    def load(i):
        started.append(i)
        if i == 2:
            raise ValueError("bad 2")
        return i

    it = prefetch(range(100), load, workers=2, depth=2)
    assert next(it) == (0, 0) and next(it) == (1, 1)
    with pytest.raises(ValueError, match="bad 2"):
        next(it)
    assert max(started) < 10  # the bounded queue never ran far ahead


def test_without_workers_nothing_runs_ahead():
    started = []
    it = prefetch(range(3), lambda i: started.append(i) or i, workers=0)
    assert next(it) == (0, 0) and started == [0]


# -- the Extractor with prefetch and batched encoding ---------------------------------------------
class Images(DatasetReader):
    """Seven images in memory: 'broken' ones raise SampleError; later ones load faster, so
    background threads finish out of order. Entry k's image has brightness 20 + 30 k."""

    splits = {"val": "val"}

    def __init__(self, root, broken=(), **kw):
        self.broken = set(broken)
        super().__init__(root=root, **kw)

    def index(self):
        return [Entry(name=f"v/{k:05d}.jpg", group="v", index_in_group=k) for k in range(7)]

    def load(self, entry):
        k = entry.index_in_group
        time.sleep(0.003 * (7 - k))
        if k in self.broken:
            raise SampleError(entry.name, f"unreadable image {k}")
        other = np.zeros((H, W), bool)
        other[:, 4 + k % 3 :] = True
        masks = {3: GT, 9: other} if k != 4 else {}  # image 4 has no instance
        return Sample(np.full((H, W, 3), 20 + 30 * k, np.uint8), masks, entry.name, "v")


class BatchedFake(FakeModel):
    """The hand-made SAM stand-in with SAM 2's batch encoding: one call, several images."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls: list[int] = []

    def set_images(self, images):
        self.calls.append(len(images))
        self._c0s = [float(im.mean()) / 255 * self.gain for im in images]
        self.encoder_passes += len(images)

    def set_image(self, image):
        self.calls.append(1)
        super().set_image(image)

    def use_image(self, i):
        self.c0 = self._c0s[i]


def one_model(root, **kw) -> Extractor:
    """An Extractor of one hand-made model over two variants, writing under `root`."""
    writer = RecordWriter(root=root, dataset="d", split="val")
    return Extractor(
        models=FakeModels([BatchedFake("tiny", 1.0)]), augment=TwoVariants(), writer=writer, **kw
    )


def extract(tmp_path, name, *, prefetch=0, images_per_call=1, done=(), broken=(5,)):
    models = FakeModels([BatchedFake("tiny", 1.0), BatchedFake("large", 0.5)])
    writer = RecordWriter(root=tmp_path / name, dataset="d", split="val")
    ex = Extractor(
        models=models,
        augment=TwoVariants(),
        writer=writer,
        prefetch=prefetch,
        images_per_call=images_per_call,
    )
    reader = Images(tmp_path, broken=broken)
    writer.settings = ex.settings(reader)  # an earlier run of the same settings: resume skips it
    for k in done:
        writer.write(f"v/{k:05d}.jpg", {"name": "earlier"}, {"x": np.zeros(1, np.float32)})
    summary = ex.run(reader)
    files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
    content = {
        p.relative_to(tmp_path / name).as_posix(): (
            load_file(p) if p.suffix == ".safetensors" else p.read_text()
        )
        for p in files
    }
    return summary, reader.stats.as_dict(), content, models


@pytest.mark.parametrize("prefetch, per_call", [(3, 1), (0, 3), (2, 2)])
def test_prefetch_and_batches_write_the_same_records_and_counts(tmp_path, prefetch, per_call):
    base = extract(tmp_path, "plain", done=(1,))
    other = extract(tmp_path, "other", prefetch=prefetch, images_per_call=per_call, done=(1,))
    (s0, stats0, files0, _), (s1, stats1, files1, models) = base, other
    for key in ("images", "done", "skipped", "failed", "failures", "instances", "encoder_passes"):
        assert s1[key] == s0[key], key
    assert (s0["done"], s0["skipped"], s0["failed"]) == (5, 1, 1)
    assert s0["failures"] == [{"file": "v/00005.jpg", "reason": "unreadable image 5"}]
    assert stats1 == stats0 and stats0["images"] == 5 and stats0["images_without_instances"] == 1
    assert files1.keys() == files0.keys() and len(files0) == 2 * 6  # 5 new + 1 earlier
    for name, content in files0.items():
        if isinstance(content, str):
            assert files1[name] == content, name  # JSON, byte for byte
        else:
            assert content.keys() == files1[name].keys()
            for k, v in content.items():
                assert np.array_equal(files1[name][k], v), (name, k)
    # images with instances went to the encoder in calls of up to `per_call`
    calls = models[0].calls
    assert sum(calls) == 2 * 4 and max(calls) == min(per_call, 4)  # 4 images x 2 variants


def test_a_stateful_reader_gets_one_loader_thread(tmp_path):
    seen = set()

    class OneAtATime(Images):
        parallel_load = False

        def load(self, entry):
            seen.add(threading.current_thread().name)
            return super().load(entry)

    ex = one_model(tmp_path / "o", prefetch=4)
    assert ex.run(OneAtATime(tmp_path, broken=()))["done"] == 7
    assert len(seen) == 1 and next(iter(seen)).startswith("usam-prefetch")


def test_bad_prefetch_settings(tmp_path):
    writer = RecordWriter(root=tmp_path, dataset="d", split="val")
    with pytest.raises(UsamError, match="extractor.prefetch"):
        Extractor(models=FakeModels([]), augment=TwoVariants(), writer=writer, prefetch=-1)
    with pytest.raises(UsamError, match="extractor.prefetch must be auto"):
        Extractor(models=FakeModels([]), augment=TwoVariants(), writer=writer, prefetch="many")
    with pytest.raises(UsamError, match="images_per_call"):
        Extractor(models=FakeModels([]), augment=TwoVariants(), writer=writer, images_per_call=0)


# -- SAM 2's batch encoding on the CPU ------------------------------------------------------------
TINY = {
    "version": "sam2.1",
    "sizes": ["tiny"],
    "checkpoint_dir": "unused",
    "checkpoints": {},
    "configs": {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml"},
    "urls": {},
    "sha256": {},
    "random_weights": True,
    "seed": 0,
    "image_size": 128,
    "device": "cpu",
}


def test_several_images_per_encoder_call_give_the_records_of_one_at_a_time(one_thread):
    from usam.augment import Augmentations
    from usam.sam import SamModels

    rng = np.random.default_rng(0)
    samples = []
    for k, (h, w) in enumerate([(96, 128), (120, 80)]):  # two sizes: each keeps its own frame
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        m = np.zeros((h, w), bool)
        m[10 + 5 * k : 60, 20 : 70 - 10 * k] = True
        image[m] //= 3
        samples.append(Sample(image, {1: m, 2: ~m}, f"x/{k}.jpg", "x"))
    ex = Extractor(
        models=SamModels(**TINY),
        augment=Augmentations(),
        writer=RecordWriter(root="unused", dataset="d", split="val"),
    )
    alone = [ex.process(s) for s in samples]
    together = ex.process_many(samples, [None, None])
    for (r1, t1), (r2, t2) in zip(alone, together, strict=True):
        assert r2["instances"] == r1["instances"]
        for key, v in t1.items():
            assert torch.allclose(torch.as_tensor(t2[key]), torch.as_tensor(v), atol=1e-4), key
        f1, f2 = r1["fields"]["tiny"]["original"], r2["fields"]["tiny"]["original"]
        for field in ("iou", "sam_score", "entropy", "h_task", "h_prompt", "iou_dense_prompt"):
            assert np.allclose(f2[field], f1[field], atol=1e-4), field
    # and the two images did not get each other's answers
    assert not np.allclose(
        alone[0][1]["tiny/original/iou_token"][0], alone[1][1]["tiny/original/iou_token"][0]
    )


def test_prefetch_auto_reads_ahead_for_a_gpu_only(tmp_path):
    writer = RecordWriter(root=tmp_path, dataset="d", split="val")
    cpu = FakeModels([FakeModel("tiny", 1.0)])
    gpu = FakeModels([FakeModel("tiny", 1.0)])
    gpu[0].device = torch.device("cuda")  # only the device is read; nothing runs
    auto = dict(augment=TwoVariants(), writer=writer, prefetch="auto")
    assert Extractor(models=cpu, **auto).prefetch == 0
    assert Extractor(models=gpu, **auto).prefetch == 2


# -- Extractor.run: what it reports (from the extract mutation run) -------------------------------
class RefusesImage(BatchedFake):
    """Raises SampleError on image `k` (by its brightness), like a model refusing an image:
    alone or inside a batched encoder call."""

    def __init__(self, size, gain, k):
        super().__init__(size, gain)
        self.k = k

    def _check(self, image):
        if float(image.mean()) == 20 + 30 * self.k:
            raise SampleError(f"v/{self.k:05d}.jpg", "the encoder refused it")

    def set_images(self, images):
        for im in images:
            self._check(im)
        super().set_images(images)

    def set_image(self, image):
        self._check(image)
        super().set_image(image)


def test_run_reports_skips_both_kinds_of_failure_and_its_speed(tmp_path, monkeypatch, caplog):
    import usam.extract

    monkeypatch.setattr(
        usam.extract, "time", SimpleNamespace(perf_counter=iter([10.0, 13.00042]).__next__)
    )
    models = FakeModels([RefusesImage("tiny", 1.0, 3), BatchedFake("large", 0.5)])
    models[0].compiled = True  # one compiled decoder of two: not "compiled_decoder"
    writer = RecordWriter(root=tmp_path / "out", dataset="d", split="val")
    ex = Extractor(models=models, augment=TwoVariants(), writer=writer, images_per_call=2)
    reader = Images(tmp_path, broken=(5,))
    writer.settings = ex.settings(reader)
    writer.write("v/00001.jpg", {"name": "earlier"}, {"x": np.zeros(1, np.float32)})
    drawn = []
    prompts = ex.prompts
    ex.prompts = lambda sample: drawn.append(sample.name) or prompts(sample)
    with caplog.at_level(logging.INFO):
        s = ex.run(reader)
    # image 1 done before, 5 unreadable, 3 refused inside the batch [3, 4] (then one at a time:
    # 4, after it, is written), 4 has no instance; the reader's failures come first
    assert s == {
        "dataset": "images",
        "split": "val",
        "out_dir": str(tmp_path / "out"),
        "shard": {"index": 0, "count": 1},
        "images": 7,
        "done": 4,
        "skipped": 1,
        "failed": 2,
        "failures": [
            {"file": "v/00005.jpg", "reason": "unreadable image 5"},
            {"file": "v/00003.jpg", "reason": "the encoder refused it"},
        ],
        "dropped": {},
        "instances": 6,  # images 0, 2, 6 with two each
        "seconds": 3.0,  # to the millisecond
        "images_per_second": 1.3331,
        "encoder_passes": 12,  # 3 images with instances x 2 variants x 2 models
        "models": ["tiny", "large"],
        "variants": ["original", "dark"],
        "sam_version": "fake",
        "random_weights": True,
        "compiled_decoder": False,
    }
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in writer.root.rglob("*.json")
    )
    assert written == [f"v/0000{k}.json" for k in (0, 1, 2, 4, 6)]
    # prompts are drawn once per image read, also when a batch is redone one image at a time
    assert drawn == [f"v/0000{k}.jpg" for k in (0, 2, 3, 4, 6)]
    mine = [r.getMessage() for r in caplog.records if r.name == "usam.extract"]
    assert mine == [
        "SAM 2 has RANDOM weights: every record is marked random_weights=true and its numbers "
        "mean nothing",
        "skipping v/00003.jpg: the encoder refused it",
        "extracted 4 images (1 already done, 2 failed), 6 instances in 3.0 s",
        "failed: v/00005.jpg: unreadable image 5",
        "failed: v/00003.jpg: the encoder refused it",
    ]
    # every record carries the settings of the run
    settings = json.loads((writer.root / "v" / "00002.json").read_text())["settings"]
    assert settings == ex.settings(reader) == writer.settings
    assert settings["random_weights"] is True and settings["models"] == ["tiny", "large"]


@pytest.mark.parametrize("ticks, seconds, rate", [((5.0, 5.0), 0.0, None), ((5.0, 5.5), 0.5, 8.0)])
def test_run_of_real_weights_compiled_decoders_a_shard_and_its_speed(
    tmp_path, monkeypatch, caplog, ticks, seconds, rate
):
    import usam.extract

    monkeypatch.setattr(usam.extract, "time", SimpleNamespace(perf_counter=iter(ticks).__next__))
    models = FakeModels([BatchedFake("tiny", 1.0), BatchedFake("large", 0.5)])
    models.random_weights = False
    for m in models:
        m.compiled = True
    writer = RecordWriter(root=tmp_path / "out", dataset="d", split="val")
    ex = Extractor(models=models, augment=TwoVariants(), writer=writer)
    with caplog.at_level(logging.WARNING):
        s = ex.run(Images(tmp_path, shard_index=1, shard_count=2))
    assert s["shard"] == {"index": 1, "count": 2} and (s["images"], s["done"]) == (4, 4)
    assert (s["seconds"], s["images_per_second"]) == (seconds, rate)  # none for no time
    assert (s["random_weights"], s["compiled_decoder"]) == (False, True)
    assert not [r for r in caplog.records if r.name == "usam.extract"]


def test_run_shows_a_progress_bar_of_every_entry(tmp_path, capsys):
    one_model(tmp_path / "out").run(Images(tmp_path, broken=(5,), name="seven"))
    err = capsys.readouterr().err
    assert re.search(r"extract seven/val: 100%\|[^|]*\| 7/7 \[[^\]]*img/s\]", err), err


@pytest.mark.parametrize("parallel, workers", [(True, 3), (False, 1)])
def test_run_reads_ahead_with_prefetch_threads_unless_the_reader_is_stateful(
    tmp_path, monkeypatch, parallel, workers
):
    import usam.extract

    asked = []

    def spy(*args, **kw):
        asked.append(kw["workers"])
        return prefetch(*args, **kw)

    monkeypatch.setattr(usam.extract, "prefetch", spy)
    reader = Images(tmp_path)
    reader.parallel_load = parallel
    assert one_model(tmp_path / "out", prefetch=3).run(reader)["done"] == 7 and asked == [workers]


def test_resume_skips_done_images_refuses_other_settings_and_resume_false_redoes_all(tmp_path):
    def run(seed, resume=True):
        s = one_model(tmp_path / "out", seed=seed, resume=resume).run(Images(tmp_path))
        return s["done"], s["skipped"]

    assert run(1) == (7, 0)
    assert run(1) == (0, 7)
    with pytest.raises(UsamError, match="other settings"):
        run(2)
    assert run(2, resume=False) == (7, 0)


def test_settings_hold_what_changes_a_record(tmp_path):
    class Models(FakeModels):
        version, random_weights, image_size = "sam2.1", False, 512
        weights = {"tiny": "sha256:ab", "large": "sha256:cd"}

    class Bare(list):  # a models object with sizes only: the rest unknown
        sizes = ["base_plus"]

    class Described(TwoVariants):
        def describe(self):
            return {"original": {}, "dark": {"p": np.float64(0.5)}}

    class Filtered(Images):
        def content_settings(self):
            return {"min_area": np.int64(3)}

    writer = RecordWriter(root=tmp_path, dataset="d", split="val")
    full = Extractor(
        models=Models([FakeModel("tiny", 1.0), FakeModel("large", 0.5)]),
        augment=Described(),
        writer=writer,
        seed=3,
        n_samples=5,
    ).settings(Filtered(tmp_path))
    assert full == {
        "sam_version": "sam2.1",
        "models": ["tiny", "large"],
        "weights": {"tiny": "sha256:ab", "large": "sha256:cd"},
        "random_weights": False,
        "image_size": 512,
        "augment": {"original": {}, "dark": {"p": 0.5}},
        "seed": 3,
        "n_samples": 5,
        "dataset": {"min_area": 3},
    }
    assert type(full["augment"]["dark"]["p"]) is float and type(full["dataset"]["min_area"]) is int
    bare = Extractor(models=Bare(), augment=TwoVariants(), writer=writer).settings(Images(tmp_path))
    assert bare == {
        "sam_version": None,
        "models": ["base_plus"],
        "weights": None,
        "random_weights": False,
        "image_size": None,
        "augment": ["original", "dark"],
        "seed": 0,
        "n_samples": 7,
        "dataset": {},
    }
