"""python -m usam.evaluate_video dataset=davis estimators=<dir>: which per-frame score finds lost tracks.

For every video of the split (this shard's block of videos): every object is prompted on its
first annotated frame (the SPEC centre prompt of its GT mask, or with init=mask the mask
itself), SAM 2's video predictor propagates forward, and every later annotated frame gives
one row per object: the true IoU of the propagated mask (`usam.track_metrics.frame_iou`:
an empty GT is IoU 1 with an empty prediction, else 0) and every per-frame score (SAM 2's
predicted IoU of the kept mask, its object score, the kept mask's entropy and h_task, each
estimator). Prompted frames are not scored: their mask is the prompt's, not a tracked one.
`usam.track_metrics.score_report` turns the rows into Pearson r, failure AUROC and the
frames-to-check curves with relative AUC. `frames=[...]` merges earlier runs' rows (shards).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from usam import CONF_DIR, options
from usam.cli import run_stage, save_run
from usam.datasets.base import DatasetReader, Entry
from usam.errors import SampleError, UsamError
from usam.inference import load_bundles
from usam.mlp import Estimator
from usam.prompts import instance_rng, prompt_points
from usam.storage import write_json
from usam.track_metrics import frame_iou, score_report
from usam.video import (
    VIDEO_SUFFIXES,
    ObjectScores,
    VideoFrames,
    VideoUSAM,
    from_sam_model_cfg,
    jpeg_frames,
)

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1
KEYS = ("video", "frame", "object", "gt_area", "pred_area", "iou")
SAM_SCORES = ("predicted_iou", "object_score", "entropy", "h_task")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


@dataclass
class VideoTrack:
    """One video of a dataset split: where its frames are and which entries annotate which."""

    name: str
    source: Path  # JPEG folder or video file
    annotated: list[tuple[int, Entry]]  # (frame position in the source, entry), in order


def shard_videos(cfg: DictConfig) -> tuple[DatasetReader, list[VideoTrack]]:
    """The reader of `cfg.dataset` and this shard's videos (whole videos: a track never spans
    two shards)."""
    if not 0 <= cfg.shard.index < cfg.shard.count:
        raise UsamError(
            f"need 0 <= shard.index < shard.count, got {cfg.shard.index} / {cfg.shard.count}"
        )
    reader = instantiate(cfg.dataset, shard_index=0, shard_count=1)
    tracks = videos_of(reader)
    n, k, i = len(tracks), cfg.shard.count, cfg.shard.index
    return reader, tracks[i * n // k : (i + 1) * n // k][: cfg.max_videos]


def videos_of(reader: DatasetReader) -> list[VideoTrack]:
    """The split's videos in reader order, each with its annotated frames' positions."""
    if not reader.video:
        raise UsamError(f"dataset {reader.name!r} is not a video dataset; use davis, mose or sav")
    groups: OrderedDict[str, list[Entry]] = OrderedDict()
    for e in reader.entries:
        groups.setdefault(e.group, []).append(e)
    tracks = []
    for video, entries in groups.items():
        info = entries[0].info
        if "video" in info and Path(str(info["video"])).suffix.lower() in VIDEO_SUFFIXES:
            # SA-V train: frames inside an mp4, entries named <...>/<frame number>
            source = Path(info["video"])
            annotated = [(int(Path(e.name).name), e) for e in entries]
        else:
            first = Path(info["image"]) if "image" in info else reader.root / entries[0].name
            source = first.parent
            try:
                position = {p.stem: i for i, p in enumerate(jpeg_frames(source))}
            except (UsamError, OSError) as err:
                log.warning("skipping video %s: %s", video, err)
                reader.stats.unreadable.append({"file": str(source), "reason": str(err)})
                continue
            annotated = []
            for e in entries:
                image = Path(e.info["image"]) if "image" in e.info else reader.root / e.name
                if image.stem in position:
                    annotated.append((position[image.stem], e))
        tracks.append(VideoTrack(video, source, annotated))
    return tracks


def estimator_sets(estimators: Any, targets: list[str] | None) -> dict[str, Estimator]:
    """null -> {}; a directory -> {target: p}; {set: directory} -> {"set/target": p}."""
    estimators = _plain(estimators)
    if estimators is None:
        return {}
    if isinstance(estimators, Mapping):
        out = {}
        for name, directory in estimators.items():
            for t, p in load_bundles(directory, targets=targets).items():
                out[f"{name}/{t}"] = p
        return out
    return load_bundles(estimators, targets=targets)


@dataclass
class ScoredFrame:
    """One tracked (frame, object) with its ground truth."""

    video: str
    frame: int
    object: int
    gt_area: int
    pred_area: int
    iou: float
    scores: ObjectScores


def load_ground_truth(reader: DatasetReader, track: VideoTrack):
    """Packed GT masks per annotated frame and object, and each object's first (frame, mask)."""
    gt: dict[int, dict[int, np.ndarray]] = {}  # frame -> object -> packed GT mask
    first: dict[int, tuple[int, np.ndarray]] = {}
    size = None
    for pos, entry in track.annotated:
        sample = reader.try_load(entry)
        if sample is None:
            continue
        size = sample.image.shape[:2]
        gt[pos] = {}
        for oid, m in sample.masks.items():
            if m.any():
                gt[pos][oid] = np.packbits(m, axis=-1)
                first.setdefault(oid, (pos, m))
    if not first:
        raise SampleError(track.source, "no annotated object in this video")
    return gt, first, size


