"""python -m usam.import_published: published state dicts -> usam bundles, and estimates that
equal the published MLP's forward pass on the published token pairing.

The state dicts have exactly the published keys and shapes with three different layers
(tests/published.py); SAM 2 is a seeded random tiny model at image_size=128.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from published import DecoderTokens, published_forward, published_state, write_published
from sam2.sam2_image_predictor import SAM2ImagePredictor

from usam.cli import run_stage
from usam.errors import UsamError
from usam.import_published import _positional_source, read_published, run
from usam.inference import UncertainSAM, load_bundles
from usam.mlp import Estimator, UsamMLP, load_bundle, save_bundle
from usam.sam import load_sam_model
from usam.schema import TARGETS

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
# published folder name -> seed: every target a different MLP
SEEDS = {"iou_tiny": 11, "iou_unsupervised": 12, "task_gap": 13, "prompt_gap": 14}
POINTS = np.array([[[15.0, 12.0]], [[30.0, 20.0]], [[50.0, 35.0]]], np.float32)


def image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 56, 3), np.uint8)
    img[8:30, 10:40] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


def import_cfg(compose_cfg, source, out, *extra):
    return compose_cfg("import_published", [f"source={source}", f"out={out}", *extra])


@pytest.fixture
def checkout(tmp_path):
    """A published checkout with both versions; sam2.0's weights differ from sam2.1's."""
    root = tmp_path / "UncertainSAM"
    write_published(root, "sam2.1", SEEDS)
    write_published(root, "sam2.0", {"iou_tiny": 21, "model_gap": 22})
    return root


@pytest.fixture(scope="module")
def sam():
    return load_sam_model("tiny", None, TINY, random_weights=True, image_size=128, device="cpu")


# --------------------------------------------------------------------------- the import


def test_a_checkout_becomes_bundles_with_targets_version_sizes_and_pairing(
    compose_cfg, checkout, tmp_path
):
    out = tmp_path / "models"
    summary = run(import_cfg(compose_cfg, checkout, out))
    assert sorted(summary["bundles"]) == ["sam2.0", "sam2.1"]
    assert sorted(p.name for p in (out / "sam2.1").iterdir()) == [
        "iou_tiny",
        "prompt_gap",
        "task_gap",
        "unsupervised_iou",  # the published iou_unsupervised
    ]
    assert sorted(p.name for p in (out / "sam2.0").iterdir()) == ["iou_tiny", "model_gap"]
    _, config = load_bundle(out / "sam2.1" / "unsupervised_iou")
    assert config["target"] == "unsupervised_iou" and config["sam_version"] == "sam2.1"
    assert config["models"] == ["tiny", "small", "base_plus", "large"]
    assert config["token_pairing"] == "published" and config["random_weights"] is False
    src = checkout / "models/mlps/sam2.1/iou_unsupervised/model.pth"
    assert config["imported_from"]["file"] == str(src.resolve())
    assert summary["use"]["sam2.1"] == str(out / "sam2.1")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["out"] == str(out)


def test_imported_bundles_compute_the_published_forward_pass(compose_cfg, checkout, tmp_path):
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    x = torch.randn(7, 512, generator=torch.Generator().manual_seed(3))
    for version, names in [("sam2.1", SEEDS), ("sam2.0", {"iou_tiny": 21, "model_gap": 22})]:
        for name, seed in names.items():
            target = {"iou_unsupervised": "unsupervised_iou"}.get(name, name)
            got = Estimator.load(out / version / target)(x)
            want = published_forward(published_state(seed), x) - TARGETS[target]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the versions' weights differ, so a bundle did not land in the other version's folder
    a = Estimator.load(out / "sam2.1" / "iou_tiny")(x)
    assert not torch.allclose(a, Estimator.load(out / "sam2.0" / "iou_tiny")(x))


def test_one_version_folder_takes_its_version_from_the_name(compose_cfg, checkout, tmp_path):
    summary = run(import_cfg(compose_cfg, checkout / "models/mlps/sam2.0", tmp_path / "m"))
    assert list(summary["bundles"]) == ["sam2.0"]
    assert load_bundle(tmp_path / "m/sam2.0/model_gap")[1]["sam_version"] == "sam2.0"
    renamed = tmp_path / "mlps_copy"
    (checkout / "models/mlps/sam2.1").rename(renamed)
    with pytest.raises(UsamError, match="cannot tell the SAM version.*version=sam2.0"):
        run(import_cfg(compose_cfg, renamed, tmp_path / "m"))
    run(import_cfg(compose_cfg, renamed, tmp_path / "m", "version=sam2.1"))
    assert (tmp_path / "m/sam2.1/unsupervised_iou/config.json").is_file()


def test_a_rerun_keeps_identical_bundles_and_refuses_to_replace_others(
    compose_cfg, checkout, tmp_path
):
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    again = run(import_cfg(compose_cfg, checkout, out))
    assert {e["status"] for e in again["bundles"]["sam2.1"]} == {"skipped"}
    before = (out / "sam2.1/task_gap/model.safetensors").read_bytes()
    torch.save(published_state(99), checkout / "models/mlps/sam2.1/task_gap/model.pth")
    with pytest.raises(UsamError, match="task_gap already holds a bundle with other weights"):
        run(import_cfg(compose_cfg, checkout, out))
    assert (out / "sam2.1/task_gap/model.safetensors").read_bytes() == before
    run(import_cfg(compose_cfg, checkout, out, "overwrite=true"))
    x = torch.randn(4, 512)
    want = published_forward(published_state(99), x) - 0.5
    torch.testing.assert_close(Estimator.load(out / "sam2.1/task_gap")(x), want, atol=1e-6, rtol=0)


class NotAStateDict:
    pass


def _bad(state_fn):
    def write(path):
        torch.save(state_fn(), path)

    return write


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"not a torch file"), "weights_only=True"),
        (_bad(lambda: {"obj": NotAStateDict()}), "weights_only=True"),
        (_bad(lambda: [torch.zeros(1)]), "not a plain state dict"),
        (_bad(lambda: {**published_state(1), "layers.3.weight": torch.zeros(1, 1)}), "layers.3"),
        (
            _bad(lambda: {k: v for k, v in published_state(1).items() if k != "layers.2.bias"}),
            "missing \\['layers.2.bias'\\]",
        ),
        (
            _bad(lambda: {**published_state(1), "layers.1.weight": torch.zeros(256, 512)}),
            "layers.1.weight is .* \\(256, 512\\)",
        ),
        (
            _bad(
                lambda: {**published_state(1), "layers.0.bias": torch.zeros(512, dtype=torch.long)}
            ),
            "float tensor",
        ),
        (
            _bad(lambda: {**published_state(1), "layers.2.bias": torch.tensor([float("nan")])}),
            "NaN",
        ),
        (
            _bad(lambda: {"net." + k: v for k, v in published_state(1).items()}),
            "not a published USAM MLP",
        ),
    ],
)
def test_anything_but_the_published_state_dict_is_refused_and_nothing_is_written(
    compose_cfg, checkout, tmp_path, write, message
):
    bad = checkout / "models/mlps/sam2.1/task_gap/model.pth"
    write(bad)
    with pytest.raises(UsamError, match=message) as err:
        run(import_cfg(compose_cfg, checkout / "models/mlps/sam2.1", tmp_path / "out"))
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()  # every file is checked before any is written


def test_an_ordered_dict_as_torch_saves_it_is_accepted(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(OrderedDict(published_state(5)), path)
    assert set(read_published(path)) == set(published_state(5))


@pytest.mark.parametrize(
    "layout, message",
    [
        ("nothing", "no <target>/model.pth in it"),
        ("unknown", r"\['iou_huge'\] are not published estimator names"),
        ("file", "is not a folder"),
        ("no_version", "no sam2.0 or sam2.1 folder"),
    ],
)
def test_bad_folders_are_refused(compose_cfg, tmp_path, layout, message):
    src = tmp_path / "src" / "sam2.1"
    src.mkdir(parents=True)
    if layout == "unknown":
        write_published(tmp_path / "x", "sam2.1", {"iou_huge": 1, "iou_tiny": 2})
        src = tmp_path / "x/models/mlps/sam2.1"
    elif layout == "file":
        src = src / "model.pth"
        src.write_bytes(b"")
    elif layout == "no_version":
        (tmp_path / "repo/models/mlps/sam3").mkdir(parents=True)
        src = tmp_path / "repo"
    with pytest.raises(UsamError, match=message):
        run(import_cfg(compose_cfg, src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_command_takes_the_folder_as_its_first_argument(checkout, tmp_path):
    assert _positional_source(["m", "/a/b", "out=x"]) == ["m", "source=/a/b", "out=x"]
    assert _positional_source(["m", "source=/a/b"]) == ["m", "source=/a/b"]
    assert _positional_source(["m", "--help"]) == ["m", "--help"]
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "usam.import_published", str(checkout), f"out={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["use"]["sam2.1"] == str(
        tmp_path / "o" / "sam2.1"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "usam.import_published", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 1 and "nowhere is not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- the estimates


def test_estimates_equal_the_published_mlp_on_the_published_pairing(
    compose_cfg, checkout, tmp_path, sam
):
    """Published bundles read token j for mask j; a usam bundle in the same UncertainSAM
    reads token j+1. Reference: the published forward pass on tokens read by the test's hooks
    around SAM 2's own predictor."""
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    torch.manual_seed(7)
    save_bundle(  # a usam-trained bundle beside them (another target: one key per target)
        tmp_path / "own" / "iou_large",
        UsamMLP(),
        {"target": "iou_large", "output_shift": 0.0, "sam_version": "sam2.1", "models": ["tiny"]},
    )
    preds = {**load_bundles(out / "sam2.1"), **load_bundles(tmp_path / "own")}
    usam = UncertainSAM(sam, preds)
    usam.set_image(image())
    got = usam.predict(POINTS)

    upstream = SAM2ImagePredictor(sam.model)
    upstream._bb_feat_sizes = sam.sam_predictor._bb_feat_sizes
    with torch.inference_mode():
        upstream.set_image(image())
    with DecoderTokens(sam.model) as tokens, torch.inference_mode():
        upstream.predict(POINTS, np.ones((3, 1)), multimask_output=True)
    published_rows, usam_rows = tokens.rows([0, 1, 2]), tokens.rows([1, 2, 3])
    for name, seed in SEEDS.items():
        target = {"iou_unsupervised": "unsupervised_iou"}.get(name, name)
        want = published_forward(published_state(seed), published_rows) - TARGETS[target]
        np.testing.assert_allclose(got.estimates[target], want.numpy(), rtol=0, atol=1e-5)
        wrong = published_forward(published_state(seed), usam_rows) - TARGETS[target]
        assert np.abs(got.estimates[target] - wrong.numpy()).max() > 1e-3  # pairing matters
    own = Estimator.load(tmp_path / "own" / "iou_large")(usam_rows.reshape(-1, 512)).view(3, 3)
    np.testing.assert_allclose(got.estimates["iou_large"], own.numpy(), rtol=0, atol=1e-5)
    assert list(got.estimates) == list(preds)  # the bundles' order


