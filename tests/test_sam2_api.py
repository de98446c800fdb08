"""usam/sam.py drives SAM2ImagePredictor through private members; pyproject pins sam2 to the
minor versions where they are known to exist. This fails loudly, naming the member, when a
sam2 upgrade moves one, instead of letting extraction break deep inside a run."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from packaging.version import Version

TESTED = (Version("1.1"), Version("1.2"))  # [low, high), as pinned in pyproject.toml


def test_installed_sam2_is_a_tested_minor_version():
    v = Version(version("sam2"))
    assert TESTED[0] <= v < TESTED[1], (
        f"sam2 {v} is outside the tested range [{TESTED[0]}, {TESTED[1]}): check the private "
        "members below against its SAM2ImagePredictor, then widen the pin in pyproject.toml"
    )


def test_the_private_predictor_members_usam_uses_exist_with_their_parameters():
    from sam2.sam2_image_predictor import SAM2ImagePredictor as P

    prep = inspect.signature(P._prep_prompts).parameters
    assert list(prep)[1:6] == [
        "point_coords",
        "point_labels",
        "box",
        "mask_logits",
        "normalize_coords",
    ], f"SAM2ImagePredictor._prep_prompts changed: {list(prep)}"
    predict = inspect.signature(P._predict).parameters
    for name in ("point_coords", "point_labels", "boxes", "mask_input", "multimask_output"):
        assert name in predict, f"SAM2ImagePredictor._predict lost {name!r}: {list(predict)}"
    init, set_image = inspect.getsource(P.__init__), inspect.getsource(P.set_image)
    for member, src in [("_bb_feat_sizes", init), ("_is_image_set", init), ("_orig_hw", set_image)]:
        assert f"self.{member}" in src, f"SAM2ImagePredictor no longer sets {member}"