def track_objects(
    vusam: VideoUSAM,
    reader: DatasetReader,
    track: VideoTrack,
    *,
    init: str = "point",
    seed: int = 0,
    **offload,
) -> tuple[list[ScoredFrame], dict[int, dict[str, Any]], tuple[int, int]]:
    """Prompt every object on its first annotated frame, propagate forward, score the
    annotated frames after each object's first. Also returns each object's start:
    {"frame": its first annotated frame, "points": the centre prompt (None with init=mask)},
    and the video's (height, width)."""
    if init not in ("point", "mask"):
        raise UsamError(f"init={init!r}: use point (SPEC centre prompt) or mask (the GT mask)")
    gt, first, size = load_ground_truth(reader, track)
    frames = VideoFrames(track.source, vusam.image_size)
    if size != (frames.height, frames.width):
        raise SampleError(
            track.source,
            f"frames are {frames.width}x{frames.height}, annotations {size[1]}x{size[0]}",
        )
    state = vusam.init_state(frames, **offload)
    starts: dict[int, dict[str, Any]] = {}
    for oid in sorted(first):
        pos, mask = first[oid]
        starts[oid] = {"frame": pos, "points": None}
        if init == "mask":
            vusam.add_new_mask(state, pos, oid, mask)
        else:
            centre = prompt_points(mask, instance_rng(seed, track.name, oid), 0)
            starts[oid]["points"] = centre.tolist()
            vusam.add_new_points_or_box(state, pos, oid, points=centre, labels=[1])
    out = []
    w = frames.width
    for res in vusam.propagate_in_video(state):
        if res.frame_idx not in gt:
            continue
        for k, (oid, obj) in enumerate(zip(res.obj_ids, res.objects, strict=True)):
            if res.frame_idx <= first[oid][0] or obj is None or obj.prompt is not None:
                continue  # before the object's start, or a prompted frame
            packed = gt[res.frame_idx].get(oid)
            truth = (
                np.zeros_like(res.masks[k])
                if packed is None
                else np.unpackbits(packed, axis=-1, count=w).astype(bool)
            )
            pred = res.masks[k]
            out.append(
                ScoredFrame(
                    track.name,
                    res.frame_idx,
                    oid,
                    int(truth.sum()),
                    int(pred.sum()),
                    frame_iou(pred, truth),
                    obj,
                )
            )
    vusam.reset_state(state)
    return out, starts, size


class VideoEvaluator:
    """Tracks each video's objects and collects one row per (annotated frame, object)."""

    def __init__(self, vusam: VideoUSAM, *, init: str = "point", seed: int = 0, **offload):
        if init not in ("point", "mask"):
            raise UsamError(f"init={init!r}: use point (SPEC centre prompt) or mask (the GT mask)")
        self.vusam, self.init, self.seed, self.offload = vusam, init, seed, offload

    def evaluate(self, reader: DatasetReader, track: VideoTrack) -> list[dict[str, Any]]:
        scored, _, _ = track_objects(
            self.vusam, reader, track, init=self.init, seed=self.seed, **self.offload
        )
        rows = []
        for s in scored:
            row = {k: getattr(s, k) for k in KEYS}
            row.update({k: getattr(s.scores, k) for k in SAM_SCORES})
            row.update(s.scores.estimates)
            rows.append(row)
        return rows


def read_frames_csv(paths: list[str]) -> list[dict[str, Any]]:
    """Rows of earlier runs' frames.csv (a file or a run folder holding one)."""
    rows = []
    for p in paths:
        path = Path(p)
        path = path / "frames.csv" if path.is_dir() else path
        if not path.is_file():
            raise UsamError(f"frames={p}: {path} not found (a frames.csv or a run folder with one)")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in KEYS if k not in (reader.fieldnames or [])]
            if missing:
                raise UsamError(f"{path}: not a usam.evaluate_video frames.csv (no {missing})")
            for r in reader:
                row = {k: r[k] for k in ("video", "object")}
                row["frame"] = int(r["frame"])
                for k, v in r.items():
                    if k not in ("video", "object", "frame"):
                        row[k] = float(v) if v not in ("", None) else math.nan
                rows.append(row)
    return rows


