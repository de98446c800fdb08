"""The shared vocabulary (usam.schema): one table of targets that the stages derive from."""

from __future__ import annotations

import subprocess
import sys

from usam import evaluation, mlp, pipeline
from usam.schema import DIRECTION, HIGH, LOW, SIZES, TARGETS, available_targets


def test_available_targets_follow_the_sizes_a_container_holds():
    assert available_targets(["large", "small"]) == [
        "iou_small",
        "iou_large",
        "iou_dense_prompt",
        "unsupervised_iou",
        "task_gap",
        "prompt_gap",
    ]  # no model_gap without tiny, no iou_tiny / iou_base_plus
    assert "model_gap" in available_targets(["tiny", "large"])
    assert available_targets(list(SIZES)) == list(TARGETS)


def test_gaps_are_shifted_and_uncertain_when_high_ious_when_low():
    assert {t for t, s in TARGETS.items() if s == 0.5} == {"model_gap", "task_gap", "prompt_gap"}
    assert {t for t, d in DIRECTION.items() if d == HIGH} == {"model_gap", "task_gap", "prompt_gap"}
    assert DIRECTION["unsupervised_iou"] == LOW and set(TARGETS) == set(DIRECTION)


def test_the_stages_read_the_one_table():
    assert mlp.TARGETS is TARGETS and evaluation.ESTIMATOR_DIRECTION is DIRECTION
    assert pipeline.available_targets is available_targets


def test_the_container_reader_imports_neither_torch_nor_hydra():
    code = "import sys, usam.container; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_row_maths_needs_no_files_torch_or_hydra_and_readers_never_load_the_writer():
    code = (
        "import sys, usam.container.rows, usam.container.files; "
        "a = [m in sys.modules for m in ('torch', 'hydra', 'tqdm')]; "
        "import usam.train, usam.evaluate; "
        "print(*a, 'usam.container.writer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]
