"""python -m usam.predict image=<file> point=[x,y] estimators=<dir>: the USAM demo, headless.

Segments one image from one prompt with SAM 2 and the trained USAM bundles, writes an
overlay PNG (the mask with the highest SAM score tinted, the prompt marked, the estimates
for that mask as text) and prints every mask's scores and estimates as JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from usam import CONF_DIR, options, registry
from usam.cli import run_stage, save_run
from usam.datasets.base import read_rgb
from usam.errors import UsamError
from usam.inference import Prediction, UncertainSAM, check_prompt_geometry
from usam.registry import parse_checkpoint_name
from usam.schema import TARGETS
from usam.storage import atomic_path

log = logging.getLogger(__name__)

_TINT = np.array([255, 144, 30], np.float32)  # RGB, SAM's demo blue-orange
_FG, _BG = (0, 220, 0), (230, 0, 0)  # RGB of foreground / background points


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def prompt_arrays(point: Any, label: Any, box: Any) -> dict[str, np.ndarray | None]:
    """The CLI's `point`, `label`, `box` as one SAM 2 prompt (points [N, 2], labels [N], box [4])."""
    point, label, box = _plain(point), _plain(label), _plain(box)
    if point is None and box is None:
        raise UsamError(
            "no prompt: give point=[x,y] (or point=[[x,y],...]) and/or box=[x0,y0,x1,y1]"
        )
    coords = labels = None
    if point is not None:
        try:
            coords = np.asarray(point, dtype=np.float64)
        except (TypeError, ValueError):
            raise UsamError(f"point={point!r}: expected [x, y] or [[x, y], ...]") from None
        coords = coords[None] if coords.shape == (2,) else coords
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) < 1:
            raise UsamError(f"point={point!r}: expected [x, y] or [[x, y], ...]")
        if label is None:
            labels = np.ones(len(coords), np.int64)
        else:
            labels = np.atleast_1d(np.asarray(label))
            if labels.shape != (len(coords),):
                raise UsamError(f"label={label!r}: give one label (1 or 0) per point of {point!r}")
            if not all(type(v) is int and v in (0, 1) for v in labels.tolist()):
                raise UsamError(
                    f"label={label!r}: each label must be 1 (foreground) or 0 (background)"
                )
    elif label is not None:
        raise UsamError("label given without point")
    boxes = None
    if box is not None:
        try:
            boxes = np.asarray(box, dtype=np.float64)
        except (TypeError, ValueError):
            pass
        if boxes is None or boxes.shape != (4,):
            raise UsamError(f"box={box!r}: expected [x0, y0, x1, y1]")
    return {"point_coords": coords, "point_labels": labels, "box": boxes}


def build(cfg: DictConfig) -> UncertainSAM:
    """The UncertainSAM the config names: checkpoint (or sam_model's for `size`) + bundles."""
    sm = cfg.sam_model
    checkpoint, size, version = cfg.checkpoint, cfg.size, sm.version
    if checkpoint is not None:
        named_version, named_size = parse_checkpoint_name(checkpoint)
        size, version = size or named_size, named_version or version
    size = size or "tiny"
    if size not in registry.sizes(version):
        raise UsamError(f"size={size}: unknown; SAM {version} has {registry.sizes(version)}")
    # sam_model's own choices apply to its version; a checkpoint of another gets the registry's
    row = registry.resolve(version, size, sm if version == sm.version else None)
    if checkpoint is None and not sm.random_weights:
        checkpoint = Path(sm.checkpoint_dir) / row.file
    return UncertainSAM.from_pretrained(
        None if sm.random_weights else checkpoint,
        options.estimators(cfg),
        size=size,
        config=row.config,
        version=version,
        device=sm.device,
        image_size=sm.image_size,
        targets=_plain(cfg.targets),
        sha256=(sm.sha256 or {}).get(size) if version == sm.version else None,
        batch_size=sm.batch_size,
        random_weights=sm.random_weights,
        seed=sm.seed,
    )


def _fmt(target: str, value: float) -> str:
    # gaps are signed (0 = no gap); the rest are IoUs in [0, 1]
    return f"{value:+.3f}" if TARGETS.get(target, 0.0) else f"{value:.3f}"