def report_of(rows: list[dict[str, Any]], score_names: list[str], cfg: DictConfig) -> dict:
    iou = np.array([r["iou"] for r in rows], dtype=np.float64)
    scores = {
        s: np.array([r.get(s, math.nan) for r in rows], dtype=np.float64) for s in score_names
    }
    return score_report(
        iou, scores, failure_iou=cfg.failure_iou, r_max=cfg.r_max, r_points=cfg.r_points
    )


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'score':<28} {'Pearson':>8} {'AUROC':>7} {'rel.AUC':>8}"]
    for name, s in report["scores"].items():
        cells = [s["pearson"], s["failure_auroc"], s["relative_auc"]]
        lines.append(
            f"{name:<28} "
            + " ".join(
                f"{'-' if not math.isfinite(v) else f'{v:.3f}':>{w}}"
                for v, w in zip(cells, (8, 7, 8), strict=True)
            )
        )
    return "\n".join(lines)


def write_outputs(out: Path, rows, score_names, report, plots: bool, title: str) -> dict:
    from usam.report import plot_curves, write_csv

    header = [*KEYS, *score_names]
    files = {
        "frames": write_csv(
            out / "frames.csv", header, [[r.get(h, math.nan) for h in header] for r in rows]
        )
    }
    files["scores"] = write_csv(
        out / "scores.csv",
        ["score", "direction", "pearson", "failure_auroc", "relative_auc"],
        [
            [n, s["direction"], s["pearson"], s["failure_auroc"], s["relative_auc"]]
            for n, s in report["scores"].items()
        ],
    )
    if "curves" in report:
        names = list(report["curves"])
        files["curves"] = write_csv(
            out / "frames_to_check.csv",
            ["r", *names],
            [[r, *(report["curves"][n][i] for n in names)] for i, r in enumerate(report["r"])],
        )
        if plots:
            case = {
                "r": report["r"],
                "curves": report["curves"],
                "relative_auc": report["relative_auc"],
                "label": "frames to check (replace the most uncertain frames by GT)",
                "rows": report["frames"],
            }
            files["plot"] = plot_curves(out / "frames_to_check.png", case, title)
    return files


def run(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.paths.output_dir)
    start = time.perf_counter()
    failed: list[dict[str, str]] = []
    if cfg.frames is not None:  # merge earlier runs: no SAM
        rows = read_frames_csv([str(p) for p in _plain(cfg.frames)])
        score_names = [k for k in rows[0] if k not in KEYS] if rows else []
        meta = {"merged": [str(p) for p in _plain(cfg.frames)], "random_weights": None}
        title = ""
    else:
        reader, tracks = shard_videos(cfg)
        estimators = estimator_sets(options.estimators(cfg), _plain(cfg.targets))
        vusam = from_sam_model_cfg(
            cfg.sam_model, cfg.size, estimators=estimators, checkpoint=cfg.checkpoint
        )
        evaluator = VideoEvaluator(
            vusam,
            init=cfg.init,
            seed=cfg.seed,
            offload_video_to_cpu=cfg.offload_video_to_cpu,
            offload_state_to_cpu=cfg.offload_state_to_cpu,
        )
        rows = []
        for track in tqdm(
            tracks, desc=f"evaluate_video {reader.name}/{reader.split}", unit="video"
        ):
            try:
                rows += evaluator.evaluate(reader, track)
            except SampleError as err:
                log.warning("skipping video %s: %s", track.name, err)
                failed.append({"file": err.path, "reason": err.reason})
        failed = reader.stats.unreadable + failed
        score_names = [*SAM_SCORES, *vusam.targets]
        random_bundles = sorted(
            t for t, p in vusam.estimators.items() if p.config.get("random_weights")
        )
        meta = {
            "dataset": reader.name,
            "split": reader.split,
            "shard": {"index": cfg.shard.index, "count": cfg.shard.count},
            "videos": len(tracks),
            "sam_version": vusam.version,
            "size": vusam.size,
            "init": cfg.init,
            "random_weights": vusam.random_weights,
            "random_estimators": random_bundles,
        }
        title = ""
        if vusam.random_weights or random_bundles:
            title = " - RANDOM weights: numbers mean nothing"
            log.warning(
                "RANDOM weights (SAM 2: %s, estimators: %s): every number of this run means nothing",
                vusam.random_weights,
                random_bundles or "none",
            )
    if not rows:
        raise UsamError(
            "no frame was scored: no video with an object tracked past its first annotated frame"
        )
    report = report_of(rows, score_names, cfg)
    files = write_outputs(out, rows, score_names, report, cfg.plots, title)
    report = {
        "schema": REPORT_SCHEMA,
        "kind": "usam.video_report",
        **meta,
        "failed": len(failed),
        "failures": failed,
        **report,
    }
    write_json(out / "report.json", report)
    files["report"] = out / "report.json"
    table = format_table(report)
    log.info(
        "per-frame scores over %d frames (%d failures, mean IoU %.3f):\n%s",
        report["frames"],
        report["failures"],
        report["mean_iou"],
        table,
    )
    summary = {
        **meta,
        "frames": report["frames"],
        "failures": report["failures"],
        "mean_iou": report["mean_iou"],
        "failed": len(failed),
        "scores": report["scores"],
        "seconds": round(time.perf_counter() - start, 3),
        "files": {k: str(v) for k, v in files.items()},
    }
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate_video")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
