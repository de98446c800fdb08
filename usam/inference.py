"""Inference: SAM 2's image predictor with trained USAM MLPs attached (SPEC "Inference").

`UncertainSAM.predict` takes SAM 2's prompts (points, boxes, low-res mask inputs; one prompt
or a batch) and returns SAM 2's three masks and scores plus, per mask, every bundle's
estimate. The estimates come from the decoder tokens of that same pass, read by the hooks
of `usam.sam.SamModel`: no second decoder forward. Each bundle reads the mask token its
training paired with the mask (`usam.mlp.paired_token`): usam's bundles the token that made
the mask (multimask output j: token j+1), the published estimators one token early. With
multimask_output=False the one returned mask is estimated from the token that made it (token
0, or the best multimask token where SAM 2's dynamic multimask-via-stability chose it).

    usam = UncertainSAM.from_pretrained("checkpoints/sam2.1/sam2.1_hiera_tiny.pt", "models")
    usam.set_image(rgb)                                   # H x W x 3 uint8
    out = usam.predict(point_coords=[[120, 80]], point_labels=[1])
    out.masks[out.best], out.estimates["iou_tiny"]        # [H, W] bool, [3] float32
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import hub, registry
from usam.errors import UsamError
from usam.hub import looks_like_model_id
from usam.mlp import PAIRINGS, Estimator, UsamMLP, paired_token
from usam.registry import parse_checkpoint_name
from usam.sam import SamModel, load_sam_model, resolve_device
from usam.schema import SIZES, TARGETS

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """SAM 2's answer with the USAM estimates, numpy, batched as the prompts were.

    A single prompt (points [N, 2], box [4], mask_input [1, h, w]) gives unbatched arrays
    (masks [3, H, W]); batched prompts (points [B, N, 2], boxes [B, 4], mask_input
    [B, 1, h, w]) give a leading B, also when B == 1.
    """

    masks: np.ndarray  # bool [..., M, H, W] at the image's size; M = 3 (multimask) or 1
    scores: np.ndarray  # float32 [..., M] SAM's own IoU guess per mask
    low_res_logits: np.ndarray  # float32 [..., M, h, w] (feed one back as mask_input)
    estimates: dict[str, np.ndarray] = field(default_factory=dict)  # target -> float32 [..., M]
    iou_token: np.ndarray | None = None  # float32 [..., 256]
    mask_tokens: np.ndarray | None = None  # float32 [..., M, 256], row j made mask j
    # int64 [..., M]: the decoder mask token (0..3) that made each mask
    mask_token_index: np.ndarray | None = None

    @property
    def best(self) -> np.ndarray | int:
        """Index of the mask with the highest SAM score (what SAM 2 users pick)."""
        best = self.scores.argmax(-1)
        return int(best) if best.ndim == 0 else best


def load_bundles(
    directory: str | Path,
    *,
    targets: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Estimator]:
    """Every bundle under `directory` (`<target>/model.safetensors + config.json`), by target.

    `directory` may also be one bundle itself. `targets` keeps only those (each must exist).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UsamError(
            f"estimator bundles: {directory.resolve()} not found (not a directory); train them with "
            "python -m usam.train -m 'predictor=glob(*)' out_dir=<dir> and pass that <dir>"
        )
    if (directory / "config.json").is_file():
        dirs = [directory]
    else:
        dirs = sorted(d for d in directory.iterdir() if (d / "config.json").is_file())
    estimators: dict[str, Estimator] = {}
    for d in dirs:
        p = Estimator.load(d, device)
        if p.target in estimators:
            raise UsamError(
                f"{directory}: two bundles predict {p.target!r} ({d.name} and another); keep one"
            )
        estimators[p.target] = p
    if not estimators:
        raise UsamError(
            f"{directory.resolve()} holds no estimator bundle (<target>/config.json + "
            "model.safetensors, written by python -m usam.train)"
        )
    if targets is not None:
        missing = [t for t in targets if t not in estimators]
        if missing:
            raise UsamError(f"{directory}: no bundle for {missing}; it has {sorted(estimators)}")
        return {t: estimators[t] for t in targets}
    order = list(TARGETS)  # the paper's order, then any other target by name
    return dict(
        sorted(
            estimators.items(),
            key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
        )
    )


