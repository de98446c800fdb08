"""Where SMAC's parallel trials run: a local Dask cluster, a running scheduler, or a
dask-jobqueue cluster (SLURM, PBS, ...) described in the config.

    hpo.n_workers=4                                   # local cluster: 4 worker processes here
    hpo.scheduler_address=tcp://head:8786             # a scheduler users already run
    hpo.cluster._target_=dask_jobqueue.SLURMCluster   # jobs submitted for this search
    hpo.cluster.cores=4 hpo.cluster.memory=16GB hpo.n_workers=8

usam starts no scheduler of its own beyond Dask's LocalCluster: an address connects to the
user's scheduler (left running afterwards), a `cluster` config is instantiated with Hydra and
scaled to `n_workers` workers (and closed afterwards, which cancels its jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from usam.errors import UsamError

log = logging.getLogger(__name__)

JOBQUEUE_HINT = "pip install 'usam[cluster]' (dask-jobqueue)"


class DaskConnection:
    """A Dask client for SMAC and what has to be closed with it (never the user's scheduler)."""

    def __init__(self, client, cluster=None, *, where: str):
        self.client, self.cluster, self.where = client, cluster, where

    @property
    def workers(self) -> int:
        """Trial slots: SMAC submits one trial per worker thread."""
        return sum(self.client.nthreads().values())

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:  # ours: a jobqueue cluster cancels its jobs here
            self.cluster.close()


def uses_dask(n_workers: int, scheduler_address: str | None, cluster: Any) -> bool:
    return int(n_workers) > 1 or bool(scheduler_address) or _given(cluster)


def _given(cluster: Any) -> bool:
    return cluster is not None and (not isinstance(cluster, Mapping) or len(cluster) > 0)


def check_settings(scheduler_address: str | None, cluster: Any) -> None:
    """Fail at config time, before any data is loaded."""
    if scheduler_address and _given(cluster):
        raise UsamError(
            "hpo.scheduler_address and hpo.cluster are both set; give one: the address of a "
            "running scheduler, or a cluster for usam to start"
        )
    if _given(cluster):
        if not isinstance(cluster, Mapping) or "_target_" not in cluster:
            raise UsamError(
                f"hpo.cluster must be a config with a _target_ (e.g. dask_jobqueue.SLURMCluster), "
                f"got {cluster!r}"
            )
    if scheduler_address is not None and not isinstance(scheduler_address, str):
        raise UsamError(
            f"hpo.scheduler_address must be a string like tcp://host:8786, got {scheduler_address!r}"
        )


def connect(
    *,
    n_workers: int,
    scheduler_address: str | None = None,
    cluster: Mapping[str, Any] | None = None,
    local_directory: str | Path,
    timeout: float = 120.0,
) -> DaskConnection:
    """A client on the configured cluster, with at least `n_workers` workers connected
    (SMAC counts free workers when it submits; before they connect it sees none and stalls)."""
    from dask.distributed import Client

    check_settings(scheduler_address, cluster)
    n_workers = max(1, int(n_workers))
    if scheduler_address:
        key = f"hpo.scheduler_address={scheduler_address}"
        try:
            client = Client(scheduler_address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as err:
            raise UsamError(
                f"{key}: cannot connect to a Dask scheduler there ({err}); start one with "
                f"`dask scheduler` and workers with `dask worker <address> --nthreads 1`"
            ) from err
        conn = DaskConnection(client, where=scheduler_address)
    elif _given(cluster):
        target = str(cluster["_target_"])
        key = f"hpo.cluster ({target})"
        conn = DaskConnection(*_start_cluster(cluster, n_workers, key), where=target)
    else:
        key = "hpo.n_workers"
        client = Client(  # a client that starts its own local cluster also shuts it down
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            local_directory=str(Path(local_directory)),
        )
        conn = DaskConnection(client, where="local cluster")
    try:
        conn.client.wait_for_workers(n_workers, timeout=timeout)
    except (TimeoutError, OSError) as err:
        have = len(conn.client.scheduler_info().get("workers", {}))
        conn.close()
        raise UsamError(
            f"{key}: {have} of hpo.n_workers={n_workers} Dask workers connected within "
            f"{timeout:.0f} s; start more workers or lower hpo.n_workers"
        ) from err
    log.info(
        "SMAC trials on Dask (%s): %d workers, %d trial slots",
        conn.where,
        len(conn.client.scheduler_info()["workers"]),
        conn.workers,
    )
    return conn


def _start_cluster(spec: Mapping[str, Any], n_workers: int, key: str):
    from dask.distributed import Client
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        cluster = instantiate(dict(spec) if not hasattr(spec, "_metadata") else spec)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, ImportError) or "dask_jobqueue" in str(err):
            if "dask_jobqueue" in str(spec.get("_target_")):
                raise UsamError(f"{key}: dask-jobqueue is not installed; {JOBQUEUE_HINT}") from err
        raise UsamError(f"{key}: cannot start the cluster: {cause}") from err
    if not hasattr(cluster, "scale") or not hasattr(cluster, "scheduler_address"):
        if hasattr(cluster, "close"):
            cluster.close()
        raise UsamError(
            f"{key}: {type(cluster).__name__} is not a Dask cluster (no scale / scheduler_address)"
        )
    cluster.scale(n_workers)
    return Client(cluster), cluster
