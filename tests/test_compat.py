"""usam.compat.patch_sam2: the published snippet, unchanged apart from its import line.

SAM 2 is built the published way (`sam2.build_sam.build_sam2`, through sam2's own Hydra) from
the tiny 2.1 config without a checkpoint (random weights, 1024 px, CPU); the MLPs are published-
shape state dicts (tests/published.py) whose layers differ, and the reference values are the
published forward pass on tokens read by the test's own hooks.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from published import DecoderTokens, published_forward, published_state, write_published
from sam2.sam2_image_predictor import SAM2ImagePredictor

from usam.errors import UsamError
from usam.mlp import UsamMLP, save_bundle

# sam2 warns when it builds on CUDA-less machines (its default device is cuda)
pytestmark = pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")

SEEDS = {"iou_tiny": 31, "iou_unsupervised": 32, "task_gap": 33}
SHIFT = {"iou_tiny": 0.0, "iou_unsupervised": 0.0, "task_gap": 0.5}


def make_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    img[20:70, 30:100] = (40, 180, 60)
    return img


@contextlib.contextmanager
def sam2_hydra():
    """sam2's global Hydra, as `import sam2` sets it up (other tests clear it)."""
    GlobalHydra.instance().clear()
    initialize_config_module("sam2", version_base="1.2")
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def mlp_directory(tmp_path_factory):
    return write_published(tmp_path_factory.mktemp("UncertainSAM"), "sam2.1", SEEDS)


@pytest.fixture(scope="module")
def sam_model():
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    with sam2_hydra():
        return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")


@pytest.fixture(scope="module")
def encoded(sam_model):
    """One encoder pass (about 30 s on a loaded 2-core CPU at 1024 px) for every test below."""
    p = SAM2ImagePredictor(sam_model)
    with torch.inference_mode():
        p.set_image(make_image())
    return p


def with_image(sam_predictor, encoded):
    """`sam_predictor` as if set_image(make_image()) had run on it: the encoded one's features."""
    sam_predictor._features, sam_predictor._orig_hw = encoded._features, encoded._orig_hw
    sam_predictor._is_image_set = True
    return sam_predictor


def test_the_published_snippet_runs_with_the_usam_import(sam_model, mlp_directory, monkeypatch):
    from sam2 import build_sam

    monkeypatch.setattr(build_sam, "build_sam2", lambda cfg, ckpt: sam_model)  # built once
    your_image = make_image()
    printed = io.StringIO()
    # ---- the published README's snippet; only the usam import line differs
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from usam.compat import patch_sam2

    checkpoint = None  # no checkpoint download in tests: random weights
    model_cfg = "configs/sam2.1/sam2.1_hiera_t.yaml"
    predictor = SAM2ImagePredictor(build_sam2(model_cfg, checkpoint))

    mlp_directory = str(mlp_directory)
    predictor = patch_sam2(predictor, mlp_directory)

    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        predictor.set_image(your_image)
        with DecoderTokens(sam_model) as tokens:
            masks, _, _, mlp_scores = predictor.predict(
                point_coords=np.array([[70, 40]]), point_labels=np.array([1])
            )

        for mlp, v in mlp_scores.items():
            print(f"MLP {mlp} has a score of {v}", file=printed)
    # ---- end of the snippet
    assert masks.shape == (3, 96, 128)
    assert sorted(mlp_scores) == sorted(SEEDS)  # the published folder names
    rows = tokens.rows([0, 1, 2])[0]  # the published pairing: mask j with token j
    for name, seed in SEEDS.items():
        assert mlp_scores[name].shape == (3, 1) and mlp_scores[name].dtype == np.float32
        want = published_forward(published_state(seed), rows) - SHIFT[name]
        np.testing.assert_allclose(mlp_scores[name][:, 0], want.numpy(), rtol=0, atol=1e-5)
        wrong = published_forward(published_state(seed), tokens.rows([1, 2, 3])[0])
        assert np.abs(mlp_scores[name][:, 0] + SHIFT[name] - wrong.numpy()).max() > 1e-4
    assert printed.getvalue().count("MLP ") == 3 and "iou_unsupervised" in printed.getvalue()