def trained_on(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(SAM versions, SAM sizes) of a bundle's training rows; empty where the bundle does not say.

    The sizes are all of its container's models, or the one it was filtered to.
    """
    versions = [v for v in str(config.get("sam_version") or "").split("+") if v]
    sizes = [config["filter_model"]] if config.get("filter_model") else config.get("models") or []
    return versions, [str(m) for m in sizes]


def check_trained_on(
    target: str,
    config: Mapping[str, Any],
    *,
    versions: list[str],
    sizes: list[str],
    against: str,
) -> None:
    """Refuse a bundle applied to tokens of a SAM version or size it never saw.

    `versions` / `sizes`: those of the tokens it is about to see; `against` names where they
    come from ("the checkpoint", "the container ..."). Shared by inference and evaluation.
    """
    b_versions, b_sizes = trained_on(config)
    other = [v for v in versions if v not in b_versions]
    if b_versions and other:
        raise UsamError(
            f"estimator {target!r} was trained on {'+'.join(b_versions)} tokens but "
            f"{against} is {'+'.join(other)}: use {'+'.join(b_versions)} tokens or bundles "
            "trained on this version"
        )
    other = [m for m in sizes if m not in b_sizes]
    if b_sizes and other:
        raise UsamError(
            f"estimator {target!r} was trained on tokens of SAM {'+'.join(b_sizes)} but "
            f"{against} is SAM {'+'.join(other)}: use that size or bundles trained on "
            f"{'+'.join(other)} tokens"
        )


def load_estimators(
    directories: str | Path | Sequence[str | Path],
    *,
    targets: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Estimator]:
    """Estimators from one folder or several: usam bundles (`load_bundles`) or a published
    models/mlps/sam2.X folder of <name>/model.pth (read in memory, published pairing; import
    it once with python -m usam.import_published to keep it as bundles). One per target."""
    from usam.import_published import load_published

    dirs = [directories] if isinstance(directories, (str, Path)) else list(directories)
    estimators: dict[str, Estimator] = {}
    for d in map(Path, dirs):
        if d.is_dir() and any(d.glob("*/model.pth")) and not any(d.glob("*/config.json")):
            found = {p.target: p.to(device) for p in load_published(d).values()}
        else:
            found = load_bundles(d, device=device)
        twice = sorted(set(found) & set(estimators))
        if twice:
            raise UsamError(f"{d}: {twice} already come from another estimator folder; keep one")
        estimators.update(found)
    if targets is not None:
        missing = [t for t in targets if t not in estimators]
        if missing:
            raise UsamError(f"{', '.join(map(str, dirs))}: no estimator for {missing}")
        return {t: estimators[t] for t in targets}
    return estimators


def pairing_heads(estimators: Mapping[str, Estimator]) -> dict[str, StackedEstimators]:
    """One stacked evaluation per token pairing (their inputs differ): pairing -> heads."""
    for t, p in estimators.items():
        if p.pairing not in PAIRINGS:
            raise UsamError(
                f"estimator {t!r}: token_pairing {p.pairing!r} is unknown; use one of "
                f"{', '.join(PAIRINGS)}"
            )
    groups = {
        pairing: {t: p for t, p in estimators.items() if p.pairing == pairing}
        for pairing in PAIRINGS
    }
    return {pairing: StackedEstimators(g) for pairing, g in groups.items() if g}


def check_compatible(sam: SamModel, estimators: Mapping[str, Estimator]) -> None:
    """Refuse bundles trained on tokens of another SAM version or size; warn on random ones."""
    for target, p in estimators.items():
        check_trained_on(
            target, p.config, versions=[sam.version], sizes=[sam.size], against="the checkpoint"
        )
        dim = int(sam.model.sam_mask_decoder.transformer_dim)
        if p.model.in_features != 2 * dim:
            raise UsamError(
                f"estimator {target!r} takes {p.model.in_features} inputs but SAM's tokens "
                f"give 2 x {dim}"
            )
    random = sorted(t for t, p in estimators.items() if p.config.get("random_weights"))
    if random:
        log.warning(
            "estimators %s were trained on RANDOM-weight SAM tokens: their estimates mean "
            "nothing (tests and smoke runs only)",
            random,
        )
    if sam.random_weights and estimators:
        log.warning("SAM 2 has RANDOM weights: masks, scores and estimates mean nothing")


class StackedEstimators:
    """Several USAM MLPs of one architecture evaluated as one: a batched matmul per layer.

    Same numbers as applying each `Estimator` (up to float rounding) in 3 kernel calls
    instead of 3 per MLP: on a CPU the per-call overhead is most of an MLP's cost. MLPs of
    mixed architectures fall back to a loop. Build it after the estimators are on their device.
    """

    def __init__(self, estimators: Mapping[str, Estimator]):
        self.targets = list(estimators)
        self.loop = list(estimators.values())
        linears = [
            [m for m in p.model.net if isinstance(m, torch.nn.Linear)]
            for p in self.loop
            if isinstance(p.model, UsamMLP)
        ]
        shapes = {tuple(tuple(lin.weight.shape) for lin in ls) for ls in linears}
        self.stacked = len(self.loop) > 1 and len(linears) == len(self.loop) and len(shapes) == 1
        if self.stacked:  # a snapshot of the weights, without autograd history
            # per layer: weight [K, in, out] and bias [K, 1, out], for baddbmm
            self.weights = [
                torch.stack([ls[i].weight.detach().T for ls in linears])
                for i in range(len(linears[0]))
            ]
            self.biases = [
                torch.stack([ls[i].bias.detach()[None] for ls in linears])
                for i in range(len(linears[0]))
            ]
            self.shift = torch.tensor([p.shift for p in self.loop], device=self.weights[0].device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 512] = [iou_token, mask_token] rows -> [K, N] values in each target's units."""
        if not self.stacked:
            return torch.stack([p(x) for p in self.loop]) if self.loop else x.new_zeros(0, len(x))
        h = x.expand(len(self.loop), *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = h.relu()
        return h.squeeze(-1).sigmoid() - self.shift[:, None]


def _as_array(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UsamError(f"{name} must be numeric, got {type(x).__name__} ({err})") from None
    if not np.isfinite(a).all():
        raise UsamError(f"{name} has NaN or infinite values")
    return a


def check_prompt_geometry(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    height: int,
    width: int,
    *,
    names: tuple[str, str] = ("point_coords", "box"),
) -> None:
    """Refuse points outside the image and boxes that are inverted, empty or leave the image.

    Coordinates are pixels, x in [0, width], y in [0, height] (edges included). SAM 2 would
    answer such prompts with masks and scores, and the estimates would look as trustworthy as
    any others; a swapped box or a point in another image's coordinates is a mistake to report.
    Points labelled -1 (padding) may lie anywhere.
    """
    size = f"the {width} x {height} image (x in [0, {width}], y in [0, {height}])"
    if points is not None:
        pts = points.reshape(-1, 2)
        used = np.ones(len(pts), bool) if labels is None else labels.reshape(-1) != -1
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= width) & (pts[:, 1] >= 0) & (pts[:, 1] <= height)
        out = used & ~inside  # NaN compares False: it is outside too
        if out.any():
            x, y = pts[np.flatnonzero(out)[0]]
            raise UsamError(
                f"{names[0]}: point ({x:g}, {y:g}) lies outside {size}; "
                f"{int(out.sum())} point(s) in all; give (x, y) pixel coordinates of this image"
            )
    if boxes is not None:
        for x0, y0, x1, y1 in boxes.reshape(-1, 4):
            if not (x0 < x1 and y0 < y1):
                raise UsamError(
                    f"{names[1]}: [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is inverted or empty; "
                    "give [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
                )
            if not (x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height):
                raise UsamError(
                    f"{names[1]}: [{x0:g}, {y0:g}, {x1:g}, {y1:g}] reaches outside {size}; "
                    "clip it to the image"
                )


def _gather_tokens(all_tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """all_tokens [B, 4, C], index [B, M] -> [B, M, C]: token index[b, m] of prompt b."""
    return all_tokens.gather(1, index[..., None].expand(-1, -1, all_tokens.shape[-1]))


class UncertainSAM:
    """A SamModel plus a set of USAM estimators: SAM 2's prompts in, masks + estimates out."""

    def __init__(self, sam: SamModel, estimators: Mapping[str, Estimator], *, check: bool = True):
        self.sam = sam
        self.estimators = {t: p.to(sam.device).eval() for t, p in estimators.items()}
        if check:
            check_compatible(sam, self.estimators)
        self.heads = pairing_heads(self.estimators)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path | None,
        bundles_dir: str | Path | None = None,
        *,
        estimators: str | Path | Sequence[str | Path] | None = None,
        size: str | None = None,
        config: str | Path | None = None,
        version: str | None = None,
        device: str | torch.device = "auto",
        image_size: int | None = None,
        targets: list[str] | None = None,
        sha256: str | None = None,
        batch_size: int | None = None,
        random_weights: bool = False,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
    ) -> UncertainSAM:
        """SAM 2 from `checkpoint` with the estimators in `estimators` (None: SAM alone).

        `checkpoint` is a file, or a SAM 2 model id on the Hugging Face hub as SAM 2's own
        `from_pretrained` takes it ("facebook/sam2.1-hiera-large": downloaded once into the
        hub's cache, verified against the hub's SHA-256). `estimators` (or the positional
        `bundles_dir`) is a folder of usam bundles, a published models/mlps/sam2.X folder, or
        a list of such folders. Size and version default to what the id or Meta's file name
        says (sam2.1_hiera_tiny.pt); `config` defaults to the sam2 package's config for them.
        `random_weights=True` builds seeded random SAM weights instead (tests only).
        """
        if bundles_dir is not None and estimators is not None:
            raise UsamError("give the estimators once: bundles_dir or estimators=, not both")
        estimators = bundles_dir if estimators is None else estimators
        if checkpoint is not None and not random_weights and looks_like_model_id(checkpoint):
            # the cached file keeps Meta's name (sam2.1_hiera_large.pt): size and version follow
            checkpoint, _, _, hub_sha = hub.download(
                str(checkpoint), cache_dir=cache_dir, local_files_only=local_files_only
            )
            sha256 = sha256 or hub_sha
        named_version, named_size = parse_checkpoint_name(checkpoint or "")
        for given, named, what in ((size, named_size, "size"), (version, named_version, "version")):
            if given is not None and named is not None and given != named:
                raise UsamError(
                    f"{checkpoint}: the file name says SAM {what} {named} but {what}={given} "
                    "was given; pass the matching checkpoint or drop the argument"
                )
        size, version = size or named_size, version or named_version or "sam2.1"
        if size is None:
            raise UsamError(
                f"{checkpoint}: cannot tell the SAM size from the file name; pass size= "
                f"(one of {', '.join(SIZES)})"
            )
        if not random_weights:
            if checkpoint is None:
                raise UsamError("no SAM 2 checkpoint given; pass its path (or random_weights=True)")
            if not Path(checkpoint).is_file():
                raise UsamError(
                    f"SAM 2 checkpoint {Path(checkpoint).resolve()} not found; get it with: "
                    f"python -m usam.download_checkpoints sam_model={version}"
                )
        dev = resolve_device(device)
        # bundles first: a bad directory fails in milliseconds, not after building SAM
        found = {} if estimators is None else load_estimators(estimators, targets=targets)
        sam = load_sam_model(
            size,
            checkpoint,  # ignored with random_weights
            config or registry.lookup(version, size).config,
            version=version,
            image_size=image_size,
            device=dev,
            batch_size=batch_size,
            random_weights=random_weights,
            seed=seed,
            sha256=sha256,
        )
        return cls(sam, found)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def set_image(self, image: np.ndarray) -> None:
        """Encode one H x W x 3 uint8 RGB image (SAM 2's encoder, once per image)."""
        self.sam.set_image(image)

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        *,
        return_tokens: bool = False,
    ) -> Prediction:
        """SAM 2's masks and scores for the prompts, plus every estimator's estimate per mask.

        Prompts as in SAM2ImagePredictor.predict: points (x, y) in image pixels with labels
        (1 foreground, 0 background, -1 ignored; default all 1), boxes XYXY in pixels,
        mask_input = low-res logits of an earlier prediction. Batched when any prompt has
        the batch dimension (see `Prediction`). multimask_output=False returns SAM 2's one
        mask (token 0's, or the best multimask output where token 0's is unstable) with the
        estimates for that mask, from the token that made it.
        """
        if not self.sam.sam_predictor._is_image_set:
            raise UsamError("UncertainSAM.predict called before set_image")
        points, labels, boxes, masks_in, batched = self._prompts(
            point_coords, point_labels, box, mask_input
        )
        check_prompt_geometry(points, labels, boxes, *self.sam.sam_predictor._orig_hw[0])
        n = len(next(x for x in (points, boxes, masks_in) if x is not None))
        bs = self.sam.batch_size
        parts = [
            self.decode(
                None if points is None else points[lo : lo + bs],
                None if labels is None else labels[lo : lo + bs],
                None if boxes is None else boxes[lo : lo + bs],
                None if masks_in is None else masks_in[lo : lo + bs],
                multimask_output=bool(multimask_output),
            )
            for lo in range(0, n, bs)
        ]
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "estimates"}
        est = {t: torch.cat([p["estimates"][t] for p in parts]) for t in self.estimators}

        def np_(t: torch.Tensor) -> np.ndarray:
            a = t.cpu().numpy()
            return a if batched else a[0]

        return Prediction(
            masks=np_(out["masks"]),
            scores=np_(out["scores"]),
            low_res_logits=np_(out["low_res_logits"]),
            estimates={t: np_(v) for t, v in est.items()},
            iou_token=np_(out["iou_token"]) if return_tokens else None,
            mask_tokens=np_(out["mask_tokens"]) if return_tokens else None,
            mask_token_index=np_(out["mask_token_index"]),
        )

    def _prompts(self, point_coords, point_labels, box, mask_input):
        """Validate SAM 2 prompts; return them batched (numpy) and whether they came batched."""
        points = labels = boxes = masks_in = None
        ranks = {}
        if point_coords is not None:
            points = _as_array(point_coords, "point_coords")
            if points.ndim not in (2, 3) or points.shape[-1] != 2 or points.shape[-2] < 1:
                raise UsamError(
                    f"point_coords must be [N, 2] or [B, N, 2] (x, y) pixels, got {points.shape}"
                )
            ranks["point_coords"] = (points.ndim == 3, len(points) if points.ndim == 3 else 1)
            # float labels are fine: SAM 2's _prep_prompts makes them int
            if point_labels is None:
                labels = np.ones(points.shape[:-1])
            else:
                labels = _as_array(point_labels, "point_labels")
                if labels.shape != points.shape[:-1]:
                    raise UsamError(
                        f"point_labels {labels.shape} do not match point_coords {points.shape}: "
                        f"one label per point, i.e. {points.shape[:-1]}"
                    )
                if not np.isin(labels, (-1, 0, 1)).all():
                    raise UsamError("point_labels must be 1 (foreground), 0 (background) or -1")
            if points.ndim == 2:
                points, labels = points[None], labels[None]
        elif point_labels is not None:
            raise UsamError("point_labels given without point_coords")
        if box is not None:
            boxes = _as_array(box, "box")
            if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
                raise UsamError(f"box must be [4] or [B, 4] (x0, y0, x1, y1), got {boxes.shape}")
            ranks["box"] = (boxes.ndim == 2, len(boxes) if boxes.ndim == 2 else 1)
            boxes = boxes if boxes.ndim == 2 else boxes[None]
        if mask_input is not None:
            masks_in = _as_array(mask_input, "mask_input")
            r = self.sam.low_res_size
            if masks_in.ndim not in (3, 4) or masks_in.shape[-3:] != (1, r, r):
                raise UsamError(
                    f"mask_input must be [1, {r}, {r}] or [B, 1, {r}, {r}] low-res logits "
                    f"(one of an earlier prediction's low_res_logits[..., j:j+1, :, :]), "
                    f"got {masks_in.shape}"
                )
            ranks["mask_input"] = (masks_in.ndim == 4, len(masks_in) if masks_in.ndim == 4 else 1)
            masks_in = masks_in if masks_in.ndim == 4 else masks_in[None]
        if not ranks:
            raise UsamError("no prompt: give point_coords, box or mask_input")
        batched = any(b for b, _ in ranks.values())
        if len({(b, n) for b, n in ranks.values()}) > 1:
            raise UsamError(
                "prompts disagree on the batch: "
                + ", ".join(
                    f"{k} {'batch of ' + str(n) if b else 'single'}" for k, (b, n) in ranks.items()
                )
                + "; give all single or all with the same batch size"
            )
        return points, labels, boxes, masks_in, batched

    def decode(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None,
        *,
        multimask_output: bool = True,
    ) -> dict[str, Any]:
        """One decoder call for a batch of B prompts (already batched); tensors on the device.

        Keys: masks [B, M, H, W], scores [B, M], low_res_logits [B, M, h, w], iou_token
        [B, C], mask_tokens [B, M, C] (the tokens that made the masks), mask_token_index
        [B, M], estimates {target: [B, M]}; M = 3 with multimask_output, else 1.
        """
        dec = self.sam.decode_tokens(
            points, labels, boxes, mask_input, multimask_output=multimask_output
        )
        return {
            "masks": dec.masks,
            "scores": dec.scores,
            "low_res_logits": dec.low_res_logits,
            "iou_token": dec.iou_token,
            "mask_tokens": _gather_tokens(dec.all_mask_tokens, dec.source),
            "mask_token_index": dec.source,
            "estimates": self.estimate(dec.iou_token, dec.all_mask_tokens, dec.source),
        }

    def estimate(
        self, iou_token: torch.Tensor, all_mask_tokens: torch.Tensor, source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Every bundle's value per mask, {target: [B, M]} in the bundles' order.

        iou_token [B, C], all_mask_tokens [B, 4, C] (decoder mask tokens 0..3), source
        [B, M] (the token that made each mask); each bundle reads the token its pairing names.
        """
        b, m = source.shape
        estimates = {}
        with torch.inference_mode():
            for pairing, heads in self.heads.items():
                # row (prompt i, mask j) = [iou_token_i, the token this pairing reads for mask j]
                tokens = _gather_tokens(all_mask_tokens, paired_token(source, pairing))
                x = torch.cat([iou_token[:, None].expand_as(tokens), tokens], -1)
                values = heads(x.reshape(b * m, -1)).float().view(-1, b, m)
                estimates.update(zip(heads.targets, values, strict=True))
        return {t: estimates[t] for t in self.estimators}

    def __repr__(self) -> str:
        return f"UncertainSAM({self.sam!r}, estimators={sorted(self.estimators)})"
