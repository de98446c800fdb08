"""`python -m usam.datasets`: run(cfg) directly, and the command end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from video_trees import make_davis

from usam.cli import user_error
from usam.datasets.__main__ import run
from usam.errors import UsamError


def test_run_counts_a_davis_split(tmp_path, compose_cfg):
    root = tmp_path / "DAVIS"
    make_davis(
        root,
        {
            "bear": {"frames": 3, "size": (16, 20), "ids": (1, 2)},
            "cat": {"frames": 2, "size": (16, 20), "ids": (4,)},
        },
        {"val": ["bear", "cat"]},
    )
    (root / "JPEGImages/480p/cat/00001.jpg").write_bytes(b"junk")
    out = tmp_path / "run"
    cfg = compose_cfg(
        "datasets",
        [
            "dataset=davis",
            f"dataset.root={root}",
            "dataset.resolution=480p",
            f"paths.output_dir={out}",
        ],
    )
    summary = run(cfg)
    assert (out / "config.yaml").is_file()
    assert (
        summary["dataset"] == "davis"
        and summary["split"] == "val"
        and summary["native_split"] == "val"
    )
    assert summary["entries"] == 5
    assert summary["images"] == 4 and summary["instances"] == 3 * 2 + 1
    assert summary["images_without_instances"] == 0
    assert summary["unreadable"] == 1
    assert summary["unreadable_files"][0]["file"] == str(root / "JPEGImages/480p/cat/00001.jpg")
    assert summary["shard"] == {"index": 0, "count": 1}
    assert json.loads((out / "summary.json").read_text()) == summary


def test_run_on_a_shard_of_the_sample(tmp_path, compose_cfg):
    summary = run(compose_cfg("datasets", ["shard.count=2", "shard.index=1"]))
    assert summary["dataset"] == "sample" and summary["shard"] == {"index": 1, "count": 2}
    assert summary["entries"] == summary["images"] == 3 and summary["instances"] == 9


def test_run_raises_usam_error_for_a_bad_root(tmp_path, compose_cfg):
    cfg = compose_cfg(
        "datasets",
        [
            "dataset=davis",
            f"dataset.root={tmp_path / 'nope'}",
            f"paths.output_dir={tmp_path}",
        ],
    )
    # hydra.utils.instantiate wraps the reader's UsamError; run_stage finds it through __cause__
    with pytest.raises(Exception) as err:
        run(cfg)
    assert isinstance(user_error(err.value), UsamError)
    assert "nope does not exist" in str(user_error(err.value))
    assert not (tmp_path / "summary.json").exists()


def test_user_error_follows_explicit_causes_only():
    try:
        try:
            raise UsamError("bad input")
        except UsamError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert str(user_error(outer)) == "bad input"
    try:
        try:
            raise UsamError("bad input")
        except UsamError:
            raise KeyError("a bug while handling it")  # noqa: B904 -- implicit context on purpose
    except KeyError as bug:
        assert user_error(bug) is None


def test_run_stage_says_a_multi_line_user_error_on_one_line(caplog, capsys):
    from omegaconf import OmegaConf

    from usam.cli import run_stage

    def run(cfg):  # a library's report inside the error, as torch's state-dict mismatch
        raise UsamError(
            "b/model.safetensors: cannot load weights (Error(s) in loading:\n\tsize mismatch for net.0.weight)"
        )

    with pytest.raises(SystemExit) as e:
        run_stage(run, OmegaConf.create({}))
    want = "b/model.safetensors: cannot load weights (Error(s) in loading: size mismatch for net.0.weight)"
    assert e.value.code == f"error: {want}"
    assert [r.getMessage() for r in caplog.records] == [want]
    assert capsys.readouterr().out == ""  # no summary line after an error


def command(tmp_path, *overrides):
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "outputs")}
    return subprocess.run(
        [sys.executable, "-m", "usam.datasets", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_command_prints_summary_and_writes_run_folder(tmp_path):
    proc = command(tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "sample" and summary["images"] == 6 and summary["instances"] == 18
    # run folder: <log_dir>/<stage>/<date>/<time>/
    runs = list((tmp_path / "outputs" / "datasets").glob("*/*"))
    assert len(runs) == 1
    run_dir = runs[0]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "datasets.log").is_file()


def test_command_log_dir_override(tmp_path):
    proc = command(tmp_path, f"paths.log_dir={tmp_path / 'elsewhere'}", "dataset.sample=3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["entries"] == 2  # frame 0 of each video
    (found,) = (tmp_path / "elsewhere" / "datasets").glob("*/*/summary.json")
    assert json.loads(found.read_text()) == summary


def test_command_bad_root_is_one_line_not_a_traceback(tmp_path):
    proc = command(tmp_path, "dataset=davis", f"dataset.root={tmp_path / 'nope'}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: dataset root {tmp_path / 'nope'} does not exist" in proc.stderr
