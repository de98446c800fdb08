"""SMAC trials on a Dask cluster usam did not start: a scheduler and workers on loopback
(127.0.0.1) inside the test, reached by address or started from a `hpo.cluster` config."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
from test_train import hand_container, train_cfg

from usam.dask_cluster import connect
from usam.errors import UsamError
from usam.hpo import SmacHPO
from usam.train import run

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"lr": 1.0, "epochs": 1, "batch_size": 1, "momentum": 0.0}
STARTED: list = []  # clusters made by loopback_cluster, so a test can see they were closed


def loopback(n_workers: int = 2):
    """A scheduler and worker threads on 127.0.0.1 over TCP (tasks still travel pickled)."""
    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
    )


def loopback_cluster(n_workers: int = 0):
    """A `hpo.cluster` _target_: what dask_jobqueue.SLURMCluster is to a real site."""
    cluster = loopback(n_workers)
    STARTED.append(cluster)
    return cluster


class WhereRun:
    """Objective that notes which Dask worker ran each trial (picklable: module level)."""

    def __init__(self, log: Path):
        self.log = log

    def __call__(self, hp: dict) -> float:
        worker = distributed.get_worker().address  # raises outside a Dask worker
        with _lock, self.log.open("a") as f:
            f.write(worker + "\n")
        return (math.log10(hp["lr"]) + 2) ** 2 + (hp["momentum"] - 0.5) ** 2


_lock = threading.Lock()


def test_trials_run_on_the_workers_of_a_running_scheduler_which_stays_up(tmp_path):
    with loopback(2) as cluster:
        workers = set(cluster.scheduler_info["workers"])
        hpo = SmacHPO(n_trials=5, progress=False, scheduler_address=cluster.scheduler_address)
        best, info = hpo.search(
            WhereRun(tmp_path / "where.txt"), BASE, out_dir=tmp_path / "hpo", name="t"
        )
        ran_on = (tmp_path / "where.txt").read_text().split()
        assert len(ran_on) == info["trials_run"] == 5 and set(ran_on) <= workers
        assert info["best_loss"] == min(info["trial_losses"])
        # the user's scheduler and workers are still there after the search
        assert cluster.status.name == "running"
        with distributed.Client(cluster.scheduler_address) as c:
            assert set(c.scheduler_info()["workers"]) == workers


def test_a_cluster_config_is_started_scaled_used_and_closed(tmp_path):
    STARTED.clear()
    spec = {"_target_": f"{__name__}.loopback_cluster"}
    hpo = SmacHPO(n_trials=4, n_workers=2, progress=False, cluster=spec)
    _, info = hpo.search(WhereRun(tmp_path / "where.txt"), BASE, out_dir=tmp_path, name="t")
    assert info["trials_run"] == 4
    assert len((tmp_path / "where.txt").read_text().split()) == 4
    (cluster,) = STARTED
    assert cluster.status.name == "closed"  # usam started it, so usam closed it


def test_train_stage_sends_smac_trials_to_a_scheduler_address(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=5)
    with loopback(2) as cluster:
        cfg = train_cfg(
            compose_cfg,
            container,
            "predictor=iou_tiny",
            "hpo=smac",
            "hpo.n_trials=3",
            "hpo.epochs=[1,2]",
            "hpo.batch_size=[8,16]",
            "hpo.progress=false",
            "trainer.progress=false",
            f"hpo.scheduler_address={cluster.scheduler_address}",
            f"out_dir={tmp_path / 'models'}",
        )
        hpo = run(cfg)["hpo"]
    assert hpo["trials_run"] == 3 and hpo["best_loss"] == min(hpo["trial_losses"])
    history = json.loads(
        (tmp_path / "run" / "hpo" / "iou_tiny" / "0" / "runhistory.json").read_text()
    )
    assert history["stats"] == {"submitted": 3, "finished": 3, "running": 0}


def test_the_slurm_preset_makes_a_job_script_from_the_config(compose_cfg, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="pip install 'usam[cluster]'")
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "train",
        [
            "hpo=smac",
            "+hpo/cluster=slurm",
            "hpo.cluster.queue=gpu",
            "hpo.cluster.cores=6",
            "hpo.cluster.job_extra_directives=['--gres=gpu:1']",
            "+hpo.cluster.scheduler_options={host:127.0.0.1}",
        ],
    )
    hpo = instantiate(cfg.hpo)  # _recursive_: false: the cluster is not started here
    assert isinstance(hpo, SmacHPO) and hpo.cluster["_target_"] == "dask_jobqueue.SLURMCluster"
    cluster = instantiate(cfg.hpo.cluster)  # what the search does, before scaling
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH --cpus-per-task=6" in script
    assert "#SBATCH --gres=gpu:1" in script and "127.0.0.1" in script


def test_bad_cluster_settings_are_one_line_errors(tmp_path):
    with pytest.raises(UsamError, match="both set"):
        SmacHPO(scheduler_address="tcp://127.0.0.1:8786", cluster={"_target_": "x.Y"})
    with pytest.raises(UsamError, match="hpo.cluster must be a config with a _target_"):
        SmacHPO(cluster={"cores": 4})
    with pytest.raises(UsamError, match=r"hpo.scheduler_address=tcp://127.0.0.1:9: cannot connect"):
        connect(
            n_workers=1, scheduler_address="tcp://127.0.0.1:9", local_directory=tmp_path, timeout=1
        )
    with pytest.raises(UsamError, match=r"hpo.cluster \(no.such.Cluster\): cannot start"):
        connect(n_workers=1, cluster={"_target_": "no.such.Cluster"}, local_directory=tmp_path)
    with loopback(1) as cluster:
        with pytest.raises(UsamError, match="1 of hpo.n_workers=3 Dask workers connected"):
            connect(
                n_workers=3,
                scheduler_address=cluster.scheduler_address,
                local_directory=tmp_path,
                timeout=1,
            )
