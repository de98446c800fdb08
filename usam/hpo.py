"""Hyperparameter search for one estimator: the `hpo` config group.

A runner gets an objective (hyperparameters -> validation loss on the group-aware split)
and the configured hyperparameters, and returns the ones to train the final model with,
plus a small report. `NoHPO` returns them unchanged; `SmacHPO` runs SMAC 2 over the
paper's search space, either as Bayesian optimisation or as Hyperband over epochs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from usam.dask_cluster import check_settings, connect, uses_dask
from usam.errors import UsamError
from usam.options import flag, integer, interval, number

log = logging.getLogger(__name__)

Objective = Callable[[dict[str, Any]], float]


def told(loss: float) -> float:
    """The loss SMAC is told: 5 significant digits. SMAC's next proposals follow the costs'
    last bits, so without rounding a trial trained alone or stacked with others (usam.stacked,
    equal up to float rounding) would steer the search apart; 5e-5 relative is far below the
    differences between settings."""
    return float(f"{float(loss):.5g}")


class NoHPO:
    """Train with the configured hyperparameters."""

    def search(
        self,
        objective: Objective,
        hp: dict[str, Any],
        *,
        out_dir: Path,
        name: str,
        writer=None,
        seed: int = 0,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return hp, {"method": "none"}


class _Target:
    """SMAC's target function: a SMAC configuration -> validation loss. Picklable for Dask."""

    def __init__(self, objective: Objective, base: dict[str, Any], threads: int | None):
        self.objective, self.base, self.threads = objective, base, threads

    def hp(self, config, budget: float | None = None) -> dict[str, Any]:
        hp = {**self.base, **dict(config)}
        if budget is not None:
            hp["epochs"] = int(round(budget))
        return hp

    def _limit_threads(self) -> None:
        if (
            self.threads
        ):  # Dask workers share the cores; torch would otherwise take them all in each
            import torch

            torch.set_num_threads(self.threads)

    def train(self, config, seed: int = 0) -> float:
        self._limit_threads()
        return told(self.objective(self.hp(config)))

    def train_budget(self, config, seed: int = 0, budget: float = 5.0) -> float:
        self._limit_threads()
        return told(self.objective(self.hp(config, budget)))