def overlay(image: np.ndarray, pred: Prediction, prompt: dict, title: list[str]) -> np.ndarray:
    """RGB canvas: the image with the best mask tinted and the prompt drawn, text panel right."""
    h, w = image.shape[:2]
    best = pred.best
    mask = pred.masks[best]
    img = image.astype(np.float32)
    img[mask] = 0.45 * img[mask] + 0.55 * _TINT
    img = np.ascontiguousarray(img.round().astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    s = max(0.4, min(h, w) / 700)  # markers and text grow with the image
    ts = max(1.0, s)  # text stays readable on small images (the panel grows instead)
    thick = max(1, round(2 * s))
    cv2.drawContours(img, contours, -1, tuple(int(c) for c in _TINT), thick)
    if prompt["box"] is not None:
        x0, y0, x1, y1 = (round(v) for v in prompt["box"])
        cv2.rectangle(img, (x0, y0), (x1, y1), (255, 255, 0), thick)
    if prompt["point_coords"] is not None:
        for (x, y), lab in zip(prompt["point_coords"], prompt["point_labels"], strict=True):
            centre, r = (round(x), round(y)), max(3, round(8 * s))
            cv2.circle(img, centre, r + thick, (255, 255, 255), -1)
            cv2.circle(img, centre, r, _FG if lab == 1 else _BG, -1)
    lines = title + [f"mask {best} (highest SAM score)", f"sam_score: {pred.scores[best]:.3f}"]
    lines += [f"{t}: {_fmt(t, float(v[best]))}" for t, v in pred.estimates.items()]
    font, fs, step = cv2.FONT_HERSHEY_SIMPLEX, 0.55 * ts, round(26 * ts)
    width = max(cv2.getTextSize(line, font, fs, 1)[0][0] for line in lines) + 2 * step
    canvas = np.full((max(h, step * (len(lines) + 1)), w + width, 3), 255, np.uint8)
    canvas[:h, :w] = img
    for i, line in enumerate(lines):
        colour = (200, 0, 0) if "RANDOM" in line else (0, 0, 0)
        cv2.putText(canvas, line, (w + step, step * (i + 1)), font, fs, colour, 1, cv2.LINE_AA)
    return canvas


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsamError(f"{path}: could not encode the overlay as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    if cfg.image is None:
        raise UsamError("no image: pass image=<file>")
    image_path = Path(cfg.image)
    if not image_path.is_file():
        raise UsamError(f"image {image_path.resolve()} not found")
    prompt = prompt_arrays(cfg.point, cfg.label, cfg.box)
    image = np.array(read_rgb(image_path))  # writable: torch warns on read-only arrays
    check_prompt_geometry(  # before SAM 2 is built
        prompt["point_coords"],
        prompt["point_labels"],
        prompt["box"],
        *image.shape[:2],
        names=("point", "box"),
    )
    usam = build(cfg)
    usam.set_image(image)
    pred = usam.predict(**prompt, multimask_output=bool(cfg.get("multimask_output", True)))
    sam = usam.sam
    random_bundles = sorted(t for t, p in usam.estimators.items() if p.config.get("random_weights"))
    title = [f"{sam.version} {sam.size}"]
    if sam.random_weights or random_bundles:
        title.append("RANDOM weights: numbers mean nothing")
    out = write_png(cfg.out, overlay(image, pred, prompt, title))
    best = pred.best
    summary = {
        "image": str(image_path),
        "overlay": str(out),
        "point": None if prompt["point_coords"] is None else prompt["point_coords"].tolist(),
        "label": None if prompt["point_labels"] is None else prompt["point_labels"].tolist(),
        "box": None if prompt["box"] is None else prompt["box"].tolist(),
        "sam_version": sam.version,
        "size": sam.size,
        "random_weights": sam.random_weights,
        "random_estimators": random_bundles,
        "best": best,
        "scores": pred.scores.tolist(),
        "estimates": {t: v.tolist() for t, v in pred.estimates.items()},
        "best_estimates": {t: float(v[best]) for t, v in pred.estimates.items()},
    }
    log.info(
        "mask %d (SAM score %.3f): %s; overlay %s",
        best,
        pred.scores[best],
        ", ".join(f"{t}={_fmt(t, v)}" for t, v in summary["best_estimates"].items()),
        out,
    )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
