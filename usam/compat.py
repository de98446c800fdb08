"""The published code's API on usam: `patch_sam2(sam_predictor, mlp_dir)`.

    from usam.compat import patch_sam2          # was: from usam.patch_sam2 import patch_sam2
    sam_predictor = patch_sam2(SAM2ImagePredictor(build_sam2(model_cfg, checkpoint)), mlp_dir)
    sam_predictor.set_image(image)
    masks, scores, logits, mlp_scores = sam_predictor.predict(point_coords=..., point_labels=...)

`predict` keeps SAM 2's signature and answer (it calls SAM 2's own `predict`) and adds
`mlp_scores`: {name: float32 array of shape scores.shape + (1,)}, one value per returned mask
as the published MLPs' [N, 1] output, gap targets shifted back by -0.5. `mlp_dir` is a
published `models/mlps/sam2.X` folder (keys are its folder names, e.g. `iou_unsupervised`;
the published token pairing) or a folder of usam bundles (keys are their targets; each bundle's
own pairing). Only that instance changes: its `predict` is replaced, and the decoder's token
hooks record only during its calls. Unlike the published code, batched prompts work, the
function returns SAM 2's predictor (the published README assigns its result), and with
multimask_output=False the value is that of the returned mask, from the token that made it.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import UsamError
from usam.inference import UncertainSAM, load_bundles
from usam.mlp import Estimator
from usam.sam import SamModel, captured_tokens

log = logging.getLogger(__name__)


def load_estimators(mlp_dir: str | Path | None) -> tuple[dict[str, Estimator], dict[str, str]]:
    """(estimators by target, target -> key of mlp_scores) from a published or usam folder."""
    from usam.import_published import load_published

    if mlp_dir is None:
        return {}, {}
    mlp_dir = Path(mlp_dir)
    if not mlp_dir.is_dir():
        raise UsamError(
            f"MLP directory {mlp_dir.resolve()} not found; pass the published models/mlps/sam2.X "
            "folder or a folder of usam bundles"
        )
    if any(mlp_dir.glob("*/model.pth")):
        published = load_published(mlp_dir)
        return {p.target: p for p in published.values()}, {
            p.target: n for n, p in published.items()
        }
    estimators = load_bundles(mlp_dir)
    return estimators, {t: t for t in estimators}


def patch_sam2(sam_predictor: Any, mlp_dir: str | Path | None = None) -> Any:
    """Make this SAM2ImagePredictor's `predict` also return `mlp_scores`; returns it."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    if not isinstance(sam_predictor, SAM2ImagePredictor):
        raise UsamError(
            f"patch_sam2 takes a sam2 SAM2ImagePredictor instance, got {type(sam_predictor).__name__}"
        )
    estimators, keys = load_estimators(mlp_dir)
    old = getattr(sam_predictor, "_usam", None)
    if old is not None:  # patched before: the new folder replaces the old one
        old.sam.remove_hooks()
    versions = sorted({str(p.config.get("sam_version")) for p in estimators.values()})
    sam = SamModel(sam_predictor.model, size="unknown", version="+".join(versions) or "unknown")
    sam.sam_predictor = sam_predictor  # its set_image feeds the decoder calls
    # SAM's size and version are unknown here (a bare model), so bundles are not checked
    # against them; random ones still get the loud warning
    usam = UncertainSAM(sam, estimators, check=False)
    random = sorted(t for t, p in estimators.items() if p.config.get("random_weights"))
    if random:
        log.warning("MLPs %s were trained on RANDOM-weight SAM tokens: values mean nothing", random)
    sam_predictor._usam, sam_predictor._usam_keys = usam, keys
    sam_predictor.predict = types.MethodType(_predict, sam_predictor)
    return sam_predictor


def _predict(
    self,
    point_coords=None,
    point_labels=None,
    box=None,
    mask_input=None,
    multimask_output: bool = True,
    return_logits: bool = False,
    normalize_coords: bool = True,
):
    """SAM 2's predict, plus the MLP values of the masks it returns (see the module doc)."""
    usam: UncertainSAM = self._usam
    with usam.sam.capture() as captured:
        masks, scores, logits = type(self).predict(
            self,
            point_coords,
            point_labels,
            box,
            mask_input,
            multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
        )
    b = 1 if scores.ndim == 1 else len(scores)  # SAM 2 drops the batch dimension of one prompt
    iou_token, tokens, source = captured_tokens(captured, b, multimask_output)
    values = usam.estimate(iou_token, tokens, source)
    mlp_scores = {
        self._usam_keys[t]: v.cpu().numpy().astype(np.float32).reshape(*scores.shape, 1)
        for t, v in values.items()
    }
    return masks, scores, logits, mlp_scores