class SmacHPO:
    """SMAC 2 over lr [1e-4, 0.1], epochs [5, 80], batch size [16, 256], momentum [0.1, 0.9].

    `log_scale=True` (usam's default) searches lr and batch size on a log scale, where their
    effect is roughly even per decade; `log_scale=False` is the published, uniform space.
    `multi_fidelity=True` drops epochs from the space and runs Hyperband with epochs as the
    budget (min_budget..max_budget); the incumbent is then trained for `incumbent_epochs`
    (null = max_budget; the published run: 60). `initial_design` = configurations SMAC draws
    before its model (null = SMAC's default; the published Hyperband run: 5).
    `n_workers > 1` runs trials in parallel on a local Dask cluster; `scheduler_address` or
    `cluster` run them on an existing Dask scheduler or a dask-jobqueue cluster instead
    (usam.dask_cluster).
    SMAC's own files go to `<out_dir>/<name>/<seed>/` inside the run folder.
    """

    def __init__(
        self,
        *,
        n_trials: int = 100,
        multi_fidelity: bool = False,
        min_budget: float = 5,
        max_budget: float = 35,
        eta: int = 3,
        n_workers: int = 1,
        lr: tuple[float, float] = (1e-4, 0.1),
        epochs: tuple[int, int] = (5, 80),
        batch_size: tuple[int, int] = (16, 256),
        momentum: tuple[float, float] = (0.1, 0.9),
        walltime_limit: float | None = None,
        progress: bool = True,
        log_scale: bool = True,
        initial_design: int | None = None,
        incumbent_epochs: int | None = None,
        scheduler_address: str | None = None,
        cluster: Mapping[str, Any] | None = None,
        concurrent_trials: int = 1,
    ):
        # every option in its type and range: SMAC and ConfigSpace fail deep inside otherwise
        self.n_trials = integer(n_trials, "hpo.n_trials", low=1)
        self.multi_fidelity = flag(multi_fidelity, "hpo.multi_fidelity")
        self.n_workers = integer(n_workers, "hpo.n_workers", low=1)
        self.min_budget = number(min_budget, "hpo.min_budget", low=1)
        self.max_budget = number(max_budget, "hpo.max_budget", low=1)
        self.eta = integer(eta, "hpo.eta", low=2)
        if self.multi_fidelity and self.min_budget > self.max_budget:
            raise UsamError(
                f"need 1 <= hpo.min_budget <= hpo.max_budget, got {min_budget}, {max_budget}"
            )
        check_settings(scheduler_address, cluster)
        self.scheduler_address, self.cluster = scheduler_address or None, cluster
        self.dask = uses_dask(self.n_workers, self.scheduler_address, self.cluster)
        self.concurrent_trials = integer(concurrent_trials, "hpo.concurrent_trials", low=1)
        if self.concurrent_trials > 1 and self.dask:
            raise UsamError(
                "hpo.concurrent_trials > 1 trains trials together in this process; it does not "
                "combine with Dask workers (hpo.n_workers, scheduler_address, cluster): pick one"
            )
        self.ranges = {
            "lr": interval(lr, "hpo.lr", low=0, low_open=True),
            "epochs": interval(epochs, "hpo.epochs", whole=True, low=1),
            "batch_size": interval(batch_size, "hpo.batch_size", whole=True, low=1),
            "momentum": interval(momentum, "hpo.momentum", low=0, high=1, high_open=True),
        }
        self.walltime_limit = (
            None
            if walltime_limit is None
            else number(walltime_limit, "hpo.walltime_limit", low=0, low_open=True)
        )
        self.progress = flag(progress, "hpo.progress")
        # the published search: uniform lr and batch size, Hyperband with 5 initial
        # configurations, incumbent retrained for 60 epochs (conf/hpo/*_published.yaml)
        self.log_scale = flag(log_scale, "hpo.log_scale")
        self.initial_design = (
            None if initial_design is None else integer(initial_design, "hpo.initial_design", low=1)
        )
        self.incumbent_epochs = (
            None
            if incumbent_epochs is None
            else integer(incumbent_epochs, "hpo.incumbent_epochs", low=1)
        )

    def space(self, seed: int = 0):
        from ConfigSpace import ConfigurationSpace, Float, Integer

        r = self.ranges
        hps = [
            Float("lr", r["lr"], log=self.log_scale),
            Integer("batch_size", r["batch_size"], log=self.log_scale),
            Float("momentum", r["momentum"]),
        ]
        if not self.multi_fidelity:  # with Hyperband the budget decides the epochs
            hps.append(Integer("epochs", r["epochs"]))
        cs = ConfigurationSpace(seed=seed)
        cs.add(hps)
        return cs

    def search(
        self,
        objective: Objective,
        hp: dict[str, Any],
        *,
        out_dir: Path,
        name: str,
        writer=None,
        seed: int = 0,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, Scenario
        from smac.callback import Callback

        out_dir = Path(out_dir)
        scenario = Scenario(
            self.space(seed),
            name=name,
            output_directory=out_dir,
            deterministic=True,  # the objective is seeded: one evaluation per configuration
            n_trials=self.n_trials,
            seed=seed,
            walltime_limit=float("inf")
            if self.walltime_limit is None
            else float(self.walltime_limit),
            **(
                {"min_budget": self.min_budget, "max_budget": self.max_budget}
                if self.multi_fidelity
                else {}
            ),
        )
        # local workers share this machine's cores; torch would otherwise take them all in each
        local = self.dask and not (self.scheduler_address or self.cluster)
        threads = max(1, (os.cpu_count() or 1) // self.n_workers) if local else None
        target = _Target(objective, hp, threads)
        bar = tqdm(
            total=self.n_trials, desc=f"{name} SMAC trials", unit="trial", disable=not self.progress
        )
        trials: list[float] = []
        origins: dict[Any, str] = {}  # where SMAC got each configuration (initial design or model)

        class Report(Callback):
            def on_tell_end(self, smbo, info, value):
                trials.append(float(value.cost))
                origins[info.config] = str(getattr(info.config, "origin", None))
                if writer is not None:
                    writer.add_scalar("hpo/trial_loss", float(value.cost), len(trials) - 1)
                    if info.budget is not None:
                        writer.add_scalar("hpo/trial_epochs", float(info.budget), len(trials) - 1)
                bar.update(1)
                bar.set_postfix(best=f"{min(trials):.4f}")
                return None

        logging.getLogger("smac").setLevel(logging.WARNING)
        dask = self._dask(out_dir) if self.dask else None
        client = dask.client if dask is not None else None
        try:
            common = dict(logging_level=False, callbacks=[Report()], overwrite=True)
            fn = target.train_budget if self.multi_fidelity else target.train
            if client is not None:
                fn = _dask_runner(
                    scenario, fn, client, ["seed", "budget"] if self.multi_fidelity else ["seed"]
                )
            facade = (
                MultiFidelityFacade if self.multi_fidelity else HyperparameterOptimizationFacade
            )
            if self.initial_design is not None:  # exactly this many (SMAC caps at 25% of trials)
                common["initial_design"] = facade.get_initial_design(
                    scenario, n_configs=self.initial_design, max_ratio=1.0
                )
            if self.multi_fidelity:
                common["intensifier"] = MultiFidelityFacade.get_intensifier(scenario, eta=self.eta)
            smac = facade(scenario, fn, **common)
            if self.concurrent_trials > 1:
                incumbent = _optimize_in_batches(
                    smac, objective, target, self.concurrent_trials, self.multi_fidelity
                )
            else:
                incumbent = smac.optimize()
            best_loss = float(smac.runhistory.get_cost(incumbent))
        finally:
            bar.close()
            if dask is not None:
                dask.close()
        if isinstance(incumbent, list):  # only multi-objective runs return several
            incumbent = incumbent[0]
        epochs = self.incumbent_epochs or (self.max_budget if self.multi_fidelity else None)
        best = target.hp(incumbent, epochs)
        log.info(
            "%s: SMAC incumbent %s (validation loss %.5f after %d trials)",
            name,
            dict(incumbent),
            best_loss,
            len(trials),
        )
        if writer is not None:
            writer.add_scalar("hpo/best_loss", best_loss, 0)
        info = {
            "method": "smac_hyperband" if self.multi_fidelity else "smac",
            "n_trials": self.n_trials,
            "trials_run": len(trials),
            "best_loss": best_loss,
            "trial_losses": trials,
            "incumbent": {k: best[k] for k in ("batch_size", "epochs", "lr", "momentum")},
            "space": "log" if self.log_scale else "uniform",
            "configurations": len(origins),
            "initial_design": sum(o.lower().startswith("initial design") for o in origins.values()),
            "output_directory": str(scenario.output_directory),
        }
        return best, info

    def _dask(self, out_dir: Path):
        return connect(
            n_workers=self.n_workers,
            scheduler_address=self.scheduler_address,
            cluster=self.cluster,
            local_directory=out_dir / "dask",
        )


def _dask_runner(scenario, fn: Callable, client, required: list[str]):
    """SMAC's Dask runner, except that each result is told with the TrialInfo that was sent.

    SMAC's own runner tells the worker's unpickled copy; with ConfigSpace 1.2 a log-scale
    Integer (our batch_size) does not compare equal after pickling, so SMAC would file every
    result under a new configuration, leave the sent one "running" forever and stop early.
    """
    from smac.runner.dask_runner import DaskParallelRunner
    from smac.runner.target_function_runner import TargetFunctionRunner

    class Runner(DaskParallelRunner):
        def submit_trial(self, trial_info, **dask_data_to_scatter):
            super().submit_trial(trial_info, **dask_data_to_scatter)
            self._sent[self._pending_trials[-1].key] = trial_info

        def _process_pending_trials(self) -> None:
            for future in [f for f in self._pending_trials if f.done()]:
                _, value = future.result()
                self._results_queue.append((self._sent.pop(future.key), value))
                self._pending_trials.remove(future)

    runner = Runner(
        TargetFunctionRunner(scenario, fn, required_arguments=required), dask_client=client
    )
    runner._sent = {}
    return runner


def _optimize_in_batches(smac, objective: Objective, target: _Target, k: int, multi_fidelity: bool):
    """SMAC's ask/tell loop, `k` trials per batch, trained together when the objective can
    (`objective.many`, usam.stacked), else one after another. Like k parallel workers, SMAC
    proposes a batch before it sees the batch's results; the losses do not depend on whether
    the batch is trained together or in turn."""
    import time

    from smac.runhistory.dataclasses import TrialValue

    many = getattr(objective, "many", None) or (lambda hps: [objective(hp) for hp in hps])
    limit = smac.scenario.walltime_limit
    start, asked = time.time(), 0
    while asked < smac.scenario.n_trials and time.time() - start < limit:
        infos = [smac.ask() for _ in range(min(k, smac.scenario.n_trials - asked))]
        asked += len(infos)
        t0 = time.time()
        costs = many([target.hp(i.config, i.budget if multi_fidelity else None) for i in infos])
        seconds = (time.time() - t0) / len(infos)
        for info, cost in zip(infos, costs, strict=True):
            smac.tell(info, TrialValue(cost=told(cost), time=seconds))
    return smac.intensifier.get_incumbent()
