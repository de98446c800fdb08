"""Stage 1: every SPEC field on a case known by hand, plus the real SAM 2 path end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from safetensors.numpy import load_file

from usam.cli import user_error
from usam.datasets.base import Sample
from usam.errors import UsamError
from usam.extract import Extractor, RecordWriter, run
from usam.sam import Decoded

REPO = Path(__file__).resolve().parents[1]


def h(p: float) -> float:
    """Binary entropy in bits: the entropy H of a constant probability map p."""
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


# -- a SAM stand-in whose outputs are known by hand -------------------------------------------
H = W = 8
GT = np.zeros((H, W), bool)
GT[:, :4] = True  # left half: 32 px
SCORES = [0.2, 0.7, 0.1]  # SAM prefers mask 1
OTHER_MAPS = [0.2, 0.9]  # constant low-res maps of masks 1 and 2


class FakeModel:
    """Single-point prompts: mask 0 = GT without its last column (IoU 0.75), mask 1 = whole
    image (IoU 0.5), mask 2 = empty (IoU 0). Dense prompts: mask 0 = GT (IoU 1).
    Low-res map of mask 0 is the constant image.mean()/255 * gain; masks 1, 2 constants."""

    def __init__(self, size: str, gain: float):
        self.size, self.gain = size, gain
        self.device = torch.device("cpu")
        self.batch_size = 5  # forces several decoder chunks
        self.encoder_passes = 0
        self.decoded_batches: list[int] = []

    def set_image(self, image: np.ndarray) -> None:
        self.encoder_passes += 1
        self.c0 = float(image.mean()) / 255 * self.gain

    def decode_once(self, points, labels) -> tuple[Decoded, None]:
        """SamModel's one-decoder-call API (the extractor chunks prompts itself)."""
        return self.decode(points, labels), None

    def decode(self, points, labels) -> Decoded:
        b, n = points.shape[:2]
        self.decoded_batches.append(b)
        masks = torch.zeros(b, 3, H, W, dtype=torch.bool)
        masks[:, 0, :, :3] = True
        if n > 1:
            masks[:, 0, :, :4] = True
        masks[:, 1] = True
        probs = torch.tensor([self.c0, *OTHER_MAPS]).view(1, 3, 1, 1).expand(b, 3, 4, 4).clone()
        tokens = torch.arange(4 * 256, dtype=torch.float32).view(4, 256)
        return Decoded(
            masks=masks,
            scores=torch.tensor([SCORES] * b),
            low_res_probs=probs,
            iou_token=torch.as_tensor(points[:, 0, :1], dtype=torch.float32).expand(b, 256).clone(),
            mask_tokens=tokens[1:].expand(b, 3, 256).clone(),
        )


class FakeModels(list):
    version, random_weights = "fake", True

    @property
    def sizes(self):
        return [m.size for m in self]


