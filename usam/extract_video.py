"""python -m usam.extract_video dataset=davis: stage 1 in video mode, for track-trained estimators.

Every object of every video is prompted on its first annotated frame (as in
`usam.evaluate_video`), each SAM 2 size of `sam_model.sizes` tracks it forward with its own
video predictor, and every annotated frame becomes an ordinary record (`usam.extract`'s
`RecordWriter` and schema) whose instances are the objects tracked on that frame. So
`python -m usam.container roots=[<out_dir>]` and `python -m usam.train predictor=iou_<size>`
consume them unchanged and give estimators specialised to tracking.

Per (frame, object, size), the fields that keep their meaning on a tracked frame:
| field | value |
| --- | --- |
| `iou`, `unsupervised_iou` | true IoU of the propagated mask (SAM 2 keeps one mask: the one its score picks) |
| `sam_score`, `unsupervised_sam_score` | SAM 2's predicted IoU of that mask |
| `best` | index 0..2 of the kept mask among the decoder's three (its token is the record's) |
| `entropy`, `h_task` | H of the kept mask's map; H of the three maps mixed by their scores |
| `iou_dense_prompt`, `h_prompt`, `h_augmentation`, `h_theta`, `h_all` | NaN (no prompt or image variants while tracking) |
Tokens: `<size>/original/iou_token` [I, 256] and `<size>/original/mask_tokens` [I, 3, 256]
(decoder tokens 1..3), as image records. Prompted frames are not records' instances (their
mask is the prompt's), and a frame where no object is tracked yet is a record with no instance.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.datasets.base import DatasetReader
from usam.errors import SampleError, UsamError
from usam.evaluate_video import ScoredFrame, VideoTrack, shard_videos, track_objects
from usam.extract import RecordWriter
from usam.schema import FIELDS
from usam.video import VideoUSAM, from_sam_model_cfg

log = logging.getLogger(__name__)

VARIANT = "original"


class VideoExtractor:
    """Tracks every video's objects with each SAM size and writes one record per annotated frame."""

    def __init__(
        self,
        *,
        writer: RecordWriter,
        init: str = "point",
        seed: int = 0,
        resume: bool = True,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ):
        if init not in ("point", "mask"):
            raise UsamError(f"init={init!r}: use point (SPEC centre prompt) or mask (the GT mask)")
        self.writer, self.init, self.seed, self.resume = writer, init, seed, resume
        self.offload = {
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
        }

    def run(self, reader: DatasetReader, tracks: list[VideoTrack], models: list[VideoUSAM]):
        random_weights = any(m.random_weights for m in models)
        if random_weights:
            log.warning(
                "SAM 2 has RANDOM weights: every record is marked random_weights=true "
                "and its numbers mean nothing"
            )
        done = skipped = instances = frames = 0
        failed: list[dict[str, str]] = []
        start = time.perf_counter()
        for track in tqdm(tracks, desc=f"extract_video {reader.name}/{reader.split}", unit="video"):
            if self.resume and all(self.writer.done(e.name) for _, e in track.annotated):
                skipped += 1
                continue
            try:
                per_model = {}
                for m in models:
                    per_model[m.size], starts, size = track_objects(
                        m, reader, track, init=self.init, seed=self.seed, **self.offload
                    )
            except SampleError as err:
                log.warning("skipping video %s: %s", track.name, err.reason)
                failed.append({"file": err.path, "reason": err.reason})
                continue
            for pos, entry in track.annotated:
                record, tensors = self.frame_record(
                    entry, pos, track, per_model, starts, size, models
                )
                self.writer.write(entry.name, record, tensors)
                frames += 1
                instances += len(record["instances"])
            done += 1
        seconds = time.perf_counter() - start
        failed = reader.stats.unreadable + failed
        return {
            "dataset": reader.name,
            "split": reader.split,
            "mode": "track",
            "init": self.init,
            "out_dir": str(self.writer.root),
            "videos": len(tracks),
            "done": done,
            "skipped": skipped,
            "failed": len(failed),
            "failures": failed,
            "records": frames,
            "instances": instances,
            "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 4) if seconds > 0 and frames else None,
            "models": [m.size for m in models],
            "sam_version": models[0].version,
            "random_weights": random_weights,
        }

    def frame_record(
        self,
        entry,
        pos: int,
        track: VideoTrack,
        per_model: dict[str, list[ScoredFrame]],
        starts: dict[int, dict[str, Any]],
        size: tuple[int, int],
        models: list[VideoUSAM],
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        sizes = [m.size for m in models]
        # a tracked frame decodes three masks; anything else would have no kept index 0..2
        mine = {
            s: {f.object: f for f in per_model[s] if f.frame == pos and f.scores.multimask}
            for s in sizes
        }
        # objects every model tracked on this frame (all of them: same prompts, same frames)
        ids = sorted(set.intersection(*(set(v) for v in mine.values())))
        first = mine[sizes[0]]
        record: dict[str, Any] = {
            "name": entry.name,
            "group": track.name,
            "mode": "track",
            "frame": pos,
            "init": self.init,
            "width": size[1],
            "height": size[0],
            "sam_version": models[0].version,
            "random_weights": any(m.random_weights for m in models),
            "models": sizes,
            "variants": [VARIANT],
            "instances": [
                {
                    "id": int(i),
                    "gt_area": first[i].gt_area,
                    "points": starts[i]["points"] or [],
                    "start_frame": starts[i]["frame"],
                }
                for i in ids
            ],
            "fields": {},
        }
        if not ids:
            # empty per-model blocks: the container reads the frame as zero rows, not as broken
            empty = {f: [] for f in (*FIELDS, "best")}
            record["fields"] = {s: {VARIANT: dict(empty)} for s in sizes}
            return record, {}
        tensors = {}
        for s in sizes:
            rows = [mine[s][i] for i in ids]
            iou = [r.iou for r in rows]
            score = [r.scores.predicted_iou for r in rows]
            nan = [math.nan] * len(rows)
            fields = {f: nan for f in FIELDS}
            fields |= {
                "iou": iou,
                "unsupervised_iou": iou,
                "sam_score": score,
                "unsupervised_sam_score": score,
                "entropy": [r.scores.entropy for r in rows],
                "h_task": [r.scores.h_task for r in rows],
                "best": [r.scores.kept for r in rows],
                "object_score": [r.scores.object_score for r in rows],
                "pred_area": [r.pred_area for r in rows],
            }
            record["fields"][s] = {VARIANT: fields}
            tensors[f"{s}/{VARIANT}/iou_token"] = np.stack([r.scores.iou_token for r in rows])
            tensors[f"{s}/{VARIANT}/mask_tokens"] = np.stack([r.scores.mask_tokens for r in rows])
        return record, tensors


def run(cfg: DictConfig) -> dict[str, Any]:
    reader, tracks = shard_videos(cfg)
    models = [from_sam_model_cfg(cfg.sam_model, s, keep_tokens=True) for s in cfg.sam_model.sizes]
    writer = instantiate(cfg.writer)
    extractor = instantiate(cfg.extractor, writer=writer)
    summary = extractor.run(reader, tracks, models)
    summary["shard"] = {"index": cfg.shard.index, "count": cfg.shard.count}
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="extract_video")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
