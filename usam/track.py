"""python -m usam.track video=<folder|mp4> point=[x,y] estimators=<dir>: which frames went wrong.

Tracks one or several prompted objects through a video with SAM 2's video predictor
(`usam.video.VideoUSAM`: forward from the earliest prompt, then backward to frame 0) and
scores every frame and object: SAM 2's predicted IoU of the kept mask, its object score,
the kept mask's entropy and every estimator. Writes `frames.csv` and `frames.json` (one row
per frame and object), `scores.png` (the scores over time, frames whose check score is
below `threshold` marked "check these") and `contact_sheet.png` (and with overlay=video an
`overlay.mp4`) with the masks coloured by estimated quality, red (0) to green (1).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from usam import CONF_DIR, options
from usam.cli import run_stage, save_run
from usam.errors import UsamError
from usam.inference import load_bundles
from usam.predict import prompt_arrays, write_png
from usam.registry import parse_checkpoint_name
from usam.storage import atomic_path, write_json
from usam.video import FrameResult, VideoFrames, VideoUSAM, from_sam_model_cfg

log = logging.getLogger(__name__)

SCORES = ("predicted_iou", "object_score", "entropy", "h_task")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def object_prompts(cfg: DictConfig) -> list[dict[str, Any]]:
    """The objects to track: `objects` (a list) or the single `point`/`box`/`frame` prompt."""
    objects = _plain(cfg.objects)
    if objects is None:
        objects = [{"point": _plain(cfg.point), "label": _plain(cfg.label), "box": _plain(cfg.box)}]
        objects[0]["frame"] = cfg.frame
    elif cfg.point is not None or cfg.box is not None:
        raise UsamError("give either objects=[...] or point=/box=, not both")
    if not isinstance(objects, list) or not objects:
        raise UsamError("objects= must be a non-empty list of {id, frame, point, label, box}")
    out, ids = [], set()
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise UsamError(f"objects[{k}]={obj!r}: expected a mapping {{point: [x, y], ...}}")
        unknown = set(obj) - {"id", "frame", "point", "label", "box"}
        if unknown:
            raise UsamError(
                f"objects[{k}]: unknown keys {sorted(unknown)} (id, frame, point, label, box)"
            )
        oid = obj.get("id", k + 1)
        if oid in ids:
            raise UsamError(f"objects[{k}]: id {oid!r} used twice")
        ids.add(oid)
        frame = obj.get("frame", 0)
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise UsamError(f"objects[{k}].frame={frame!r}: expected a frame number")
        prompt = prompt_arrays(obj.get("point"), obj.get("label"), obj.get("box"))
        out.append({"id": oid, "frame": frame, **prompt})
    return out


def build(cfg: DictConfig) -> VideoUSAM:
    sm = cfg.sam_model
    size, checkpoint = cfg.size, cfg.checkpoint
    if checkpoint is not None:
        version, named = parse_checkpoint_name(checkpoint)
        if version is not None and version != sm.version:
            raise UsamError(
                f"{checkpoint}: a {version} checkpoint but sam_model={sm.version}; "
                f"pass sam_model={version}"
            )
        size = named or size
        if not Path(checkpoint).is_file():
            raise UsamError(f"SAM 2 checkpoint {Path(checkpoint).resolve()} not found")
    folder = options.estimators(cfg)
    estimators = {} if folder is None else load_bundles(folder, targets=_plain(cfg.targets))
    return from_sam_model_cfg(sm, size, estimators=estimators, checkpoint=checkpoint)


def track(
    vusam: VideoUSAM,
    frames: VideoFrames,
    prompts: list[dict[str, Any]],
    *,
    offload_video_to_cpu: bool = False,
    offload_state_to_cpu: bool = False,
    on_frame=None,
) -> dict[int, FrameResult]:
    """Prompt every object, propagate forward then backward; the last result per frame."""
    state = vusam.init_state(
        frames,
        offload_video_to_cpu=offload_video_to_cpu,
        offload_state_to_cpu=offload_state_to_cpu,
    )
    results: dict[int, FrameResult] = {}
    for p in prompts:
        vusam.add_new_points_or_box(
            state,
            p["frame"],
            p["id"],
            points=p["point_coords"],
            labels=p["point_labels"],
            box=p["box"],
        )
    first = min(p["frame"] for p in prompts)
    bar = tqdm(total=len(frames), desc=f"track {frames.path.name}", unit="frame")
    passes = [False] + ([True] if first > 0 else [])
    for reverse in passes:
        for res in vusam.propagate_in_video(state, reverse=reverse):
            if res.frame_idx not in results:
                bar.update()
            results[res.frame_idx] = res if on_frame is None else on_frame(res)
    bar.close()
    vusam.reset_state(state)
    return results


def pick_check_score(columns: list[str], size: str, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise UsamError(f"check_score={wanted!r}: not a score here; have {columns}")
        return wanted
    if f"iou_{size}" in columns:
        return f"iou_{size}"
    ious = [c for c in columns if c.startswith("iou_") or c == "unsupervised_iou"]
    return ious[0] if ious else "predicted_iou"


def quality_colour(q: float) -> np.ndarray:
    """RGB from red (0) over yellow to green (1); grey when unknown."""
    if not math.isfinite(q):
        return np.array([160, 160, 160], np.float32)
    q = min(max(q, 0.0), 1.0)
    return np.array([255 * min(1, 2 * (1 - q)), 255 * min(1, 2 * q), 40], np.float32)


def tint(rgb: np.ndarray, masks: np.ndarray, qualities: list[float], flagged: bool, label: str):
    img = rgb.astype(np.float32)
    for m, q in zip(masks, qualities, strict=True):
        img[m] = 0.45 * img[m] + 0.55 * quality_colour(q)
    img = np.ascontiguousarray(img.round().astype(np.uint8))
    for m, q in zip(masks, qualities, strict=True):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, tuple(int(c) for c in quality_colour(q)), 2)
    if flagged:
        cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (230, 0, 0), 6)
    s = max(0.5, img.shape[0] / 400)
    cv2.putText(img, label, (8, round(24 * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * s, (0, 0, 0), 3)
    cv2.putText(
        img, label, (8, round(24 * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * s, (255, 255, 255), 1
    )
    return img


def contact_sheet(
    frames: VideoFrames,
    masks: dict[int, np.ndarray],
    quality: dict[int, list[float]],
    flagged: set[int],
    *,
    n: int,
    title: str,
    width: int = 320,
) -> np.ndarray:
    """Up to n thumbnails (flagged frames first, then evenly spaced), 4 per row, title on top."""
    order = sorted(masks)
    pick = sorted(flagged)[: n // 2]
    rest = [f for f in order if f not in pick]
    if rest and len(pick) < n:
        idx = np.linspace(0, len(rest) - 1, min(n - len(pick), len(rest))).round().astype(int)
        pick += [rest[i] for i in dict.fromkeys(idx)]
    pick = set(pick)
    thumbs = []
    for f, rgb in enumerate(frames.iter_rgb()):  # one pass: a video file decodes in order
        if f not in pick:
            continue
        q = quality[f]
        label = f"frame {f}  " + " ".join("-" if not math.isfinite(v) else f"{v:.2f}" for v in q)
        img = tint(rgb, masks[f], q, f in flagged, label)
        h = round(img.shape[0] * width / img.shape[1])
        thumbs.append(cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA))
    cols = min(4, len(thumbs))
    h = max(t.shape[0] for t in thumbs)
    rows = [thumbs[i : i + cols] for i in range(0, len(thumbs), cols)]
    head = 36
    sheet = np.full((head + h * len(rows), width * cols, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            sheet[head + r * h : head + r * h + t.shape[0], c * width : (c + 1) * width] = t
    colour = (200, 0, 0) if "RANDOM" in title else (0, 0, 0)
    cv2.putText(sheet, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return sheet


def plot_scores(
    path: Path,
    rows: list[dict[str, Any]],
    check: str,
    threshold: float,
    flagged: set[int],
    title: str,
) -> Path:
    """Scores over time per object; the check score bold, flagged frames shaded red."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    objects = list(dict.fromkeys(r["object"] for r in rows))
    for k, oid in enumerate(objects):
        mine = [r for r in rows if r["object"] == oid and check in r]
        x = [r["frame"] for r in mine]
        colour = f"C{k}"
        ax.plot(x, [r[check] for r in mine], color=colour, lw=2.2, label=f"{oid}: {check}")
        for s, ls in (("predicted_iou", "--"), ("object_score", ":")):
            if s != check:
                ax.plot(x, [r[s] for r in mine], color=colour, lw=1, ls=ls, label=f"{oid}: {s}")
    for f in sorted(flagged):
        ax.axvspan(f - 0.5, f + 0.5, color="red", alpha=0.15, lw=0)
    ax.axhline(threshold, color="red", lw=1, ls="-.", label=f"threshold {threshold:g}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    n = len(flagged)
    ax.set_title(
        f"{title}\n{n} frame{'s' if n != 1 else ''} to check (red): {check} < {threshold:g}",
        fontsize=9,
        color="darkred" if "RANDOM" in title else "black",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def write_overlay_video(path: Path, frames: VideoFrames, masks, quality, flagged, fps: int = 6):
    with atomic_path(path) as tmp:
        mp4 = tmp.with_suffix(".mp4")
        writer = cv2.VideoWriter(
            str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.width, frames.height)
        )
        try:
            for f, rgb in enumerate(frames.iter_rgb()):
                if f in masks:
                    label = f"frame {f}" + (" CHECK" if f in flagged else "")
                    rgb = tint(rgb, masks[f], quality[f], f in flagged, label)
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        try:
            mp4.replace(tmp)  # OpenCV picks the container from the suffix
        finally:
            mp4.unlink(missing_ok=True)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    if cfg.video is None:
        raise UsamError("no video: pass video=<folder of JPEG frames or a video file>")
    if cfg.overlay not in ("sheet", "video", "none"):
        raise UsamError(f"overlay={cfg.overlay!r}: use sheet, video or none")
    prompts = object_prompts(cfg)
    vusam = build(cfg)
    frames = VideoFrames(cfg.video, vusam.image_size)
    for p in prompts:
        if not 0 <= p["frame"] < len(frames):
            raise UsamError(
                f"object {p['id']}: frame={p['frame']}, the video has 0..{len(frames) - 1}"
            )
    masks: dict[int, np.ndarray] = {}

    def keep_mask(res: FrameResult) -> FrameResult:
        # only the overlay needs masks; keep them packed (1 bit per pixel)
        if cfg.overlay != "none":
            masks[res.frame_idx] = np.packbits(res.masks, axis=-1)
        return FrameResult(res.frame_idx, res.obj_ids, res.masks.sum((1, 2)), res.objects)

    results = track(
        vusam,
        frames,
        prompts,
        offload_video_to_cpu=cfg.offload_video_to_cpu,
        offload_state_to_cpu=cfg.offload_state_to_cpu,
        on_frame=keep_mask,
    )
    rows = []
    for f in sorted(results):
        res = results[f]
        for k, (oid, obj) in enumerate(zip(res.obj_ids, res.objects, strict=True)):
            row = {"frame": f, "object": oid, "area": int(res.masks[k])}
            if obj is not None:
                row.update({s: getattr(obj, s) for s in SCORES})
                row.update(obj.estimates)
                row["prompt"] = obj.prompt or ""
            rows.append(row)
    columns = [*SCORES, *vusam.targets]
    check = pick_check_score(columns, vusam.size, cfg.check_score)
    for r in rows:
        v = r.get(check, math.nan)
        r["check"] = bool(math.isfinite(v) and v < cfg.threshold)
    flagged = {r["frame"] for r in rows if r["check"]}
    random_bundles = sorted(
        t for t, p in vusam.estimators.items() if p.config.get("random_weights")
    )
    title = f"{vusam.version} {vusam.size}, {Path(cfg.video).name}"
    if vusam.random_weights or random_bundles:
        title += "  RANDOM weights: numbers mean nothing"
        log.warning(
            "RANDOM weights (SAM 2: %s, estimators: %s): every score of this run means nothing",
            vusam.random_weights,
            random_bundles or "none",
        )
    out = Path(cfg.out_dir)
    from usam.report import write_csv

    header = ["frame", "object", "area", *columns, "prompt", "check"]
    files = {
        "csv": write_csv(
            out / "frames.csv", header, [[r.get(h, "") for h in header] for r in rows]
        ),
        "plot": plot_scores(out / "scores.png", rows, check, cfg.threshold, flagged, title),
    }
    if cfg.overlay != "none":
        w = frames.width
        full = {f: np.unpackbits(m, axis=-1, count=w).astype(bool) for f, m in masks.items()}
        quality = {f: [r.get(check, math.nan) for r in rows if r["frame"] == f] for f in full}
        sheet = contact_sheet(frames, full, quality, flagged, n=cfg.sheet_frames, title=title)
        files["contact_sheet"] = write_png(out / "contact_sheet.png", sheet)
        if cfg.overlay == "video":
            files["video"] = write_overlay_video(
                out / "overlay.mp4", frames, full, quality, flagged
            )
    summary = {
        "video": str(cfg.video),
        "frames": len(frames),
        "objects": [p["id"] for p in prompts],
        "sam_version": vusam.version,
        "size": vusam.size,
        "random_weights": vusam.random_weights,
        "random_estimators": random_bundles,
        "targets": list(vusam.targets),
        "check_score": check,
        "threshold": cfg.threshold,
        "frames_to_check": sorted(flagged),
        "files": {k: str(v) for k, v in files.items()},
    }
    write_json(out / "frames.json", {"schema": 1, "kind": "usam.track", **summary, "rows": rows})
    summary["files"]["json"] = str(out / "frames.json")
    log.info(
        "tracked %d objects over %d frames; %d frames to check (%s < %g): %s",
        len(prompts),
        len(frames),
        len(flagged),
        check,
        cfg.threshold,
        sorted(flagged)[:20],
    )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="track")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