def test_masks_scores_and_logits_are_sam2s_own_and_only_that_instance_changes(
    sam_model, mlp_directory, encoded
):
    from usam.compat import patch_sam2

    point = np.array([[30.0, 60.0], [100.0, 20.0]])
    plain = with_image(SAM2ImagePredictor(sam_model), encoded)
    patched = with_image(patch_sam2(SAM2ImagePredictor(sam_model), mlp_directory), encoded)
    with torch.inference_mode():
        want = plain.predict(point, np.array([1, 0]), return_logits=True)
        got = patched.predict(point, np.array([1, 0]), return_logits=True)
        again = plain.predict(point, np.array([1, 0]), return_logits=True)
    assert len(want) == 3 and len(again) == 3 and len(got) == 4
    for a, b in zip(want, got[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert "predict" not in vars(plain) and SAM2ImagePredictor.predict is not patched.predict


def test_batched_and_single_mask_calls(sam_model, mlp_directory, encoded):
    """Batched prompts (the published code raised NotImplementedError) and multimask_output=False:
    the returned mask's value, from the token that made it (published pairing: one early)."""
    from usam.compat import patch_sam2

    p = with_image(patch_sam2(SAM2ImagePredictor(sam_model), mlp_directory), encoded)
    points = np.array([[[70.0, 40.0]], [[10.0, 10.0]]])
    with torch.inference_mode():
        with DecoderTokens(sam_model) as tokens:
            _, scores, _, batched = p.predict(points, np.ones((2, 1)))
        assert scores.shape == (2, 3) and batched["task_gap"].shape == (2, 3, 1)
        want = published_forward(published_state(33), tokens.rows([0, 1, 2])) - 0.5
        np.testing.assert_allclose(batched["task_gap"][..., 0], want.numpy(), atol=1e-5)
        with DecoderTokens(sam_model) as tokens:
            masks, scores, logits, single = p.predict(points[0], np.ones(1), multimask_output=False)
        _, _, multi = SAM2ImagePredictor.predict(p, points[0], np.ones(1))
    same = [j for j in range(3) if np.array_equal(logits[0], multi[j])]
    source = same[0] + 1 if same else 0  # SAM 2's dynamic choice, read off its outputs
    assert single["iou_tiny"].shape == (1, 1)
    want = published_forward(published_state(31), tokens.rows([max(source - 1, 0)])[0])
    np.testing.assert_allclose(single["iou_tiny"][:, 0], want.numpy(), atol=1e-5)
    # the published demo's own lines run on it
    sorted_ind = np.argsort(scores)[::-1]
    mask = masks[sorted_ind][0]
    demo = {k: v[sorted_ind][0] for k, v in single.items()}
    assert mask.shape == (96, 128) and demo["task_gap"].shape == (1,)
    np.testing.assert_allclose(demo["iou_tiny"], want.numpy(), atol=1e-5)


def test_usam_bundles_keep_their_targets_and_pairing(sam_model, tmp_path, encoded):
    from usam.compat import patch_sam2

    torch.manual_seed(4)
    save_bundle(
        tmp_path / "unsupervised_iou",
        UsamMLP(),
        {"target": "unsupervised_iou", "output_shift": 0.0, "sam_version": "sam2.1"},
    )
    p = with_image(patch_sam2(SAM2ImagePredictor(sam_model), tmp_path), encoded)
    with torch.inference_mode():
        with DecoderTokens(sam_model) as tokens:
            *_, mlp_scores = p.predict(np.array([[70, 40]]), np.array([1]))
    model = p._usam.estimators["unsupervised_iou"]
    want = model(tokens.rows([1, 2, 3])[0])  # usam pairing: mask j with token j+1
    assert list(mlp_scores) == ["unsupervised_iou"]
    np.testing.assert_allclose(mlp_scores["unsupervised_iou"][:, 0], want.numpy(), atol=1e-5)


def test_no_mlp_dir_gives_empty_scores_and_bad_inputs_are_usam_errors(sam_model, tmp_path, encoded):
    from usam.compat import patch_sam2

    p = with_image(patch_sam2(SAM2ImagePredictor(sam_model)), encoded)
    with torch.inference_mode():
        masks, _, _, mlp_scores = p.predict(np.array([[70, 40]]), np.array([1]))
    assert mlp_scores == {} and masks.shape == (3, 96, 128)
    with pytest.raises(UsamError, match="takes a sam2 SAM2ImagePredictor"):
        patch_sam2(sam_model, None)
    with pytest.raises(UsamError, match="nowhere not found"):
        patch_sam2(SAM2ImagePredictor(sam_model), tmp_path / "nowhere")
    bad = write_published(tmp_path, "sam2.1", {"iou_tiny": 1})
    torch.save({"layers.0.weight": torch.zeros(3)}, bad / "iou_tiny" / "model.pth")
    with pytest.raises(UsamError, match="iou_tiny/model.pth: not a published USAM MLP"):
        patch_sam2(SAM2ImagePredictor(sam_model), bad)
