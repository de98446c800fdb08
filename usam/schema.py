"""The project's shared vocabulary, defined once: SAM 2 sizes, the decoder's token size, the
stage-1 record (schema version and fields) and the table of estimator targets.

Pure Python (no torch, no Hydra), so that every stage, script and reader can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = ("tiny", "small", "base_plus", "large")  # SAM 2's sizes, smallest to largest
TOKEN_DIM = 256  # floats per decoder token (IoU token, mask tokens)

RECORD_SCHEMA = 1  # stage-1 record (usam.extract.RecordWriter); readers refuse newer ones
# Per (instance, model, variant) fields of a record (SPEC.md, Stage 1)
FIELDS = (
    "iou",
    "sam_score",
    "unsupervised_iou",
    "unsupervised_sam_score",
    "iou_dense_prompt",
    "entropy",
    "h_task",
    "h_prompt",
    "h_augmentation",
    "h_theta",
    "h_all",
)

LOW, HIGH = "low", "high"  # which values of a score mean "uncertain"


@dataclass(frozen=True)
class Target:
    """A quantity an estimator predicts (SPEC.md, Stage 3)."""

    name: str
    shift: float  # added before training so that "no gap" sits at 0.5 in the sigmoid's range
    uncertain: str  # LOW: a low value means uncertain (an IoU); HIGH: a high one (a gap)
    needs: tuple[str, ...] = ()  # SAM sizes the container must hold for the target's column


TARGET_TABLE = (
    Target("iou_tiny", 0.0, LOW, ("tiny",)),
    Target("iou_small", 0.0, LOW, ("small",)),
    Target("iou_base_plus", 0.0, LOW, ("base_plus",)),
    Target("iou_large", 0.0, LOW, ("large",)),
    Target("iou_dense_prompt", 0.0, LOW),
    Target("unsupervised_iou", 0.0, LOW),
    Target("model_gap", 0.5, HIGH, ("tiny", "large")),
    Target("task_gap", 0.5, HIGH),
    Target("prompt_gap", 0.5, HIGH),
)
TARGETS: dict[str, float] = {t.name: t.shift for t in TARGET_TABLE}  # name -> output shift
DIRECTION: dict[str, str] = {t.name: t.uncertain for t in TARGET_TABLE}


def available_targets(sizes: list[str] | tuple[str, ...]) -> list[str]:
    """The targets whose columns a container of these SAM sizes has, in the table's order."""
    return [t.name for t in TARGET_TABLE if set(t.needs) <= set(sizes)]