class TwoVariants:
    """original + a darker copy (a photometric variant: points and masks need no mapping)."""

    names = ["original", "dark"]

    def __iter__(self):
        ident = lambda x: x  # noqa: E731
        yield "original", lambda img, pts, key=None: (img, pts, ident)
        yield "dark", lambda img, pts, key=None: ((img // 2).astype(np.uint8), pts, ident)


@pytest.fixture
def hand_case(tmp_path):
    image = np.full((H, W, 3), 204, np.uint8)  # mean 204 -> c0 = 0.8 * gain
    other = np.zeros((H, W), bool)
    other[:, 5:] = True
    sample = Sample(image=image, masks={3: GT, 9: other}, name="v/00000.jpg", group="v")
    models = FakeModels([FakeModel("tiny", 1.0), FakeModel("large", 0.5)])
    ex = Extractor(
        models=models,
        augment=TwoVariants(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, tensors = ex.process(sample)
    return record, tensors, models


def test_fields_known_by_hand(hand_case):
    record, tensors, models = hand_case
    f = record["fields"]
    c0 = {
        ("tiny", "original"): 0.8,
        ("tiny", "dark"): 0.4,
        ("large", "original"): 0.4,
        ("large", "dark"): 0.2,
    }
    for m in ("tiny", "large"):
        for v in ("original", "dark"):
            x = f[m][v]
            # instance 3 is the GT above; each field is a list over the two instances
            assert x["iou"][0] == pytest.approx(0.75)
            assert x["best"][0] == 0
            assert x["sam_score"][0] == pytest.approx(0.2)
            assert x["unsupervised_iou"][0] == pytest.approx(0.5)
            assert x["unsupervised_sam_score"][0] == pytest.approx(0.7)
            assert x["iou_dense_prompt"][0] == pytest.approx(1.0)
            assert list(x["ious"][0]) == pytest.approx([0.75, 0.5, 0.0])
            assert x["entropy"][0] == pytest.approx(h(c0[m, v]), abs=1e-5)
            # score-weighted mixture of the 3 constant maps
            p_task = 0.2 * c0[m, v] + 0.7 * 0.2 + 0.1 * 0.9
            assert x["h_task"][0] == pytest.approx(h(p_task), abs=1e-5)
            assert x["h_prompt"][0] == pytest.approx(
                h(c0[m, v]), abs=1e-5
            )  # same best map for all 8
            # over the two variants of this model / the two models of this variant
            assert x["h_augmentation"][0] == pytest.approx(
                h((c0[m, "original"] + c0[m, "dark"]) / 2), abs=1e-5
            )
            assert x["h_theta"][0] == pytest.approx(
                h((c0["tiny", v] + c0["large", v]) / 2), abs=1e-5
            )
            mix = np.mean([0.2 * c + 0.7 * 0.2 + 0.1 * 0.9 for c in c0.values()])
            assert x["h_all"][0] == pytest.approx(h(mix), abs=1e-5)
            # the second instance (right 3 columns) overlaps mask 0 nowhere, the full image 24/64
            assert list(x["ious"][1]) == pytest.approx([0.0, 24 / 64, 0.0])
    # tokens: IoU token of the centre prompt, mask tokens 1..3 paired with masks 0..2
    tok = tensors["tiny/original/iou_token"]
    assert tok.shape == (2, 256)
    assert tok[:, 0] == pytest.approx([p["points"][0][0] for p in record["instances"]])
    mt = tensors["large/dark/mask_tokens"]
    assert mt.shape == (2, 3, 256) and mt[0, 0, 0] == 256 and mt[0, 2, 0] == 3 * 256


def test_encoder_once_per_model_and_variant_and_batched_decoding(hand_case):
    record, _, models = hand_case
    for m in models:
        assert m.encoder_passes == 2  # one per variant, whatever the instance count
        # 2 instances x 8 single-point prompts in chunks of 5, then 2 dense prompts, per variant
        assert m.decoded_batches == [5, 5, 5, 1, 2] * 2
    assert record["instances"][0]["gt_area"] == 32
    assert [i["id"] for i in record["instances"]] == [3, 9]


def test_meaningless_fields_are_nan(tmp_path):
    image = np.full((H, W, 3), 204, np.uint8)
    sample = Sample(image=image, masks={1: GT}, name="a.jpg", group="a")
    from usam.augment import Augmentations

    ex = Extractor(
        models=FakeModels([FakeModel("tiny", 1.0)]),
        augment=Augmentations(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, _ = ex.process(sample)
    x = record["fields"]["tiny"]["original"]
    assert np.isnan(x["h_augmentation"][0]) and np.isnan(x["h_theta"][0])
    assert x["h_all"][0] == pytest.approx(h(0.2 * 0.8 + 0.14 + 0.09), abs=1e-5)
    ex.writer.write(sample.name, record, {})
    stored = json.loads((tmp_path / "a.json").read_text())
    assert stored["fields"]["tiny"]["original"]["h_augmentation"] == [
        None
    ]  # NaN -> null, strict JSON


def test_image_without_instances_gets_an_empty_record(tmp_path):
    models = FakeModels([FakeModel("tiny", 1.0)])
    from usam.augment import Augmentations

    ex = Extractor(
        models=models,
        augment=Augmentations(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, tensors = ex.process(Sample(np.zeros((4, 4, 3), np.uint8), {}, "e.jpg", "e"))
    assert record["instances"] == [] and tensors == {} and models[0].encoder_passes == 0


# -- the real stage on the bundled sample, SAM 2 with random weights ----------------------------
FAST = ["sam_model=random", "sam_model.sizes=[tiny]", "sam_model.image_size=128", "augment=none"]


def records(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


def test_extract_sample_end_to_end(compose_cfg, tmp_path):
    cfg = compose_cfg("extract", FAST + ["augment=flip"])
    summary = run(cfg)
    out = tmp_path / "inference" / "sample" / "val"
    assert summary["done"] == 6 and summary["failed"] == 0 and summary["instances"] == 18
    assert summary["random_weights"] is True and summary["compiled_decoder"] is False
    assert summary["encoder_passes"] == 6 * 2  # images x variants, independent of instances
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["done"] == 6
    files = records(out)
    assert [p.relative_to(out).as_posix() for p in files][:1] == [
        "JPEGImages/480p/shapes-a/00000.json"
    ]
    rec = json.loads(files[0].read_text())
    assert rec["random_weights"] is True and rec["variants"] == ["original", "hflip"]
    for field in (
        "iou",
        "sam_score",
        "unsupervised_iou",
        "unsupervised_sam_score",
        "iou_dense_prompt",
        "entropy",
        "h_task",
        "h_prompt",
        "h_augmentation",
        "h_all",
    ):
        vals = rec["fields"]["tiny"]["original"][field]
        assert len(vals) == 3 and all(v is not None and 0 <= v <= 1 for v in vals), field
    assert rec["fields"]["tiny"]["hflip"]["h_theta"] == [None] * 3  # one model: no model axis
    t = load_file(files[0].with_suffix(".safetensors"))
    assert (
        t["tiny/hflip/mask_tokens"].shape == (3, 3, 256)
        and np.isfinite(t["tiny/hflip/mask_tokens"]).all()
    )
    assert not list(out.rglob("*.tmp-*"))


def test_record_matches_a_direct_decode(compose_cfg):
    """The stored tokens and IoUs are the ones SAM 2 gives for the centre prompt."""
    cfg = compose_cfg("extract", FAST)
    run(cfg)
    models = instantiate(cfg.sam_model)
    reader = instantiate(cfg.dataset)
    sample = next(iter(reader))
    writer = instantiate(cfg.writer)
    rec = writer.read(sample.name)
    t = load_file(writer.stem(sample.name).with_suffix(".safetensors"))
    model = models["tiny"]
    model.set_image(sample.image)
    pts = np.array([[i["points"][0]] for i in rec["instances"]], np.float32)
    dec = model.decode(pts, np.ones((len(pts), 1), np.int64))
    np.testing.assert_allclose(t["tiny/original/iou_token"], dec.iou_token.numpy(), atol=1e-4)
    np.testing.assert_allclose(t["tiny/original/mask_tokens"], dec.mask_tokens.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        rec["fields"]["tiny"]["original"]["scores"], dec.scores.numpy(), atol=1e-4
    )
    for k, inst in enumerate(rec["instances"]):
        gt = sample.masks[inst["id"]]
        for j in range(3):
            m = dec.masks[k, j].numpy()
            iou = (m & gt).sum() / max((m | gt).sum(), 1)
            assert rec["fields"]["tiny"]["original"]["ious"][k][j] == pytest.approx(iou, abs=1e-6)


def test_resume_skips_finished_images_and_redoes_unfinished(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg("extract", FAST)
    calls = {"n": 0}
    real = Extractor.process

    def crash_on_third(self, sample, *prompts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill in the middle of the third image
        return real(self, sample, *prompts)

    monkeypatch.setattr(Extractor, "process", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    out = tmp_path / "inference" / "sample" / "val"
    assert len(records(out)) == 2
    # a tensor file without its JSON is an unfinished image: it must be redone
    done = records(out)[1]
    done.unlink()
    monkeypatch.setattr(Extractor, "process", real)
    summary = run(cfg)
    assert summary["skipped"] == 1 and summary["done"] == 5 and len(records(out)) == 6


def test_corrupt_image_is_skipped_and_reported(compose_cfg, tmp_path):
    from usam.datasets.sample import SAMPLE_ROOT

    root = tmp_path / "sample"
    shutil.copytree(SAMPLE_ROOT, root)
    bad = root / "JPEGImages/480p/shapes-b/00001.jpg"
    bad.write_bytes(b"not a jpeg")
    summary = run(compose_cfg("extract", FAST + [f"dataset.root={root}"]))
    assert summary["done"] == 5 and summary["failed"] == 1
    assert summary["failures"][0]["file"].endswith("shapes-b/00001.jpg")


def test_shards_are_disjoint_and_cover_the_split(compose_cfg, tmp_path):
    names = []
    for i in range(3):
        cfg = compose_cfg(
            "extract", FAST + [f"shard.index={i}", "shard.count=3", f"out_dir={tmp_path}/s{i}"]
        )
        assert run(cfg)["done"] == 2
        names.append(
            {p.relative_to(tmp_path / f"s{i}").as_posix() for p in records(tmp_path / f"s{i}")}
        )
    assert not (names[0] & names[1]) and not (names[1] & names[2]) and not (names[0] & names[2])
    assert len(names[0] | names[1] | names[2]) == 6


def test_refuses_to_run_without_checkpoints(compose_cfg, tmp_path):
    cfg = compose_cfg("extract", ["sam_model=sam2.1"])
    with pytest.raises(Exception) as err:
        run(cfg)
    msg = str(user_error(err.value))
    assert str(tmp_path / "checkpoints" / "sam2.1" / "sam2.1_hiera_tiny.pt") in msg
    assert "python -m usam.download_checkpoints sam_model=sam2.1" in msg
    assert not (tmp_path / "inference").exists()


def test_cli_refusal_is_one_line(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.extract",
            f"paths.checkpoints={tmp_path}",
            f"paths.log_dir={tmp_path}/o",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "download_checkpoints" in res.stderr


def test_seed_flags_translate_to_overrides(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import augment_dataset as seed
    finally:
        sys.path.pop(0)
    ckpt = tmp_path / "checkpoints_2.0"
    ckpt.mkdir()
    (ckpt / "sam2_hiera_tiny.pt").touch()
    args = seed.parse(
        [
            "--dataset",
            "DAVIS",
            "--output-dir",
            str(tmp_path / "out"),
            "--split",
            "test-dev",
            "--model-root",
            str(ckpt),
            "--root",
            str(tmp_path / "DAVIS"),
            "--skip-augs",
            "--start",
            "2",
            "--end",
            "5",
            "--sample",
            "3",
        ]
    )
    ovr = seed.overrides(args)
    assert ovr == [
        "dataset=davis",
        "dataset.split=test",
        "augment=none",
        f"dataset.root='{tmp_path / 'DAVIS'}'",
        f"out_dir='{tmp_path / 'out'}'",
        "sam_model=sam2.0",
        f"sam_model.checkpoint_dir='{ckpt}'",
        "dataset.sample=3",
        "++dataset.start=2",
        "++dataset.end=5",
    ]
    args = seed.parse(
        ["--dataset", "SAV", "--split", "train", "--train-subsets", "sav_000", "sav_001"]
    )
    assert "dataset.train_subsets=['sav_000','sav_001']" in seed.overrides(args)
    assert "augment=paper" in seed.overrides(args)


def test_seed_script_runs_the_stage(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "augment_dataset.py"),
            "--dataset",
            "sample",
            "--output-dir",
            str(tmp_path / "out"),
            "--skip-augs",
            "--start",
            "1",
            "--end",
            "3",
            "sam_model=random",
            "sam_model.sizes=[tiny]",
            "sam_model.image_size=128",
            f"paths.log_dir={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["done"] == 2
    assert len(records(tmp_path / "out")) == 2


def test_record_names_with_dots_keep_their_stem(tmp_path):
    w = RecordWriter(root=tmp_path, dataset="d", split="val")
    w.write("v/frame.001.jpg", {"instances": []}, {})
    w.write("v/frame.002.jpg", {"instances": []}, {})
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [
        "frame.001.json",
        "frame.001.safetensors",
        "frame.002.json",
        "frame.002.safetensors",
    ]
    assert w.done("v/frame.001.jpg") and w.done("v/frame.002.jpg")
    assert w.read("v/frame.002.jpg")["dataset"] == "d"


# -- asymmetric stand-ins: every prompt, model and mask gives a different answer ----------------
def best_value(x: float, y: float, gain: float) -> float:
    """PointModel's constant best map for a single-point prompt at (x, y): distinct per pixel
    of the prompt region (columns 0, 1 of GT), scaled per model."""
    return gain * (0.1 + 0.05 * y + 0.4 * x)


POINT_SCORES = [0.3, 0.6, 0.1]  # by mask index; the best mask's score varies with the prompt
FULL_MAP, EMPTY_MAP = 0.9, 0.05  # constant maps of the whole-image and the empty mask


class PointModel(FakeModel):
    """Single-point prompt at (x, y): the best mask (= GT, IoU 1) is mask (x + y) % 3, its map
    the constant best_value(x, y, gain); the next mask is the whole image (IoU 0.5, map 0.9),
    the third empty (IoU 0, map 0.05). Dense prompt: mask 0 = whole image (0.5), mask 1 = GT
    without its last column (0.75, the best), mask 2 = empty (0)."""

    def decode(self, points, labels) -> Decoded:
        b, n = points.shape[:2]
        self.decoded_batches.append(b)
        masks = torch.zeros(b, 3, H, W, dtype=torch.bool)
        probs = torch.zeros(b, 3, 4, 4)
        for k in range(b):
            if n > 1:
                masks[k, 0] = True
                masks[k, 1, :, :3] = True
                probs[k] = torch.tensor([FULL_MAP, 0.6, EMPTY_MAP]).view(3, 1, 1)
                continue
            x, y = (float(v) for v in points[k, 0])
            jb = int(x + y) % 3
            masks[k, jb, :, :4] = True
            masks[k, (jb + 1) % 3] = True
            probs[k, jb] = best_value(x, y, self.gain)
            probs[k, (jb + 1) % 3] = FULL_MAP
            probs[k, (jb + 2) % 3] = EMPTY_MAP
        return Decoded(
            masks=masks,
            scores=torch.tensor([POINT_SCORES] * b),
            low_res_probs=probs,
            iou_token=torch.zeros(b, 256),
            mask_tokens=torch.zeros(b, 3, 256),
        )


def point_case(tmp_path, gains: dict[str, float]):
    """One instance (GT = left half), the given models, augment=none."""
    from usam.augment import Augmentations

    sample = Sample(image=np.full((H, W, 3), 99, np.uint8), masks={4: GT}, name="p.jpg", group="p")
    models = FakeModels([PointModel(m, g) for m, g in gains.items()])
    ex = Extractor(
        models=models,
        augment=Augmentations(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, _ = ex.process(sample)
    return record


def test_h_prompt_mixes_the_best_map_of_every_one_of_the_eight_prompts(tmp_path):
    record = point_case(tmp_path, {"tiny": 1.0})
    points = record["instances"][0]["points"]
    best = [int(x + y) % 3 for x, y in points]
    values = [best_value(x, y, 1.0) for x, y in points]
    # the data discriminate: the best mask and its map change between prompts
    assert len(points) == 8 and len(set(best)) > 1 and len(set(values)) > 2
    x = record["fields"]["tiny"]["original"]
    assert x["best"][0] == best[0] and x["iou"][0] == 1.0
    assert x["sam_score"][0] == pytest.approx(POINT_SCORES[best[0]])
    assert x["entropy"][0] == pytest.approx(h(values[0]), abs=1e-5)
    assert x["h_prompt"][0] == pytest.approx(h(np.mean(values)), abs=1e-5)
    # neither the centre alone, nor the seven samples alone, nor mask 0 of every prompt
    for wrong in (values[0], np.mean(values[1:])):
        assert h(np.mean(values)) != pytest.approx(h(wrong), abs=1e-3)


def test_iou_dense_prompt_is_the_best_of_the_three_dense_masks_not_the_first(tmp_path):
    x = point_case(tmp_path, {"tiny": 1.0})["fields"]["tiny"]["original"]
    assert x["iou_dense_prompt"][0] == pytest.approx(0.75)  # mask 1; mask 0 has 0.5, mask 2 0


def test_h_theta_with_two_models_and_no_augmentation(tmp_path):
    """augment=none, two models: h_theta mixes the two models' centre maps (mean, not sum),
    h_augmentation is NaN, and h_all mixes every prompt's score-weighted maps of both."""
    gains = {"tiny": 1.0, "large": 0.5}
    record = point_case(tmp_path, gains)
    points = record["instances"][0]["points"]
    (cx, cy) = points[0]
    centre = {m: best_value(cx, cy, g) for m, g in gains.items()}
    assert centre["tiny"] != centre["large"]
    w = np.array(POINT_SCORES) / sum(POINT_SCORES)
    mixed = []  # score-weighted mixture of the three maps, per model and prompt
    for g in gains.values():
        for x, y in points:
            jb = int(x + y) % 3
            maps = np.empty(3)
            maps[jb], maps[(jb + 1) % 3], maps[(jb + 2) % 3] = (
                best_value(x, y, g),
                FULL_MAP,
                EMPTY_MAP,
            )
            mixed.append(float(w @ maps))
    for m in gains:
        x = record["fields"][m]["original"]
        assert x["h_theta"][0] == pytest.approx(h(np.mean(list(centre.values()))), abs=1e-5)
        assert x["entropy"][0] == pytest.approx(h(centre[m]), abs=1e-5)
        assert np.isnan(x["h_augmentation"][0])
        assert x["h_all"][0] == pytest.approx(h(np.mean(mixed)), abs=1e-5)
    # a sum over the models (denominator 1 = the variant count) would be another number
    assert h(sum(centre.values())) != pytest.approx(h(np.mean(list(centre.values()))), abs=1e-3)


class ThresholdModel(FakeModel):
    """Segments what it sees: mask 0 = pixels brighter than 128 (channel 0), mask 1 = the 3x3
    square around the (first) prompt point, mask 2 = empty. Low-res maps: the image's channel
    0 mean-pooled 2x2, /255, clipped to [0.02, 0.98], for every mask. So it is equivariant
    with a flip, and a variant's fields equal the original's only if points are mapped
    forward and both masks and maps back."""

    def set_image(self, image: np.ndarray) -> None:
        self.encoder_passes += 1
        self.image = torch.as_tensor(image[..., 0].astype(np.float32))

    def decode(self, points, labels) -> Decoded:
        b = points.shape[0]
        self.decoded_batches.append(b)
        masks = torch.zeros(b, 3, H, W, dtype=torch.bool)
        masks[:, 0] = self.image > 128
        for k in range(b):
            x, y = (int(round(float(v))) for v in points[k, 0])
            masks[k, 1, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = True
        pooled = self.image.view(H // 2, 2, W // 2, 2).mean((1, 3)) / 255
        probs = pooled.clamp(0.02, 0.98).expand(b, 3, H // 2, W // 2).clone()
        return Decoded(
            masks=masks,
            scores=torch.tensor([[0.5, 0.3, 0.2]] * b),
            low_res_probs=probs,
            iou_token=torch.zeros(b, 256),
            mask_tokens=torch.zeros(b, 3, 256),
        )


def test_flip_variant_maps_points_forward_and_masks_and_maps_back(tmp_path):
    from omegaconf import OmegaConf

    image = np.full((H, W, 3), 20, np.uint8)
    image[1:7, :3] = 230  # the object: rows 1..6, columns 0..2 (18 px), far from the mirror
    gt = image[..., 0] > 128
    sample = Sample(image=image, masks={2: gt}, name="f.jpg", group="f")
    ex = Extractor(
        models=FakeModels([ThresholdModel("tiny", 1.0)]),
        augment=instantiate(OmegaConf.load(REPO / "conf" / "augment" / "flip.yaml")),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, _ = ex.process(sample)
    (px, py) = record["instances"][0]["points"][0]
    assert px == 0  # the eroded object is column 0: the 3x3 square holds 6 GT pixels
    f = record["fields"]["tiny"]
    pooled = image[..., 0].reshape(4, 2, 4, 2).mean((1, 3)) / 255
    p = np.clip(pooled, 0.02, 0.98)
    h_map = float((p * np.vectorize(h)(p)).sum() / p.sum())
    for v in ("original", "hflip"):
        assert list(f[v]["ious"][0]) == pytest.approx([1.0, 6 / 18, 0.0]), v
        assert f[v]["iou"][0] == 1.0 and f[v]["iou_dense_prompt"][0] == 1.0, v
        assert f[v]["entropy"][0] == pytest.approx(h_map, abs=1e-5), v
        # mixing a map with its unflipped mirror would blur it: this asymmetric map would change
        assert f[v]["h_augmentation"][0] == pytest.approx(h_map, abs=1e-5), v
    mirror = (p + p[:, ::-1]) / 2
    assert float((mirror * np.vectorize(h)(mirror)).sum() / mirror.sum()) != pytest.approx(
        h_map, abs=1e-3
    )


# -- RecordWriter: pairs, settings, resume (from the mutation run, docs/testing.md) ----------
SETTINGS = {"seed": 0, "models": ["tiny", "large"], "n_samples": 7}


def writer_with(root: Path, settings: dict | None = SETTINGS) -> RecordWriter:
    w = RecordWriter(root=root, dataset="davis", split="val")
    w.settings = settings
    return w


def test_record_pair_carries_its_provenance_and_the_digest_of_its_tensors(tmp_path):
    import hashlib

    w = writer_with(tmp_path)
    tensors = {"tiny/original/iou_token": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = w.write("v/00003.jpg", {"name": "v/00003.jpg", "instances": []}, tensors)
    assert path == tmp_path / "v" / "00003.json"
    rec = json.loads(path.read_text())
    digest = hashlib.sha256((tmp_path / "v" / "00003.safetensors").read_bytes()).hexdigest()
    assert rec == {
        "schema": rec["schema"],
        "kind": "usam.record",
        "dataset": "davis",
        "split": "val",
        "name": "v/00003.jpg",
        "instances": [],
        "settings": SETTINGS,
        "tensors_sha256": digest,
    }
    assert w.read("v/00003.jpg") == rec
    assert w.done("v/00003.jpg") and not w.done("v/00004.jpg")
    got = load_file(tmp_path / "v" / "00003.safetensors")
    assert np.array_equal(got["tiny/original/iou_token"], tensors["tiny/original/iou_token"])


def test_done_is_false_for_half_pairs_foreign_or_broken_records(tmp_path, caplog):
    w = writer_with(tmp_path)
    for stem in ("a", "b", "c", "d"):
        w.write(f"{stem}.jpg", {"name": f"{stem}.jpg"}, {"x": np.zeros(2, np.float32)})
    (tmp_path / "a.safetensors").unlink()  # JSON without its tensors
    (tmp_path / "b.json").write_text(json.dumps({"kind": "usam.container"}))  # not a record
    (tmp_path / "c.json").write_text("{ cut")  # a JSON cut short
    (tmp_path / "d.safetensors").write_bytes(b"other bytes")  # not the tensors described
    with caplog.at_level("WARNING", logger="usam.extract"):
        assert [w.done(f"{s}.jpg") for s in "abcd"] == [False] * 4
    assert any(m.endswith("; extracting it again") and "c.json" in m for m in caplog.messages)
    d_json, d_st = tmp_path / "d.json", tmp_path / "d.safetensors"
    (d_says,) = [m for m in caplog.messages if m.startswith(f"{d_st} is not the file {d_json}")]
    assert d_says.endswith(
        "describes (sha256 differs: the pair was half replaced or edited); extracting it again"
    )
    # a half pair is what an interrupted write leaves: redone without a warning
    assert not any("a.json" in m or "a.safetensors" in m for m in caplog.messages)
    # a writer whose settings were never set accepts any complete record
    w.write("e.jpg", {"name": "e.jpg"}, {})
    assert RecordWriter(root=tmp_path, dataset="d", split="val").done("e.jpg")


def test_resuming_over_other_settings_names_what_differs(tmp_path):
    writer_with(tmp_path).write("v/1.jpg", {"name": "v/1.jpg"}, {})
    # seed differs, models are the same, image_size is new (None in the old record)
    later = writer_with(tmp_path, {**SETTINGS, "seed": 3, "image_size": 1024})
    with pytest.raises(UsamError) as err:
        later.done("v/1.jpg")
    assert str(err.value) == (
        f"{tmp_path / 'v' / '1.json'} was extracted with other settings "
        "(image_size: None there, 1024 now; seed: 0 there, 3 now); "
        f"resuming would mix the two in {tmp_path}: choose another out_dir, or pass "
        "extractor.resume=false to recompute and replace its records"
    )
    with pytest.raises(UsamError, match=r"1\.json was extracted with other settings \(image_size"):
        later.check_existing()
    writer_with(tmp_path, None).write("v/1.jpg", {"name": "v/1.jpg"}, {})  # no settings kept
    with pytest.raises(UsamError, match="by a usam that did not record its settings; resuming"):
        writer_with(tmp_path).check_existing()
    assert writer_with(tmp_path, None).done("v/1.jpg")  # no settings to compare: accepted


def test_check_existing_compares_the_first_record_in_sorted_order(tmp_path):
    w = writer_with(tmp_path)
    w.write("b/1.jpg", {"name": "b/1.jpg"}, {})
    other = writer_with(tmp_path, {**SETTINGS, "seed": 5})
    other.write("c/1.jpg", {"name": "c/1.jpg"}, {})
    # neither hidden folders and files, nor JSON that is not a record, nor broken JSON count
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.json").write_text(json.dumps({"kind": "usam.record"}))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".hidden.json").write_text(json.dumps({"kind": "usam.record"}))
    (tmp_path / "a" / "0.json").write_text("{ cut")
    (tmp_path / "a" / "1.json").write_text(json.dumps({"kind": "usam.summary"}))
    (tmp_path / "a" / "2.txt").write_text("{}")
    w.check_existing()  # b/1.json comes first and matches; c/1.json is never read
    with pytest.raises(UsamError, match=r"b/1\.json was extracted with other settings"):
        writer_with(tmp_path, {**SETTINGS, "seed": 5}).check_existing()
    writer_with(tmp_path / "nothing-yet").check_existing()  # no out_dir yet: nothing to check


def test_record_names_may_not_leave_the_output_folder(tmp_path):
    w = writer_with(tmp_path)
    with pytest.raises(UsamError, match=r"record name \(image '\.\./x\.jpg'\) '\.\./x\.jpg'"):
        w.stem("../x.jpg")
    assert w.stem("v/a.PNG") == tmp_path / "v" / "a"  # image suffixes in any case are dropped
    assert w.stem("v/a.npz") == tmp_path / "v" / "a.npz"  # anything else is kept


# -- scores and tokens per prompt (from the mutation run, docs/testing.md) ---------------------
def prompt_scores(x: float, y: float) -> list[float]:
    """ScoreModel's SAM scores of masks 0..2 for a prompt at (x, y): the top mask moves with
    the prompt, and the values differ between prompts."""
    return [0.1 + 0.3 * ((j + int(x) + 2 * int(y)) % 3) + 0.01 * y for j in range(3)]


def prompt_masks(x: float, y: float) -> list[np.ndarray]:
    """PointModel's three single-point masks for a prompt at (x, y)."""
    jb = int(x + y) % 3
    masks = [np.zeros((H, W), bool) for _ in range(3)]
    masks[jb][:, :4] = True
    masks[(jb + 1) % 3][:] = True
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


class ScoreModel(PointModel):
    """PointModel whose scores (`prompt_scores`) and tokens depend on the prompt: the mask
    tokens of a prompt at (x, y) start with 100 x + y + 1000 j for mask j. Keeps the labels
    it is given."""

    def __init__(self, size: str, gain: float):
        super().__init__(size, gain)
        self.labels: list[np.ndarray] = []

    def decode(self, points, labels) -> Decoded:
        self.labels.append(labels)
        dec = super().decode(points, labels)
        xy = torch.as_tensor(np.asarray(points[:, 0]), dtype=torch.float32)
        tokens = 100 * xy[:, 0, None] + xy[:, 1, None] + 1000 * torch.arange(3.0)
        return Decoded(
            masks=dec.masks,
            # float64, as a model in another precision gives: records hold float32 anyway
            scores=torch.tensor(
                [prompt_scores(*p) for p in np.asarray(points[:, 0])], dtype=torch.float64
            ),
            low_res_probs=dec.low_res_probs,
            iou_token=dec.iou_token,
            mask_tokens=tokens[..., None].expand(-1, 3, 256).clone(),
        )


def test_scores_and_tokens_come_from_the_centre_prompt_of_each_instance(tmp_path):
    from usam.augment import Augmentations

    other = np.zeros((H, W), bool)
    other[1:, 4:] = True  # the right half without its top row
    gts = {4: GT, 6: other}
    sample = Sample(np.full((H, W, 3), 99, np.uint8), gts, name="u.jpg", group="u")
    model = ScoreModel("tiny", 1.0)
    ex = Extractor(
        models=FakeModels([model]),
        augment=Augmentations(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, tensors = ex.process(sample)
    x = record["fields"]["tiny"]["original"]
    tops = []
    for i, inst in enumerate(record["instances"]):
        pts = inst["points"]
        scores = [prompt_scores(*p) for p in pts]
        ious = [[iou(m, gts[inst["id"]]) for m in prompt_masks(*p)] for p in pts]
        best, top = int(np.argmax(ious[0])), int(np.argmax(scores[0]))
        tops.append(top)
        # the data discriminate: prompt 1 ranks or scores the masks otherwise than the centre
        assert int(np.argmax(scores[1])) != top and scores[1][best] != scores[0][best]
        assert x["best"][i] == best
        assert x["sam_score"][i] == pytest.approx(scores[0][best])
        assert x["unsupervised_iou"][i] == pytest.approx(ious[0][top])
        assert x["unsupervised_sam_score"][i] == pytest.approx(scores[0][top])
        assert list(x["scores"][i]) == pytest.approx(scores[0])
        assert list(x["ious"][i]) == pytest.approx(ious[0])
        # h_task mixes the centre prompt's three maps with its own normalised scores
        cx, cy = pts[0]
        jb = int(cx + cy) % 3
        maps = np.empty(3)
        maps[jb], maps[(jb + 1) % 3], maps[(jb + 2) % 3] = (
            best_value(cx, cy, 1.0),
            FULL_MAP,
            EMPTY_MAP,
        )
        w = np.array(scores[0]) / sum(scores[0])
        assert x["h_task"][i] == pytest.approx(h(float(w @ maps)), abs=1e-5)
        want = [100 * cx + cy + 1000 * j for j in range(3)]
        assert list(tensors["tiny/original/mask_tokens"][i, :, 0]) == pytest.approx(want)
    assert tops[0] != tops[1]  # one top mask per instance, not one for the image
    assert x["best"].dtype == np.int64
    assert {k: v.dtype for k, v in x.items() if k != "best"} == dict.fromkeys(
        set(x) - {"best"}, np.float32
    )
    # single-point prompts are decoded with labels (b, 1), dense ones with (b, 8): all ones
    assert [lab.shape for lab in model.labels] == [(5, 1), (5, 1), (5, 1), (1, 1), (2, 8)]
    assert all(lab.dtype == np.int64 and (lab == 1).all() for lab in model.labels)


def test_extractor_defaults_prefetch_auto_and_refusals(tmp_path):
    writer = RecordWriter(root=tmp_path, dataset="d", split="val")

    def make(models, **kw):
        return Extractor(models=FakeModels(models), augment=TwoVariants(), writer=writer, **kw)

    ex = make([FakeModel("tiny", 1.0)])
    assert (ex.seed, ex.n_samples, ex.resume, ex.prefetch, ex.images_per_call) == (0, 7, True, 0, 1)
    assert (make([], prefetch=3, images_per_call="4").prefetch, ex.images_per_call) == (3, 1)
    assert make([], images_per_call="4").images_per_call == 4
    # auto: read ahead when any model is on a GPU; a model without `device` counts as CPU
    gpu = FakeModel("large", 1.0)
    gpu.device = torch.device("cuda")
    assert make([FakeModel("tiny", 1.0), gpu], prefetch="auto").prefetch == 2
    assert make([FakeModel("tiny", 1.0), object()], prefetch="auto").prefetch == 0
    for prefetch, per_call in [(-1, 1), ("many", 1), (True, 1), (0, 0)]:
        with pytest.raises(UsamError) as err:
            make([], prefetch=prefetch, images_per_call=per_call)
        assert str(err.value) == (
            "extractor.prefetch must be auto or >= 0 and extractor.images_per_call >= 1, "
            f"got {prefetch!r} and {per_call}"
        )


def test_prompts_per_instance_follow_n_samples(tmp_path):
    other = np.zeros((H, W), bool)
    other[1:, 4:] = True
    sample = Sample(
        np.zeros((H, W, 3), np.uint8), {6: other, 4: GT, 5: np.zeros((H, W), bool)}, "a.jpg", "a"
    )
    ex = Extractor(
        models=FakeModels([]),
        augment=TwoVariants(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
        n_samples=3,
    )
    ids, points = ex.prompts(sample)
    assert ids == [4, 6] and points.shape == (2, 4, 2)  # sorted, the empty mask left out
    assert GT[int(points[0, 0, 1]), int(points[0, 0, 0])]  # instance 4's centre is on its mask
    ids, points = ex.prompts(Sample(sample.image, {5: sample.masks[5]}, "e.jpg", "e"))
    assert ids == [] and points.shape == (0, 4, 2) and points.dtype == np.float32


class BatchedModel(FakeModel):
    """FakeModel with SAM 2's batch encoding: one call encodes several images."""

    def set_images(self, images):
        self.encoder_passes += len(images)
        self.c0s = [float(im.mean()) / 255 * self.gain for im in images]

    def use_image(self, i):
        self.c0 = self.c0s[i]


class KeyedVariants(TwoVariants):
    """TwoVariants that records (variant, key) of every call."""

    def __init__(self):
        self.keys: list[tuple[str, str | None]] = []

    def __iter__(self):
        for name, apply in super().__iter__():

            def keyed(img, pts, key=None, apply=apply, name=name):
                self.keys.append((name, key))
                return apply(img, pts)

            yield name, keyed


def test_two_images_in_one_encoder_call_give_the_records_of_each_alone(tmp_path):
    right = np.zeros((H, W), bool)
    right[:, 5:] = True
    a = Sample(np.full((H, W, 3), 204, np.uint8), {3: GT}, "a.jpg", "a")
    b = Sample(np.full((H, W, 3), 102, np.uint8), {3: GT, 8: right}, "b.jpg", "b")

    def extractor():
        return Extractor(
            models=FakeModels([BatchedModel("tiny", 1.0), BatchedModel("large", 0.5)]),
            augment=KeyedVariants(),
            writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
        )

    ex = extractor()
    # given prompts are used as they are (b's: the sampled ones, a's: its own points)
    pa = ([3], np.full((1, 8, 2), 1.0, np.float32))
    both = ex.process_many([a, b], [pa, None])
    alone = [extractor().process(a, pa), extractor().process(b)]
    assert both[0][0]["instances"][0]["points"] == [[1.0, 1.0]] * 8
    for (rec, tensors), (rec1, tensors1) in zip(both, alone, strict=True):
        assert json.dumps(rec, default=np.ndarray.tolist) == json.dumps(
            rec1, default=np.ndarray.tolist
        )
        assert tensors.keys() == tensors1.keys()
        assert all(np.array_equal(tensors[k], tensors1[k]) for k in tensors)
    # the data discriminate: the two images give other numbers
    fa, fb = both[0][0]["fields"]["tiny"]["original"], both[1][0]["fields"]["tiny"]["original"]
    assert fa["entropy"][0] != pytest.approx(fb["entropy"][0], abs=1e-3)
    # every variant is made with the image's name as its random key
    assert ex.augment.keys == [
        ("original", "a.jpg"),
        ("original", "b.jpg"),
        ("dark", "a.jpg"),
        ("dark", "b.jpg"),
    ]


def test_record_header_names_the_image_its_size_and_what_made_it(tmp_path):
    ex = Extractor(
        models=FakeModels([FakeModel("tiny", 1.0), FakeModel("large", 0.5)]),
        augment=TwoVariants(),
        writer=RecordWriter(root=tmp_path, dataset="d", split="val"),
    )
    record, tensors = ex.process(Sample(np.zeros((4, 6, 3), np.uint8), {}, "v/e.jpg", "v"))
    assert record == {
        "name": "v/e.jpg",
        "group": "v",
        "width": 6,
        "height": 4,
        "sam_version": "fake",
        "random_weights": True,
        "models": ["tiny", "large"],
        "variants": ["original", "dark"],
        "instances": [],
        "fields": {},
    }


def test_stale_temporaries_of_a_killed_run_are_removed_on_the_first_visit(tmp_path):
    import os

    (tmp_path / "v").mkdir()
    stale = tmp_path / "v" / ".00003.json.tmp-x"  # no owner in the name: stale by its age
    stale.write_text("{")
    os.utime(stale, (0, 0))
    fresh = tmp_path / "v" / ".00004.json.tmp-y"  # recent: may be a live shard's
    fresh.write_text("{")
    assert not writer_with(tmp_path).done("v/00003.jpg")
    assert not stale.exists() and fresh.exists()


def test_check_existing_reads_past_other_files_in_the_first_folder(tmp_path):
    writer_with(tmp_path).write("b/2.jpg", {"name": "b/2.jpg"}, {})
    (tmp_path / "b" / "0.json").write_text("{ cut")  # broken JSON before the record
    (tmp_path / "b" / "1.txt").write_text("{}")  # and a file that is not JSON
    with pytest.raises(UsamError, match=r"2\.json was extracted with other settings"):
        writer_with(tmp_path, {**SETTINGS, "seed": 5}).check_existing()