def test_usam_predict_runs_on_imported_bundles(compose_cfg, checkout, tmp_path):
    from PIL import Image

    from usam.predict import run as predict_run

    run(import_cfg(compose_cfg, checkout, tmp_path / "models"))
    Image.fromarray(image()).save(tmp_path / "photo.png")
    cfg_overrides = [
        "sam_model=random",
        "sam_model.image_size=128",
        "sam_model.device=cpu",
        f"image={tmp_path / 'photo.png'}",
        "point=[30,20]",
        f"estimators={tmp_path / 'models' / 'sam2.1'}",
    ]
    cfg = compose_cfg("predict", cfg_overrides)
    summary = run_stage(predict_run, cfg)
    assert sorted(summary["estimates"]) == sorted(
        ["iou_tiny", "unsupervised_iou", "task_gap", "prompt_gap"]
    )
    assert all(len(v) == 3 for v in summary["estimates"].values())
    assert Path(summary["overlay"]).is_file()
    # the published folder itself, read in memory: the same numbers
    direct_overrides = [*cfg_overrides[:-1], f"estimators={checkout / 'models/mlps/sam2.1'}"]
    direct = run_stage(predict_run, compose_cfg("predict", direct_overrides))
    assert direct["estimates"] == summary["estimates"]
    single = run_stage(
        predict_run, compose_cfg("predict", [*cfg_overrides, "multimask_output=false"])
    )
    assert single["best"] == 0 and len(single["scores"]) == 1
    assert all(len(v) == 1 for v in single["estimates"].values())
